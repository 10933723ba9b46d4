"""RESTOR's search spaces, as data (the one format of :mod:`unmemorize.benchmarks.spaces`).

RESTOR (Rezaei et al., arXiv 2411.00204) picks each method's hyperparameters on 10% of the facts
but did not publish its grid. ``default`` gives every method that takes a forget/retain pair two
points around the settings that work on the ``cpu-mini`` world; each method's best point is
chosen on the validation facts (:attr:`RestorBenchmark.selection`).

Floats are written as floats (``alpha=1.0``), so the resolved method configs are those of the
former ``RESTOR_GRID`` override strings, point for point and in the same order.
"""

from __future__ import annotations

from typing import Any

#: space name -> {method: options}; a list of option dicts is the union of their grids, in order.
SPACES: dict[str, dict[str, Any]] = {
    "default": {
        "ga": {"lr": [1e-4, 5e-5], "epochs": 1, "batch_size": 32},
        "grad_diff": {"lr": [1e-4, 5e-5], "epochs": 2, "batch_size": 32},
        "kl": [
            {"lr": 3e-5, "epochs": 2, "batch_size": 32},
            {"divergence": "cross_entropy", "lr": 2e-5, "epochs": 2, "batch_size": 32},
        ],
        "npo": {"lr": [5e-5, 1e-4], "epochs": 2, "batch_size": 32},
        "simnpo": {"lr": [1e-4, 2e-4], "epochs": 2, "batch_size": 32},
        "task_vector": {"lr": 3e-4, "epochs": 1, "alpha": [1.0, 2.0], "batch_size": 32},
        "ssd": [
            {"selection_weight": 1.8, "mlp_only": True, "batch_size": 32},
            {"selection_weight": 5.0, "batch_size": 32},
        ],
    },
}

DEFAULT_SPACE = "default"

__all__ = ["DEFAULT_SPACE", "SPACES"]
