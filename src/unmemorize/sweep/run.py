"""Run a hyperparameter sweep of mitigation methods, resumably, locally or on Ray.

Every result in the TinyMem paper (Sakarvadia et al. 2024, arXiv 2410.02159) is the best run of a
sweep, chosen by the paper's score (:func:`unmemorize.metrics.ranking.selection_score`). A sweep
here is (benchmark, base model, methods, a search space per method, grid or TPE search); the
benchmark (:func:`unmemorize.benchmarks.get_benchmark`) builds the base model, measures the
baseline, evaluates and scores each trial, names its spaces and the directions of its metrics.
Layout of ``DIR``::

    DIR/sweep.json       the spec, its id and the storage URL (written first)
    DIR/sweep.db         the results store (default SQLite; see store.py)
    DIR/base/            the base model, when the sweep built it (TinyMem: a run directory)
    DIR/baseline.json    metrics of the unedited base model
    DIR/trials/<key>/    run.json of each finished trial
    DIR/summary.json     every trial, the best per method, Pareto fronts (rewritten as it goes)

Re-running the same sweep (or ``--resume DIR``) skips completed trials and retries failed and
interrupted ones; a ``kill -9`` loses only the trials in flight. One coordinator at a time may run
a sweep directory (an OS lock that dies with its process).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tracking
from ..benchmarks.spaces import Space, grid_points, resolve_space, space_size, trial_key
from ..io import atomic_write_json, prepare_output_dir, read_json
from .backends import LocalBackend, RayBackend, TrialTask, plugin_refs, trial_output
from .store import ResultsStore, default_storage
from .tpe import DEFAULT_TPE_TRIALS, TpeProposer

log = logging.getLogger(__name__)

RANK_BY = ("score", "audited")
"""How a sweep ranks its trials (:attr:`SweepSpec.rank_by`)."""


@dataclass
class SweepSpec:
    """What a sweep explores; its hash is the sweep's id in the results store."""

    methods: list[str]
    """Methods to sweep."""
    space: Space
    """Resolved search space: method -> {option: values | range}."""
    search: str = "grid"
    """``grid`` (every combination) or ``tpe`` (Optuna's Bayesian TPE sampler)."""
    trials: int | None = None
    """TPE: trials per method (default 10). Grid: a seeded random sample of this many points
    per method (default: all points)."""
    benchmark: str = "tinymem"
    """The registered benchmark: builds the base model when ``model`` is not given, evaluates and
    scores every trial (specs written before the field existed read as ``tinymem``)."""
    preset: str = "cpu-mini"
    task: str = "increment"
    variant: str = "noise"
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides of the base model's experiment."""
    model: str | None = None
    """An existing model directory of the benchmark to sweep on instead of building one."""
    seed: int = 0
    """Seed of the TPE sampler and of grid sampling."""
    settings: str = "default"
    """The benchmark's settings (``--settings``): their method defaults are already in
    :attr:`space`; their switches prepare the base model of every trial."""
    audit: dict | None = None
    """Audit every trial with this :class:`~unmemorize.audit.AuditConfig` (as a dict); None =
    no audit. The audit runs in the worker through the hook ``run_sweep`` is given."""
    rank_by: str = "score"
    """``score`` (the benchmark's score) or ``audited``: the score plus the trial's "returns
    after relearning" fraction (0 to 1), so that a run that hides rather than removes loses."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # sweeps without an audit keep the id they had before these fields existed
        if d["audit"] is None:
            del d["audit"]
        if d["rank_by"] == "score":
            del d["rank_by"]
        return d

    def base(self) -> dict[str, Any]:
        """The base-model settings a benchmark reads (:meth:`~unmemorize.benchmarks.Benchmark.check_base`)."""
        return {
            "preset": self.preset,
            "task": self.task,
            "variant": self.variant,
            "overrides": list(self.overrides),
            "model": self.model,
        }

    @property
    def sweep_id(self) -> str:
        fields = self.to_dict()
        if fields["settings"] == "default":
            del fields["settings"]  # the ids of sweeps written before the field existed stay
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_spec(
    methods: list[str] | None,
    *,
    space: str | Space | None = None,
    search: str = "grid",
    trials: int | None = None,
    benchmark: str = "tinymem",
    preset: str = "cpu-mini",
    task: str = "increment",
    variant: str = "noise",
    overrides: list[str] | tuple[str, ...] = (),
    model: str | Path | None = None,
    seed: int = 0,
    settings: str | None = None,
    audit: dict | None = None,
    rank_by: str = "score",
) -> SweepSpec:
    """Validate a sweep's settings (before any work) and resolve its search space.

    Args:
        space: the name of one of the benchmark's spaces (None: its default space) or a space
            dict (:mod:`unmemorize.benchmarks.spaces`).
        benchmark: a registered benchmark (``unmemorize ls benchmarks``).
        settings: the benchmark's ``default`` or ``paper`` settings: a named space is replaced as
            they say (TinyMem ``cpu-mini`` -> ``paper``), their method defaults are put under every
            point (:func:`with_settings`).
        audit: audit every trial with this AuditConfig dict (see :attr:`SweepSpec.audit`).
        rank_by: ``score`` or ``audited`` (needs ``audit``).

    Raises:
        ValueError: unknown benchmark/preset/method/option, bad values, empty grid, bad model dir.
    """
    from ..benchmarks import get_benchmark

    bench = get_benchmark(benchmark)  # unknown names raise with a suggestion
    if trials is not None and trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    if rank_by not in RANK_BY:
        raise ValueError(f"--rank-by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if rank_by == "audited" and audit is None:
        raise ValueError("--rank-by audited ranks by the audit's findings; add --audit")
    chosen = bench.get_settings(settings)
    if space is None:
        space = bench.default_space
    if isinstance(space, str):
        space = chosen.space_name(space)
    resolved = with_settings(resolve_space(methods, space, search, benchmark=benchmark), chosen)
    if model is not None:
        model = str(Path(model).resolve())
    spec = SweepSpec(
        methods=list(resolved),
        space=resolved,
        search=search,
        trials=trials,
        benchmark=benchmark,
        preset=preset,
        task=task,
        variant=variant,
        overrides=list(overrides),
        model=model,
        seed=seed,
        settings=chosen.name,
        audit=None if audit is None else dict(audit),
        rank_by=rank_by,
    )
    bench.check_base(spec.base())
    return spec


def load_spec(sweep_dir: str | Path) -> tuple[SweepSpec, str | None]:
    """The spec and storage URL of an existing sweep directory (for ``--resume``)."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{sweep_dir} is not a sweep directory (no sweep.json); start one with "
            "`unmemorize sweep --out DIR ...`"
        )
    try:
        meta = read_json(path)
        spec = SweepSpec(**meta["spec"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is damaged ({err}); start the sweep again in a new --out"
        ) from None
    return spec, meta.get("storage")


class _SweepLock:
    """An exclusive OS lock on the sweep directory, released when the process dies."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / ".lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")  # noqa: SIM115 (held for the sweep's lifetime)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one coordinator is the user's job
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise FileExistsError(
                f"another `unmemorize sweep` is running on {self.path.parent}; wait for it or "
                "stop it first"
            ) from None
        return self

    def __exit__(self, *exc):
        self.file.close()


def with_settings(space: Space, settings) -> Space:
    """``space`` with ``settings``' method defaults as fixed values under every point."""
    out: dict[str, Any] = {}
    for method, spec in space.items():
        defaults = settings.methods.get(method, {})
        if not defaults:
            out[method] = spec
        elif isinstance(spec, list):
            out[method] = [{**defaults, **point} for point in spec]
        else:
            out[method] = {**defaults, **spec}
    return out


def _base_model(spec: SweepSpec, out: Path, progress: bool) -> Path:
    """The base model directory: ``spec.model``, or one the benchmark builds (or resumes) in DIR/base."""
    from ..benchmarks import get_benchmark

    if spec.model is not None:
        return Path(spec.model)
    return get_benchmark(spec.benchmark).prepare_base(spec.base(), out / "base", progress=progress)


def _baseline(spec: SweepSpec, model_dir: Path, out: Path) -> dict:
    """Metrics of the unedited base model (cached in DIR/baseline.json)."""
    from ..benchmarks import get_benchmark

    path = out / "baseline.json"
    if path.is_file():
        cached = read_json(path)
        if cached.get("model_dir") == str(model_dir):
            return cached["baseline"]
    # raises NothingToUnlearnError when the model holds nothing to unlearn
    baseline = get_benchmark(spec.benchmark).load(str(model_dir), settings=spec.settings).baseline
    atomic_write_json(path, {"model_dir": str(model_dir), "baseline": baseline})
    return baseline


def _plan(spec: SweepSpec, store: ResultsStore) -> int:
    """Store the grid's trials as pending (grid search); the number of trials the sweep runs."""
    if spec.search == "tpe":
        budget = spec.trials or DEFAULT_TPE_TRIALS
        total = 0
        for method in spec.methods:
            size = space_size(spec.space[method])
            total += budget if size is None else min(budget, size)
        return total
    total = 0
    for i, method in enumerate(spec.methods):
        points = grid_points(spec.space[method])
        if spec.trials is not None and spec.trials < len(points):
            points = random.Random(spec.seed + i).sample(points, spec.trials)
        for params in points:
            store.add_pending(spec.sweep_id, trial_key(method, params), method, params)
        total += len(points)
    return total


def _recover_finished(spec: SweepSpec, out: Path, store: ResultsStore) -> int:
    """Trials a killed coordinator left 'running' whose worker still wrote run.json: adopt them."""
    adopted = 0
    for record in store.records(spec.sweep_id, "running"):
        path = trial_output(out, record.key) / "run.json"
        if not path.is_file():
            continue
        try:
            row = read_json(path)
        except ValueError:
            continue
        row.pop("kind", None)
        store.complete(
            spec.sweep_id,
            record.key,
            row,
            row.get("score"),
            row.get("seconds", 0.0),
            str(path.parent),
        )
        adopted += 1
    return adopted


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    storage: str | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    overwrite: bool = False,
    progress: bool = True,
    auditor: str | None = None,
    command: dict | None = None,
) -> dict:
    """Run (or continue) a sweep in ``out``; returns the summary (also in ``out/summary.json``).

    Args:
        spec: from :func:`make_spec` (or :func:`load_spec` to resume).
        out: the sweep directory. If it holds this same sweep, the run continues it.
        storage: SQLAlchemy URL of the results store (default: ``out/sweep.db``).
        backend: ``local`` (worker processes) or ``ray``.
        workers: trials in flight (local default: the number of cores; ray: cluster CPUs /
            ``cpus_per_trial``).
        ray_address: the Ray cluster (``auto``, ``host:port``, ``ray://...``); None starts a
            local Ray instance.
        cpus_per_trial, gpus_per_trial: Ray resource request of each trial.
        overwrite: discard a different sweep found in ``out``.
        progress: show a progress bar.
        auditor: ``module:function`` of the audit hook each worker calls when ``spec.audit`` is
            set (``unmemorize.audit.pipeline:audit_trial``; the sweep layer does not import the
            audit, its caller names it).
        command: how the command line called it (``--config`` replays it), kept in sweep.json
            and summary.json; a resumed sweep keeps the one recorded first.

    Raises:
        FileExistsError: ``out`` holds something else, or another coordinator runs there.
        StorageError: the storage URL cannot be opened.
        ValueError: bad backend settings or an unreachable Ray address.
    """
    from .store import StorageError  # noqa: F401 (documented above)

    out = Path(out)
    t0 = time.perf_counter()
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}: choose local or ray")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if spec.audit is not None and not auditor:
        raise ValueError("this sweep audits its trials: pass the audit hook (auditor=...)")
    meta_path = out / "sweep.json"
    resuming = meta_path.is_file() and not overwrite
    if resuming:
        previous, previous_storage = load_spec(out)
        if previous.sweep_id != spec.sweep_id:
            raise FileExistsError(
                f"{out} holds a different sweep; continue it with `unmemorize sweep --resume "
                f"{out}`, or choose another --out (or --overwrite to discard it)"
            )
        storage = storage or previous_storage
        command = read_json(meta_path).get("command", command)
    else:
        prepare_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    with _SweepLock(out):
        store = ResultsStore(storage or default_storage(out))
        try:
            store.register_sweep(spec.sweep_id, spec.to_dict())
            meta = {"sweep_id": spec.sweep_id, "spec": spec.to_dict(), "storage": storage}
            if command is not None:
                meta["command"] = command
            atomic_write_json(meta_path, meta)
            model_dir = _base_model(spec, out, progress)
            baseline = _baseline(spec, model_dir, out)
            adopted = _recover_finished(spec, out, store)
            requeued = store.requeue(spec.sweep_id)
            if adopted or requeued:
                log.info("resuming: %d finished trials adopted, %d requeued", adopted, requeued)
            planned = _plan(spec, store)
            runner = (
                LocalBackend(workers or os.cpu_count() or 1)
                if backend == "local"
                else RayBackend(ray_address, workers, cpus_per_trial, gpus_per_trial)
            )
            try:
                _execute(spec, out, store, runner, model_dir, baseline, planned, progress, auditor)
            finally:
                runner.shutdown()
            return write_summary(out, store=store, seconds=time.perf_counter() - t0)
        finally:
            store.close()


