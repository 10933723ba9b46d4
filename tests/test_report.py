"""`unmemorize report`: every kind of input directory, the figures, the tables, the bad inputs.

The inputs are synthesized in the shapes the real commands write (copied from a real
`unmemorize demo` / `restor` summary.json and a real train / unlearn run.json): same keys,
scores computed with the library's own selection rule, best rows chosen with its own helpers.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
from pathlib import Path

import pytest

from unmemorize.benchmarks.restor.pipeline import best_per_method
from unmemorize.cli.main import main
from unmemorize.metrics.ranking import best_per, pareto_front, rank, selection_score
from unmemorize.report.build import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "transformers": "5.23.0",
    "platform": "Linux",
    "cpu_count": 2,
    "torch_threads": 2,
    "git_sha": "50ea500a9b04634b22fee9c434a82efe38c48faa",
}
EXPERIMENT = {
    "preset": "cpu-mini",
    "task": "increment",
    "data": {"task": "increment", "main_k": 7, "num_noise": 100, "variant": "noise", "seed": 0},
    "model": {"arch": "gpt2", "n_layers": 4, "d_model": 64, "n_heads": 4, "context_length": 64},
    "train": {"epochs": 70, "batch_size": 128, "lr": 0.002, "seed": 0},
}
N_CANDIDATES = 51


# --------------------------------------------------------------------------- synthetic inputs


def _metrics(mem: int, acc: float, ppl: float) -> dict:
    """The metric keys of a TinyMem row (`evaluate_edit`): memorization + per-set utility."""
    return {
        "memorized_fraction": mem / N_CANDIDATES,
        "n_memorized": mem,
        "n_candidates": N_CANDIDATES,
        "accuracy/increment-7": acc,
        "perplexity/increment-7": ppl,
        "accuracy": acc,
        "perplexity": ppl,
    }


def _history(epochs=(10, 20, 30, 40)) -> list[dict]:
    out = []
    for i, epoch in enumerate(epochs):
        mem = [0, 1, 12, 39][i % 4]
        out.append(
            {
                "epoch": epoch,
                "step": 9 * epoch,
                "train_loss": 1.0 / (i + 1),
                **_metrics(mem, 0.6 + 0.1 * i, 2.5 - 0.3 * i),
                "memorized_per_group": {"1": mem / N_CANDIDATES},
                "seconds": 4.0 * epoch,
            }
        )
    return out


#: (method, family, overrides, still memorized of the 39, accuracy, perplexity, seconds)
DEMO_RUNS = [
    ("finetune_both", "finetune", [], 0, 0.927, 1.264, 13.5),
    ("balanced_subnet", "weight", [], 0, 0.921, 1.30, 6.4),
    ("balanced_subnet", "weight", ["forget_per_batch=64"], 0, 0.913, 1.33, 9.0),
    ("zero_out", "neuron", ["ratio=0.05", "max_rows=8"], 0, 0.865, 1.5, 3.4),
    ("zero_out", "neuron", ["ratio=0.02", "max_rows=16"], 3, 0.896, 1.4, 7.0),
    ("zero_out", "neuron", ["ratio=0.01"], 6, 0.880, 1.45, 2.0),  # dominated by ratio=0.02
    ("activations", "neuron", ["ratio=0.05"], 0, 0.836, 1.7, 0.01),
]


def demo_summary(model_dir: str, task: str = "increment") -> dict:
    """A `unmemorize demo` summary.json (the keys of /work/demo-timed/summary.json)."""
    baseline = {
        **_metrics(39, 0.9271, 1.2911),
        "n_still_memorized": 39,
        "still_memorized_fraction": 1.0,
    }
    runs = []
    for method, family, overrides, still, acc, ppl, seconds in DEMO_RUNS:
        after = {
            **_metrics(still, acc, ppl),
            "n_still_memorized": still,
            "still_memorized_fraction": still / 39,
        }
        runs.append(
            {
                "method": method,
                "family": family,
                "config": {"seed": 0},
                "overrides": overrides,
                **after,
                "seconds": seconds,
                "changed_fraction": 0.05,
                "changed_unit": "neurons",
                "score": selection_score(baseline, after),
            }
        )
    runs.append(
        {
            "method": "ga",
            "family": "gradient",
            "config": {"lr": 0.01},
            "overrides": ["lr=1e-2"],
            "error": "loss diverged (nan) at step 3",
            "score": math.nan,
        }
    )
    runs = rank(runs)
    return {
        "experiment": {**EXPERIMENT, "task": task},
        "model_dir": model_dir,
        "train_seconds": 241.0,
        "baseline": baseline,
        "methods": {row["method"]: row for row in best_per(runs)},
        "runs": runs,
        "seconds": 356.6,
        "environment": ENV,
    }


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path


def make_demo(root: Path, task: str = "increment") -> Path:
    d = root / "demo"
    write_json(d / "model" / "history.json", _history())
    write_json(d / "summary.json", demo_summary(str(d / "model"), task))
    return d


def make_sweep(root: Path, task: str = "increment") -> Path:
    """A sweep summary: the demo's keys plus trial/params/status/pareto per row and counts."""
    d = root / "sweep"
    write_json(d / "base" / "history.json", _history((5, 10, 15)))  # model_dir relative to d
    summary = demo_summary("base", task)
    summary["kind"] = "sweep"
    utility, higher = ("perplexity", False) if task == "text" else ("accuracy", True)
    for i, row in enumerate(summary["runs"]):
        row["trial"] = f"{i:04d}"
        row["params"] = dict(o.split("=") for o in row["overrides"])
        row["status"] = "failed" if "error" in row else "complete"
    for method in {r["method"] for r in summary["runs"]}:
        mine = [r for r in summary["runs"] if r["method"] == method and r["status"] == "complete"]
        front = {id(r) for r in pareto_front(mine, "memorized_fraction", utility, higher)}
        for r in summary["runs"]:
            if r["method"] == method:
                r["pareto"] = id(r) in front
    summary["methods"] = {r["method"]: r for r in best_per(summary["runs"])}
    summary["pareto"] = {
        m: [r["trial"] for r in summary["runs"] if r["method"] == m and r["pareto"]]
        for m in summary["methods"]
    }
    summary["counts"] = {"complete": 7, "failed": 1, "pending": 0}
    write_json(d / "summary.json", summary)
    return d


