"""TinyMem over several seeds: N base models, validation-chosen configurations, 95% intervals.

Seed ``s`` sets ``data.seed`` (which rows are noised, the duplication groups, the splits) and
``train.seed`` (initialisation and data order) of the experiment, so every base model differs in
data, init and order. On each, every method's grid runs once and is judged on two disjoint halves
of the memorization candidates and test sets
(:meth:`~unmemorize.benchmarks.tinymem.benchmark.TinyMemBenchmark.split`); the configuration with
the best validation score is reported on the test half. The protocol and the statistics are
:mod:`unmemorize.benchmarks.seeds`.

Layout of ``out``::

    seed-<s>/model/        the seed's TinyMem run (resumed when interrupted)
    seed-<s>/result.json   its rows; reused by a resumed run of the same configuration
    summary.json           per method and metric: mean, ci95_low, ci95_high, n_seeds, values
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...io import atomic_write_json, read_json
from ...metrics.intervals import bootstrap_proportion
from ..seeds import SELECTION_NOTE, aggregate, best_by_validation, open_seeds_dir, run_split_grid

if TYPE_CHECKING:
    from ..runner import Auditor

log = logging.getLogger(__name__)

#: Row metrics aggregated over seeds (the accuracy of each math test set is added when present).
ROW_KEYS = (
    "memorized_fraction",
    "still_memorized_fraction",
    "accuracy",
    "perplexity",
    "seconds",
    "changed_fraction",
)
SHARES = ("memorized_fraction", "still_memorized_fraction", "accuracy", "changed_fraction")
BASELINE_KEYS = ("memorized_fraction", "n_memorized", "accuracy", "perplexity")
#: The audit's headline figures (:func:`unmemorize.audit.pipeline.audit_summary`) aggregated over
#: seeds as ``audit/<key>`` when the study is audited: the two relearning attacks, the worst
#: quantized precision, discoverability by sampling and the Min-K% membership AUC.
AUDIT_KEYS = (
    "forget_half_returned_fraction",
    "benign_returned_fraction",
    "returned_fraction",
    "quantization_max",
    "discoverable_fraction",
    "min_k_auc",
)
#: Every audit figure lies in [0, 1] (shares of rows, and an AUC): their intervals are clipped.
AUDIT_SHARES = tuple(f"audit/{k}" for k in AUDIT_KEYS)


def seed_overrides(seed: int) -> list[str]:
    """The overrides that make seed ``seed``'s base model: its data and its training."""
    return [f"data.seed={seed}", f"train.seed={seed}"]


