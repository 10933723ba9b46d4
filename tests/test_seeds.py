"""Issue 16: several seeds, validation-chosen configurations, 95% intervals and paired comparisons."""

from __future__ import annotations

import json
import math

import pytest

from unmemorize.benchmarks.seeds import VALIDATION_SCORE, aggregate, best_by_validation
from unmemorize.cli.main import main
from unmemorize.metrics.intervals import (
    aggregate_seeds,
    bootstrap_proportion,
    paired_difference,
    t_interval,
    t_quantile_975,
)

# ------------------------------------------------------------------------------ statistics


def test_t_interval_matches_the_textbook_formula():
    ci = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975,2} = 4.303
    half = 4.303 / math.sqrt(3)
    assert ci["mean"] == pytest.approx(2.0) and ci["sd"] == pytest.approx(1.0)
    assert (ci["ci95_low"], ci["ci95_high"]) == pytest.approx((2 - half, 2 + half))
    assert ci["n_seeds"] == 3


def test_t_interval_with_one_or_no_finite_value_has_no_bounds():
    one = t_interval([0.4, float("nan"), None])
    assert one["mean"] == 0.4 and one["ci95_low"] is None and one["n_seeds"] == 1
    assert t_interval([])["mean"] is None


def test_t_quantile_table_and_expansion_agree_at_the_seam():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)  # exact: 2.03951
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-4)  # exact: 2.00030
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=2e-4)  # exact: 1.96234
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_bootstrap_proportion_brackets_the_share_and_degenerates_at_the_ends():
    mid = bootstrap_proportion(10, 20)
    assert mid["value"] == 0.5 and mid["boot95_low"] < 0.5 < mid["boot95_high"]
    assert 0.2 <= mid["boot95_low"] <= 0.35 and 0.65 <= mid["boot95_high"] <= 0.8
    assert bootstrap_proportion(0, 20)["boot95_high"] == 0.0
    assert bootstrap_proportion(20, 20)["boot95_low"] == 1.0
    assert bootstrap_proportion(0, 0)["value"] is None
    with pytest.raises(ValueError):
        bootstrap_proportion(3, 2)


def test_paired_difference_is_tighter_than_the_marginals_and_says_when_it_excludes_zero():
    a, b = [0.10, 0.50, 0.90], [0.05, 0.44, 0.86]  # wide spread across seeds, steady gap
    marginal = t_interval(a)
    paired = paired_difference(a, b)
    assert paired["mean_difference"] == pytest.approx(0.05)
    assert paired["excludes_zero"] and paired["ci95_low"] > 0
    assert marginal["ci95_low"] < b[0]  # the marginal intervals overlap
    mixed = paired_difference([0.1, 0.2, 0.3], [0.2, 0.1, 0.3])
    assert not mixed["excludes_zero"]
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_share_intervals_are_clipped_to_zero_one():
    rows = [{"acc": 0.99, "loss": 0.99}, {"acc": 0.5, "loss": 0.5}]
    agg = aggregate_seeds(rows, ["acc", "loss"], shares=("acc",))
    assert agg["acc"]["ci95_high"] == 1.0 and agg["acc"]["ci95_low"] == 0.0
    assert agg["loss"]["ci95_high"] > 1.0  # not a share: the t interval as it is
    assert agg["acc"]["values"] == [0.99, 0.5]
    # a share named in full although it has a "/" (audit/<key>), and one named by its prefix
    rows = [{"audit/returned": 0.01, "accuracy/x": 0.99}, {"audit/returned": 0.5,
            "accuracy/x": 0.5}]  # fmt: skip
    agg = aggregate_seeds(rows, ["audit/returned", "accuracy/x"], shares=("audit/returned",
                          "accuracy"))  # fmt: skip
    assert agg["audit/returned"]["ci95_low"] == 0.0 and agg["accuracy/x"]["ci95_high"] == 1.0


def test_aggregate_ranks_by_mean_and_pairs_the_best_with_the_next():
    per_seed = [
        {"seed": s, "baseline": {"m": 0.8}, "methods": {
            "good": {"score": -0.9 + d, "m": 0.0, "overrides": ["lr=1"]},
            "fair": {"score": -0.5 + d, "m": 0.2, "overrides": ["lr=2"]},
            "bad": {"score": 1.0 + d, "m": 0.8, "overrides": []},
        }}
        for s, d in enumerate([0.0, 0.05, -0.03])
    ]  # fmt: skip
    per_seed[2]["methods"].pop("bad")  # a method missing on a seed counts on the others
    out = aggregate(per_seed, ["m"], baseline_keys=["m"], n_paired=3)
    assert list(out["methods"]) == ["good", "fair", "bad"]
    good = out["methods"]["good"]
    assert set(good["score"]) >= {"mean", "ci95_low", "ci95_high", "n_seeds", "values"}
    assert good["score"]["n_seeds"] == 3 and out["methods"]["bad"]["score"]["n_seeds"] == 2
    assert good["configs"] == [["lr=1"]] * 3
    assert [(p["a"], p["b"]) for p in out["paired"]] == [("good", "fair"), ("good", "bad")]
    assert out["paired"][0]["mean_difference"] == pytest.approx(-0.4)
    assert out["paired"][0]["excludes_zero"]
    assert out["baseline"]["m"]["mean"] == pytest.approx(0.8)


