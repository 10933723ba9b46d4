"""Reports: read run, sweep and benchmark directories, write one HTML and one Markdown report.

``build_report(dirs, out)`` writes::

    out/report.html      self-contained: inline CSS, every figure embedded as a base64 PNG
    out/report.md        the same tables; figures linked from out/figures/
    out/figures/*.png    one file per figure, named after its stable id (pareto-1.png, ...)

Each input directory becomes one section, in the order given. Its kind is read from its files,
never from its name. A ``summary.json`` belongs to a benchmark (its ``"benchmark"`` key; older
files without it: RESTOR when it has ``clean`` and ``corrupted``, else TinyMem), which draws its
section (:meth:`unmemorize.benchmarks.Benchmark.report_section`):

==========  ============================================================  =====================
kind        files                                                          written by
==========  ============================================================  =====================
demo        ``summary.json`` with ``baseline`` and ``runs``                ``unmemorize demo``
sweep       ``summary.json`` with ``"kind": "sweep"``                      ``unmemorize sweep``
restor      ``summary.json`` with ``clean`` and ``corrupted``              ``unmemorize restor``
<any>       ``summary.json`` naming a registered ``benchmark``             that benchmark
train       ``run.json`` with ``"kind": "train"`` + ``history.json``       ``unmemorize train``
unlearn     ``run.json`` with ``"kind": "unlearn"``                        ``unmemorize unlearn``
audit       ``audit.json`` alone                                           ``unmemorize audit``
==========  ============================================================  =====================

A directory that also holds an ``audit.json`` (``unlearn --audit``, ``audit --out`` the run
itself) gets the removal card (:mod:`unmemorize.report.audit`) in its section; a demo or sweep run
with ``--audit`` gets the per-method removal table.

A directory holding none of these but whose sub-directories do (``runs/``) stands for those
sub-directories, in name order. Figures get ids ``fig-<name>-<section number>`` (``fig-pareto-1``,
``fig-training-1``, ``fig-seconds-1``, ``fig-restor-accuracy-2``, ``fig-restor-logprob-2``).
"""

from __future__ import annotations

import base64
import datetime
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_dir, atomic_write_text, check_writable
from ..io import read_json as safe_read_json
from .audit import add_removal_card
from .sections import (
    KIND_LABELS,
    Figure,
    Section,
    Table,
    format_text_table,
    train_section,
    unlearn_section,
)

log = logging.getLogger(__name__)

RUN_FILES_HINT = (
    "a run directory holds summary.json (from `unmemorize demo`, `sweep` or `restor`) or "
    "run.json (from `unmemorize train` or `unlearn`) or audit.json (from `unmemorize audit`)"
)

AUDIT_FILE = "audit.json"
"""What ``unmemorize audit`` writes (:data:`unmemorize.audit.AUDIT_JSON`; not imported here so
that reading reports does not load torch)."""


@dataclass(frozen=True)
class ReportPaths:
    """What :func:`build_report` wrote, plus the best-run tables as text for a terminal.

    Attributes:
        html: the self-contained HTML report.
        markdown: the Markdown report.
        figures: the PNG files under ``out/figures/``, in report order.
        summary: per section, its title and main table (best run per method) as fixed-width text.
        sections: the report's sections (tables and figures), in order.
    """

    html: Path
    markdown: Path
    figures: tuple[Path, ...]
    summary: str
    sections: tuple[Section, ...] = field(repr=False, default=())


# --------------------------------------------------------------------------- reading inputs


def read_json(path: Path) -> Any:
    """A JSON file through :func:`unmemorize.io.read_json` (bounded; one-line errors)."""
    try:
        return safe_read_json(path)
    except ValueError as err:
        raise ValueError(
            f"{err}; re-run the command that wrote it, or leave its directory out of the report"
        ) from None


def detect(path: Path, *, strict: bool = True) -> tuple[str, dict] | None:
    """The kind of run directory ``path`` is and its main JSON record; None when it is no run.

    Args:
        strict: raise on a run.json of another kind (a sweep's ``trials/*/run.json``); without
            it such a directory is no run (used when scanning sub-directories).

    Raises:
        ValueError: a summary.json or run.json that is not JSON or of no known kind.
    """
    summary, run = path / "summary.json", path / "run.json"
    if summary.is_file():
        data = read_json(summary)
        if not isinstance(data, dict):
            raise ValueError(f"{summary} holds a JSON {type(data).__name__}, not a summary object")
        kind = data.get("kind")
        if kind == "sweep" or (kind in (None, "demo") and "baseline" in data and "runs" in data):
            return ("sweep" if kind == "sweep" else "demo"), data
        if kind in (None, "restor") and "clean" in data and "corrupted" in data:
            return "restor", data
        if isinstance(data.get("benchmark"), str) and kind not in ("train", "unlearn"):
            return str(kind or "summary"), data  # a registered benchmark's own summary
        raise ValueError(
            f"{summary} is not a demo, sweep or RESTOR summary (kind {kind!r}, keys "
            f"{', '.join(sorted(data)[:6])}); {RUN_FILES_HINT}"
        )
    if run.is_file():
        data = read_json(run)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind in ("train", "unlearn"):
            return kind, data
        if not strict:
            log.info("skipping %s: a run.json of kind %r", path, kind)
            return None
        raise ValueError(f"{run} is not a train or unlearn run.json (kind {kind!r})")
    if (path / AUDIT_FILE).is_file():
        data = read_json(path / AUDIT_FILE)
        if not isinstance(data, dict):
            raise ValueError(
                f"{path / AUDIT_FILE} holds a JSON {type(data).__name__}, not an audit"
            )
        return "audit", data
    return None


