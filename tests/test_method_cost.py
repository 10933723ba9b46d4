"""Smoke test of benchmarks/method_cost.py: main() runs end to end with the smallest arguments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import TINY_OVERRIDES

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_method_cost_main_prints_one_row_per_method(capsys) -> None:
    # The child processes import the script by module name, so its folder must be on sys.path.
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("method_cost", BENCH / "method_cost.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["method_cost"] = module
        spec.loader.exec_module(module)
        overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")]
        argv = ["--models", "cpu-mini", "--methods", "activations,durable", "--mini-epochs", "1"]
        argv += ["--retain-rows", "8", "--threads", "1"]
        for item in overrides:
            argv += ["--mini-override", item]
        rows = module.main(argv)
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("method_cost", None)
    assert [r["method"] for r in rows] == ["activations", "durable"]
    for row in rows:
        assert row["error"] is None
        assert row["seconds"] > 0 and row["peak_mib"] > row["model_mib"] > 0
        assert row["extra_mib"] >= 0
    out = capsys.readouterr().out
    assert "cpu-mini TinyMem model" in out and "extra/model" in out
    assert "activations" in out and "durable" in out
