"""Determinism on CPU: the same seed and config give bit-identical data, checkpoints, weights and
metrics, whatever the global RNG state was before the run (both runs share one process).

GPU runs are not covered: cuBLAS split-K reductions and atomics in some kernels make them differ
in the last bits unless ``torch.use_deterministic_algorithms(True)`` and
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` are set (see the README's "Determinism" paragraph).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unmemorize.cli.main import main

from .conftest import TINY_OVERRIDES

#: Smaller than the shared tiny run: determinism needs a few steps, not a memorizing model.
QUICK = [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.checkpoint"))] + [
    "data.num_main=120",
    "data.num_noise=12",
    "train.epochs=4",
    "train.checkpoint_every=2",
]

#: Fields that measure the machine, not the result.
TIMING = {"seconds", "environment", "wall_seconds", "steps_per_second", "elapsed"}


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _files(root: Path) -> dict[str, object]:
    """Every file under ``root``: JSON files parsed, without timing fields; others as bytes."""
    out: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if path.suffix == ".json":
            out[name] = _strip_timing(json.loads(path.read_text()))
        else:
            out[name] = path.read_bytes()
    return out


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert a.read_bytes() == b.read_bytes()


def _cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    for name in ("a", "b"):
        torch.manual_seed(1234 if name == "a" else 99)  # a different global RNG state each time
        _cli("train", "--task", "increment", "--out", root / name, *QUICK)
    return root / "a", root / "b"


def test_training_twice_is_bit_identical(two_runs):
    a, b = two_runs
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    assert "data/data.safetensors" in files_a and "model.safetensors" in files_a
    checkpoints = [k for k in files_a if k.startswith("checkpoints/") and "model" in k]
    assert len(checkpoints) == 2  # epochs 2 and 4
    for name in files_a:
        if name.endswith(".safetensors"):
            _same_weights(a / name, b / name)
        # data, tokenizer, optimizer state, trainer state, run.json and history.json metrics
        assert files_a[name] == files_b[name], name

    assert files_a["run.json"]["metrics"] and files_a["history.json"]  # something to compare


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("balanced_subnet", ["epochs=3"]), ("npo", ["epochs=2"])],
)
def test_unlearning_twice_is_bit_identical(tiny_run, tmp_path, method, overrides):
    outs = []
    for name in ("x", "y"):
        torch.manual_seed(7 if name == "x" else 8)
        out = tmp_path / name
        _cli("unlearn", "--model", tiny_run.out, "--method", method, "--out", out, *overrides)
        outs.append(out)
    x, y = outs
    _same_weights(x / "model.safetensors", y / "model.safetensors")
    run_x, run_y = (json.loads((d / "run.json").read_text()) for d in (x, y))
    assert _strip_timing(run_x) == _strip_timing(run_y)
    assert run_x["after"] and run_x["result"]
    before = load_file(str(tiny_run.out / "model.safetensors"))
    after = load_file(str(x / "model.safetensors"))
    assert any(not torch.equal(before[n], after[n]) for n in before if n in after)  # it did edit