def run_tinymem_seeds(
    out: str | Path,
    seeds: Sequence[int],
    *,
    preset: str = "cpu-mini",
    task: str = "increment",
    variant: str = "noise",
    overrides: Sequence[str] = (),
    methods: Sequence[str] | None = None,
    space: str | Mapping[str, Any] = "demo",
    settings: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    command: dict | None = None,
    label: str | None = None,
    audit: Callable[[Path], Auditor] | None = None,
) -> dict[str, Any]:
    """Train one base model per seed, run every method on each, and aggregate; ``summary.json``.

    Args:
        seeds: the seeds (``range(N)`` for ``--seeds N``).
        preset, task, variant, overrides: the base model (as ``unmemorize train``); the seed's
            :func:`seed_overrides` come last.
        methods: run only these (default: every method of the space).
        space: a TinyMem space by name (``demo``; ``--settings paper`` uses its ``paper-``
            twin) or a resolved space ``{method: spec}`` (a grid sweep's).
        resume: keep what ``out`` holds and reuse each finished seed whose configuration matches
            (``unmemorize reproduce``); without it a non-empty ``out`` needs ``overwrite``.
        label: a name for the study (``reproduce``'s cell), recorded in the summary.
        audit: ``seed_dir -> auditor`` (e.g. a :class:`~unmemorize.audit.pipeline.
            BenchmarkAuditor` writing under ``seed_dir/audit``): each method's chosen
            configuration is applied again and audited on the seed's test half
            (:func:`_audit_chosen`), the audit's figures aggregated as ``audit/<key>``. A
            finished seed is audited without running its grid again.

    Returns:
        The summary (see :func:`unmemorize.benchmarks.seeds.aggregate`), plus ``per_seed``: each
        seed's baselines (validation and test halves), chosen rows and every run.
    """
    from ...methods import METHODS, NothingToUnlearnError
    from ..runner import grid_jobs
    from .benchmark import TinyMemBenchmark
    from .experiment import is_finished_run, load_run, make_experiment, train_experiment

    t0 = time.perf_counter()
    bench = TinyMemBenchmark()
    chosen = bench.get_settings(settings)
    grid = bench.space(chosen.space_name(space)) if isinstance(space, str) else space
    names = list(grid) if methods is None else list(methods)
    for name in names:
        METHODS.get(name)  # unknown names fail before any work
    experiments = {
        s: make_experiment(preset, task, variant, [*overrides, *seed_overrides(s)]) for s in seeds
    }
    jobs = grid_jobs(grid, names, chosen)
    out = open_seeds_dir(out, seeds, resume=resume, overwrite=overwrite)
    per_seed: list[dict[str, Any]] = []
    for s in seeds:
        exp = experiments[s]
        fingerprint = json.loads(
            json.dumps(
                {"experiment": exp.to_dict(), "settings": chosen.name, "jobs": jobs}, default=str
            )
        )
        seed_dir = out / f"seed-{s}"
        result_file = seed_dir / "result.json"
        if result_file.is_file():
            previous = read_json(result_file)
            if previous.get("fingerprint") == fingerprint:
                log.info("seed %d: reusing %s", s, result_file)
                auditor = None if audit is None else audit(seed_dir)
                recorded = previous.get("audit", {}).get("config", "none")
                if (
                    auditor is not None
                    and "skipped" not in previous
                    and (recorded != _auditor_config(auditor))
                ):
                    model, tokenizer, data = load_run(seed_dir / "model")
                    prepared = bench.prepare(
                        model.to(device), data, chosen.name, tokenizer, run_dir=seed_dir / "model"
                    )
                    _, test = bench.split(prepared, seed=s)
                    _audit_chosen(bench, prepared, test, previous, auditor)
                    atomic_write_json(result_file, previous)
                per_seed.append(previous)
                continue
        start = time.perf_counter()
        model_dir = seed_dir / "model"
        written = model_dir / "experiment.json"
        same = written.is_file() and read_json(written) == fingerprint["experiment"]
        if same and is_finished_run(model_dir):
            model, tokenizer, data = load_run(model_dir)
            model.to(device)
        else:  # resumes an interrupted training of this experiment; replaces another one's
            run = train_experiment(
                exp, model_dir, overwrite=not same, progress=progress, device=device
            )
            model, tokenizer, data = run.model, run.tokenizer, run.data
        train_seconds = time.perf_counter() - start
        entry: dict[str, Any] = {
            "seed": s,
            "fingerprint": fingerprint,
            "model_dir": str(model_dir),
            "train_seconds": train_seconds,
            # the base model's own evaluation (all rows; memorization per duplication group)
            "base_metrics": read_json(model_dir / "run.json").get("metrics", {}),
        }
        try:
            prepared = bench.prepare(model, data, chosen.name, tokenizer, run_dir=model_dir)
        except NothingToUnlearnError as err:
            log.warning("seed %d: %s", s, err)
            entry.update({"skipped": str(err), "baseline": {}, "methods": {}, "runs": []})
        else:
            val, test, rows = run_split_grid(
                bench, prepared, jobs, seed=s, progress=progress, desc=f"seed {s}"
            )
            n_forget = test.info["n_forget"]
            best = best_by_validation(rows)
            for row in best.values():
                if "n_still_memorized" in row:
                    boot = bootstrap_proportion(row["n_still_memorized"], n_forget, seed=s)
                    row["still_memorized_boot95"] = [boot["boot95_low"], boot["boot95_high"]]
            entry.update(
                {
                    "baseline": test.baseline,
                    "baseline_val": val.baseline,
                    "split": {"validation": val.info, "test": test.info},
                    "methods": best,
                    "runs": rows,
                }
            )
            if audit is not None:
                _audit_chosen(bench, prepared, test, entry, audit(seed_dir))
        entry["seconds"] = time.perf_counter() - start
        atomic_write_json(result_file, entry)
        per_seed.append(entry)

    used = [e for e in per_seed if "skipped" not in e]
    set_keys = sorted(
        {k for e in used for row in e["methods"].values() for k in row if k.startswith("accuracy/")}
    )
    audited = any("audit" in e for e in used)
    audit_keys = [f"audit/{k}" for k in AUDIT_KEYS] if audited else []
    summary: dict[str, Any] = {
        "kind": "seeds",
        "benchmark": bench.name,
        "label": label,
        "settings": chosen.name,
        "preset": preset,
        "task": task,
        "variant": variant,
        "overrides": list(overrides),
        "experiment": experiments[seeds[0]].to_dict(),
        "selection": SELECTION_NOTE,
        **aggregate(
            used,
            [*ROW_KEYS, *set_keys, *audit_keys],
            baseline_keys=[*BASELINE_KEYS, *audit_keys],
            paired_keys=("score", "still_memorized_fraction"),
            shares=(*SHARES, *AUDIT_SHARES),
        ),
        "seeds_skipped": {e["seed"]: e["skipped"] for e in per_seed if "skipped" in e},
        "per_seed": per_seed,
        "seconds": time.perf_counter() - t0,
    }
    if audited:
        summary["audit"] = {
            "n_seeds": sum("audit" in e for e in used),
            "seconds": sum(e["audit"]["seconds"] for e in used if "audit" in e),
            "note": AUDIT_NOTE,
        }
    from ...runtime import environment

    summary["environment"] = environment()
    if command is not None:
        summary["command"] = command
    atomic_write_json(out / "summary.json", summary)
    return summary


AUDIT_NOTE = (
    "each method's chosen configuration applied again on the seed's base model (methods are "
    "seeded: the same edit) and audited on the test half of the rows; the unedited model "
    "without the relearning attacks"
)


