"""Results that hold up: several seeds, configurations chosen on validation rows, 95% intervals.

One seed's table is one draw: on the demo model one memorized sequence is 2.6 points, and a grid
that picks each method's best run on the rows it reports picks the luckiest draw. The multi-seed
protocol of ``demo --seeds N``, ``restor --seeds N`` and ``unmemorize reproduce``:

1. N base models, each from its own seed (data, initialisation and order all change with it);
2. on each, every configuration of the grid, judged on two disjoint halves of the evaluation rows
   (:meth:`~unmemorize.benchmarks.Benchmark.split`); each method's configuration is the one with
   the best score on the **validation** half (:func:`run_split_grid`), and its **test**-half
   metrics are what is reported (RESTOR already selects on its validation facts);
3. per method and metric, the mean over seeds and its 95% t interval, the per-seed values, a
   bootstrap interval over rows within each seed, and paired comparisons of the top methods on the
   same base models (:func:`aggregate`; the statistics are :mod:`unmemorize.metrics.intervals`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics.intervals import aggregate_seeds, paired_difference

if TYPE_CHECKING:
    from ..render.model import Section
    from . import Benchmark, Prepared
    from .runner import Job

#: The key every split row carries: its score on the validation half (lower is better).
VALIDATION_SCORE = "val_score"

SELECTION_NOTE = (
    "each method's configuration chosen per seed by its score on a validation half of the rows "
    "(memorization candidates and test sets, disjoint from the reported half); mean and 95% t "
    "interval over seeds"
)


def run_split_grid(
    bench: Benchmark,
    prepared: Prepared,
    jobs: Sequence[Job],
    *,
    seed: int,
    progress: bool = True,
    desc: str = "methods",
) -> tuple[Prepared, Prepared, list[dict[str, Any]]]:
    """Every job on ``prepared``, judged on both halves of ``bench.split(prepared, seed=seed)``.

    Returns:
        ``(validation, test, rows)``: each row holds the test-half metrics and ``score`` (what is
        reported), the validation-half metrics under ``"val"`` and their score under
        :data:`VALIDATION_SCORE` (what chooses).

    Raises:
        ValueError: when the benchmark has no split (its own score already selects on held-out
            rows; run its grid directly).
    """
    from .runner import run_jobs

    halves = bench.split(prepared, seed=seed)
    if halves is None:
        raise ValueError(f"benchmark {bench.name!r} has no validation split")
    val, test = halves

    def evaluate(model):
        return {**bench.evaluate(model, test), "val": bench.evaluate(model, val)}

    rows = run_jobs(
        jobs,
        prepared.model,
        prepared.data,
        evaluate,
        score=lambda metrics: bench.score(test.baseline, metrics),
        progress=progress,
        desc=desc,
    )
    for row in rows:
        value = bench.score(val.baseline, row["val"]) if "val" in row else None
        row[VALIDATION_SCORE] = math.nan if value is None else value
    return val, test, rows


def best_by_validation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each method's row with the lowest validation score (NaN last, the first on ties)."""
    from ..metrics.ranking import best_per

    return {row["method"]: row for row in best_per(rows, key=VALIDATION_SCORE)}


def aggregate(
    per_seed: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    baseline_keys: Sequence[str] = (),
    score_key: str = "score",
    higher_is_better: bool = False,
    paired_keys: Sequence[str] = (),
    n_paired: int = 3,
    shares: Sequence[str] = (),
) -> dict[str, Any]:
    """Mean, 95% t interval and per-seed values of every method's chosen row over the seeds.

    Args:
        per_seed: one mapping per seed: ``{"seed", "baseline": {...}, "methods": {name: row}}``.
        keys: the row metrics to aggregate (absent or non-numeric ones are skipped).
        baseline_keys: the baseline metrics to aggregate.
        score_key: what ranks the methods (by mean; ``higher_is_better`` gives its direction).
        paired_keys: metrics of the paired comparisons (default: ``score_key``).
        n_paired: the best method is compared with each of the next ``n_paired - 1``.
        shares: metrics that are shares of rows (their intervals are clipped to [0, 1]).

    Returns:
        ``{"seeds", "n_seeds", "baseline": {key: interval}, "methods": {name: {key: interval,
        "configs": [...]}} (ranked best first), "paired": [...]}``; an interval is
        ``{"mean", "ci95_low", "ci95_high", "n_seeds", "sd", "values"}``. A method missing on a
        seed counts as None there (its interval uses the seeds it has; ``n_seeds`` says how many).
    """
    seeds = [entry["seed"] for entry in per_seed]
    baselines = [entry.get("baseline", {}) for entry in per_seed]
    names: list[str] = []
    for entry in per_seed:
        names += [n for n in entry["methods"] if n not in names]
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [entry["methods"].get(name, {}) for entry in per_seed]
        agg: dict[str, Any] = aggregate_seeds(rows, [*keys, score_key], shares=shares)
        agg["configs"] = [row.get("overrides") for row in rows]
        methods[name] = agg

    def mean_of(name: str) -> tuple[bool, float]:
        m = methods[name].get(score_key, {}).get("mean")
        if m is None:
            return True, 0.0
        return False, -m if higher_is_better else m

    ranked = sorted(names, key=mean_of)
    paired = []
    for other in ranked[1:n_paired]:
        for key in paired_keys or (score_key,):
            a = [entry["methods"].get(ranked[0], {}).get(key) for entry in per_seed]
            b = [entry["methods"].get(other, {}).get(key) for entry in per_seed]
            paired.append({"a": ranked[0], "b": other, "metric": key, **paired_difference(a, b)})
    return {
        "seeds": seeds,
        "n_seeds": len(seeds),
        "baseline": aggregate_seeds(baselines, baseline_keys, shares=shares),
        "methods": {name: methods[name] for name in ranked},
        "paired": paired,
    }


