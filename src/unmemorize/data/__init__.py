"""TinyMem datasets: arithmetic sequences and text chunks with noise, duplication and backdoors."""

from .base import MemorizationSet, TinyMemData, duplication_groups
from .math import MathDataConfig, make_math_data

__all__ = [
    "MathDataConfig",
    "MemorizationSet",
    "TinyMemData",
    "duplication_groups",
    "make_math_data",
]
