"""Experiment tracking: loss curves and metrics to TensorBoard, MLflow or Weights & Biases.

The glue between the training loops and accelerate's trackers (``accelerate.tracking``:
``TensorBoardTracker``, ``MLflowTracker``, ``WandBTracker``), so that the project writes no
tracker code of its own. The command line opens one run per command (``--track KIND``)::

    with tracking.track("tensorboard", "runs/tb", run_name="unlearn-bs", config={...}):
        ...                                   # any loop below may call:
        tracking.log_scalars({"loss": 0.7, "lr": 1e-3}, step=12, prefix="clean")
        tracking.log_curve("unlearn/ga/loss", result.losses)

and every loop logs to the *active* run, or does nothing when there is none (the default: no
cost, no import). The active run lives in a context variable rather than being passed down: the
loops that log (TinyMem's epoch trainer, :func:`unmemorize.training.train_on_batches`, the
benchmark runner after each method, the sweep coordinator after each trial) sit several calls
below the command, and methods never log themselves (their per-step losses come back in
``UnlearnResult.losses`` and the runner logs them after ``apply``).

The trackers are optional extras: ``pip install "unmemorize[tensorboard]"`` /
``"unmemorize[mlflow]"`` / ``wandb``; a missing one is a one-line :class:`UserError` naming the
pip command, raised before any work.

Where runs go:

* ``tensorboard``: event files under ``DIR/<run name>/`` (``DIR`` = ``--track-dir``, default
  ``unmemorize-tracking``), readable by ``tensorboard --logdir DIR``.
* ``mlflow``: with ``--track-dir DIR``, a local store ``file:DIR/mlruns``; otherwise
  ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///...``), else
  ``file:unmemorize-tracking/mlruns``. Experiment ``unmemorize`` (or ``MLFLOW_EXPERIMENT_NAME``).
  Metric names keep their first ``/`` only (``before/accuracy.increment``;
  :func:`mlflow_metric_name`).
* ``wandb``: project ``unmemorize``, run name as above; ``--track-dir`` is wandb's ``dir``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .errors import UserError

#: The trackers ``--track`` accepts, and the package each needs with the pip command naming it.
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", 'pip install "unmemorize[tensorboard]"'),
    "mlflow": ("mlflow", 'pip install "unmemorize[mlflow]"'),
    "wandb": ("wandb", "pip install wandb"),
}

DEFAULT_DIR = "unmemorize-tracking"
EXPERIMENT = "unmemorize"

_ACTIVE: ContextVar[Any | None] = ContextVar("unmemorize_tracker", default=None)

# Metric names every tracker accepts (MLflow's rule is the strictest: letters, digits, "_-. /:").
_UNSAFE = re.compile(r"[^\w\-./: ]")


def check_tracker(kind: str) -> None:
    """Fail fast (before any work) on an unknown tracker or one whose package is missing.

    Raises:
        UserError: unknown ``kind`` (with the choices) or its extra is not installed (with the
            pip command).
    """
    if kind not in TRACKERS:
        from .registry import suggest

        raise suggest(kind, list(TRACKERS), "tracker")
    module, command = TRACKERS[kind]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--track {kind} needs the {module} package: {command}")


def _tracker(kind: str, directory: str | Path | None, run_name: str):
    """An accelerate tracker of ``kind`` (not started)."""
    from accelerate import tracking as acc

    if kind == "tensorboard":
        return acc.TensorBoardTracker(run_name, str(directory or DEFAULT_DIR))
    if kind == "mlflow":
        import mlflow

        if directory is not None or not os.environ.get("MLFLOW_TRACKING_URI"):
            store = Path(directory or DEFAULT_DIR).resolve() / "mlruns"
            # MLflow 3 keeps the file store in "maintenance mode" and refuses it unless opted in;
            # it is the one local store that needs no database server or migration step, which is
            # what a directory given on the command line asks for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(store.as_uri())

        class MLflowTracker(acc.MLflowTracker):
            """Accelerate's MLflow tracker with metric names a file store can hold
            (:func:`mlflow_metric_name`)."""

            def log(self, values: dict, step: int | None = None, **kwargs) -> None:
                named = {mlflow_metric_name(k): v for k, v in values.items()}
                super().log(named, step=step, **kwargs)

        return MLflowTracker(experiment_name=EXPERIMENT, run_name=run_name)
    kwargs = {"name": run_name}
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(directory)
    return acc.WandBTracker(EXPERIMENT, **kwargs)


def mlflow_metric_name(name: str) -> str:
    """``name`` as logged to MLflow: the first ``/`` kept (the group: ``before``, ``train``, a
    method), later ones written as ``.``.

    MLflow's local file store keeps a metric as a file at its name's path, so one name cannot be
    both a metric and a folder: ``before/accuracy`` (the mean over test sets) beside
    ``before/accuracy/increment`` (one set) fails with "Is a directory". With one ``/`` at most,
    no name is a folder of another (``before/accuracy.increment``). TensorBoard keeps the names.
    """
    group, sep, rest = name.partition("/")
    return group + sep + rest.replace("/", ".")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of ``values`` as ``{"a/b": float}``; strings, bools and None are skipped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[_UNSAFE.sub("_", name)] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-d tensor/array
            out[_UNSAFE.sub("_", name)] = float(value.item())
    return out


def _params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config as flat hyperparameters (the types every tracker stores)."""
    out: dict[str, Any] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(sub, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:  # None, lists, paths: as text
            out[name] = str(value)

    walk(config, "")
    return out


@contextlib.contextmanager
def track(
    kind: str | None,
    directory: str | Path | None = None,
    *,
    run_name: str,
    config: Mapping[str, Any] | None = None,
) -> Iterator[Any | None]:
    """Open a run of tracker ``kind`` and make it the active one for the ``with`` block.

    ``kind=None`` does nothing (no tracking). The run is finished when the block ends, also on
    an error, so the curves logged so far are kept.

    Args:
        kind: ``tensorboard``, ``mlflow``, ``wandb`` or None.
        directory: where the run is written (see the module docstring), or None for the default.
        run_name: the run's name (a TensorBoard sub-directory, MLflow's run name).
        config: the run's resolved config, stored as hyperparameters (flattened ``a.b`` keys).

    Raises:
        UserError: unknown tracker or its package missing (:func:`check_tracker`).
    """
    if kind is None:
        yield None
        return
    check_tracker(kind)
    tracker = _tracker(kind, directory, run_name)
    tracker.start()
    token = _ACTIVE.set(tracker)
    try:
        if config:
            tracker.store_init_configuration(_params(config))
        yield tracker
    finally:
        _ACTIVE.reset(token)
        tracker.finish()


def active() -> bool:
    """Whether a run is being tracked (loops skip building what they would log when not)."""
    return _ACTIVE.get() is not None


def log_scalars(values: Mapping[str, Any], step: int, *, prefix: str = "") -> None:
    """Log the numeric entries of ``values`` (nested dicts as ``a/b``) at ``step``, under ``prefix``.

    Non-numeric entries (names, lists, None) are skipped; NaN and infinities are logged as they
    are (a diverged loss is worth seeing). No active run: nothing happens.
    """
    tracker = _ACTIVE.get()
    if tracker is None:
        return
    scalars = _flatten(values, prefix)
    if scalars:
        tracker.log(scalars, step=int(step))


def log_curve(name: str, values: Sequence[float], *, start: int = 0) -> None:
    """Log one value per step (``start``, ``start + 1``, ...) under ``name``: a loss curve.

    For curves that are known only as a whole, e.g. a method's ``UnlearnResult.losses``.
    """
    tracker = _ACTIVE.get()
    if tracker is None:
        return
    key = _UNSAFE.sub("_", name)
    for i, value in enumerate(values):
        if value is None or not isinstance(value, (int, float)):
            continue
        tracker.log({key: float(value)}, step=start + i)


def run_label(method: str, overrides: Sequence[str]) -> str:
    """``method`` or ``method[k=v,...]`` as a metric-name-safe label of one method run."""
    label = method if not overrides else f"{method}[{','.join(overrides)}]"
    return _UNSAFE.sub("_", label)


__all__ = [
    "DEFAULT_DIR",
    "TRACKERS",
    "active",
    "check_tracker",
    "log_curve",
    "log_scalars",
    "mlflow_metric_name",
    "run_label",
    "track",
]