def open_seeds_dir(out: Path, seeds: Sequence[int], *, resume: bool, overwrite: bool) -> Path:
    """The output directory of a multi-seed run: kept as it is to resume (finished seeds are
    reused), else refused when not empty unless ``overwrite`` (then emptied).

    Raises:
        ValueError: no seeds.
        FileExistsError: a non-empty ``out`` without ``resume`` or ``overwrite``.
    """
    from ..io import prepare_output_dir

    if not seeds:
        raise ValueError("--seeds must be at least 1")
    out = Path(out)
    if resume:
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output_dir(out, overwrite)
    return out


def select_cells(cells: Sequence[Any], names: str | Sequence[str] | None, study: str) -> list[Any]:
    """The ``cells`` (objects with a ``name``) named in ``names`` (comma-separated or a list;
    None: all), in the study's order; an unknown name gets a "did you mean" error."""
    from ..registry import suggest

    if names is None:
        return list(cells)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    known = [c.name for c in cells]
    for name in names:
        if name not in known:
            raise suggest(name, known, "cell", f"(cells of `unmemorize reproduce {study}`)")
    return [c for c in cells if c.name in names]


def write_study(
    out: Path,
    study: str,
    paper: str,
    cells: Mapping[str, Any],
    report: Callable[[Mapping[str, Any]], str],
    *,
    seconds: float,
    command: dict | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write a reproduction's side-by-side record: ``out/summary.json`` (``kind: reproduce``) and
    ``out/REPORT.md`` (``report(record)``); ``options`` are its settings (seeds, preset, ...)."""
    from ..io import atomic_write_json, atomic_write_text

    record = {"kind": "reproduce", "study": study, "paper": paper, **options, "cells": cells}
    record["seconds"] = seconds
    if command is not None:
        record["command"] = command
    atomic_write_json(out / "summary.json", record)
    atomic_write_text(out / "REPORT.md", report(record))
    return record


def configs_text(entry: Mapping[str, Any]) -> str:
    """The distinct configurations a method's seeds chose (``lr=1e-4 | lr=5e-5``; ``defaults``)."""
    chosen = {" ".join(c) or "defaults" for c in entry.get("configs", []) if c is not None}
    return " | ".join(sorted(chosen)) or "-"


def interval_text(entry: Mapping[str, Any] | None, fmt: Callable[[float], str]) -> str:
    """``mean [low, high]`` (or ``mean`` with one seed, ``-`` without a value)."""
    if not entry or entry.get("mean") is None:
        return "-"
    text = fmt(entry["mean"])
    if entry.get("ci95_low") is None:
        return text
    return f"{text} [{fmt(entry['ci95_low'])}, {fmt(entry['ci95_high'])}]"


def paired_text(
    comparison: Mapping[str, Any], fmt: Callable[[float], str] = "{:+.3f}".format
) -> str:
    """One line: ``a - b on metric: mean [low, high] over n seeds (holds | within noise)``."""
    if comparison.get("mean_difference") is None:
        return f"{comparison['a']} - {comparison['b']} on {comparison['metric']}: no common seed"
    verdict = "CI excludes 0" if comparison["excludes_zero"] else "CI includes 0: within noise"
    ci = (
        f" [{fmt(comparison['ci95_low'])}, {fmt(comparison['ci95_high'])}]"
        if comparison.get("ci95_low") is not None
        else ""
    )
    return (
        f"{comparison['a']} - {comparison['b']} on {comparison['metric']}: "
        f"{fmt(comparison['mean_difference'])}{ci} over {comparison['n_seeds']} seeds ({verdict})"
    )


def seeds_section(
    index: int,
    title: str,
    record: Mapping[str, Any],
    columns: Sequence[tuple[str, str, str]],
    *,
    baseline_rows: Sequence[tuple[str, Mapping[str, str]]] = (),
    figure_metrics: Sequence[tuple[str, str]] = (),
) -> Section:
    """The report section of a multi-seed summary: intervals in every cell, error-bar figures.

    Args:
        columns: ``(metric, header, format)`` per table column; format ``pct``, ``num`` or
            ``signed``.
        baseline_rows: ``(label, {metric: baseline key})``: reference rows (the unedited model;
            RESTOR's clean and corrupted models) drawn from ``record["baseline"]``.
        figure_metrics: ``(metric, axis label)``: one error-bar figure each (mean, 95%
            interval and the per-seed values of every method).
    """
    from ..render import plots
    from ..render.model import Figure, Section, Table, num, pct, signed

    fmts = {"pct": lambda x: f"{pct(x)}%", "num": num, "signed": signed}
    section = Section(index, title, "seeds")
    section.facts += [
        ("benchmark", str(record.get("benchmark"))),
        ("seeds", f"{record.get('n_seeds')} ({', '.join(map(str, record.get('seeds', [])))})"),
        ("settings", str(record.get("settings", "default"))),
        ("selection", str(record.get("selection", ""))),
    ]
    if record.get("label"):
        section.facts.insert(0, ("study", str(record["label"])))
    if isinstance(record.get("seconds"), (int, float)):
        section.facts.append(("wall time", f"{record['seconds']:.0f} s"))
    skipped = record.get("seeds_skipped") or {}
    if skipped:
        section.notes.append(
            "seeds left out (nothing memorized): "
            + "; ".join(f"{s}: {why}" for s, why in skipped.items())
        )
    rows, refs = [], set()
    base = record.get("baseline") or {}
    for label, keys in baseline_rows:
        refs.add(len(rows))
        rows.append(
            [label]
            + [
                interval_text(base.get(keys[key]), fmts[f]) if key in keys else ""
                for key, _, f in columns
            ]
            + [""]
        )
    methods: Mapping[str, Mapping[str, Any]] = record.get("methods") or {}
    first = len(rows)
    for name, m in methods.items():
        rows.append(
            [name]
            + [interval_text(m.get(key), fmts[f]) for key, _, f in columns]
            + [configs_text(m)]
        )
    section.tables.append(
        Table(
            "Each method over the seeds: mean [95% confidence interval]",
            ["method", *[header for _, header, _ in columns], "configurations (per seed)"],
            rows,
            text_columns=frozenset({0, len(columns) + 1}),
            highlight=first if methods else None,
            reference_rows=frozenset(refs),
            note=f"t interval over {record.get('n_seeds')} seeds; methods ranked by mean; "
            "the first row is best by mean, which is a claim only where the paired "
            "comparison below excludes 0",
            main=True,
        )
    )
    paired = record.get("paired") or []
    if paired:
        section.tables.append(
            Table(
                "Paired comparisons of the top methods (same base models)",
                ["comparison", "metric", "mean difference", "95% CI", "seeds", "verdict"],
                [
                    [
                        f"{c['a']} - {c['b']}",
                        c["metric"],
                        signed(c.get("mean_difference")),
                        "–"
                        if c.get("ci95_low") is None
                        else f"[{signed(c['ci95_low'])}, {signed(c['ci95_high'])}]",
                        str(c.get("n_seeds")),
                        "CI excludes 0" if c.get("excludes_zero") else "within noise",
                    ]
                    for c in paired
                ],
                text_columns=frozenset({0, 1, 5}),
            )
        )
    names = list(methods)
    for key, axis in figure_metrics:
        entries = [methods[n].get(key) or {} for n in names]
        if not any(e.get("mean") is not None for e in entries):
            continue
        section.figures.append(
            Figure(
                f"seeds-{key.replace('/', '-')}",
                index,
                f"{axis}: mean and 95% interval over seeds",
                f"Each method's {axis} over {record.get('n_seeds')} seeds: the marker is the "
                "mean, the bar its 95% t interval, the dots the seeds.",
                f"Error-bar chart of {axis} for {len(names)} methods.",
                plots.intervals_png(
                    names,
                    [e.get("mean") for e in entries],
                    [e.get("ci95_low") for e in entries],
                    [e.get("ci95_high") for e in entries],
                    values=[e.get("values") or [] for e in entries],
                    x_label=axis,
                    title=f"{axis} (mean, 95% CI, seeds)",
                ),
            )
        )
    return section


__all__ = [
    "SELECTION_NOTE",
    "VALIDATION_SCORE",
    "aggregate",
    "best_by_validation",
    "configs_text",
    "interval_text",
    "open_seeds_dir",
    "paired_text",
    "run_split_grid",
    "seeds_section",
    "select_cells",
    "write_study",
]
