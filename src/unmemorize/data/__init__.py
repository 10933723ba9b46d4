"""Generic inputs: token-sequence files, corpora, tokenizers and memorization candidates.

Benchmark data (TinyMem's arithmetic and text generators, RESTOR's fact world) lives with its
benchmark under :mod:`unmemorize.benchmarks`.
"""

from .candidates import MemorizationSet

__all__ = ["MemorizationSet"]
