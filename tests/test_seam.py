"""The benchmark seam (issue 13): a new method is one file, a new benchmark is one package plus its
registration, and every benchmark space names registered methods.

The method and the benchmark below are defined in this test module only; nothing else in the code
base knows them. They are registered by fixtures (and unregistered after), so other test modules
never see them; sweep workers, which are fresh processes, register them again from
``tests.test_seam`` (:attr:`unmemorize.sweep.backends.TrialTask.plugins`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from unmemorize.benchmarks import BENCHMARKS, Benchmark, Metric, Prepared, get_benchmark
from unmemorize.benchmarks.runner import grid_jobs, run_jobs
from unmemorize.benchmarks.spaces import grid_points, resolve_space
from unmemorize.methods import METHODS, Method, UnlearnData
from unmemorize.methods.base import Edit
from unmemorize.metrics.utility import accuracy_and_perplexity
from unmemorize.render.model import Section, Table, pct

from .zoo import V, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a new method


@dataclass
class ShrinkConfig:
    strength: float = 0.5
    """Share by which every weight matrix shrinks (0 keeps the model, 1 zeroes it)."""

    def validate(self) -> None:
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")


class ShrinkWeights(Method):
    """Shrink every weight matrix towards zero (a crude dampening, for the seam tests).

    Edit: ``W <- (1 - strength) * W`` for every parameter with two or more dimensions.
    """

    name = "test_shrink"
    family = "dampening"
    paper = "none (a test method)"
    Config = ShrinkConfig

    def run(self, model, data: UnlearnData, progress: bool) -> Edit:
        changed = total = 0
        with torch.no_grad():
            for param in model.parameters():
                total += param.numel()
                if param.dim() >= 2:
                    param.mul_(1 - self.config.strength)
                    changed += param.numel()
        return Edit(changed, total, "parameters")


@pytest.fixture
def shrink_method():
    METHODS.register(ShrinkWeights)
    yield ShrinkWeights.name
    METHODS.unregister(ShrinkWeights.name)


def test_a_new_method_runs_through_unlearn(shrink_method, tiny_run, tmp_path):
    from unmemorize.unlearn import unlearn

    record = unlearn(
        tiny_run.out, shrink_method, tmp_path / "out", overrides=["strength=0.9"], progress=False
    )
    assert record["method"] == shrink_method and record["config"] == {"strength": 0.9}
    assert record["result"]["changed_unit"] == "parameters"
    assert record["after"]["n_memorized"] < record["before"]["n_memorized"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["method"] == shrink_method


def test_a_new_method_without_a_space_entry_sweeps_with_its_defaults(
    shrink_method, tiny_run, tmp_path
):
    from unmemorize.sweep import make_spec, run_sweep

    spec = make_spec([shrink_method], space="cpu-mini", model=tiny_run.out)
    assert spec.space == {shrink_method: {}}  # no entry in cpu-mini: its defaults only
    summary = run_sweep(spec, tmp_path / "sweep", workers=1, progress=False)
    assert summary["counts"]["complete"] == 1, summary["runs"]
    (row,) = summary["runs"]
    assert row["method"] == shrink_method and row["config"] == {"strength": 0.5}
    assert row["params"] == {} and math.isfinite(row["score"])


def test_a_new_method_runs_through_the_restor_runner(shrink_method):
    from unmemorize.benchmarks.restor.config import EvalConfig
    from unmemorize.benchmarks.restor.pipeline import RestorEval, run_unlearning
    from unmemorize.benchmarks.restor.world import (
        FactWorldConfig,
        make_fact_world,
        word_tokenizer,
    )
    from unmemorize.models import ModelConfig, build_model

    world = make_fact_world(
        FactWorldConfig(n_entities=40, n_targets=4, n_untargeted=6, docs_per_target=6)
    )
    tok = word_tokenizer(world.words())
    corrupted = build_model(
        ModelConfig(n_layers=1, d_model=32, n_heads=2, context_length=128),
        vocab_size=len(tok),
        bos_id=tok.eos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
    )
    evaluate = RestorEval(
        world.facts, world.targets, world.untargeted, world.wrong, EvalConfig(n_shots=1)
    )
    before = evaluate(corrupted, tok)
    rng = random.Random(0)
    rows = run_unlearning(
        corrupted,
        tok,
        evaluate,
        world.corruption_documents(1)[:4],
        [world.qa_document(rng) for _ in range(4)],
        {shrink_method: [{}]},  # defaults; the same in the old grid format and in a space
        {"clean": before, "corrupted": before},
        max_length=128,
    )
    (row,) = rows
    assert row["method"] == shrink_method and "error" not in row
    assert row["config"] == {"strength": 0.5}
    assert 0 <= row["target_accuracy"] <= 1 and row["changed_fraction"] > 0


# --------------------------------------------------------------------------- a new benchmark

T = 12  # tokens per row


def _rows(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    rows = load_file(str(model_dir / "rows.safetensors"))
    return rows["forget"], rows["retain"]


class CopyBenchmark(Benchmark):
    """A random tiny GPT-2 and two sets of random rows: forget one, keep the other."""

    name = "test_copy"
    paper = "none (a test benchmark)"
    summary = "forget 4 random rows of a tiny GPT-2, keep its predictions on 16 others"
    metrics = (
        Metric("forget_accuracy", "forget accuracy", False, "pct", "next-token accuracy, forget"),
        Metric("retain_accuracy", "retain accuracy", True, "pct", "next-token accuracy, retain"),
        Metric("seconds", "seconds", None, "secs"),
    )
    selection = "score"
    spaces = {"tiny": {"test_shrink": {"strength": [0.2, 0.5]}, "ga": {"lr": [1e-3]}}}
    default_space = "tiny"

    def prepare_base(self, base, out, *, progress=True):
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        make_model("gpt2").save_pretrained(out)
        g = torch.Generator().manual_seed(0)
        save_file(
            {
                "forget": torch.randint(2, V, (4, T), generator=g),
                "retain": torch.randint(2, V, (16, T), generator=g),
            },
            str(out / "rows.safetensors"),
        )
        return out

    def load(self, model_dir, *, device="cpu", settings=None):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        forget, retain = _rows(Path(model_dir))
        prepared = Prepared(model, UnlearnData(forget, retain), {})
        prepared.baseline = self.evaluate(model, prepared)
        return prepared

    def evaluate(self, model, prepared):
        out = {}
        for name, ids in (
            ("forget", prepared.data.forget_ids),
            ("retain", prepared.data.retain_ids),
        ):
            out[f"{name}_accuracy"], _ppl = accuracy_and_perplexity(model, ids, None)
        return out

    def score(self, baseline, metrics):
        return (metrics["forget_accuracy"] - baseline["forget_accuracy"]) - (
            metrics["retain_accuracy"] - baseline["retain_accuracy"]
        )

    @classmethod
    def tradeoff(cls, experiment=None):
        return "forget_accuracy", "retain_accuracy"

    def report_section(self, index, title, record, *, path=None):
        section = Section(index, title, "test_copy")
        section.facts.append(("runs", str(len(record["runs"]))))
        rows = [
            [r["method"], pct(r.get("forget_accuracy")), pct(r.get("retain_accuracy"))]
            for r in record["methods"].values()
        ]
        section.tables.append(
            Table(
                "Copy: best run per method", ["method", "forget (%)", "retain (%)"], rows, main=True
            )
        )
        return section


@pytest.fixture
def copy_benchmark(shrink_method):
    BENCHMARKS.register(CopyBenchmark)
    yield CopyBenchmark.name
    BENCHMARKS.unregister(CopyBenchmark.name)


def test_a_new_benchmark_runs_through_the_runner(copy_benchmark, tmp_path):
    bench = get_benchmark(copy_benchmark)
    prepared = bench.load(bench.prepare_base({}, tmp_path / "base"))
    jobs = grid_jobs(bench.space())
    assert jobs == [("test_shrink", {"strength": 0.2}), ("test_shrink", {"strength": 0.5}),
                    ("ga", {"lr": 1e-3})]  # fmt: skip
    rows = run_jobs(
        jobs,
        prepared.model,
        prepared.data,
        lambda model: bench.evaluate(model, prepared),
        score=lambda metrics: bench.score(prepared.baseline, metrics),
        progress=False,
    )
    assert [r["overrides"] for r in rows] == [["strength=0.2"], ["strength=0.5"], ["lr=0.001"]]
    for row in rows:
        assert {"forget_accuracy", "retain_accuracy", "seconds", "score"} <= set(row)
        assert math.isfinite(row["score"])


def test_a_new_benchmark_sweeps_and_reports(copy_benchmark, tmp_path):
    from unmemorize.report.build import build_report
    from unmemorize.sweep import load_spec, make_spec, run_sweep

    spec = make_spec(None, benchmark=copy_benchmark)
    assert spec.benchmark == copy_benchmark and list(spec.space) == ["test_shrink", "ga"]
    out = tmp_path / "sweep"
    summary = run_sweep(spec, out, workers=1, progress=False)
    assert summary["benchmark"] == copy_benchmark
    assert summary["counts"]["complete"] == 3, summary["runs"]
    assert (out / "base" / "rows.safetensors").is_file()  # the benchmark built its base model
    assert load_spec(out)[0].benchmark == copy_benchmark  # persisted, so --resume finds it
    assert set(summary["pareto"]) == {"test_shrink", "ga"} and any(
        r["pareto"] for r in summary["runs"]
    )
    scores = [r["score"] for r in summary["runs"]]
    assert scores == sorted(scores)  # ranked by the benchmark's score, lower first

    paths = build_report([out], tmp_path / "report")
    md = paths.markdown.read_text()
    assert "(test_copy sweep)" in md and "Copy: best run per method" in md
    assert "test_shrink" in paths.summary


def test_old_sweep_specs_without_a_benchmark_read_as_tinymem(tmp_path):
    from unmemorize.sweep import load_spec

    spec = {"methods": ["ga"], "space": {"ga": {"lr": [1e-5]}}}
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": spec, "storage": None}))
    assert load_spec(tmp_path)[0].benchmark == "tinymem"


# --------------------------------------------------------------------------- spaces are data


def test_every_space_of_every_benchmark_names_registered_methods():
    from unmemorize.benchmarks import benchmark_names

    for name in benchmark_names():
        bench = get_benchmark(name)
        assert not bench.spaces or bench.default_space in bench.spaces, name
        for space_name, space in bench.spaces.items():
            assert set(space) <= set(METHODS.names()), (name, space_name)
            assert resolve_space(None, space_name, benchmark=name) == dict(space)


def test_the_demo_space_keeps_the_demo_grid_points_in_order():
    demo = get_benchmark("tinymem").space("demo")
    assert list(demo)[:3] == ["zero_out", "activations", "slimming"]
    assert grid_points(demo["zero_out"]) == [
        {"max_rows": 8, "ratio": 0.05},
        {"max_rows": 16, "ratio": 0.02},
    ]
    assert grid_points(demo["subnet"]) == [{}, {"lr": 10.0, "ratio": 0.01}]
    assert sum(len(grid_points(spec)) for spec in demo.values()) == 38
