"""Search spaces: which method options a sweep varies, and over which values.

A search space maps a method's config field to either a **list of values** (grid search takes
their Cartesian product; TPE treats them as categorical choices) or a **range**
``{"low": a, "high": b, "log": true}`` (add ``"int": true`` for integers; TPE only)::

    {"balanced_subnet": {"ratio": [0.01, 0.05], "retain_weight": [0.5, 0.7, 0.8]},
     "ga": {"lr": {"low": 1e-5, "high": 1e-3, "log": true}}}

Two spaces ship (:data:`SEARCH_SPACES`):

* ``paper`` -- the TinyMem paper's sweep (Sakarvadia et al. 2024, arXiv 2410.02159, launcher
  ``localize_hp_sweep.py`` and the result CSVs): neuron/weight ratios {1e-5, 1e-4, 1e-3, 1%, 5%}
  (plus 10% for Subnet/BalancedSubnet, as in the Pythia CSVs), epochs {1, 10, 30} for Slimming and
  HardConcrete ({1, 10, 20} for the subnet methods), IG steps {1, 10, 20}, BalancedSubnet loss
  weighting {0.05, 0.5, 0.7}. The fine-tuning recipes keep the paper's single setting. RESTOR's
  own grid was not published; its gradient methods get a SOUL-style learning-rate x epochs grid.
  The paper ran these hundreds of times on a cluster: use ``--backend ray`` or a subset.
* ``cpu-mini`` -- 2 to 6 points per method around the settings that work on the cpu-mini
  TinyMem model (the demo's grid, widened), each method well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

from ..config import format_overrides
from ..registry import suggest

Space = dict[str, dict[str, Any]]
"""method -> {config field -> list of values | range dict}."""

_PAPER_RATIOS = [1e-5, 1e-4, 1e-3, 0.01, 0.05]
_GRADIENT_LRS = [1e-5, 2e-5, 5e-5, 1e-4]

SEARCH_SPACES: dict[str, Space] = {
    "paper": {
        "zero_out": {"ratio": _PAPER_RATIOS},
        "activations": {"ratio": _PAPER_RATIOS},
        "slimming": {"ratio": _PAPER_RATIOS, "epochs": [1, 10, 30]},
        "hard_concrete": {"ratio": _PAPER_RATIOS, "epochs": [1, 10, 30]},
        "integrated_gradients": {"ratio": _PAPER_RATIOS, "ig_steps": [1, 10, 20]},
        "greedy": {"ratio": _PAPER_RATIOS},
        "durable": {"ratio": _PAPER_RATIOS},
        "durable_agg": {"ratio": _PAPER_RATIOS},
        "second_order": {"ratio": _PAPER_RATIOS},
        "subnet": {"ratio": [*_PAPER_RATIOS, 0.1], "epochs": [1, 10, 20]},
        "balanced_subnet": {
            "ratio": [*_PAPER_RATIOS, 0.1],
            "epochs": [1, 10, 20],
            "retain_weight": [0.05, 0.5, 0.7],
        },
        "finetune_clean": {"lr": [1e-3], "epochs": [5]},
        "finetune_extra": {"lr": [1e-3], "epochs": [5]},
        "finetune_both": {"lr": [1e-3], "epochs": [5]},
        "ssd": {"selection_weight": [1, 5, 10, 50], "dampening_constant": [1.0]},
        "ga": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
        "grad_diff": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
        "kl": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
        "npo": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
        "simnpo": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
        "task_vector": {"lr": _GRADIENT_LRS, "alpha": [1.0, 2.0]},
    },
    "cpu-mini": {
        "zero_out": {"ratio": [0.02, 0.05], "max_rows": [8]},
        "activations": {"ratio": [0.03, 0.05]},
        "slimming": {"ratio": [0.02, 0.05], "epochs": [3, 10], "lambda_l1": [10.0]},
        "hard_concrete": {"ratio": [0.05], "epochs": [10, 30], "lambda_l1": [10.0]},
        "integrated_gradients": {"ratio": [0.03, 0.05], "ig_steps": [4], "max_rows": [8]},
        "greedy": {"ratio": [0.005, 0.01], "weights_per_step": [40]},
        "durable": {"ratio": [0.01, 0.015, 0.02]},
        "durable_agg": {"ratio": [0.005, 0.0075, 0.01]},
        "second_order": {"ratio": [0.005, 0.0075, 0.01]},
        "subnet": {"ratio": [0.005, 0.01], "lr": [1.0, 10.0]},
        "balanced_subnet": {"ratio": [0.01, 0.05], "retain_weight": [0.7, 0.8]},
        "finetune_clean": {"lr": [1e-4, 1e-3]},
        "finetune_extra": {"lr": [1e-3]},
        "finetune_both": {"lr": [1e-3]},
        "ssd": {"selection_weight": [10.0, 15.0, 20.0]},
        "ga": {"lr": [3e-5, 5e-5]},
        "grad_diff": {"lr": [3e-5, 7e-5]},
        "kl": {"lr": [5e-5], "divergence": ["kl", "cross_entropy"]},
        "npo": {"lr": [3e-5, 5e-5]},
        "simnpo": {"lr": [3e-5, 5e-5]},
        "task_vector": {"lr": [1e-4, 2e-4], "alpha": [2.0]},
    },
}


def is_range(values: Any) -> bool:
    """True for a ``{"low", "high"[, "log", "int"]}`` range (as opposed to a list of values)."""
    return isinstance(values, dict)


def resolve_space(
    methods: list[str] | None, space: str | Space = "cpu-mini", search: str = "grid"
) -> Space:
    """The validated search space of ``methods`` (default: every method in the space).

    Args:
        methods: method names, or None for every method the space covers.
        space: a name in :data:`SEARCH_SPACES` or a space dict (e.g. read from ``--space FILE``).
            A method absent from a named space gets an empty space (its default config only).
        search: ``grid`` or ``tpe``; grid search needs every option to be a list of values.

    Raises:
        ValueError: unknown space, method or config field (with a suggestion), an empty list,
            a malformed range, a range under grid search, or a value the method's config rejects.
    """
    from ..methods import METHODS

    if isinstance(space, str):
        if space not in SEARCH_SPACES:
            raise suggest(space, SEARCH_SPACES, "search space")
        space = SEARCH_SPACES[space]
    if not isinstance(space, dict) or not all(isinstance(v, dict) for v in space.values()):
        raise ValueError(
            "a search space must map method names to {option: [values]}, e.g. "
            '{"ga": {"lr": [1e-5, 5e-5]}}'
        )
    if search not in ("grid", "tpe"):
        raise suggest(search, ("grid", "tpe"), "search")
    names = list(space) if methods is None else list(methods)
    if not names:
        raise ValueError(
            "no methods to sweep; pass --methods a,b,... (see `unmemorize ls methods`)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {', '.join(names)}")
    resolved: Space = {}
    for name in names:
        method_cls = METHODS.get(name)  # unknown names raise with a suggestion
        options = dict(space.get(name, {}))
        fields = {f.name for f in dataclasses.fields(method_cls.Config)}
        for key, values in options.items():
            if key not in fields:
                err = suggest(key, sorted(fields), f"option of {name}")
                raise ValueError(f"search space: {err}")
            _check_values(name, key, values, search)
        resolved[name] = options
        for point in grid_points(options) if search == "grid" else [_range_corners(options)]:
            _check_point(name, point)
    return resolved


def _check_values(method: str, key: str, values: Any, search: str) -> None:
    where = f"search space {method}.{key}"
    if is_range(values):
        if search == "grid":
            raise ValueError(
                f"{where}: grid search needs a list of values, not a range; "
                "list the values or use --search tpe"
            )
        if set(values) - {"low", "high", "log", "int"} or not {"low", "high"} <= set(values):
            raise ValueError(
                f'{where}: a range is {{"low": a, "high": b, "log": false, "int": false}}'
            )
        low, high = values["low"], values["high"]
        if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
            raise ValueError(f"{where}: the range needs numbers low < high, got {low!r}, {high!r}")
        if values.get("log") and low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {low!r}")
        return
    if not isinstance(values, list):
        raise ValueError(f"{where}: give a list of values (or a range for --search tpe)")
    if not values:
        raise ValueError(f"{where}: the list of values is empty; give at least one value")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ValueError(f"{where}: a value is listed twice: {values}")


def _range_corners(options: dict[str, Any]) -> dict[str, Any]:
    """One point with each range at its low end and each list at its first value (validation)."""
    return {
        k: (int(v["low"]) if v.get("int") else v["low"]) if is_range(v) else v[0]
        for k, v in options.items()
    }


def _check_point(method: str, params: dict[str, Any]) -> None:
    from ..methods import build_method

    try:
        build_method(method, dict(params))
    except ValueError as err:
        raise ValueError(f"search space {method} {params}: {err}") from None


def grid_points(options: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, in a stable order (keys sorted).

    A value that is not a list is a fixed value (one point along that option); a LIST of option
    dicts is the union of their grids, in order (hand-picked combinations, e.g.
    ``[{"lr": 3e-5}, {"divergence": "cross_entropy", "lr": 2e-5}]``).
    """
    if isinstance(options, list):
        return [point for part in options for point in grid_points(part)]
    keys = sorted(options)
    values = [options[k] if isinstance(options[k], list) else [options[k]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def params_to_overrides(params: dict[str, Any]) -> list[str]:
    """``{"lr": 1e-4, "divergence": "kl"}`` -> ``["divergence=kl", "lr=0.0001"]``."""
    return format_overrides(params)


def trial_key(method: str, params: dict[str, Any]) -> str:
    """A short stable id of one configuration: ``<method>-<12 hex digits of its hash>``."""
    blob = json.dumps([method, params], sort_keys=True).encode()
    return f"{method}-{hashlib.sha256(blob).hexdigest()[:12]}"


def space_size(options: dict[str, Any]) -> int | None:
    """Number of grid points, or None when a range makes the space continuous."""
    if any(is_range(v) for v in options.values()):
        return None
    n = 1
    for values in options.values():
        n *= len(values)
    return n


__all__ = [
    "SEARCH_SPACES",
    "Space",
    "grid_points",
    "is_range",
    "params_to_overrides",
    "resolve_space",
    "space_size",
    "trial_key",
]
