"""Hyperparameter sweeps of mitigation methods: search spaces, a results store, backends.

* search spaces are data of the benchmarks (:mod:`unmemorize.benchmarks.spaces` holds the format,
  validation and grid points; ``--space NAME`` names one of the benchmark's spaces);
* :mod:`.store` -- one row per trial in SQLite or any SQLAlchemy database;
* :mod:`.backends` -- local worker processes or Ray tasks that run one trial each;
* :mod:`.run` -- the resumable coordinator (:func:`run_sweep`) and ``summary.json``.
"""

from ..benchmarks.spaces import resolve_space
from .run import SweepSpec, load_spec, make_spec, run_sweep, write_summary
from .store import ResultsStore, StorageError

__all__ = [
    "ResultsStore",
    "StorageError",
    "SweepSpec",
    "load_spec",
    "make_spec",
    "resolve_space",
    "run_sweep",
    "write_summary",
]
