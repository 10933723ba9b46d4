"""Where sweep trials run: local worker processes, or a Ray cluster.

A trial is a :class:`TrialTask` (picklable: paths, names and numbers only). :func:`run_trial`
executes it in a worker: the sweep's benchmark loads the base model and its data (cached per
worker process), the one runner (:func:`unmemorize.benchmarks.runner.run_method`) applies the
method and evaluates the edit, and the worker writes ``<sweep>/trials/<key>/run.json`` atomically
and returns the result row. Workers never touch the results store; the coordinator records what
they return. A method or benchmark class defined outside unmemorize (a plugin, a test) travels
as ``module:qualname`` and is registered again in each worker.

Backends share one small interface (``submit``, ``wait``, ``shutdown``, ``slots``):

* :class:`LocalBackend` -- N spawned worker processes (``concurrent.futures``), each limited to
  ``cores // N`` torch threads so N trials do not fight over the cores. On Linux a worker dies
  with its coordinator, so a ``kill -9`` of the sweep leaves no orphan burning CPU.
* :class:`RayBackend` -- one Ray task per trial with a CPU/GPU resource request, on a cluster at
  ``address`` (``auto``, ``host:port`` or ``ray://host:port``) or on a local Ray instance started
  for the sweep. Every node needs unmemorize installed and the sweep and model directories
  readable and writable at the same paths (a shared file system).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import multiprocessing as mp
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial."""

    sweep_dir: str
    """The sweep directory (trial outputs go to ``trials/<key>/``)."""
    key: str
    """The trial's id (:func:`~unmemorize.benchmarks.spaces.trial_key`)."""
    method: str
    params: dict
    """Config values of the method that differ from its defaults."""
    model_dir: str
    """The base model: a directory the benchmark loads (TinyMem: a run with its ``data/``)."""
    baseline: dict
    """Metrics of the unedited base model (for the selection score)."""
    threads: int = 0
    """torch threads in the worker (0: leave torch's default)."""
    device: str = "cpu"
    benchmark: str = "tinymem"
    """The registered benchmark that loads, evaluates and scores."""
    plugins: tuple[str, ...] = ()
    """``module:qualname`` of the method and benchmark classes registered outside unmemorize."""
    settings: str = "default"
    """The benchmark's settings (``default`` / ``paper``): how the base model is prepared."""
    audit: dict | None = None
    """Audit the edited model with this AuditConfig dict (None: no audit)."""
    auditor: str = ""
    """``module:function`` of the audit hook, ``(benchmark, prepared, model, row, config, out) ->
    summary`` (named by the caller of the sweep: the sweep layer does not import the audit)."""
    rank_by: str = "score"
    """``audited``: the row's score becomes score + its "returns after relearning" fraction."""


def trial_output(sweep_dir: str | Path, key: str) -> Path:
    return Path(sweep_dir) / "trials" / key


def plugin_refs(classes: list[type]) -> tuple[str, ...]:
    """``module:qualname`` of each class defined outside unmemorize (for :attr:`TrialTask.plugins`)."""
    return tuple(
        f"{c.__module__}:{c.__qualname__}"
        for c in classes
        if c.__module__.split(".")[0] != "unmemorize"
    )


def _resolve(ref: str):
    """The object ``module:qualname`` names."""
    import importlib

    module, _, qualname = ref.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _register_plugins(refs: tuple[str, ...]) -> None:
    """Import and register the plugin classes a spawned worker does not know yet."""
    from ..benchmarks import BENCHMARKS, Benchmark
    from ..methods import METHODS

    for ref in refs:
        obj = _resolve(ref)
        registry = BENCHMARKS if issubclass(obj, Benchmark) else METHODS
        if obj.name not in registry:
            registry.register(obj)


@functools.lru_cache(maxsize=2)
def _prepared(benchmark: str, model_dir: str, device: str, settings: str = "default"):
    """The benchmark and its prepared base model: model, unlearning data, state (once per process)."""
    from ..benchmarks import get_benchmark

    bench = get_benchmark(benchmark)
    return bench, bench.load(model_dir, device=device, settings=settings)


