"""RESTOR over several seeds: N synthetic worlds and models, every method on each, 95% intervals.

Seed ``s`` sets ``world.seed`` (the people, their facts, the targets, the wrong facts, the
validation facts), ``clean.seed`` (initialisation and batches of the clean model) and
``corrupt.seed``. RESTOR's own selection already holds out rows: each method's configuration is
chosen by its recovery on the validation target facts (``eval.val_fraction``) and reported on the
other target facts, so no further split is needed. The statistics are
:mod:`unmemorize.benchmarks.seeds`; RESTOR's measured restoration is seed-sensitive, which is why a
single world's table is no evidence.

Layout of ``out``: ``seed-<s>/`` (one ``unmemorize restor`` output each, reused by a resumed run of
the same configuration) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...config import apply_overrides, to_dict
from ...io import atomic_write_json, read_json
from ...metrics.intervals import bootstrap_proportion
from ..seeds import aggregate, open_seeds_dir
from .config import RestorConfig

log = logging.getLogger(__name__)

ROW_KEYS = (
    "target_accuracy",
    "untargeted_accuracy",
    "untargeted_loss",
    "target_wrong_answer_rate",
    "recovery_val",
    "seconds",
    "changed_fraction",
)
SHARES = (
    "target_accuracy",
    "untargeted_accuracy",
    "target_wrong_answer_rate",
    "changed_fraction",
    *(
        f"{m}_{k}"
        for m in ("clean", "corrupted")
        for k in ("target_accuracy", "untargeted_accuracy")
    ),
    "corrupted_wrong_answer_rate",
)
REFERENCE_KEYS = (
    "clean_target_accuracy",
    "clean_untargeted_accuracy",
    "corrupted_target_accuracy",
    "corrupted_untargeted_accuracy",
    "corrupted_wrong_answer_rate",
)
SELECTION_NOTE = (
    "each method's configuration chosen per seed by its recovery on the validation target facts "
    "(disjoint from the reported ones); mean and 95% t interval over seeds"
)


def seed_overrides(seed: int) -> list[str]:
    """The overrides that make seed ``seed``'s world and models."""
    return [f"world.seed={seed}", f"clean.seed={seed}", f"corrupt.seed={seed}"]


def _stale_methods(
    recorded: Mapping[str, Any], config: Mapping[str, Any], wanted: Mapping[str, list[list[str]]]
) -> list[str] | None:
    """The methods of ``wanted`` (method -> its configurations' overrides) that a finished seed's
    summary ``recorded`` did not run with exactly those configurations; None when it was run with
    another RESTOR configuration (world, models, corruption, evaluation) and serves nothing.

    A seed that ran more methods serves a run of a subset (each method's rows and choice are its
    own); a method missing or run with another grid is run again on the seed's corrupted model
    (:func:`~.pipeline.extend_restor`).
    """
    from .pipeline import recorded_grid

    if recorded.get("config") != config:
        return None
    done = recorded_grid(recorded)
    return [name for name, points in wanted.items() if done.get(name) != points]


def _seed_entry(
    seed: int, summary: Mapping[str, Any], only: Sequence[str] | None = None
) -> dict[str, Any]:
    clean, corrupted = summary["clean"], summary["corrupted"]
    methods = {}
    for name, row in summary["methods"].items():
        if only and name not in only:
            continue
        row = dict(row)
        # collateral damage of the unlearning itself: untargeted accuracy lost from the model
        # it started from (the corruption's own damage is the corrupted row's)
        row["untargeted_loss"] = corrupted["untargeted_accuracy"] - row["untargeted_accuracy"]
        n = summary.get("runs", [{}])[0].get("n_target_facts")
        if isinstance(n, int) and n > 0:
            boot = bootstrap_proportion(round(row["target_accuracy"] * n), n, seed=seed)
            row["target_accuracy_boot95"] = [boot["boot95_low"], boot["boot95_high"]]
        methods[name] = row
    return {
        "seed": seed,
        "seconds": summary.get("seconds"),
        "baseline": {
            "clean_target_accuracy": clean["target_accuracy"],
            "clean_untargeted_accuracy": clean["untargeted_accuracy"],
            "corrupted_target_accuracy": corrupted["target_accuracy"],
            "corrupted_untargeted_accuracy": corrupted["untargeted_accuracy"],
            "corrupted_wrong_answer_rate": corrupted.get("target_wrong_answer_rate"),
        },
        "methods": methods,
    }