def find_inputs(dirs: list[Path]) -> list[tuple[Path, str, dict]]:
    """``(directory, kind, record)`` for every run directory named by ``dirs``, in order.

    Raises:
        FileNotFoundError: a directory that does not exist.
        NotADirectoryError: a path that is a file.
        ValueError: a directory without runs, or a run file that cannot be read.
    """
    if not dirs:
        raise ValueError("give at least one run, sweep or benchmark directory to report on")
    found = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"report input {d} does not exist; check the path")
        if not d.is_dir():
            raise NotADirectoryError(f"report input {d} is a file; give its directory instead")
        hit = detect(d)
        if hit is not None:
            found.append((d, *hit))
            continue
        children = [(c, detect(c, strict=False)) for c in sorted(d.iterdir()) if c.is_dir()]
        runs = [(c, *hit) for c, hit in children if hit is not None]
        if not runs:
            raise ValueError(f"{d} holds no run to report: {RUN_FILES_HINT}")
        found.extend(runs)
    return found


def summary_benchmark(kind: str, record: dict) -> str:
    """The benchmark a summary belongs to: its ``"benchmark"`` key, or (files written before the
    key existed) RESTOR for a RESTOR summary and TinyMem for a demo or sweep."""
    name = record.get("benchmark")
    if isinstance(name, str) and name:
        return name
    return "restor" if kind == "restor" else "tinymem"


def section_label(kind: str, record: dict) -> str:
    """``TinyMem sweep``, ``RESTOR benchmark``, ``training run``, ...: what a directory holds."""
    if kind in ("train", "unlearn"):
        return KIND_LABELS[kind]
    if kind == "audit":
        return "audit"
    name = summary_benchmark(kind, record)
    if name in ("tinymem", "restor") and kind in KIND_LABELS:
        return KIND_LABELS[kind]
    return f"{name} {kind}"


def build_section(index: int, path: Path, kind: str, record: dict) -> Section:
    """One section of the report: facts, tables and figures for one run directory."""
    from ..benchmarks import get_benchmark

    label = section_label(kind, record)
    title = f"{index}. {path} ({label})"
    if kind == "audit":
        return add_removal_card(Section(index, title, "audit"), {}, record)
    if kind not in ("train", "unlearn"):
        try:
            benchmark = get_benchmark(summary_benchmark(kind, record))
        except ValueError as err:
            raise ValueError(f"{path / 'summary.json'}: {err}") from None
    try:
        if kind not in ("train", "unlearn"):
            section = benchmark.report_section(index, title, record, path=path)
        elif kind == "train":
            history_file = path / "history.json"
            history = read_json(history_file) if history_file.is_file() else None
            section = train_section(index, title, record, history)
        else:
            section = unlearn_section(index, title, record)
        audit_file = path / AUDIT_FILE
        audit = read_json(audit_file) if audit_file.is_file() else None
        return add_removal_card(section, record, audit)
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        what = "run.json" if kind in ("train", "unlearn") else "summary.json"
        raise ValueError(
            f"{path / what} does not have the layout of a {label} ({type(err).__name__}"
            f": {err}); was it written by another version of unmemorize?"
        ) from None


