"""Generic metrics: token losses, memorization (exact-match extraction), utility, ranking.

Benchmark-specific scoring (RESTOR's QA accuracy) lives with its benchmark.
"""

from .memorization import (
    MemorizationReport,
    generate_memorized,
    measure_memorization,
    memorized,
    memorized_sharded,
)
from .utility import accuracy_and_perplexity, evaluate_utility

__all__ = [
    "MemorizationReport",
    "accuracy_and_perplexity",
    "evaluate_utility",
    "generate_memorized",
    "measure_memorization",
    "memorized",
    "memorized_sharded",
]