def _restor_eval(target: float, untargeted: float, wrong: float, logits: tuple) -> dict:
    return {
        "target_accuracy": target,
        "target_accuracy_val": target,
        "target_accuracy_all": target,
        "target_wrong_answer_rate": wrong,
        "untargeted_accuracy": untargeted,
        "n_target_facts": 120,
        "n_untargeted_facts": 180,
        "logits": dict(zip(("correct", "corrupted", "random"), logits, strict=True)),
    }


def make_restor(root: Path) -> Path:
    """A `unmemorize restor` summary.json (the keys of /work/restor-final/summary.json)."""
    clean = {
        **_restor_eval(0.84375, 0.8667, 0.0083, (-0.67, -6.35, -6.43)),
        "final_train_loss": 0.4,
    }
    corrupted = {
        **_restor_eval(0.3125, 0.8333, 0.2167, (-2.10, -2.60, -5.08)),
        "final_train_loss": 0.6,
    }
    runs = []
    for method, overrides, target, untgt, seconds in [
        ("ga", ["lr=1e-4", "epochs=1"], 0.28125, 0.683, 4.8),
        ("ga", ["lr=5e-5", "epochs=1"], 0.3333, 0.783, 4.6),
        ("simnpo", ["lr=2e-4", "epochs=2"], 0.4792, 0.794, 18.3),
        ("npo", ["lr=5e-5", "epochs=2"], 0.3125, 0.694, 22.0),
    ]:
        runs.append(
            {
                "method": method,
                "family": "gradient",
                "overrides": overrides,
                "config": {"lr": float(overrides[0].split("=")[1]), "epochs": 1, "seed": 0},
                **_restor_eval(target, untgt, 0.1, (-1.5, -3.9, -5.5)),
                "recovery": (target - 0.3125) / (0.84375 - 0.3125),
                "recovery_val": 0.0,
                "seconds": seconds,
                "changed_fraction": 0.99,
            }
        )
    keys = ("target_accuracy", "untargeted_accuracy", "recovery", "logits", "seconds", "config",
            "overrides", "target_wrong_answer_rate", "target_accuracy_val", "changed_fraction")  # fmt: skip
    methods = {n: {k: r[k] for k in keys if k in r} for n, r in best_per_method(runs).items()}
    d = root / "restor"
    write_json(
        d / "summary.json",
        {
            "config": {"preset": "cpu-mini", "unlearn": {"level": 1, "simplified": False}},
            "level": 1,
            "simplified": False,
            "n_targets": 20,
            "n_corruption_docs": 480,
            "n_forget_docs": 480,
            "n_retain_docs": 512,
            "clean": clean,
            "corrupted": corrupted,
            "methods": methods,
            "runs": runs,
            "timings": {"evaluate": 6.0, "corrupt": 44.5, "unlearn": 269.8, "clean_train": 333.7},
            "environment": ENV,
            "preset": "cpu-mini",
            "seconds": 658.7,
        },
    )
    return d