def _plugins(spec: SweepSpec) -> tuple[str, ...]:
    """The sweep's method and benchmark classes that spawned workers must register themselves."""
    from ..benchmarks import BENCHMARKS, load_builtin
    from ..methods import METHODS

    load_builtin()
    return plugin_refs([*(METHODS.get(m) for m in spec.methods), BENCHMARKS.get(spec.benchmark)])


def _execute(
    spec, out, store, runner, model_dir, baseline, planned, progress, auditor=None
) -> None:
    """The scheduling loop: keep ``runner.slots`` trials in flight, record each as it returns."""
    from tqdm.auto import tqdm

    records = store.records(spec.sweep_id)
    queue = collections.deque(r for r in records if r.status == "pending")
    proposer = TpeProposer(spec, records) if spec.search == "tpe" else None
    used = collections.Counter(r.method for r in records if r.status != "pending")
    done = sum(r.status == "complete" for r in records)
    failed = 0
    best: tuple[float, str] | None = None
    for r in records:
        if r.status == "complete" and r.score is not None and (best is None or r.score < best[0]):
            best = (r.score, r.method)
    bar = tqdm(
        total=max(planned, done), initial=done, desc="trials", unit="trial", disable=not progress
    )
    inflight: dict[Any, tuple[str, str, dict]] = {}
    plugins = _plugins(spec)
    turn = 0
    last_summary = 0.0

    def next_trial() -> tuple[str, str, dict] | None:
        nonlocal turn
        if queue:
            r = queue.popleft()
            return r.key, r.method, r.params
        if proposer is None:
            return None
        for _ in range(len(spec.methods)):
            method = spec.methods[turn % len(spec.methods)]
            turn += 1
            params = proposer.propose(method, used[method])
            if params is not None:
                key = trial_key(method, params)
                store.add_pending(spec.sweep_id, key, method, params)
                return key, method, params
        return None

    def show() -> None:
        text = f"running={len(inflight)} failed={failed}"
        if best is not None:
            text += f" best={best[0]:.3f} ({best[1]})"
        bar.set_postfix_str(text)

    try:
        while True:
            while len(inflight) < runner.slots:
                item = next_trial()
                if item is None:
                    break
                key, method, params = item
                used[method] += 1
                store.mark_running(spec.sweep_id, key)
                task = TrialTask(
                    str(out),
                    key,
                    method,
                    params,
                    str(model_dir),
                    baseline,
                    benchmark=spec.benchmark,
                    plugins=plugins,
                    settings=spec.settings,
                    audit=spec.audit,
                    auditor=auditor or "",
                    rank_by=spec.rank_by,
                )
                inflight[runner.submit(task)] = item
            if not inflight:
                break
            show()
            for handle in runner.wait(list(inflight)):
                key, method, params = inflight.pop(handle)
                try:
                    row = runner.result(handle)
                except Exception as err:  # noqa: BLE001 (a trial's failure must not end the sweep)
                    log.warning("trial %s failed: %s", key, err)
                    row = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                if row.get("status") == "complete":
                    score = row.get("score")
                    score = None if score is None or not math.isfinite(score) else score
                    store.complete(spec.sweep_id, key, row, score, row["seconds"], row["output"])
                    if score is not None and (best is None or score < best[0]):
                        best = (score, method)
                    _track_trial(row, method, params, step=done + failed, best=best)
                    done += 1
                else:
                    failed += 1
                    store.fail(spec.sweep_id, key, row.get("error", "unknown error"))
                    score = None
                if proposer is not None:
                    proposer.tell(method, key, params, score)
                bar.update(1)
                show()
                if time.monotonic() - last_summary > 5:
                    write_summary(out, store=store)
                    last_summary = time.monotonic()
    finally:
        bar.close()