def run_restor_seeds(
    out: str | Path,
    seeds: Sequence[int],
    cfg: RestorConfig,
    *,
    methods: Sequence[str] | None = None,
    grid: Mapping[str, Any] | None = None,
    settings: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    command: dict | None = None,
    label: str | None = None,
    clean_from: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """:func:`~.pipeline.run_restor` once per seed into ``out/seed-<s>``, then aggregate.

    Args:
        cfg: the configuration of seed 0's run but for the seeds (:func:`seed_overrides` set
            them per seed).
        resume: keep ``out`` and reuse each finished seed whose configuration matches
            (``unmemorize reproduce restor``); without it a non-empty ``out`` needs ``overwrite``.
        clean_from: other multi-seed outputs (e.g. another corruption level) whose
            ``seed-<s>/clean`` model is reused when it was built from the same world, model and
            clean training (:func:`~.pipeline.clean_matches`), instead of training it again.

    Returns:
        The summary: per method and metric ``mean``, ``ci95_low``, ``ci95_high``, ``n_seeds``,
        ``values`` (ranked by mean recovery), the clean/corrupted references, paired comparisons
        of the top methods, and ``per_seed``.
    """
    from .pipeline import clean_matches, extend_restor, grid_overrides, resolve_grid, run_restor

    t0 = time.perf_counter()
    out = open_seeds_dir(out, seeds, resume=resume, overwrite=overwrite)
    wanted_grid = resolve_grid(methods, grid, settings)  # unknown methods fail before any work
    wanted_overrides = grid_overrides(wanted_grid)
    names = list(wanted_grid)
    per_seed = []
    for s in seeds:
        seed_cfg = apply_overrides(cfg, seed_overrides(s))
        seed_cfg.validate()
        seed_dir = out / f"seed-{s}"
        summary_file = seed_dir / "summary.json"
        config = json.loads(json.dumps(to_dict(seed_cfg)))  # as written: tuples become lists
        if summary_file.is_file():
            previous = read_json(summary_file)
            stale = _stale_methods(previous, config, wanted_overrides)
            if stale is not None:
                if stale:
                    log.info("seed %d: running %s on its corrupted model", s, ", ".join(stale))
                    previous = extend_restor(
                        seed_dir,
                        seed_cfg,
                        {name: wanted_grid[name] for name in stale},
                        progress=progress,
                    )
                else:
                    log.info("seed %d: reusing %s", s, summary_file)
                per_seed.append(_seed_entry(s, previous, names))
                continue
        reuse = next(
            (
                Path(d) / seed_dir.name
                for d in clean_from
                if clean_matches(Path(d) / seed_dir.name, seed_cfg)
            ),
            None,
        )
        summary = run_restor(
            seed_dir,
            seed_cfg,
            methods=methods,
            grid=grid,
            overwrite=True,
            progress=progress,
            settings=settings,
            reuse_clean=reuse,
        )
        per_seed.append(_seed_entry(s, summary, names))
    from ...runtime import environment
    from .benchmark import RestorBenchmark

    result = {
        "kind": "seeds",
        "benchmark": "restor",
        "label": label,
        "settings": RestorBenchmark.get_settings(settings).name,
        "preset": cfg.preset,
        "level": cfg.unlearn.level,
        "simplified": cfg.unlearn.simplified,
        "config": to_dict(cfg),
        "selection": SELECTION_NOTE,
        **aggregate(
            per_seed,
            ROW_KEYS,
            baseline_keys=REFERENCE_KEYS,
            score_key="recovery",
            higher_is_better=True,
            paired_keys=("recovery", "untargeted_accuracy"),
            shares=SHARES,
        ),
        "per_seed": per_seed,
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    if command is not None:
        result["command"] = command
    atomic_write_json(out / "summary.json", result)
    return result


def format_restor_seeds_table(summary: Mapping[str, Any]) -> str:
    """Per method: mean [95% CI] of recovery, target and untargeted accuracy over the seeds."""
    from ..seeds import interval_text, paired_text

    def pct(x: float) -> str:
        return f"{x:.1%}"

    def num(x: float) -> str:
        return f"{x:+.2f}"

    head = f"{'model':<16} {'recovery':>24} {'target':>24} {'untargeted':>24}"
    lines = [head, "-" * len(head)]
    base = summary["baseline"]
    for label, prefix in (("clean", "clean"), ("corrupted", "corrupted")):
        lines.append(
            f"{label:<16} {'':>24} {interval_text(base.get(f'{prefix}_target_accuracy'), pct):>24} "
            f"{interval_text(base.get(f'{prefix}_untargeted_accuracy'), pct):>24}"
        )
    for name, m in summary["methods"].items():
        lines.append(
            f"{name:<16} {interval_text(m.get('recovery'), num):>24} "
            f"{interval_text(m.get('target_accuracy'), pct):>24} "
            f"{interval_text(m.get('untargeted_accuracy'), pct):>24}"
        )
    lines.append(
        f"mean [95% CI] over {summary['n_seeds']} seeds (worlds); recovery = (acc - acc_corrupted) "
        "/ (acc_clean - acc_corrupted) on test target facts; configuration chosen on validation "
        "target facts"
    )
    lines += [paired_text(c) for c in summary.get("paired", [])]
    return "\n".join(lines)


__all__ = ["format_restor_seeds_table", "run_restor_seeds", "seed_overrides"]
