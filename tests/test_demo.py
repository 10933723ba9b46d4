"""End to end: `unmemorize demo` writes its summary and a loadable model (shortened run)."""

from __future__ import annotations

import json

import pytest

from unmemorize.cli.main import main
from unmemorize.models import load_model


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    # 6 epochs instead of 70; a constant lr, since cosine decay over 6 epochs barely trains
    argv = [
        "demo",
        "--out",
        str(out),
        "--no-progress",
        "train.epochs=6",
        "train.checkpoint_every=3",
    ]
    code = main([*argv, "train.lr_schedule=constant"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]
    assert set(base) >= {"memorized_fraction", "accuracy", "perplexity", "n_candidates"}
    assert 0.0 <= base["memorized_fraction"] <= 1.0 and 0.0 <= base["accuracy"] <= 1.0
    assert base["n_candidates"] > 30  # ~half of the 100 noised rows have noise in the window
    assert base["perplexity"] > 1.0
    assert base["accuracy"] > 0.5  # 6 epochs already learn most of "+7"
    assert "memorized" in printed and "test accuracy" in printed
    model, tok = load_model(summary["model_dir"])
    assert model.config.n_layer == 4 and len(tok) == 14
    history = json.loads((out / "model" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [3, 6]


@pytest.mark.slow
def test_demo_runs_every_method_and_ranks_them(tmp_path, capsys):
    from unmemorize.benchmarks import get_benchmark
    from unmemorize.benchmarks.spaces import grid_points
    from unmemorize.methods import METHODS

    from .conftest import TINY_OVERRIDES

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--no-progress", *TINY_OVERRIDES])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    demo = get_benchmark("tinymem").space("demo")
    assert set(demo) <= set(METHODS.names())
    assert summary["benchmark"] == "tinymem"
    methods = summary["methods"]
    assert set(methods) == set(demo)
    for name, row in methods.items():
        assert {
            "memorized_fraction",
            "accuracy",
            "perplexity",
            "seconds",
            "score",
            "config",
        } <= set(row), name
        assert row["seconds"] > 0
    scores = [row["score"] for row in methods.values()]
    assert scores == sorted(scores)  # best first
    assert len(summary["runs"]) == sum(len(grid_points(v)) for v in demo.values())
    assert summary["baseline"]["n_memorized"] > 0
    best = next(iter(methods.values()))
    assert best["memorized_fraction"] < summary["baseline"]["memorized_fraction"]
    for name in demo:
        assert name in printed
    assert "score" in printed


def test_demo_rejects_unknown_method_before_training(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "d"), "--methods", "balanced_subnt"])
    assert code == 2
    assert "did you mean 'balanced_subnet'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_config_replay_of_a_demo_reproduces_its_summary_metrics(tmp_path, capsys):
    """`demo --config OUT/summary.json` reruns the recorded options and overrides (issue 17)."""
    from .conftest import TINY_OVERRIDES

    first = tmp_path / "first"
    argv = ["demo", "--out", str(first), "--no-progress", "--methods", "zero_out,ga"]
    assert main([*argv, *TINY_OVERRIDES]) == 0, capsys.readouterr()
    recorded = json.loads((first / "summary.json").read_text())
    assert recorded["command"] == {
        "name": "demo",
        "options": {"methods": "zero_out,ga"},
        "overrides": TINY_OVERRIDES,
    }
    assert {r["method"] for r in recorded["runs"]} == {"zero_out", "ga"}  # something to compare
    replay = tmp_path / "replay"
    code = main(
        ["demo", "--config", str(first / "summary.json"), "--out", str(replay), "--no-progress"]
    )
    assert code == 0, capsys.readouterr()
    again = json.loads((replay / "summary.json").read_text())

    def metrics(summary):
        drop = ("seconds",)
        rows = [{k: v for k, v in r.items() if k not in drop} for r in summary["runs"]]
        return summary["experiment"], summary["baseline"], rows

    # compared as JSON text: a diverged run's NaN score equals itself there
    assert json.dumps(metrics(again), sort_keys=True) == json.dumps(
        metrics(recorded), sort_keys=True
    )
    assert again["command"] == recorded["command"]  # a replay replays the same way
    # options and overrides given beside --config win: tests/test_cli_commands.py (parsing) and
    # tests/test_unlearn.py (an override changes the replayed edit)


def test_config_of_another_command_or_without_record_is_one_line(tmp_path, capsys):
    other = tmp_path / "run.json"
    other.write_text(json.dumps({"command": {"name": "unlearn", "options": {}, "overrides": []}}))
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    for path, message in (
        (other, "was written by `unmemorize unlearn`"),
        (plain, "records no command to replay"),
        (tmp_path / "nope.json", "no such file"),
    ):
        code = main(["demo", "--config", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


#: A tiny language run (~20 s on one core): 2 layers, d=32, 300 chunks of 48 tokens, 30 of them
#: noised (seen 1, 10 or 100 times an epoch); memorizes about 9 of its 23 candidates in 10 epochs.
TINY_TEXT_OVERRIDES = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.context_length=48",
    "data.context_length=48",
    "data.max_chunks=300",
    "data.vocab_size=512",
    "data.num_noise=30",
    "data.num_test=50",
    "data.prefix_len=16",
    "data.suffix_len=16",
    "train.epochs=10",
    "train.batch_size=32",
    "train.lr=0.003",
    "train.checkpoint_every=5",
]


# last in the module: "one_thread" (module-scoped) stays set until the module ends
@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # ~20 s on one thread; minutes on 2 busy cores
def test_demo_text_task_ranks_methods_by_the_perplexity_score(tmp_path, capsys):
    """Issue 14: `demo --task text` runs the language variant end to end and scores every run
    with the perplexity form of the TinyMem score, though its metrics carry ``accuracy/text``."""
    from unmemorize.metrics.ranking import selection_score

    out = tmp_path / "demo"
    argv = ["demo", "--task", "text", "--out", str(out), "--no-progress"]
    code = main([*argv, "--methods", "zero_out,ga", *TINY_TEXT_OVERRIDES])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"]["task"] == "text"
    base = summary["baseline"]
    assert base["n_memorized"] > 0  # something to remove, so the ranking is exercised
    assert "accuracy/text" in base  # what made the accuracy form win before the fix
    runs = summary["runs"]
    assert {r["method"] for r in runs} == {"zero_out", "ga"}
    for row in runs:
        assert row["score"] == selection_score(base, row, utility="perplexity"), row["method"]
    # the two forms differ on these runs: the test tells them apart
    assert any(r["score"] != selection_score(base, r, utility="accuracy") for r in runs)
    assert [r["score"] for r in runs] == sorted(r["score"] for r in runs)  # best first
    best = [row["score"] for row in summary["methods"].values()]
    assert best == sorted(best) and best[0] == runs[0]["score"]
    assert (
        next(iter(summary["methods"].values()))["memorized_fraction"] < base["memorized_fraction"]
    )
    assert "language variant" in printed
    assert "score: relative change in % memorized plus relative change in perplexity" in printed
