"""Smoke tests of benchmarks/*.py: each main() runs with its smallest arguments and prints its
result keys (no timing is asserted: speed figures belong in benchmarks/RESULTS.md), plus the
pieces the benchmarks rely on (Pythia shapes, the FLOP parameter count, streamed sequence files)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from unmemorize.benchmarks.shapes import (
    PYTHIA_SHAPES,
    PythiaShape,
    matmul_parameters,
    pythia_config,
    random_pythia,
)
from unmemorize.data.sequences import iter_sequences, read_sequences
from unmemorize.models import ModelConfig, build_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    """Import benchmarks/<name>.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def keys(out: str) -> dict[str, float]:
    """The ``key: number`` lines of a benchmark's output."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^([\w.-]+): (-?[\d.]+)$", out, re.M)}


@pytest.fixture
def tiny_pythia(monkeypatch):
    """A one-layer 'Pythia' shape, so the Pythia code paths run in a second."""
    monkeypatch.setitem(PYTHIA_SHAPES, "tiny", PythiaShape(1, 32, 2, vocab_size=64))
    return "tiny"


def test_pythia_shapes_are_the_published_sizes():
    model = random_pythia("70m")
    assert sum(p.numel() for p in model.parameters()) == 70_426_624  # Pythia-70m's count
    cfg = pythia_config("160m")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25 and not cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="unknown Pythia size"):
        pythia_config("7b")


def test_matmul_parameters_counts_linear_weights_and_the_head_once(tiny_pythia):
    d, layers, vocab = 32, 1, 64
    neox = random_pythia(tiny_pythia)
    # per layer: qkv 3d^2 + dense d^2 + MLP 4d^2 + 4d^2; untied head V d; embed_in not counted
    assert matmul_parameters(neox) == layers * 12 * d * d + vocab * d
    gpt2 = build_model(ModelConfig(n_layers=2, d_model=16, n_heads=2), 20, 0, 0, 0)
    # GPT-2's Conv1D layers, and its head tied to the input embedding: counted once
    assert matmul_parameters(gpt2) == 2 * 12 * 16 * 16 + 20 * 16


def test_iter_sequences_streams_in_chunks(tmp_path):
    path = tmp_path / "seqs.jsonl"
    rows = torch.randint(14, (10, 8))
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows.tolist()))
    chunks = list(iter_sequences(path, None, 14, 4, 4, chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat(chunks), rows)
    assert torch.equal(read_sequences(path, None, 14, 4, 4), rows)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no sequences"):
        list(iter_sequences(tmp_path / "empty.jsonl", None, 14, 4, 4))


def test_memorization_speed_pythia_shape(tiny_pythia, capsys):
    rc = load("memorization_speed").main(
        ["--pythia", tiny_pythia, "--n-sequences", "8", "--prefix-len", "4", "--suffix-len", "6"]
        + ["--batch-size", "4", "--generate-batch-size", "4", "--uncached-batch-size", "2"]
        + ["--check-every", "2", "--reproduced-fraction", "0.5"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "RANDOM weights" in out and "4/4 rows targeting the greedy continuation" in out
    got = keys(out)
    for key in (
        "speedup_vs_uncached_generate",
        "speedup_vs_cached_generate",
        "speedup_full_one_pass_vs_cached_generate",
    ):
        assert got[key] > 0


@pytest.mark.slow
def test_memorization_speed_on_a_trained_run(tiny_run, capsys):
    rc = load("memorization_speed").main(
        ["--model", str(tiny_run.out), "--n-sequences", "48", "--prefix-len", "16"]
        + ["--suffix-len", "16", "--repeats", "1", "--uncached-subset", "4", "--batch-size", "16"]
        + ["--generate-batch-size", "16", "--uncached-batch-size", "4"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "verdicts identical across all methods" in out
    assert {"speedup_vs_cached_generate", "speedup_full_one_pass_vs_cached_generate"} <= set(
        keys(out)
    )


def test_mining_speed(capsys):
    rc = load("mining_speed").main(
        ["--n-windows", "64", "--steps", "2", "--layers", "1", "--d-model", "16", "--vocab", "64"]
        + ["--repeats", "1", "--batch-size", "32", "--prefix-len", "8", "--suffix-len", "8"]
        + ["--check-every", "4"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert keys(out)["speedup_early_exit_vs_one_pass"] > 0


def test_training_speed(tiny_pythia, capsys):
    rc = load("training_speed").main(
        ["--gemm-size", "128", "--gemm-repeats", "1", "--warmup-steps", "0", "--mini-steps", "1"]
        + ["--pythia", tiny_pythia, "--pythia-steps", "1", "--pythia-batch", "2"]
        + ["--pythia-seq-len", "8"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    got = keys(out)
    assert got["matmul_peak_gflops"] > 0
    for name in ("cpu-mini", f"pythia-{tiny_pythia}"):
        assert got[f"tokens_per_s_{name}"] > 0 and got[f"mfu_{name}"] > 0
    assert "attention FLOPs excluded" in out


@pytest.mark.slow
def test_memorization_load(capsys):
    rc = load("memorization_load").main(
        ["--sizes", "40", "80", "--reproduced-every", "10", "--batch-size", "16"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    got = keys(out)
    for path in ("stream", "measure"):
        for n in (40, 80):
            assert got[f"peak_rss_mb_{path}_{n}"] > 0 and f"growth_mb_{path}_{n}" in got
    assert re.search(r"^stream\s+80\s+8\s", out, re.M)  # 8 planted rows found
    assert re.search(r"^measure\s+80\s+8\s", out, re.M)


def test_gpu_check_runs_on_cpu_at_tiny_shapes(tmp_path, capsys):
    """The one-command GPU check keeps working in CI: every step on tiny CPU shapes."""
    rows = load("gpu_check").main(["--out", str(tmp_path), "--tiny", "--device", "cpu"])
    steps = [r["step"] for r in rows]
    assert steps == ["memorization"] * 2 + ["mining"] + ["method"] * 4 + ["training"]
    for r in rows[:2]:  # the one-pass check agrees with generate on every row
        assert r["identical_verdicts"] and r["memorized"] > 0
    assert [r["method"] for r in rows if r["step"] == "method"] == [
        "balanced_subnet", "npo", "npo (LoRA r=8)", "durable",
    ]  # fmt: skip
    assert all(r["error"] is None and r["seconds"] > 0 for r in rows if r["step"] == "method")
    assert rows[-1]["tokens_per_s"] > 0 and 0 < rows[-1]["mfu"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 2  # header, rule, one line per row
    assert json.loads((tmp_path / "gpu_check.json").read_text())["tiny"] is True
    assert "gpu_check.md" in capsys.readouterr().out


def test_compile_switch_wraps_once_and_shares_parameters():
    """--compile's switch: the plain model outside ``compiling``, one compiled wrapper inside
    (lazy: nothing compiles until it is called; benchmarks/compile_speed.py times that)."""
    from unmemorize.runtime import compiled, compiling

    model = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), 20, 0, 0, 0)
    assert compiled(model) is model
    with compiling():
        wrapped = compiled(model)
        assert wrapped is not model and compiled(model) is wrapped
        assert all(a is b for a, b in zip(wrapped.parameters(), model.parameters(), strict=True))
    assert compiled(model) is model
