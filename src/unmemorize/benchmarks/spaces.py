"""Search spaces: which method options a grid or a sweep varies, and over which values.

One format, as data, owned by the benchmarks (:attr:`unmemorize.benchmarks.Benchmark.spaces`) and
read by the runner (the demo's and RESTOR's grids) and by sweeps. A space maps each method to a
*spec*::

    {"balanced_subnet": {"ratio": [0.01, 0.05], "retain_weight": [0.5, 0.7, 0.8]},
     "ga": {"lr": {"low": 1e-5, "high": 1e-3, "log": true}},
     "zero_out": [{"ratio": 0.05, "max_rows": 8}, {"ratio": 0.02, "max_rows": 16}]}

A spec is either

* a dict ``{option: values}``: the Cartesian product of its options. ``values`` is a **list**
  (grid search takes every value; TPE treats them as categorical choices), a **scalar** (a fixed
  value, the same as a one-element list) or a **range** ``{"low": a, "high": b, "log": true}``
  (add ``"int": true`` for integers; TPE only); or
* a **list of such dicts**: the union of their grids, in order (hand-picked combinations such as
  the TinyMem demo's grid; grid search only).

A method the space does not name runs once, with its defaults (the empty spec ``{}``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

from ..registry import suggest

Spec = dict[str, Any] | list[dict[str, Any]]
"""One method's options: ``{option: values | value | range}`` or a list of such dicts."""
Space = dict[str, Spec]
"""method -> spec."""

_FORMAT_HINT = (
    "a search space must map method names to {option: [values]} (or to a list of such dicts), "
    'e.g. {"ga": {"lr": [1e-5, 5e-5]}}'
)


def is_range(values: Any) -> bool:
    """True for a ``{"low", "high"[, "log", "int"]}`` range (as opposed to a list of values)."""
    return isinstance(values, dict)


def _parts(spec: Spec) -> list[dict[str, Any]]:
    """The dicts of a spec (one for a dict spec)."""
    return list(spec) if isinstance(spec, list) else [spec]


def option_values(values: Any) -> list[Any]:
    """The listed values of one option (a scalar is a one-value list; not for ranges)."""
    return values if isinstance(values, list) else [values]


def resolve_space(
    methods: list[str] | None,
    space: str | Space | None = None,
    search: str = "grid",
    *,
    benchmark: str = "tinymem",
) -> Space:
    """The validated search space of ``methods`` (default: every method in the space).

    Args:
        methods: method names, or None for every method the space covers.
        space: the name of one of ``benchmark``'s spaces (None: its default space) or a space
            dict (e.g. read from ``--space FILE``). A method absent from the space gets an empty
            spec (its default config only).
        search: ``grid`` or ``tpe``; grid search needs every option to be listed values, TPE
            one dict per method.
        benchmark: the benchmark whose named spaces ``space`` refers to.

    Raises:
        ValueError: unknown space, method or config field (with a suggestion), an empty list,
            a malformed range, a range under grid search, a list of dicts under TPE, or a value
            the method's config rejects.
    """
    from ..methods import METHODS

    if space is None or isinstance(space, str):
        from . import get_benchmark

        space = dict(get_benchmark(benchmark).space(space))
    if not isinstance(space, Mapping) or not all(_is_spec(v) for v in space.values()):
        raise ValueError(_FORMAT_HINT)
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
        spec = space.get(name, {})
        if isinstance(spec, list) and search == "tpe":
            raise ValueError(
                f"search space {name}: TPE needs one {{option: values}} dict per method, not a "
                "list of hand-picked points; use --search grid"
            )
        fields = {f.name for f in dataclasses.fields(method_cls.Config)}
        seen: set[str] = set()
        for options in _parts(spec):
            for key, values in options.items():
                if key not in fields:
                    err = suggest(key, sorted(fields), f"option of {name}")
                    raise ValueError(f"search space: {err}")
                _check_values(name, key, values, search)
            points = grid_points(options) if search == "grid" else [_range_corners(options)]
            for point in points:
                blob = json.dumps(point, sort_keys=True)
                if isinstance(spec, list) and blob in seen:
                    raise ValueError(f"search space {name}: the point {point} is listed twice")
                seen.add(blob)
                _check_point(name, point)
        resolved[name] = [dict(p) for p in spec] if isinstance(spec, list) else dict(spec)
    return resolved


def _is_spec(spec: Any) -> bool:
    if isinstance(spec, list):
        return bool(spec) and all(isinstance(p, dict) for p in spec)
    return isinstance(spec, dict)


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
        return  # a scalar: one fixed value, checked with the method's config below
    if not values:
        raise ValueError(f"{where}: the list of values is empty; give at least one value")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ValueError(f"{where}: a value is listed twice: {values}")


def _range_corners(options: dict[str, Any]) -> dict[str, Any]:
    """One point with each range at its low end and each list at its first value (validation)."""
    return {
        k: (int(v["low"]) if v.get("int") else v["low"]) if is_range(v) else option_values(v)[0]
        for k, v in options.items()
    }


def _check_point(method: str, params: dict[str, Any]) -> None:
    from ..methods import build_method

    try:
        build_method(method, dict(params))
    except ValueError as err:
        raise ValueError(f"search space {method} {params}: {err}") from None


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """Every point of a spec: the combinations of each dict's values (keys sorted), dicts in order."""
    points = []
    for options in _parts(spec):
        keys = sorted(options)
        points += [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(option_values(options[k]) for k in keys))
        ]
    return points


def params_to_overrides(params: dict[str, Any]) -> list[str]:
    """``{"lr": 1e-4, "divergence": "kl"}`` -> ``["divergence=kl", "lr=0.0001"]``."""
    from ..config import format_overrides

    return format_overrides(params)


def trial_key(method: str, params: dict[str, Any]) -> str:
    """A short stable id of one configuration: ``<method>-<12 hex digits of its hash>``."""
    blob = json.dumps([method, params], sort_keys=True).encode()
    return f"{method}-{hashlib.sha256(blob).hexdigest()[:12]}"


def space_size(spec: Spec) -> int | None:
    """Number of grid points, or None when a range makes the space continuous."""
    total = 0
    for options in _parts(spec):
        if any(is_range(v) for v in options.values()):
            return None
        n = 1
        for values in options.values():
            n *= len(option_values(values))
        total += n
    return total


__all__ = [
    "Space",
    "Spec",
    "grid_points",
    "is_range",
    "option_values",
    "params_to_overrides",
    "resolve_space",
    "space_size",
    "trial_key",
]