def _track_trial(row: dict, method: str, params: dict, *, step: int, best) -> None:
    """Log a finished trial to the active tracking run: one run per sweep, ``step`` = the trial's
    place in finishing order, ``<method>/<metric>`` and ``<method>/params/<option>`` (numbers
    only), and the sweep's ``best_score`` so far."""
    if not tracking.active():
        return
    numbers = {k: v for k, v in row.items() if not isinstance(v, dict)}
    tracking.log_scalars({**numbers, "params": params}, step, prefix=method)
    if best is not None:
        tracking.log_scalars({"best_score": best[0]}, step)


def write_summary(
    out: str | Path, *, store: ResultsStore | None = None, seconds: float | None = None
) -> dict:
    """Build ``summary.json`` from the store: every trial, best per method, Pareto fronts.

    Rows have the keys of a demo run row plus ``trial``, ``params``, ``status`` and ``pareto``.
    Runs are ranked by the benchmark's selection metric; each method's Pareto front is taken on
    the benchmark's trade-off, in the directions its metrics declare.
    """
    from ..benchmarks import get_benchmark
    from ..metrics.ranking import best_per, pareto_front, rank
    from ..runtime import environment

    out = Path(out)
    spec, storage = load_spec(out)
    own_store = store is None
    if own_store:
        store = ResultsStore(storage or default_storage(out))
    try:
        records = store.records(spec.sweep_id)
        counts = store.counts(spec.sweep_id)
    finally:
        if own_store:
            store.close()
    base = read_json(out / "baseline.json") if (out / "baseline.json").is_file() else {}
    model_dir = base.get("model_dir") or spec.model or str(out / "base")
    exp_file = Path(model_dir) / "experiment.json"
    experiment = read_json(exp_file) if exp_file.is_file() else None
    bench = get_benchmark(spec.benchmark)
    runs: list[dict] = []
    for r in records:
        if r.status == "complete" and r.result is not None:
            row = dict(r.result)
            row["score"] = math.nan if r.score is None else r.score
            runs.append(row)
        elif r.status == "failed":
            runs.append(
                {
                    "trial": r.key,
                    "method": r.method,
                    "params": r.params,
                    "status": "failed",
                    "error": r.error,
                    "score": math.nan,
                }
            )
    pareto: dict[str, list[str]] = {}
    tradeoff = bench.tradeoff(experiment)
    if tradeoff is not None:
        x_key, y_key = tradeoff
        higher = bool(bench.metric(y_key).higher_is_better)
        for method in spec.methods:
            mine = [row for row in runs if row["method"] == method]
            pareto[method] = [row["trial"] for row in pareto_front(mine, x_key, y_key, higher)]
    on_front = {key for keys in pareto.values() for key in keys}
    for row in runs:
        row["pareto"] = row["trial"] in on_front
    key = bench.selection
    higher_first = bool(bench.metric(key).higher_is_better)
    ranked = rank(runs, key, higher_is_better=higher_first)
    best = best_per((r for r in ranked if "error" not in r), key=key, higher_is_better=higher_first)
    summary = {
        "kind": "sweep",
        "benchmark": spec.benchmark,
        "sweep_id": spec.sweep_id,
        "sweep": spec.to_dict(),
        "experiment": experiment,
        "model_dir": model_dir,
        "baseline": base.get("baseline"),
        "methods": {row["method"]: row for row in best},
        "runs": ranked,
        "pareto": pareto,
        "counts": counts,
        "environment": environment(),
    }
    if seconds is not None:
        summary["seconds"] = seconds
    meta_path = Path(out) / "sweep.json"
    if meta_path.is_file() and "command" in (meta := read_json(meta_path)):
        summary["command"] = meta["command"]  # --config replays the sweep
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = ["SweepSpec", "load_spec", "make_spec", "run_sweep", "write_summary"]