def run_trial(task: TrialTask) -> dict[str, Any]:
    """Run one trial in this process and return its result row (also written to run.json).

    Returns:
        ``{"trial", "params", "output", "method", "family", "overrides", "config", "status",
        <metrics of the benchmark's evaluate>, "seconds", "changed_fraction", "changed_unit",
        "score"}``; ``status`` is ``"failed"`` with an ``"error"`` when the method diverged.
    """
    import torch

    from ..benchmarks.runner import run_method
    from ..io import atomic_write_json
    from ..methods import build_method

    if task.threads:
        torch.set_num_threads(task.threads)
    _quiet()
    _register_plugins(task.plugins)
    bench, prepared = _prepared(task.benchmark, task.model_dir, task.device, task.settings)
    method = build_method(task.method, dict(task.params))
    out = trial_output(task.sweep_dir, task.key)
    row, result = run_method(
        method,
        prepared.model,
        prepared.data,
        lambda model: bench.evaluate(model, prepared),
        score=lambda metrics: bench.score(task.baseline, metrics),
        options=dict(task.params),
    )
    row = {"trial": task.key, "params": dict(task.params), "output": str(out), **row}
    if result is None:
        return {**row, "status": "failed"}
    row["status"] = "complete"
    out.mkdir(parents=True, exist_ok=True)
    if task.audit is not None:
        hook = _resolve(task.auditor)
        row["audit"] = hook(bench, prepared, result.model, row, dict(task.audit), out)
        back = row["audit"].get("returned_fraction")
        if task.rank_by == "audited" and back is not None:
            row["unaudited_score"] = row["score"]
            row["score"] = row["score"] + back
    atomic_write_json(out / "run.json", {"kind": "sweep-trial", **row})
    return row


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _init_local_worker(threads: int) -> None:
    """Worker start-up: die with the coordinator (Linux), quiet logs, fixed thread count."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
            if os.getppid() == 1:  # the coordinator died before prctl took effect
                os._exit(1)
        except OSError:
            pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    _quiet()
    if threads:
        torch.set_num_threads(threads)


class LocalBackend:
    """Trials in ``workers`` spawned processes on this machine."""

    def __init__(self, workers: int, threads_per_worker: int = 0):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.slots = workers
        self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self.slots,
            mp_context=mp.get_context("spawn"),
            initializer=_init_local_worker,
            initargs=(self.threads,),
        )

    def submit(self, task: TrialTask) -> cf.Future:
        task = TrialTask(**{**task.__dict__, "threads": task.threads or self.threads})
        return self._pool.submit(run_trial, task)

    def wait(self, handles: list, timeout: float = 1.0) -> list:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: cf.Future) -> dict:
        try:
            return handle.result()
        except cf.process.BrokenProcessPool:
            # A worker died (killed, out of memory): every trial in flight is lost. Start a new
            # pool so the rest of the sweep goes on; the lost trials are recorded as failed.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise RuntimeError("the worker process running this trial died") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:port`` or ``host:port``); None for ``auto``."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not host:port, ray://host:port or 'auto'")
    return host or "127.0.0.1", int(port)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, with a clear message, when no Ray cluster answers.

    ``ray.init`` can wait a long time for an address that does not answer; a plain TCP connect
    tells first whether anything listens there.
    """
    target = _split_address(address)
    if target is None:
        if os.environ.get("RAY_ADDRESS"):
            target = _split_address(os.environ["RAY_ADDRESS"])
        elif not Path("/tmp/ray/ray_current_cluster").is_file():
            raise ValueError(
                "--ray-address auto: no running Ray cluster found on this machine; start one "
                "with `ray start --head`, pass its address, or leave --ray-address out to start "
                "a local Ray instance for this sweep"
            )
        else:
            return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({err.strerror or err}); check the "
            "address (`ray status` on the head node prints it) and that the port is open"
        ) from None


def _ray_connect_hint(address: str | None, err: BaseException) -> str:
    """One line that says why ``ray.init`` failed and what to do about it."""
    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(f"{type(c).__name__}: {c}" for c in chain)
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    if "AuthenticationError" in text or "auth token" in text.lower():
        return (
            f"{where} uses token authentication and this process has no matching token: "
            "set RAY_AUTH_MODE=token and give it the cluster's token (RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot start or join {where}: {first}; check `ray status` on the head node"


class RayBackend:
    """One Ray task per trial, with a per-trial CPU/GPU request.

    Args:
        address: a running cluster (``auto``, ``host:port``, ``ray://host:port``), or None to
            start a local Ray instance with ``workers`` CPUs for this sweep (stopped after).
        workers: trials in flight at once (default: the cluster's CPUs / ``cpus_per_trial``).
        cpus_per_trial: CPUs each trial requests (also its torch thread count).
        gpus_per_trial: GPUs each trial requests (fractions share a GPU); > 0 runs on CUDA.
    """

    def __init__(
        self,
        address: str | None,
        workers: int | None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
    ):
        try:
            import ray
        except ImportError:
            raise ValueError(
                "the ray backend needs Ray: pip install 'unmemorize[ray]' (or --backend local)"
            ) from None
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise ValueError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if address is not None:
            check_ray_address(address)
        self._ray = ray
        self._started = not ray.is_initialized()
        t0 = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        init_kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address is None:
            init_kwargs["num_cpus"] = workers or os.cpu_count() or 1
        else:
            init_kwargs["address"] = address
        if self._started:
            try:
                ray.init(**init_kwargs)
            except (ConnectionError, RuntimeError) as err:
                raise ValueError(_ray_connect_hint(address, err)) from None
        log.info("ray ready in %.1fs: %s", time.perf_counter() - t0, ray.cluster_resources())
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
        self.slots = workers or max(1, int(cluster_cpus // cpus_per_trial))
        self.threads = max(1, int(cpus_per_trial))
        self.device = "cuda" if gpus_per_trial > 0 else "cpu"
        self._remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0)(
            run_trial
        )

    def submit(self, task: TrialTask):
        task = TrialTask(**{**task.__dict__, "threads": self.threads, "device": self.device})
        return self._remote.remote(task)

    def wait(self, handles: list, timeout: float = 1.0) -> list:
        done, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        return list(done)

    def result(self, handle) -> dict:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            raise RuntimeError(f"{type(cause).__name__}: {cause}") from None
        except self._ray.exceptions.RayError as err:
            raise RuntimeError(f"ray lost the trial: {str(err).splitlines()[0]}") from None

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


__all__ = [
    "LocalBackend",
    "RayBackend",
    "TrialTask",
    "check_ray_address",
    "plugin_refs",
    "run_trial",
    "trial_output",
]
