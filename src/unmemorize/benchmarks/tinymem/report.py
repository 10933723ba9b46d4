"""TinyMem's report section: a demo or sweep summary as facts, tables and figures.

Sakarvadia et al. 2024 (arXiv 2410.02159) pick each method's best run by one score and compare
methods by how much memorization they remove against how much utility (accuracy on the math
tasks, perplexity on text) they keep; the section shows both, a Pareto plot of every run and the
base model's training curves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...io import read_json
from ...metrics.ranking import pareto_front
from ...render import plots
from ...render.model import (
    Figure,
    Section,
    Table,
    finite,
    kv,
    num,
    pct,
    seconds_figure,
    secs,
    signed,
)

log = logging.getLogger(__name__)


def training_history(path: Path, record: Mapping) -> list[dict] | None:
    """The base model's training history of a demo or sweep directory, when it is there.

    Looked for at ``path/model/history.json`` (the demo's layout, which survives moving the
    directory), then at the summary's ``model_dir`` (absolute, or relative to ``path``).
    """
    candidates = [path / "model" / "history.json"]
    model_dir = record.get("model_dir")
    if model_dir:
        model_dir = Path(model_dir)
        candidates.append(
            (model_dir if model_dir.is_absolute() else path / model_dir) / "history.json"
        )
    for c in candidates:
        if c.is_file():
            history = read_json(c)
            if isinstance(history, list):
                return history
            log.warning("%s is not a list of checkpoint records; training plot skipped", c)
    return None


def _complete(row: Mapping) -> bool:
    return (
        "error" not in row
        and row.get("status", "complete") == "complete"
        and finite(row.get("memorized_fraction"))
    )


def _run_config(row: Mapping, sweep: bool) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    if sweep and "params" in row:
        return kv(row["params"]) or "defaults"
    return " ".join(row.get("overrides") or []) or "defaults"


def _front_ids(rows: list[Mapping], forget: str, utility: str, higher: bool) -> set[int]:
    """ids of the rows on their method's Pareto front (the sweep's own flags when present)."""
    if rows and all("pareto" in r for r in rows):
        return {id(r) for r in rows if r["pareto"]}
    front: set[int] = set()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        front |= {id(r) for r in pareto_front(mine, forget, utility, higher)}
    return front


def tinymem_section(
    index: int, title: str, kind: str, record: Mapping, history: list[dict] | None
) -> Section:
    """A demo or sweep summary: best run per method, every run, Pareto plot, training, timing."""
    from .benchmark import TinyMemBenchmark

    sweep = kind == "sweep"
    exp = record.get("experiment") or {}
    text = exp.get("task") == "text"
    forget, utility = TinyMemBenchmark.tradeoff(exp)
    higher = bool(TinyMemBenchmark.metric(utility).higher_is_better)
    # a sweep summary written before its baseline was measured has "baseline": null
    base = record.get("baseline") or {}
    runs = list(record.get("runs") or [])
    ok = [r for r in runs if _complete(r)]
    section = Section(index, title, kind)
    run_word = "trial" if sweep else "run"
    methods = list(dict.fromkeys([*record.get("methods", {}), *(r["method"] for r in runs)]))

    # ---- facts
    what = "/".join(str(exp[k]) for k in ("preset", "task") if k in exp)
    variant = (exp.get("data") or {}).get("variant")
    section.facts.append(("experiment", f"{what} ({variant})" if variant else what or "–"))
    if record.get("model_dir"):
        section.facts.append(("model", str(record["model_dir"])))
    if finite(base.get("memorized_fraction")):
        section.facts.append(
            (
                "before unlearning",
                f"{pct(base['memorized_fraction'])}% memorized ({base.get('n_memorized', '?')} of "
                f"{base.get('n_candidates', '?')} candidates), accuracy "
                f"{pct(base.get('accuracy'))}%, perplexity {num(base.get('perplexity'))}",
            )
        )
    counted = f"{len(runs)} {run_word}s of {len(methods)} methods, {len(runs) - len(ok)} failed"
    if sweep and isinstance(record.get("counts"), Mapping):
        counted += " (" + ", ".join(f"{k} {v}" for k, v in record["counts"].items()) + ")"
    section.facts.append((f"{run_word}s", counted))
    timing = [
        f"{label} {secs(record.get(k))} s"
        for label, k in (("training", "train_seconds"), ("total", "seconds"))
        if finite(record.get(k))
    ]
    if timing:
        section.facts.append(("wall time", ", ".join(timing)))
    env = record.get("environment") or {}
    if env:
        section.facts.append(
            (
                "environment",
                f"torch {env.get('torch', '?')}, {env.get('cpu_count', '?')} CPUs, "
                f"git {str(env.get('git_sha') or '?')[:10]}",
            )
        )
    if record.get("methods_skipped"):
        section.notes.append(f"No unlearning: {record['methods_skipped']}")

    # ---- best run per method
    u_col = "perplexity" if text else "accuracy (%)"

    def u_cell(row: Mapping) -> str:
        return num(row.get("perplexity")) if text else pct(row.get("accuracy"))

    columns = ["method", "memorized (%)", "still memorized (#)", u_col, "seconds", "score"]
    columns += ["trial", "params"] if sweep else ["config"]
    rows = [
        ["(before unlearning)", pct(base.get("memorized_fraction")),
         str(base.get("n_memorized", "–")), u_cell(base), "", ""] + ([""] * (2 if sweep else 1))
    ]  # fmt: skip
    best_rows = list((record.get("methods") or {}).values())
    for r in best_rows:
        row = [r["method"], pct(r.get("memorized_fraction")), str(r.get("n_still_memorized", "–")),
               u_cell(r), secs(r.get("seconds")), signed(r.get("score"))]  # fmt: skip
        row += [str(r.get("trial", "")), _run_config(r, True)] if sweep else [_run_config(r, False)]
        rows.append(row)
    highlight = 1 if best_rows and finite(best_rows[0].get("score")) else None
    section.tables.append(
        Table(
            f"Best {run_word} per method",
            columns,
            rows,
            text_columns=frozenset(
                {0, len(columns) - 1} | ({len(columns) - 2} if sweep else set())
            ),
            highlight=highlight,
            reference_rows=frozenset({0}),
            main=True,
            note="memorized: share of the memorization candidates (noised training sequences) "
            "reproduced verbatim; still memorized: how many of the sequences memorized before "
            f"unlearning remain; score: the TinyMem paper's selection rule (relative change in "
            f"memorized share plus relative loss of {'perplexity' if text else 'accuracy'}; "
            "lower is better, -1 is perfect). Highlighted: the lowest score.",
        )
    )

    # ---- every run
    front = _front_ids(ok, forget, utility, higher)
    if runs:
        order = sorted(runs, key=lambda r: (not finite(r.get("score")), r.get("score") or 0.0))
        columns = ["method", "memorized (%)", "still memorized (#)", "accuracy (%)", "perplexity",
                   "seconds", "score", "Pareto", "params" if sweep else "config"]  # fmt: skip
        if sweep:
            columns.insert(1, "trial")
        all_rows = []
        for r in order:
            row = [r["method"], pct(r.get("memorized_fraction")), str(r.get("n_still_memorized", "–")),
                   pct(r.get("accuracy")), num(r.get("perplexity")), secs(r.get("seconds")),
                   signed(r.get("score")), "yes" if id(r) in front else "",
                   _run_config(r, sweep)]  # fmt: skip
            if sweep:
                row.insert(1, str(r.get("trial", "")))
            all_rows.append(row)
        section.tables.append(
            Table(
                f"Every {run_word}, best score first",
                columns,
                all_rows,
                text_columns=frozenset({0, len(columns) - 1} | ({1} if sweep else set())),
                collapsed=True,
            )
        )

    # ---- figures
    u_label = "clean perplexity (lower is better)" if text else "clean accuracy (%)"
    if ok:
        scale = 1.0 if text else 100.0
        series = {
            m: [
                (100 * r["memorized_fraction"], scale * r[utility], id(r) in front)
                for r in ok
                if r["method"] == m and finite(r.get(utility))
            ]
            for m in methods
        }
        series = {m: pts for m, pts in series.items() if pts}
        base_pt = (
            (100 * base["memorized_fraction"], scale * base[utility])
            if finite(base.get(utility)) and finite(base.get("memorized_fraction"))
            else None
        )
        where = "bottom-left" if text else "top-left"
        section.figures.append(
            Figure(
                "pareto",
                index,
                f"Memorization vs {utility} of every {run_word}",
                f"Each point is one configuration ({len(ok)} {run_word}s of {len(series)} methods"
                + (f"; {len(runs) - len(ok)} failed, not shown" if len(ok) < len(runs) else "")
                + "). Black-edged points are on their method's Pareto front: no other "
                f"{run_word} of that method memorizes less and keeps a better {utility}. The star "
                f"is the model before unlearning; the best trade-offs sit {where}.",
                f"Scatter plot of memorized percentage against {u_label} for {len(ok)} "
                f"{run_word}s of {len(series)} methods; before unlearning the model memorizes "
                f"{pct(base.get('memorized_fraction'))}% of candidates.",
                plots.pareto_png(
                    series,
                    base_pt,
                    x_label="memorized (% of candidates)",
                    y_label=u_label,
                    title=f"Memorization vs {utility}, every {run_word}",
                    y_higher_is_better=higher,
                ),
            )
        )
    if history:
        section.figures.append(training_figure(index, history, text))
    timed = [r for r in best_rows if _complete(r) and finite(r.get("seconds"))]
    if timed:
        section.figures.append(seconds_figure(index, timed, run_word))
    return section


def training_figure(index: int, history: Sequence[Mapping], text: bool) -> Figure:
    """Memorization and utility at each checkpoint of a TinyMem training run."""
    points = [h for h in history if finite(h.get("epoch")) and finite(h.get("memorized_fraction"))]
    if not points:
        raise KeyError("history records need 'epoch' and 'memorized_fraction'")
    utility = "perplexity" if text else "accuracy"
    scale = 1.0 if text else 100.0
    epochs = [h["epoch"] for h in points]
    mem = [100 * h["memorized_fraction"] for h in points]
    util = [scale * h[utility] if finite(h.get(utility)) else math.nan for h in points]
    label = "test perplexity" if text else "test accuracy (%)"
    return Figure(
        "training",
        index,
        f"Memorization and {utility} during training",
        f"Share of the memorization candidates the model reproduces verbatim (top) and its "
        f"{label} (bottom) at each of the {len(points)} checkpoints.",
        f"Two line charts over {len(points)} checkpoints up to epoch {epochs[-1]}: memorized "
        f"share ends at {mem[-1]:.1f}% and {label} at {util[-1]:.3g}.",
        plots.training_png(
            epochs,
            mem,
            util,
            utility_label=label,
            title=f"Training: memorization and {utility} per epoch",
        ),
    )


__all__ = ["tinymem_section", "training_figure", "training_history"]
