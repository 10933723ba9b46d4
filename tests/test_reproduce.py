"""Issue 16: `unmemorize reproduce tinymem|restor`: the papers' grids over seeds, findings checked."""

from __future__ import annotations

import json
import time

import pytest

from unmemorize.cli.main import main


def _seed(scores: dict[str, float], **extra) -> dict:
    return {"methods": {n: {"score": s} for n, s in scores.items()}, **extra}


def _summary(per_seed: list[dict]) -> dict:
    from unmemorize.benchmarks.seeds import aggregate

    return {**aggregate([{"seed": i, **e} for i, e in enumerate(per_seed)], []), "per_seed": [
        {"seed": i, **e} for i, e in enumerate(per_seed)
    ]}  # fmt: skip


def test_balanced_subnet_finding_holds_only_when_its_paired_lead_excludes_zero():
    from unmemorize.benchmarks.tinymem.reproduce import CELLS, findings

    cell = next(c for c in CELLS if c.name == "increment-noise")
    clear = _summary([_seed({"balanced_subnet": -0.95 + d, "durable": -0.6 + d, "ga": 5.0})
                      for d in (0.0, 0.02, -0.01)])  # fmt: skip
    assert findings(cell, clear)["verdict"] == "holds"
    assert findings(cell, clear)["compared_with"] == "durable"  # ga is not an unlearning method
    noisy = _summary([_seed({"balanced_subnet": s, "durable": d})
                      for s, d in ((-0.9, -0.5), (-0.4, -0.8), (-0.9, -0.6))])  # fmt: skip
    assert findings(cell, noisy)["verdict"].startswith("within noise")
    beaten = _summary(
        [_seed({"balanced_subnet": -0.5, "durable": -0.9 + d}) for d in (0, 0.01, 0.02)]
    )
    check = findings(cell, beaten)
    assert check["verdict"] == "does not hold" and check["best_unlearning"] == "durable"


def test_duplication_trend_reads_the_base_models_memorization_per_group():
    from unmemorize.benchmarks.tinymem.reproduce import CELLS, findings

    cell = next(c for c in CELLS if c.name == "text-noise")

    def seeds(groups):
        return _summary([_seed({}, base_metrics={"memorized_per_group": g}) for g in groups])

    rising = seeds([{"1": 0.1, "10": 0.5, "100": 0.9}, {"1": 0.2, "10": 0.4, "100": 1.0}])
    assert findings(cell, rising)["verdict"] == "holds"
    assert findings(cell, rising)["per_group"]["10"]["mean"] == pytest.approx(0.45)
    flat = seeds([{"1": 0.5, "10": 0.4, "100": 0.9}])
    assert findings(cell, flat)["verdict"] == "does not hold"


def test_restor_findings_check_recovery_target_budget_and_npo_vs_ga():
    from unmemorize.benchmarks.restor.reproduce import findings

    def seed(npo, ga, loss):
        return {"methods": {"npo": {"recovery": npo, "untargeted_loss": loss},
                            "ga": {"recovery": ga, "untargeted_loss": 0.0}}}  # fmt: skip

    def summary(per_seed):
        from unmemorize.benchmarks.seeds import aggregate

        rows = [{"seed": i, **e} for i, e in enumerate(per_seed)]
        agg = aggregate(rows, ["recovery", "untargeted_loss"], score_key="recovery",
                        higher_is_better=True)  # fmt: skip
        return {**agg, "per_seed": rows}

    good = findings(summary([seed(0.7, 0.1, 0.01), seed(0.6, 0.0, 0.02), seed(0.65, 0.05, 0.0)]))
    assert good["best_recovery"]["method"] == "npo" and good["best_recovery"]["verdict"] == "holds"
    assert good["npo_vs_ga"]["verdict"] == "holds"
    # npo recovers well but costs 10 points of untargeted accuracy: out of the budget
    costly = findings(summary([seed(0.7, 0.1, 0.1), seed(0.6, 0.0, 0.1), seed(0.65, 0.05, 0.1)]))
    assert costly["best_recovery"]["method"] == "ga"
    assert costly["best_recovery"]["verdict"] == "does not hold"
    # a corruption that did little damage: recovery is a ratio over it, and reads 2 when the
    # unlearning merely improves the model (RESTOR's paper settings on this world)
    shallow = summary([seed(2.2, 1.7, 0.0), seed(2.4, 1.2, 0.0), seed(1.4, 1.3, 0.0)])
    shallow["baseline"] = {"clean_target_accuracy": {"mean": 0.81},
                           "corrupted_target_accuracy": {"mean": 0.70}}  # fmt: skip
    check = findings(shallow)
    assert check["best_recovery"]["verdict"].startswith("not measurable")
    assert check["npo_vs_ga"]["verdict"].startswith("not measurable")
    shallow["baseline"]["corrupted_target_accuracy"]["mean"] = 0.4  # enough damage, recovery > 1
    check = findings(shallow)
    assert check["best_recovery"]["verdict"].startswith("not measurable")
    assert "above the clean" in check["best_recovery"]["verdict"]
    assert check["npo_vs_ga"]["verdict"] in ("holds", "within noise")


