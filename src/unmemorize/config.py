"""Typed experiment configs: preset defaults <- JSON file <- ``key=value`` overrides.

Every field of every config dataclass can be overridden from the command line with a dotted key,
e.g. ``train.epochs=120 model.n_layers=2 data.num_noise=200``. Unknown keys are errors that name
the nearest valid key; values are parsed by the field's type.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .registry import suggest


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def parse_value(text: str, annotation: Any) -> Any:
    """Parse ``text`` into a value of ``annotation`` (int, float, bool, str, tuple, Optional, dict)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if annotation is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if annotation is str or annotation is Any:
        return text
    if origin is tuple:
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        fixed = len(args) > 1 and args[-1] is not Ellipsis
        if fixed and len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, args[i] if fixed else args[0]) for i, p in enumerate(parts))
    if origin is dict or annotation is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"expected a JSON object, got {text!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    raise ValueError(f"cannot parse a value of type {annotation}")


def parse_overrides(
    items: Iterable[str], *, what: str = "override", example: str
) -> Iterator[tuple[str, str]]:
    """Split ``key=value`` strings into stripped ``(key, value)`` pairs, one at a time.

    The one parser of every ``key=value`` list (config overrides, method options). Lazy, so a
    caller that checks each key reports the first bad item in the order given.

    Raises:
        ValueError: for an item without ``=``; the message names ``what`` and shows ``example``.
    """
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what} {item!r} is not of the form key=value (e.g. {example})")
        key, value = item.split("=", 1)
        yield key.strip(), value.strip()


def format_overrides(params: Mapping[str, Any]) -> list[str]:
    """``{"lr": 1e-4, "divergence": "kl"}`` -> ``["divergence=kl", "lr=0.0001"]``.

    The inverse of :func:`parse_overrides` for a dict of values: keys sorted, strings as they
    are, every other value as JSON (so ``parse_value`` reads it back).
    """
    out = []
    for key in sorted(params):
        value = params[key]
        text = value if isinstance(value, str) else json.dumps(value)
        out.append(f"{key}={text}")
    return out


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return a copy of dataclass ``config`` with ``key=value`` overrides applied (dotted keys).

    The copy is deep: a nested section (``world``, ``train``, ...) of the input is never changed.
    """
    config = copy.deepcopy(config)
    for key, text in parse_overrides(overrides, example="train.epochs=50"):
        set_path(config, key, text)
    return config


LIST_KEYS = "(`unmemorize ls keys` lists them all)"


def set_path(config: Any, key: str, text: str) -> None:
    """Set dotted ``key`` of nested dataclass ``config`` from the string ``text``, in place."""
    *parents, leaf = key.split(".")
    if not parents:
        raise suggest(key, all_keys(config), "config key", LIST_KEYS)
    target = config
    for name in parents:
        names = [f.name for f in dataclasses.fields(target)]
        if name not in names:
            raise suggest(key, all_keys(config), "config key", LIST_KEYS)
        child = getattr(target, name)
        if not dataclasses.is_dataclass(child):
            raise ValueError(f"config key {name!r} has no sub-keys")
        child = dataclasses.replace(child)
        setattr(target, name, child)
        target = child
    names = [f.name for f in dataclasses.fields(target)]
    if leaf not in names or dataclasses.is_dataclass(getattr(target, leaf)):
        raise suggest(key, all_keys(config), "config key", LIST_KEYS)
    try:
        value = parse_value(text, _field_types(target)[leaf])
    except ValueError as err:
        raise ValueError(f"bad value for {key}: {err}") from None
    setattr(target, leaf, value)


def all_keys(config: Any, prefix: str = "") -> list[str]:
    """Every overridable dotted key of a nested config (fields of its sub-configs)."""
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
    return keys


def _leaf_keys(config: Any, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def to_dict(config: Any) -> dict:
    """A JSON-able dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild config dataclass ``cls`` from :func:`to_dict` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise suggest(key, sorted(names), f"{cls.__name__} key")
        ann = hints[key]
        if dataclasses.is_dataclass(ann):
            value = from_dict(ann, value)
        elif typing.get_origin(ann) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


__all__ = [
    "all_keys",
    "apply_overrides",
    "format_overrides",
    "from_dict",
    "parse_overrides",
    "parse_value",
    "set_path",
    "to_dict",
]
