"""Mitigation methods: one interface (:mod:`.base`), one module per family.

Importing this package registers every method in :data:`METHODS`::

    from . import METHODS, UnlearnData, build_method
    method = build_method("balanced_subnet", ["ratio=0.1", "epochs=30"])
    result = method.apply(model, UnlearnData(forget_ids, retain_ids, pad_id=...))
"""

from __future__ import annotations

from . import finetune, gradient, neuron, ssd, subnet, weight  # noqa: F401  (registration)
from .base import (
    METHODS,
    Method,
    MethodDivergedError,
    UnlearnResult,
    build_method,
)
from .data import NothingToUnlearnError, UnlearnData

__all__ = [
    "METHODS",
    "Method",
    "MethodDivergedError",
    "NothingToUnlearnError",
    "UnlearnData",
    "UnlearnResult",
    "build_method",
]