def test_the_best_configuration_is_chosen_on_validation_rows_not_the_reported_ones():
    rows = [
        {"method": "ga", "overrides": ["lr=1"], "score": -0.99, VALIDATION_SCORE: -0.2},
        {"method": "ga", "overrides": ["lr=2"], "score": -0.50, VALIDATION_SCORE: -0.6},
        {"method": "npo", "overrides": [], "score": -0.1, VALIDATION_SCORE: float("nan")},
    ]
    best = best_by_validation(rows)
    assert best["ga"]["overrides"] == ["lr=2"]  # the test-best lr=1 is not picked
    assert best["npo"]["overrides"] == []


# ------------------------------------------------------------------------------ TinyMem split


def test_tinymem_split_halves_are_disjoint_and_cover_every_row(tiny_run):
    from unmemorize.benchmarks.tinymem.benchmark import TinyMemBenchmark

    bench = TinyMemBenchmark()
    prepared = bench.prepare(tiny_run.model, tiny_run.data)
    val, test = bench.split(prepared, seed=3)
    mem = tiny_run.data.memorization
    n_forget = len(prepared.state.forget_index)
    assert val.info["n_candidates"] + test.info["n_candidates"] == len(mem)
    assert val.info["n_forget"] + test.info["n_forget"] == n_forget
    assert abs(val.info["n_forget"] - test.info["n_forget"]) <= 1  # stratified
    # disjoint: no candidate row is in both halves
    val_rows = {tuple(r.tolist()) for r in val.state.data.memorization.target_ids}
    test_rows = {tuple(r.tolist()) for r in test.state.data.memorization.target_ids}
    all_rows = {tuple(r.tolist()) for r in mem.target_ids}
    assert len(val_rows) + len(test_rows) == len(all_rows) and val_rows | test_rows == all_rows
    for name, ids in tiny_run.data.test_sets.items():
        assert len(val.state.data.test_sets[name]) + len(test.state.data.test_sets[name]) == len(
            ids
        )
    # each half's baseline counts its own memorized rows; the methods' data is shared
    assert (
        val.baseline["n_memorized"] + test.baseline["n_memorized"]
        == prepared.baseline["n_memorized"]
    )
    assert val.data is prepared.data and test.data is prepared.data
    # the seed picks the split; the same seed the same split
    again, _ = bench.split(prepared, seed=3)
    assert again.state.forget_index.tolist() == val.state.forget_index.tolist()
    assert bench.split(prepared, seed=3)[0].baseline == val.baseline


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_demo_seeds_writes_intervals_per_method_and_metric_and_a_report_with_error_bars(
    tmp_path, capsys, caplog
):
    from .conftest import TINY_OVERRIDES

    out = tmp_path / "seeds"
    argv = ["demo", "--seeds", "2", "--methods", "ga,finetune_clean", "--out", str(out)]
    assert main([*argv, "--no-progress", *TINY_OVERRIDES]) == 0
    printed = capsys.readouterr().out
    assert "95% CI" in printed and "finetune_clean" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "seeds" and summary["n_seeds"] == 2 and summary["seeds"] == [0, 1]
    assert set(summary["methods"]) == {"ga", "finetune_clean"}
    for name, entry in summary["methods"].items():
        for metric in ("score", "still_memorized_fraction", "accuracy", "memorized_fraction"):
            assert {"mean", "ci95_low", "ci95_high", "n_seeds"} <= set(entry[metric]), name
            assert entry[metric]["n_seeds"] == 2
            low, high = entry[metric]["ci95_low"], entry[metric]["ci95_high"]
            assert low <= entry[metric]["mean"] <= high
    assert summary["paired"] and summary["paired"][0]["n_seeds"] == 2
    # two different base models: the seeds changed the data
    seeds = summary["per_seed"]
    assert seeds[0]["baseline"] != seeds[1]["baseline"]
    for entry in seeds:  # chosen on validation rows, reported on the test half
        assert entry["split"]["validation"]["n_candidates"] > 0
        for row in entry["methods"].values():
            assert "val" in row and VALIDATION_SCORE in row and "still_memorized_boot95" in row
    stamp = (out / "seed-1" / "result.json").stat().st_mtime_ns
    assert main([*argv, "--no-progress", *TINY_OVERRIDES]) == 0  # the same command resumes
    assert (out / "seed-1" / "result.json").stat().st_mtime_ns == stamp
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert any(f.startswith("seeds-score") for f in figures)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "95% confidence interval" in md and "Paired comparisons" in md

    # --audit on the finished study: the grids are not run again; each method's chosen edit is
    # applied again (the same edit: no mismatch logged) and audited on the test half
    runs = [json.loads((out / f"seed-{s}" / "result.json").read_text())["runs"] for s in (0, 1)]
    with caplog.at_level("WARNING", logger="unmemorize.benchmarks.tinymem.seeds"):
        assert main([*argv, "--no-progress", "--audit", *TINY_OVERRIDES]) == 0
    assert not [r for r in caplog.records if "applied again" in r.getMessage()]
    printed = capsys.readouterr().out
    assert "returns (relearning)" in printed and "MIA AUC" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["n_seeds"] == 2
    for s in (0, 1):
        entry = json.loads((out / f"seed-{s}" / "result.json").read_text())
        assert [r["score"] for r in entry["runs"]] == [r["score"] for r in runs[s]]
        assert (out / f"seed-{s}" / "audit" / "ga" / "audit.json").is_file()
        assert entry["baseline"]["audit/min_k_auc"] is not None
    for name in ("ga", "finetune_clean"):
        returned = summary["methods"][name]["audit/returned_fraction"]
        assert returned["n_seeds"] == 2 and 0 <= returned["ci95_low"] <= returned["ci95_high"] <= 1
    assert summary["baseline"]["audit/min_k_auc"]["n_seeds"] == 2
    assert main(["report", str(out), "--out", str(tmp_path / "audited")]) == 0
    md = (tmp_path / "audited" / "report.md").read_text()
    assert "returns after relearning" in md and "applied again" in md
    stamp = (out / "seed-0" / "result.json").stat().st_mtime_ns
    assert main([*argv, "--no-progress", "--audit", *TINY_OVERRIDES]) == 0  # audited: reused
    assert (out / "seed-0" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_restor_seeds_aggregates_worlds(tmp_path, capsys):
    out = tmp_path / "rs"
    argv = ["restor", "--preset", "micro", "--seeds", "2", "--methods", "ga", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "restor" and summary["n_seeds"] == 2
    ga = summary["methods"]["ga"]
    for metric in ("target_accuracy", "untargeted_accuracy", "untargeted_loss"):
        assert {"mean", "ci95_low", "ci95_high", "n_seeds"} <= set(ga[metric])
    assert (out / "seed-0" / "summary.json").is_file() and (out / "seed-1" / "clean").is_dir()
    worlds = [
        json.loads((out / f"seed-{s}" / "data" / "entities.json").read_text()) for s in (0, 1)
    ]
    assert worlds[0] != worlds[1]


def test_restor_seeds_with_a_given_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["restor", "--seeds", "2", "--model", str(tmp_path), "--facts", "f", "--docs", "d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--seeds" in err[0]


def test_seeds_must_be_positive(capsys):
    assert main(["demo", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 1" in err[0]


@pytest.mark.slow
def test_restor_reuses_a_clean_model_of_the_same_world_with_identical_results(tmp_path):
    """Another corruption level of the same seed starts from the same clean model: loading it
    gives the results of training it again (reproduce restor trains it once per seed)."""
    from unmemorize.benchmarks.restor.pipeline import make_restor_config, run_restor

    def run(out, level, reuse=None):
        cfg = make_restor_config("micro", level=level)
        return run_restor(out, cfg, methods=["ga"], progress=False, reuse_clean=reuse)

    first = run(tmp_path / "k0", 0)
    trained = run(tmp_path / "k1-trained", 1)
    reused = run(tmp_path / "k1-reused", 1, reuse=tmp_path / "k0")
    assert reused["clean_reused_from"] == str(tmp_path / "k0")
    for key in ("clean", "corrupted"):
        assert reused[key] == trained[key]
    assert reused["methods"]["ga"]["logits"] == trained["methods"]["ga"]["logits"]
    assert first["clean"] == trained["clean"]
    other_world = make_restor_config("micro", ["world.seed=5"], level=1)
    with pytest.raises(ValueError, match="no clean model"):
        run_restor(
            tmp_path / "x", other_world, methods=[], progress=False, reuse_clean=tmp_path / "k0"
        )


@pytest.mark.slow
def test_restor_seeds_resume_runs_only_the_missing_methods_with_identical_results(tmp_path):
    """A resumed study with one more method (or another grid for one) runs just that method on
    each seed's stored corrupted model; the rows equal a run of every method from scratch."""
    from unmemorize.benchmarks.restor.pipeline import make_restor_config, run_restor
    from unmemorize.benchmarks.restor.seeds import run_restor_seeds

    cfg = make_restor_config("micro", level=1)
    out = tmp_path / "study"
    run_restor_seeds(out, [0], cfg, methods=["ga"], progress=False)
    corrupted = out / "seed-0" / "corrupted" / "model.safetensors"
    stamp = corrupted.stat().st_mtime_ns
    ga_grid = {"ga": {"lr": [1e-4, 5e-5], "epochs": 1, "batch_size": 8}}
    both = {**ga_grid, "durable": {"ratio": 0.05}}
    extended = run_restor_seeds(
        out, [0], cfg, methods=["ga", "durable"], grid=both, resume=True, progress=False
    )
    assert corrupted.stat().st_mtime_ns == stamp  # neither trained nor corrupted again
    seed = json.loads((out / "seed-0" / "summary.json").read_text())
    assert seed["extended_with"] == [["durable", "ga"]]  # ga's grid changed, durable was missing
    scratch = run_restor(
        tmp_path / "scratch", make_restor_config("micro", ["world.seed=0", "clean.seed=0",
        "corrupt.seed=0"], level=1), methods=["ga", "durable"], grid=both, progress=False,
    )  # fmt: skip
    assert seed["corrupted"] == scratch["corrupted"]
    for name in ("ga", "durable"):
        for key in ("target_accuracy", "untargeted_accuracy", "logits", "overrides"):
            assert seed["methods"][name][key] == scratch["methods"][name][key], (name, key)
    assert set(extended["methods"]) == {"ga", "durable"}
    # the same study again reuses the seed as it is; a subset of its methods too
    stamp = (out / "seed-0" / "summary.json").stat().st_mtime_ns
    again = run_restor_seeds(out, [0], cfg, methods=["durable"], grid=both, resume=True,
                             progress=False)  # fmt: skip
    assert (out / "seed-0" / "summary.json").stat().st_mtime_ns == stamp
    assert set(again["methods"]) == {"durable"}


@pytest.mark.slow
def test_sweep_seeds_runs_the_grid_on_each_seed_and_resumes(tmp_path, capsys):
    from .conftest import TINY_OVERRIDES

    out = tmp_path / "sw"
    argv = ["sweep", "--seeds", "2", "--methods", "ga", "--out", str(out), "--no-progress",
            *TINY_OVERRIDES]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "seeds" and summary["n_seeds"] == 2
    ga = summary["methods"]["ga"]
    assert ga["score"]["n_seeds"] == 2
    # the cpu-mini space's ga grid ran on each seed, the configuration chosen on validation rows
    assert len(summary["per_seed"][0]["runs"]) > 1
    stamp = (out / "seed-0" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0  # resumed: both seeds reused
    assert (out / "seed-0" / "result.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(["sweep", "--seeds", "2", "--search", "tpe", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds" in err[0]
    # --audit audits the chosen runs of the finished seeds without running the grids again
    assert main([*argv, "--audit", "--audit-checks", "exact,relearn"]) == 0
    assert (out / "seed-0" / "result.json").stat().st_mtime_ns != stamp
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["ga"]["audit/returned_fraction"]["n_seeds"] == 2
    assert "audit/min_k_auc" not in summary["methods"]["ga"]  # MIA not run
    capsys.readouterr()
    assert main([*argv, "--audit", "--rank-by", "audited"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rank-by audited" in err[0]


def test_a_seeds_directory_of_another_experiment_is_retrained_not_reused(tmp_path, monkeypatch):
    """Resuming reuses a seed's model only when it was trained for the same experiment."""
    import unmemorize.benchmarks.tinymem.experiment as experiment
    from unmemorize.benchmarks.tinymem import seeds as seeds_mod

    from .conftest import TINY_OVERRIDES

    trained = []  # run_tinymem_seeds imports train_experiment when called: patch its module

    original = experiment.train_experiment

    def counting(exp, out, **kw):
        trained.append((exp.train.epochs, kw.get("overwrite")))
        return original(exp, out, **kw)

    monkeypatch.setattr(experiment, "train_experiment", counting)
    short = [*TINY_OVERRIDES, "train.epochs=2", "train.checkpoint_every=1"]
    kw = {"methods": [], "progress": False, "resume": True}
    seeds_mod.run_tinymem_seeds(tmp_path, [0], overrides=short, **kw)
    seeds_mod.run_tinymem_seeds(tmp_path, [0], overrides=short, **kw)  # same: reused
    assert len(trained) == 1
    seeds_mod.run_tinymem_seeds(tmp_path, [0], overrides=[*short, "train.epochs=3"], **kw)
    assert trained[-1] == (3, True)  # another experiment: trained afresh over the old one
    import json

    assert (
        json.loads((tmp_path / "seed-0" / "model" / "experiment.json").read_text())["train"][
            "epochs"
        ]
        == 3
    )