# --------------------------------------------------------------------------- rendering

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1320px; margin: 2em auto; padding: 0 1.2em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.3em; margin-top: 2.2em; border-bottom: 2px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
.generated, .note { color: #57606a; font-size: 0.9em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; font-size: 0.86em; margin: .6em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; }
td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; }
tr.best td { background: #e6f4ea; font-weight: 600; }
tr.ref td { color: #57606a; font-style: italic; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9em; max-width: 900px; }
details summary { cursor: pointer; color: #0969da; margin: .6em 0; }
nav ol { padding-left: 1.4em; }
"""


def _html_table(table: Table) -> str:
    head = "".join(
        f'<th class="{"text" if table.is_text(j) else "num"}">{html.escape(c)}</th>'
        for j, c in enumerate(table.columns)
    )
    body = []
    for i, row in enumerate(table.rows):
        cls = "best" if i == table.highlight else ("ref" if i in table.reference_rows else "")
        cells = "".join(
            f'<td class="{"text" if table.is_text(j) else "num"}">{html.escape(v)}</td>'
            for j, v in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    text = (
        f"<h3>{html.escape(table.title)}</h3>\n"
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )
    if table.note:
        text += f'\n<p class="note">{html.escape(table.note)}</p>'
    if table.collapsed:
        text = (
            f"<details><summary>{html.escape(table.title)} ({len(table.rows)} rows)</summary>\n"
            f"{text}\n</details>"
        )
    return text


def _html_figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="{fig.id}">\n<img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(fig.alt, quote=True)}">\n'
        f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)}</figcaption>\n"
        "</figure>"
    )


def render_html(sections: list[Section], generated: str) -> str:
    """The self-contained HTML report (no scripts, no external resources)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>unmemorize report</title>\n<style>{_CSS}</style>\n</head>\n<body>",
        "<h1>unmemorize report</h1>",
        f'<p class="generated">{html.escape(generated)}</p>',
        "<nav><ol>",
        *(
            f'<li><a href="#{s.anchor}">{html.escape(s.title[s.title.find(" ") + 1 :])}</a></li>'
            for s in sections
        ),
        "</ol></nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>')
        if s.facts:
            parts.append('<dl class="facts">')
            parts.extend(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in s.facts)
            parts.append("</dl>")
        parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in s.notes)
        for table in s.tables:
            if not table.collapsed:
                parts.append(_html_table(table))
        parts.extend(_html_figure(f) for f in s.figures)
        parts.extend(_html_table(t) for t in s.tables if t.collapsed)
        parts.append("</section>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    lines.append(
        "|"
        + "|".join(":---" if table.is_text(j) else "---:" for j in range(len(table.columns)))
        + "|"
    )
    for i, row in enumerate(table.rows):
        cells = [_md_cell(v) for v in row]
        if i == table.highlight:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines)


def render_markdown(sections: list[Section]) -> str:
    """The Markdown report; figures are linked as ``figures/<id>.png``."""
    parts = ["# unmemorize report", ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        parts += [f"- **{k}**: {_md_cell(v)}" for k, v in s.facts]
        if s.facts:
            parts.append("")
        for n in s.notes:
            parts += [n, ""]
        for table in s.tables:
            if not table.collapsed:
                parts += [_md_table(table), ""]
        for f in s.figures:
            parts += [
                f"![{_md_cell(f.alt)}](figures/{f.filename})",
                "",
                f"*{f.title}.* {f.caption}",
                "",
            ]
        for table in s.tables:
            if table.collapsed:
                parts += [_md_table(table), ""]
    return "\n".join(parts).rstrip() + "\n"


def render_text(sections: list[Section]) -> str:
    """Per section, its title and main table as fixed-width text (for the terminal)."""
    blocks = []
    for s in sections:
        main = next((t for t in s.tables if t.main), None)
        block = s.title
        if main is not None:
            block += "\n" + format_text_table(main)
        blocks.append(block)
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- the report


def build_report(dirs: list[Path], out: Path, *, progress: bool = False) -> ReportPaths:
    """Read run / sweep / benchmark directories and write ``out/report.html`` and ``report.md``.

    Input files are only read. ``out/figures/`` is replaced as a whole (so no stale figure of an
    earlier report survives); every file is written to a temporary path and renamed into place.

    Args:
        dirs: run directories (or directories of run directories), one report section each.
        out: the report directory (created if missing; may be one of ``dirs``).
        progress: show a progress bar over the directories.

    Returns:
        The paths written and the best-run tables as text.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a missing directory, a directory
            without runs, or an unreadable run file (one line saying which and what to do).
        FileExistsError: ``out`` is a file.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"report output {out} is a file; choose another --out")
    check_writable(out / "report.html")
    inputs = find_inputs([Path(d) for d in dirs])
    sections = [
        build_section(i, path, kind, record)
        for i, (path, kind, record) in enumerate(
            tqdm(inputs, desc="report", unit="dir", disable=not progress), start=1
        )
    ]
    figures = [f for s in sections for f in s.figures]
    with atomic_dir(out / "figures") as tmp:
        for f in figures:
            (tmp / f.filename).write_bytes(f.png)
    from .. import __version__

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    generated = f"Generated {now} by unmemorize {__version__} from {len(sections)} director" + (
        "y" if len(sections) == 1 else "ies"
    )
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, render_markdown(sections))
    atomic_write_text(html_path, render_html(sections, generated))
    log.info("report: %s, %s, %d figures", html_path, md_path, len(figures))
    return ReportPaths(
        html=html_path,
        markdown=md_path,
        figures=tuple(out / "figures" / f.filename for f in figures),
        summary=render_text(sections),
        sections=tuple(sections),
    )


__all__ = [
    "RUN_FILES_HINT",
    "ReportPaths",
    "build_report",
    "build_section",
    "detect",
    "find_inputs",
    "read_json",
    "render_html",
    "render_markdown",
    "render_text",
]