def make_train(root: Path, name: str = "train") -> Path:
    """A `unmemorize train` run directory: run.json + history.json."""
    d = root / name
    history = _history()
    write_json(d / "history.json", history)
    write_json(
        d / "run.json",
        {
            "kind": "train",
            "config": EXPERIMENT,
            "metrics": history[-1],
            "seconds": 160.2,
            "resumed_from_epoch": 0,
            "n_parameters": 205056,
            "environment": ENV,
        },
    )
    return d


def make_unlearn(root: Path, name: str = "unlearn") -> Path:
    """A `unmemorize unlearn` run.json (keys of `unlearn.unlearn`'s record)."""
    d = root / name
    before = {**_metrics(5, 0.8804, 1.4543), "memorized_per_group": {"1": 5 / 51}}
    after = {**_metrics(0, 0.8251, 1.7741), "memorized_per_group": {"1": 0.0}}
    write_json(
        d / "run.json",
        {
            "kind": "unlearn",
            "method": "activations",
            "family": "neuron",
            "config": {"ratio": 0.05, "batch_size": 64},
            "model": "runs/train",
            "data": {
                "forget": "memorized candidates of the run",
                "retain": "clean rows",
                "n_forget": 5,
                "n_retain": 210,
                "n_retain_overlap_removed": 0,
            },
            "before": before,
            "after": after,
            "score": selection_score(before, after),
            "result": {
                "seconds": 0.014,
                "changed_fraction": 0.046875,
                "changed_unit": "neurons",
                "changed_count": 12,
                "n_steps": 0,
                "final_loss": None,
                "info": {"neurons_removed": 12},
            },
            "seconds": 0.27,
            "environment": ENV,
        },
    )
    return d


# --------------------------------------------------------------------------- checks


def figures_of(page: str) -> dict[str, bytes]:
    """figure id -> decoded PNG of every <figure> in the page (with alt text and a caption)."""
    found = re.findall(
        r'<figure id="([^"]+)">\s*<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">\s*'
        r"<figcaption>(.*?)</figcaption>",
        page,
        flags=re.S,
    )
    assert len(found) == page.count("<img"), "every <img> sits in a figure with a caption"
    out = {}
    for fig_id, data, alt, caption in found:
        assert len(alt) > 20 and len(caption) > 20, fig_id
        out[fig_id] = base64.b64decode(data, validate=True)
    return out


def assert_png(png: bytes) -> None:
    """A real, non-blank PNG of a readable size."""
    import matplotlib.image

    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])
    assert 500 <= width <= 1400 and 250 <= height <= 1000, (width, height)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.05  # not a blank canvas


