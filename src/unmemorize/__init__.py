"""unmemorize: find what a language model memorized, remove it, and prove the removal worked.

The public API, re-exported lazily from the modules that define it (so ``unmemorize --help``
does not pay for importing torch and transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "benchmarks.tinymem",
    "ExperimentConfig": "benchmarks.tinymem",
    "load_run": "benchmarks.tinymem",
    "make_experiment": "benchmarks.tinymem",
    "run_demo": "benchmarks.tinymem",
    "train_experiment": "benchmarks.tinymem",
    "MathDataConfig": "data.math",
    "make_math_data": "data.math",
    "MemorizationSet": "data.base",
    "TinyMemData": "data.base",
    "TextDataConfig": "data.text",
    "make_text_data": "data.text",
    "MemorizationReport": "metrics.memorization",
    "generate_memorized": "metrics.memorization",
    "measure_memorization": "metrics.memorization",
    "memorized": "metrics.memorization",
    "accuracy_and_perplexity": "metrics.utility",
    "evaluate_utility": "metrics.utility",
    "MLPAdapter": "mlp",
    "ModelConfig": "models",
    "build_model": "models",
    "load_model": "models",
    "save_model": "models",
    "build_regularizer": "regularizers",
    "TrainConfig": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unmemorize' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