def test_reproduce_names_unknown_cells_and_needs_a_study(capsys):
    assert main(["reproduce", "tinymem", "--out", "x", "--cells", "incrment-noise"]) == 2
    err = capsys.readouterr().err
    assert "increment-noise" in err and len(err.strip().splitlines()) == 1
    assert main(["reproduce"]) == 2
    assert "tinymem,restor" in capsys.readouterr().out


def test_reproduce_help_names_every_cell():
    """The help lists the cells (written out there so that `--help` stays import-light)."""
    import io
    from contextlib import redirect_stdout

    from unmemorize.benchmarks.restor.reproduce import CELLS as RESTOR_CELLS
    from unmemorize.benchmarks.tinymem.reproduce import CELLS as TINYMEM_CELLS

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["reproduce", "--help"]) == 0
    text = buf.getvalue().replace("\n", " ")
    for cell in RESTOR_CELLS:
        assert cell.name in text
    for cell in TINYMEM_CELLS:
        task, variant = cell.name.split("-", 1)
        assert f"{task}-{variant}" in text or (task in ("increment", "mult") and variant in text)


@pytest.mark.slow
def test_reproduce_tinymem_runs_a_cell_over_seeds_and_resumes(tmp_path, capsys):
    from .conftest import TINY_OVERRIDES

    out = tmp_path / "repro"
    argv = ["reproduce", "tinymem", "--seeds", "2", "--cells", "increment-noise", "--methods",
            "ga,balanced_subnet,durable", "--out", str(out), "--no-progress", *TINY_OVERRIDES]  # fmt: skip
    assert main(argv) == 0
    report = (out / "REPORT.md").read_text()
    assert "increment-noise" in report and "BalancedSubnet" in report
    record = json.loads((out / "summary.json").read_text())
    cell = record["cells"]["increment-noise"]
    verdict = cell["check"]["verdict"]
    assert verdict in ("holds", "does not hold") or verdict.startswith("within noise")
    assert cell["check"]["compared_with"] in ("balanced_subnet", "durable")
    cell_summary = json.loads((out / "increment-noise" / "summary.json").read_text())
    assert cell_summary["n_seeds"] == 2 and cell_summary["label"] == "increment-noise"
    stamp = (out / "increment-noise" / "seed-1" / "result.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert main(argv) == 0  # resumed: every seed reused, nothing retrained
    assert time.perf_counter() - start < 30
    assert (out / "increment-noise" / "seed-1" / "result.json").stat().st_mtime_ns == stamp
    assert (
        json.loads((out / "increment-noise" / "summary.json").read_text())["methods"]
        == (cell_summary["methods"])
    )


@pytest.mark.slow
def test_reproduce_restor_runs_a_level_over_seeds(tmp_path):
    out = tmp_path / "rr"
    argv = ["reproduce", "restor", "--preset", "micro", "--seeds", "2", "--cells", "level-0",
            "--methods", "ga,npo,durable", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "summary.json").read_text())
    cell = record["cells"]["level-0"]
    assert cell["level"] == 0 and set(cell["methods"]) == {"ga", "npo", "durable"}
    assert {"best_recovery", "npo_vs_ga"} <= set(cell["check"])
    assert "level-0" in (out / "REPORT.md").read_text()
    # a later run with fewer methods reuses the finished seeds (each method's rows are its own)
    stamp = (out / "level-0" / "seed-1" / "summary.json").stat().st_mtime_ns
    fewer = [a if a != "ga,npo,durable" else "ga,npo" for a in argv]
    assert main(fewer) == 0
    assert (out / "level-0" / "seed-1" / "summary.json").stat().st_mtime_ns == stamp
    assert set(json.loads((out / "summary.json").read_text())["cells"]["level-0"]["methods"]) == {
        "ga",
        "npo",
    }
    # a cell with its own overrides: the shallow corruption, on the same seeds' clean models
    shallow = [a if a != "level-0" else "level-1-shallow" for a in fewer]
    assert main(shallow) == 0
    seed = json.loads((out / "level-1-shallow" / "seed-0" / "summary.json").read_text())
    assert seed["config"]["corrupt"]["lr"] == 1e-4 and seed["level"] == 1
    assert seed["clean_reused_from"] == str(out / "level-0" / "seed-0")
    assert "shallower corruption" in (out / "REPORT.md").read_text()
