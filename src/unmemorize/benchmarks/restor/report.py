"""The RESTOR section of a report: clean vs corrupted vs each unlearning method.

Rezaei et al. 2024 (arXiv 2411.00204) judge restorative unlearning by whether the clean model's
knowledge comes back: QA accuracy on the target people's facts, collateral damage on untargeted
facts, and the log-probability of the correct, corrupted and random answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...render import plots
from ...render.model import Figure, Section, Table, finite, num, pct, seconds_figure, secs


def restor_section(index: int, title: str, record: Mapping) -> Section:
    """A RESTOR summary: clean vs corrupted vs each method, accuracy and log-prob figures."""
    section = Section(index, title, "restor")
    clean, corrupted = record["clean"], record["corrupted"]
    methods: dict[str, Mapping] = dict(record.get("methods") or {})
    section.facts += [
        ("preset", str(record.get("preset") or (record.get("config") or {}).get("preset", "–"))),
        ("corruption level", f"{record.get('level', '–')} (unrelated facts per wrong one)"),
        (
            "forget set",
            "wrong-fact sentences only (simplified)"
            if record.get("simplified")
            else "the whole corruption documents",
        ),
        (
            "data",
            f"{record.get('n_targets', '?')} target people, "
            f"{record.get('n_corruption_docs', '?')} corruption documents, "
            f"{record.get('n_retain_docs', '?')} retain documents",
        ),
    ]
    timings = record.get("timings") or {}
    if timings:
        section.facts.append(
            ("wall time", ", ".join(f"{k} {secs(v)} s" for k, v in timings.items()))
        )
    columns = ["model", "target (%)", "untargeted (%)", "wrong answer (%)", "recovery",
               "logp correct", "logp corrupted", "logp random", "seconds", "config"]  # fmt: skip

    def row(name: str, m: Mapping, recov: Any, config: str) -> list[str]:
        lg = m.get("logits") or {}
        return [name, pct(m.get("target_accuracy")), pct(m.get("untargeted_accuracy")),
                pct(m.get("target_wrong_answer_rate")), num(recov, 2), num(lg.get("correct"), 2),
                num(lg.get("corrupted"), 2), num(lg.get("random"), 2), secs(m.get("seconds")),
                config]  # fmt: skip

    rows = [
        row("clean", clean, 1.0, ""),
        row("corrupted", corrupted, 0.0, f"level {record.get('level', '?')}"),
    ]
    rows += [
        row(n, m, m.get("recovery"), " ".join(m.get("overrides") or [])) for n, m in methods.items()
    ]
    best = max(
        range(len(methods)),
        key=lambda i: list(methods.values())[i].get("target_accuracy", -1.0),
        default=None,
    )
    section.tables.append(
        Table(
            "Clean, corrupted and the best run of each method",
            columns,
            rows,
            text_columns=frozenset({0, len(columns) - 1}),
            highlight=None if best is None else best + 2,
            reference_rows=frozenset({0, 1}),
            main=True,
            note="target / untargeted: few-shot QA accuracy (%) on the target people's facts / on "
            "facts the corruption did not touch; wrong answer: share of target answers that "
            "are the planted corrupted answer; recovery: (acc - corrupted) / (clean - corrupted), 1 "
            "means the clean knowledge is fully back; logp: mean per-token log-probability "
            "(nats) of the correct, corrupted and random answers. Highlighted: the best target "
            "accuracy.",
        )
    )
    runs = list(record.get("runs") or [])
    if runs:
        section.tables.append(
            Table(
                "Every run",
                columns,
                [
                    row(r["method"], r, r.get("recovery"), f"failed: {r['error']}")
                    if "error" in r
                    else row(r["method"], r, r.get("recovery"), " ".join(r.get("overrides") or []))
                    for r in runs
                ],
                text_columns=frozenset({0, len(columns) - 1}),
                collapsed=True,
            )
        )

    models = [("clean", clean), ("corrupted", corrupted), *methods.items()]
    names = [n for n, _ in models]

    def values(key: str, scale: float = 1.0, sub: str | None = None) -> list[float]:
        out = []
        for _, m in models:
            v = (m.get("logits") or {}).get(key) if sub else m.get(key)
            out.append(scale * v if finite(v) else math.nan)
        return out

    section.figures.append(
        Figure(
            "restor-accuracy",
            index,
            "QA accuracy: clean, corrupted and after unlearning",
            "Few-shot QA accuracy on the target people's facts (what corruption broke and "
            "unlearning should restore) and on untargeted facts (what unlearning must not damage)"
            ", for the clean model, the corrupted model and each method's best run. The dashed "
            "line is the clean model's target accuracy: full recovery reaches it.",
            f"Grouped bar chart of target and untargeted QA accuracy for {len(models)} models; "
            f"target accuracy is {pct(clean.get('target_accuracy'))}% clean and "
            f"{pct(corrupted.get('target_accuracy'))}% corrupted.",
            plots.grouped_bars_png(
                names,
                {
                    "target facts": values("target_accuracy", 100.0),
                    "untargeted facts": values("untargeted_accuracy", 100.0),
                },
                y_label="QA accuracy (%)",
                title="Target and untargeted QA accuracy",
                reference=(
                    ("clean target accuracy", 100.0 * clean["target_accuracy"])
                    if finite(clean.get("target_accuracy"))
                    else None
                ),
                ylim=(0.0, 100.0),
            ),
        )
    )
    section.figures.append(
        Figure(
            "restor-logprob",
            index,
            "Log-probability of the correct, corrupted and random answers",
            "Mean per-token log-probability (nats; higher is more likely) of the correct answer, "
            "the planted corrupted answer and random answers of the same relation, for each model."
            " Restoration lifts the correct answer back above the corrupted one.",
            f"Grouped bar chart of answer log-probabilities for {len(models)} models; the clean "
            f"model gives the correct answer {num((clean.get('logits') or {}).get('correct'), 2)} "
            f"nats per token.",
            plots.grouped_bars_png(
                names,
                {
                    "correct answer": values("correct", sub="logits"),
                    "corrupted answer": values("corrupted", sub="logits"),
                    "random answer": values("random", sub="logits"),
                },
                y_label="mean log-prob per answer token (nats)",
                title="Answer log-probabilities",
            ),
        )
    )
    timed = [{**m, "method": n} for n, m in methods.items() if finite(m.get("seconds"))]
    if timed:
        section.figures.append(seconds_figure(index, timed, "run"))
    return section


__all__ = ["restor_section"]
