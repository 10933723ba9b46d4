"""Report sections of single runs: turn a train or unlearn run.json into facts, tables and figures.

A benchmark's summaries (TinyMem demo or sweep, RESTOR, any registered benchmark) get their
section from the benchmark itself (:meth:`unmemorize.benchmarks.Benchmark.report_section`). The
builders only read the dicts they are given; :mod:`unmemorize.report.build` finds the files and
writes the HTML and Markdown, :mod:`unmemorize.render.plots` draws the figures.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..benchmarks.tinymem.report import training_figure
from ..render.model import (
    Figure,
    Section,
    Table,
    finite,
    format_text_table,
    kv,
    num,
    pct,
    seconds_figure,
    secs,
    signed,
)

KIND_LABELS = {
    "demo": "TinyMem demo",
    "sweep": "TinyMem sweep",
    "restor": "RESTOR benchmark",
    "train": "training run",
    "unlearn": "unlearning run",
}


# --------------------------------------------------------------------------- single runs


def train_section(index: int, title: str, record: Mapping, history: list[dict] | None) -> Section:
    """A training run: final metrics, every checkpoint, the training curves."""
    section = Section(index, title, "train")
    cfg = record.get("config") or {}
    text = cfg.get("task") == "text"
    model = cfg.get("model") or {}
    section.facts += [
        (
            "experiment",
            f"{cfg.get('preset', '?')}/{cfg.get('task', '?')} "
            f"({(cfg.get('data') or {}).get('variant', '?')})",
        ),
        (
            "model",
            f"{model.get('arch', '?')}, {model.get('n_layers', '?')} layers, d_model "
            f"{model.get('d_model', '?')}, {record.get('n_parameters', '?')} parameters",
        ),
        ("wall time", f"{secs(record.get('seconds'))} s"),
    ]
    if record.get("resumed_from_epoch"):
        section.facts.append(("resumed from epoch", str(record["resumed_from_epoch"])))
    columns = ["epoch", "memorized (%)", "memorized (#)", "accuracy (%)", "perplexity",
               "train loss", "seconds"]  # fmt: skip

    def row(m: Mapping) -> list[str]:
        return [str(m.get("epoch", "–")), pct(m.get("memorized_fraction")),
                f"{m.get('n_memorized', '–')} of {m.get('n_candidates', '–')}",
                pct(m.get("accuracy")), num(m.get("perplexity")), num(m.get("train_loss")),
                secs(m.get("seconds"))]  # fmt: skip

    section.tables.append(
        Table(
            "Final metrics", columns, [row(record["metrics"])], text_columns=frozenset(), main=True
        )
    )
    if history:
        section.tables.append(
            Table(
                "Every checkpoint", columns, [row(h) for h in history], frozenset(), collapsed=True
            )
        )
        section.figures.append(training_figure(index, history, text))
    else:
        section.notes.append("No history.json next to run.json: the training plot is skipped.")
    return section


def unlearn_section(index: int, title: str, record: Mapping) -> Section:
    """An unlearning run: what was forgotten, and the metrics before and after."""
    section = Section(index, title, "unlearn")
    data = record.get("data") or {}
    result = record.get("result") or {}
    section.facts += [
        ("method", f"{record['method']} ({record.get('family', '?')})"),
        ("config", kv(record.get("config")) or "defaults"),
        ("model", str(record.get("model", "–"))),
        (
            "forget set",
            f"{data.get('n_forget', '?')} memorized sequences ({data.get('forget', '?')})",
        ),
        ("retain set", f"{data.get('n_retain', '?')} sequences ({data.get('retain') or 'none'})"),
    ]
    if finite(result.get("changed_fraction")):
        section.facts.append(
            (
                "changed",
                f"{100 * result['changed_fraction']:.2f}% of {result.get('changed_unit', '?')}",
            )
        )
    section.facts.append(
        ("wall time", f"{secs(record.get('seconds'))} s (method {secs(result.get('seconds'))} s)")
    )
    before, after = record["before"], record["after"]
    keys = [("memorized (%)", "memorized_fraction", True), ("accuracy (%)", "accuracy", True),
            ("perplexity", "perplexity", False)]  # fmt: skip
    sets = sorted(k for k in before if k.startswith(("accuracy/", "perplexity/")) and k in after)
    if len(sets) > 2:  # one test set repeats the mean; several are worth a row each
        keys += [(f"{k} (%)" if k.startswith("acc") else k, k, k.startswith("acc")) for k in sets]
    n_b, n_a = before.get("n_memorized"), after.get("n_memorized")
    counted = isinstance(n_b, int) and isinstance(n_a, int)
    rows = [["memorized (#)", str(n_b), str(n_a), f"{n_a - n_b:+d}" if counted else "–"]]
    for label, key, is_pct in keys:
        if key not in before or key not in after:
            continue
        b, a = before[key], after[key]
        if is_pct:
            rows.append([label, pct(b), pct(a), f"{100 * (a - b):+.1f} pts"])
        else:
            rows.append([label, num(b), num(a), signed(a - b)])
    rows.append(["score", "", signed(record.get("score")), ""])
    section.tables.append(
        Table(
            "Before and after unlearning",
            ["metric", "before", "after", "change"],
            rows,
            main=True,
            note="score: the TinyMem paper's selection rule (lower is better, -1 is perfect).",
        )
    )
    return section


__all__ = [
    "KIND_LABELS",
    "Figure",
    "Section",
    "Table",
    "format_text_table",
    "seconds_figure",
    "train_section",
    "unlearn_section",
]