def table_rows(page: str, table_title: str) -> list[tuple[str, list[str]]]:
    """``(row class, cells)`` of each body row of the (first) table titled ``table_title``."""
    start = page.index(f"<h3>{table_title}</h3>")
    body = page[page.index("<tbody>", start) : page.index("</tbody>", start)]
    return [
        (cls, re.findall(r"<td[^>]*>(.*?)</td>", cells))
        for cls, cells in re.findall(r'<tr(?: class="(\w+)")?>(.*?)</tr>', body, flags=re.S)
    ]


def best_row(page: str, table_title: str) -> list[str]:
    """The cells of the highlighted (best) row of the table titled ``table_title``."""
    best = [cells for cls, cells in table_rows(page, table_title) if cls == "best"]
    assert len(best) == 1, f"one best row in {table_title}"
    return best[0]


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One report over every kind of directory, in a fixed order."""
    root = tmp_path_factory.mktemp("inputs")
    dirs = [
        make_demo(root),
        make_restor(root),
        make_sweep(root),
        make_train(root),
        make_unlearn(root),
    ]
    before = {p: p.read_bytes() for d in dirs for p in d.rglob("*") if p.is_file()}
    out = tmp_path_factory.mktemp("report")
    paths = build_report(dirs, out)
    after = {p: p.read_bytes() for d in dirs for p in d.rglob("*") if p.is_file()}
    assert after == before, "input files are never modified"
    return paths, paths.html.read_text(encoding="utf-8"), dirs


def test_report_has_every_expected_figure_as_a_real_png(full_report):
    paths, page, _ = full_report
    figures = figures_of(page)
    assert sorted(figures) == sorted(
        [
            "fig-pareto-1", "fig-training-1", "fig-seconds-1",  # demo
            "fig-restor-accuracy-2", "fig-restor-logprob-2", "fig-seconds-2",  # restor
            "fig-pareto-3", "fig-training-3", "fig-seconds-3",  # sweep: base history found
            "fig-training-4",  # train run; the unlearn run has a table only
        ]
    )  # fmt: skip
    for png in figures.values():
        assert_png(png)
    # the Markdown report links the same figures, written next to it
    md = paths.markdown.read_text(encoding="utf-8")
    for fig_id, png in figures.items():
        name = fig_id.removeprefix("fig-") + ".png"
        assert f"](figures/{name})" in md
        assert (paths.html.parent / "figures" / name).read_bytes() == png
    assert sorted(p.name for p in paths.figures) == sorted(
        f.removeprefix("fig-") + ".png" for f in figures
    )


def test_report_html_is_self_contained(full_report):
    _, page, _ = full_report
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page
    for banned in ("<script", "http://", "https://", "<link", 'src="figures/'):
        assert banned not in page
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert [t.split(" (")[-1] for t in titles] == [
        "TinyMem demo)", "RESTOR benchmark)", "TinyMem sweep)", "training run)", "unlearning run)",
    ]  # fmt: skip


def test_demo_tables_carry_the_best_run(full_report):
    paths, page, _ = full_report
    summary = demo_summary("x")
    best = next(iter(summary["methods"].values()))
    assert best["method"] == "finetune_both"  # lowest score of the synthetic grid
    cells = best_row(page, "Best run per method")
    assert cells[:6] == ["finetune_both", "0.0", "0", "92.7", "14", f"{best['score']:+.3f}"]
    assert cells[6] == "defaults"
    section = page[: page.index('<section id="section-2"')]
    # one row per method, the failed ga listed as failed, and zero_out at its best config
    assert "zero_out</td>" in section and "ratio=0.05 max_rows=8" in section
    assert "failed: loss diverged (nan) at step 3" in section
    # the terminal summary shows the same best row, marked
    first = paths.summary.split("\n\n")[0]
    assert re.search(r"^\* finetune_both\s+0\.0\s+0\s+92\.7", first, flags=re.M)


def test_pareto_column_marks_the_front_of_each_method(full_report):
    _, page, _ = full_report
    # columns: method, memorized, still, accuracy, perplexity, seconds, score, Pareto, config
    pareto = {(c[0], c[8]): c[7] for _, c in table_rows(page, "Every run, best score first")}
    assert len(pareto) == len(DEMO_RUNS) + 1
    # zero_out ratio=0.01 (6 still memorized, 88.0%) is beaten by ratio=0.02 (3, 89.6%)
    assert pareto[("zero_out", "ratio=0.01")] == ""
    assert pareto[("zero_out", "ratio=0.02 max_rows=16")] == "yes"
    assert pareto[("zero_out", "ratio=0.05 max_rows=8")] == "yes"
    assert pareto[("ga", "failed: loss diverged (nan) at step 3")] == ""


def test_sweep_section_uses_trials_params_and_counts(full_report):
    _, page, dirs = full_report
    section = page[page.index('<section id="section-3"') : page.index('<section id="section-4"')]
    assert "8 trials of 5 methods, 1 failed (complete 7, failed 1, pending 0)" in section
    cells = best_row(section, "Best trial per method")
    assert cells[0] == "finetune_both" and cells[6] == "0000" and cells[7] == "defaults"
    assert "forget_per_batch=64" in section  # params of the second balanced_subnet trial
    # the Pareto column shows the sweep's own flags
    trials = json.loads((dirs[2] / "summary.json").read_text())["runs"]
    shown = {c[1]: c[8] for _, c in table_rows(section, "Every trial, best score first")}
    assert shown == {r["trial"]: "yes" if r["pareto"] else "" for r in trials}
    assert "" in shown.values() and "yes" in shown.values()


def test_restor_table_highlights_the_best_method(full_report):
    _, page, _ = full_report
    section = page[page.index('<section id="section-2"') : page.index('<section id="section-3"')]
    cells = best_row(section, "Clean, corrupted and the best run of each method")
    assert cells[:5] == ["simnpo", "47.9", "79.4", "10.0", "0.31"]
    assert cells[-1] == "lr=2e-4 epochs=2"
    # ga's best run is the one with the higher validation accuracy (lr=5e-5)
    ga = re.search(r"<td class=\"text\">ga</td>(.*?)</tr>", section, flags=re.S).group(1)
    assert "33.3" in ga and "lr=5e-5 epochs=1" in ga
    assert "clean</td>" in section and "84.4" in section and "level 1" in section


def test_train_and_unlearn_sections(full_report):
    paths, page, _ = full_report
    train = page[page.index('<section id="section-4"') : page.index('<section id="section-5"')]
    assert "205056 parameters" in train and "39 of 51" in train
    unl = page[page.index('<section id="section-5"') :]
    table = {c[0]: c[1:] for _, c in table_rows(unl, "Before and after unlearning")}
    assert table["memorized (#)"] == ["5", "0", "-5"]
    assert table["memorized (%)"] == ["9.8", "0.0", "-9.8 pts"]
    assert table["accuracy (%)"] == ["88.0", "82.5", "-5.5 pts"]
    assert table["perplexity"] == ["1.454", "1.774", "+0.320"]
    assert "4.69% of neurons" in unl
    assert paths.summary.split("\n\n")[-1].startswith("5. ")


def test_text_task_plots_perplexity_and_directory_of_runs(tmp_path):
    make_sweep(tmp_path / "in", task="text")
    make_train(tmp_path / "runs", "a")
    make_unlearn(tmp_path / "runs", "b")
    write_json(tmp_path / "runs" / "c" / "run.json", {"kind": "sweep-trial"})  # not a run to report
    paths = build_report([tmp_path / "in" / "sweep", tmp_path / "runs"], tmp_path / "out")
    page = paths.html.read_text(encoding="utf-8")
    header = page[page.index("<h3>Best trial per method</h3>") :]
    header = header[: header.index("</thead>")]
    assert "perplexity" in header and "accuracy (%)" not in header
    assert "clean perplexity" in page  # the Pareto plot's alt text names its y axis
    # runs/ stands for its two run directories, in name order
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles[1].endswith("a (training run)") and titles[2].endswith("b (unlearning run)")
    assert len(titles) == 3


def test_sweep_summary_written_before_its_baseline(tmp_path):
    d = make_sweep(tmp_path)
    summary = json.loads((d / "summary.json").read_text())
    summary["baseline"] = None  # what `unmemorize sweep` writes until the base is measured
    write_json(d / "summary.json", summary)
    paths = build_report([d], tmp_path / "out")
    page = paths.html.read_text(encoding="utf-8")
    assert "fig-pareto-1" in figures_of(page)
    assert "<dt>before unlearning</dt>" not in page
    assert best_row(page, "Best trial per method")[0] == "finetune_both"


def test_output_is_deterministic_and_defaults_into_the_first_dir(tmp_path, capsys):
    restor = make_restor(tmp_path)
    unl = make_unlearn(tmp_path)
    code = main(["report", str(restor), str(unl), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"report: {restor / 'report.html'}" in out
    assert re.search(r"^\* simnpo\s+47\.9", out, flags=re.M)  # the best-run table
    first_md = (restor / "report.md").read_text()
    first_png = (restor / "figures" / "restor-accuracy-1.png").read_bytes()
    (restor / "figures" / "stale.png").write_bytes(b"old")
    assert main(["report", str(restor), str(unl), "--no-progress"]) == 0
    assert (restor / "report.md").read_text() == first_md
    assert (restor / "figures" / "restor-accuracy-1.png").read_bytes() == first_png
    assert not (restor / "figures" / "stale.png").exists()  # figures/ is replaced whole


def _bad_summary(tmp_path: Path) -> Path:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "summary.json").write_text('{"baseline": {"memorized_fraction": 0.5,')
    return d


def _other_summary(tmp_path: Path) -> Path:
    d = tmp_path / "other"
    write_json(d / "summary.json", {"rows": []})
    return d


def _demo_row_without_method(tmp_path: Path) -> Path:
    d = make_demo(tmp_path)
    summary = json.loads((d / "summary.json").read_text())
    del summary["runs"][0]["method"]
    write_json(d / "summary.json", summary)
    return d


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: (t / "empty").mkdir() or t / "empty", r"empty holds no run to report: a run "
         r"directory holds summary\.json .* or run\.json"),
        (lambda t: t / "missing", r"report input .*missing does not exist"),
        (_bad_summary, r"broken/summary\.json: not valid JSON \(line 1, .*re-run"),
        (_other_summary, r"other/summary\.json is not a demo, sweep or RESTOR summary"),
        (_demo_row_without_method, r"demo/summary\.json does not have the layout of a TinyMem demo"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, make, message):
    d = make(tmp_path)
    code = main(["report", str(d), "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("unmemorize: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_report_of_a_real_demo(tmp_path):
    """End to end: a tiny real demo (two fast methods, their grid configs), then its report."""
    import torch

    from unmemorize.benchmarks.tinymem.experiment import run_demo

    from .conftest import TINY_OVERRIDES

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine run several times slower
    try:
        summary = run_demo(
            tmp_path / "demo",
            progress=False,
            overrides=tuple(TINY_OVERRIDES),
            methods=("activations", "durable"),  # the fastest two: the test is about the report
        )
    finally:
        torch.set_num_threads(threads)
    paths = build_report([tmp_path / "demo"], tmp_path / "demo")
    figures = figures_of(paths.html.read_text(encoding="utf-8"))
    assert {"fig-pareto-1", "fig-training-1", "fig-seconds-1"} <= set(figures)
    for png in figures.values():
        assert_png(png)
    best = next(iter(summary["methods"].values()))
    assert re.search(rf"^\* {best['method']}\s", paths.summary, flags=re.M)