def _audit_chosen(
    bench: Any, prepared: Any, test: Any, entry: dict[str, Any], auditor: Auditor
) -> None:
    """Audit the unedited model and each method's chosen configuration on the ``test`` half.

    The edited models of the grid are not kept (one per run would not fit a large grid), so each
    chosen configuration is applied again: the methods seed themselves, so it is the edit the
    row measured, which the test-half evaluation checks (a mismatch is logged). Adds
    ``"audit"`` (the unedited model's figures as ``audit/<key>`` under ``baseline``, the
    seconds) to ``entry`` and ``audit/<key>`` to each method's row.
    """
    from ...methods import build_method

    start = time.perf_counter()
    before = auditor(prepared.model, test, None)
    entry["baseline"] = {**entry["baseline"], **{f"audit/{k}": before.get(k) for k in AUDIT_KEYS}}
    for name, row in entry["methods"].items():
        if "error" in row:
            continue
        result = build_method(name, row["overrides"]).apply(prepared.model, prepared.data)
        again = bench.evaluate(result.model, test)
        if again.get("n_still_memorized") != row.get("n_still_memorized"):
            log.warning(
                "seed %s: %s applied again leaves %s rows memorized, not %s; auditing that edit",
                entry["seed"],
                name,
                again.get("n_still_memorized"),
                row.get("n_still_memorized"),
            )
        summary = auditor(result.model, test, row)
        row["audit"] = summary
        row.update({f"audit/{k}": summary.get(k) for k in AUDIT_KEYS})
    entry["audit"] = {
        "seconds": time.perf_counter() - start,
        "config": _auditor_config(auditor),
        "note": AUDIT_NOTE,
    }


def _auditor_config(auditor: Any) -> Any:
    """The auditor's configuration as JSON writes it (None for a plain callable)."""
    import dataclasses

    config = getattr(auditor, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return None
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def format_seeds_table(summary: Mapping[str, Any]) -> str:
    """The CLI's table: per method, mean [95% CI] of score, memorized and utility over seeds."""
    from ..seeds import configs_text, interval_text, paired_text
    from .benchmark import TinyMemBenchmark

    utility = TinyMemBenchmark.tradeoff(summary.get("experiment"))[1]
    text = utility == "perplexity"

    def pct(x: float) -> str:
        return f"{x:.1%}"

    def num(x: float) -> str:
        return f"{x:.3f}"

    u_fmt = num if text else pct
    head = f"{'method':<22} {'score':>26} {'still memorized':>26} {utility:>26}  configs"
    lines = [head, "-" * len(head)]
    base = summary["baseline"]
    lines.append(
        f"{'(unedited)':<22} {'':>26} {interval_text(base.get('memorized_fraction'), pct):>26} "
        f"{interval_text(base.get(utility), u_fmt):>26}"
    )
    for name, m in summary["methods"].items():
        lines.append(
            f"{name:<22} {interval_text(m.get('score'), num):>26} "
            f"{interval_text(m.get('still_memorized_fraction'), pct):>26} "
            f"{interval_text(m.get(utility), u_fmt):>26}  {configs_text(m)}"
        )
    lines.append(
        f"mean [95% CI] over {summary['n_seeds']} seeds; configuration chosen on validation rows, "
        "reported on disjoint test rows"
    )
    lines += [paired_text(c) for c in summary.get("paired", [])]
    lines += [f"seed {s} left out: {why}" for s, why in summary.get("seeds_skipped", {}).items()]
    if "audit" in summary:
        lines += ["", format_audit_table(summary)]
    return "\n".join(lines)


#: The audit table's columns: (key under ``audit/``, header, format).
AUDIT_COLUMNS = (
    ("returned_fraction", "returns (relearning)", "pct"),
    ("quantization_max", "memorized quantized", "pct"),
    ("discoverable_fraction", "discoverable", "pct"),
    ("min_k_auc", "MIA AUC (Min-K%)", "num"),
)


def format_audit_table(summary: Mapping[str, Any]) -> str:
    """Per method, mean [95% CI] over the seeds of what the audit found in its chosen edit."""
    from ..seeds import interval_text

    fmts = {"pct": lambda x: f"{x:.0%}", "num": lambda x: f"{x:.2f}"}
    head = f"{'audit':<22} " + " ".join(f"{h:>22}" for _, h, _ in AUDIT_COLUMNS)
    lines = [head, "-" * len(head)]
    rows = [("(unedited)", summary["baseline"]), *summary["methods"].items()]
    for name, m in rows:
        cells = [interval_text(m.get(f"audit/{k}"), fmts[f]) for k, _, f in AUDIT_COLUMNS]
        lines.append(f"{name:<22} " + " ".join(f"{c:>22}" for c in cells))
    lines.append(
        "returns: the share of the removed rows memorized again after a few fine-tuning steps "
        "(the worse of the forget-half and benign attacks; the unedited model is not attacked); "
        "memorized quantized: the highest over the quantized precisions; discoverable: by "
        "sampling; MIA AUC: 0.5 = the rows look unseen"
    )
    return "\n".join(lines)


__all__ = ["format_audit_table", "format_seeds_table", "run_tinymem_seeds", "seed_overrides"]
