"""Hyperparameter sweeps of mitigation methods: search spaces, a results store, backends.

* :mod:`.spaces` -- the paper's and the cpu-mini search spaces, validation, grid points;
* :mod:`.store` -- one row per trial in SQLite or any SQLAlchemy database;
* :mod:`.backends` -- local worker processes or Ray tasks that run one trial each;
* :mod:`.run` -- the resumable coordinator (:func:`run_sweep`) and ``summary.json``.
"""

from .run import SweepSpec, load_spec, make_spec, run_sweep, write_summary
from .spaces import SEARCH_SPACES, resolve_space
from .store import ResultsStore, StorageError

__all__ = [
    "SEARCH_SPACES",
    "ResultsStore",
    "StorageError",
    "SweepSpec",
    "load_spec",
    "make_spec",
    "resolve_space",
    "run_sweep",
    "write_summary",
]
