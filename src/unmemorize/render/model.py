"""The report's data model: sections of facts, tables and figures, and how numbers are printed.

Benchmarks build their report section from these (:meth:`Benchmark.report_section`);
:mod:`unmemorize.report` renders them to HTML, Markdown and text. Figures are drawn by
:mod:`unmemorize.render.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import plots


@dataclass(frozen=True)
class Figure:
    """One PNG figure of a section; ``id`` (``fig-<key>-<section>``) is stable across runs."""

    key: str
    section: int
    title: str
    caption: str
    alt: str
    png: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return f"fig-{self.key}-{self.section}"

    @property
    def filename(self) -> str:
        return f"{self.key}-{self.section}.png"


@dataclass
class Table:
    """A table of preformatted cells.

    Attributes:
        text_columns: indices of left-aligned (text) columns; the others are numbers.
        highlight: index of the row to emphasize (the best run), or None.
        reference_rows: rows that are references (the model before unlearning), not runs.
        main: the section's headline table (printed by the CLI).
        collapsed: shown folded in the HTML (long listings such as every run).
    """

    title: str
    columns: list[str]
    rows: list[list[str]]
    text_columns: frozenset[int] = frozenset({0})
    highlight: int | None = None
    reference_rows: frozenset[int] = frozenset()
    note: str = ""
    main: bool = False
    collapsed: bool = False

    def is_text(self, column: int) -> bool:
        return column in self.text_columns


@dataclass
class Section:
    """The part of the report for one input directory."""

    index: int
    title: str
    kind: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"section-{self.index}"


# --------------------------------------------------------------------------- formatting


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Any) -> str:
    return f"{100 * x:.1f}" if finite(x) else "–"


def num(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if finite(x) else "–"


def signed(x: Any, digits: int = 3) -> str:
    return f"{x:+.{digits}f}" if finite(x) else "–"


def secs(x: Any) -> str:
    if not finite(x):
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def kv(mapping: Mapping[str, Any] | None) -> str:
    """``{"lr": 1e-4, "epochs": 2}`` as ``lr=0.0001 epochs=2``."""
    return " ".join(f"{k}={_value(v)}" for k, v in (mapping or {}).items())


def format_text_table(table: Table) -> str:
    """A table as fixed-width text; the highlighted row is marked with ``*``."""
    rows = [table.columns, *table.rows]
    widths = [max(len(r[j]) for r in rows) for j in range(len(table.columns))]
    last = len(widths) - 1

    def line(cells: Sequence[str], mark: str) -> str:
        out = []
        for j, (c, w) in enumerate(zip(cells, widths, strict=True)):
            if not table.is_text(j):
                out.append(c.rjust(w))
            else:  # a trailing text column (configs) is not padded: no trailing spaces
                out.append(c if j == last else c.ljust(w))
        return (mark + "  ".join(out)).rstrip()

    lines = [line(table.columns, "  "), "  " + "-" * (sum(widths) + 2 * last)]
    lines += [line(r, "* " if i == table.highlight else "  ") for i, r in enumerate(table.rows)]
    return "\n".join(lines)


def seconds_figure(index: int, rows: Iterable[Mapping], run_word: str) -> Figure:
    rows = list(rows)
    names = [r["method"] for r in rows]
    seconds = [float(r["seconds"]) for r in rows]
    slowest = max(range(len(rows)), key=lambda i: seconds[i])
    return Figure(
        "seconds",
        index,
        "Wall time of each method",
        f"Seconds taken by the best {run_word} of each method (the unlearning itself, without "
        "evaluation), on the machine that ran it.",
        f"Horizontal bar chart of wall time for {len(rows)} methods; the slowest is "
        f"{names[slowest]} at {seconds[slowest]:.1f} seconds.",
        plots.seconds_png(names, seconds, title=f"Wall time of the best {run_word} per method"),
    )
