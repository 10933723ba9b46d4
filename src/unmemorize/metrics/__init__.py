"""Metrics: memorization (exact-match extraction) and utility (accuracy, perplexity)."""

from .memorization import (
    MemorizationReport,
    generate_memorized,
    measure_memorization,
    memorized,
)
from .utility import accuracy_and_perplexity, evaluate_utility

__all__ = [
    "MemorizationReport",
    "accuracy_and_perplexity",
    "evaluate_utility",
    "generate_memorized",
    "measure_memorization",
    "memorized",
]
