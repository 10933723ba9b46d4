"""Model cards: the ``README.md`` of every model directory unmemorize writes.

A model that had memorized sequences removed should say so where people look first: the Hugging
Face model card. The card is written with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`
and :class:`~huggingface_hub.ModelCardData`, so the hub (and ``ModelCard.load``) read its YAML
front matter: ``base_model`` (the model that was edited; absent for a model trained from scratch),
``library_name: transformers`` and ``tags`` (``unmemorize``, the kind of run and the method). The
body says what was removed, with which method and configuration, the metrics before and after,
and, once an ``audit.json`` lies in the directory, a short audit card (:func:`add_audit_section`
refreshes it when the audit is written later).

The writers (``train``, ``unlearn``, RESTOR's clean and corrupted models) pass the card to
:func:`unmemorize.models.save_model` or write it into their atomic temporary directory, so the
card lands with the weights or not at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__

CARD_NAME = "README.md"
AUDIT_HEADING = "## Audit"
#: At most this many figures per audit section on the card (the rest stay in audit.json).
AUDIT_FIGURES = 6


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith("_seconds")


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metrics a table can show: numbers and booleans, nested dicts flattened with ``/``.

    Wall times (``seconds``, ``*_seconds``) are left out: they describe the machine, not the
    model, and would make the cards of two identical runs differ (run.json keeps them).
    """
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if _is_timing(str(key)):
            continue
        if isinstance(value, Mapping):
            for sub, v in _scalars(value).items():
                out[f"{key}/{sub}"] = v
        elif isinstance(value, (int, float, bool)):
            out[key] = value
    return out


def metrics_table(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Markdown rows ``| metric | before | after |`` (one value column when ``before`` is None)."""
    b, a = _scalars(before), _scalars(after)
    keys = list(dict.fromkeys([*b, *a]))
    if before is None:
        lines = ["| metric | value |", "|---|---|"]
        return lines + [f"| {k} | {_fmt(a[k])} |" for k in keys]
    lines = ["| metric | before | after |", "|---|---|---|"]
    return lines + [f"| {k} | {_fmt(b.get(k, '-'))} | {_fmt(a.get(k, '-'))} |" for k in keys]


def audit_lines(audit: Mapping[str, Any]) -> list[str]:
    """A short audit card: per check that ran, its first figures (``audit.json`` has them all)."""
    lines = [AUDIT_HEADING, ""]
    ran = {name: section for name, section in audit.items() if isinstance(section, Mapping)}
    if not ran:
        return lines + ["`audit.json` holds no finished check.", ""]
    for name, section in ran.items():
        figures = list(_scalars(section).items())[:AUDIT_FIGURES]
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in figures) or "no figures"
        lines.append(f"- **{name}**: {shown}")
    return lines + ["", "All figures: `audit.json` (per forget row: `audit_rows.jsonl`).", ""]


def model_card(
    *,
    title: str,
    summary: str,
    kind: str,
    base_model: str | None = None,
    method: str | None = None,
    config: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    command: str | None = None,
) -> str:
    """The text of a model card (YAML front matter + Markdown body).

    Args:
        title: the card's heading.
        summary: what was done to the model and what was removed, in a sentence or two.
        kind: the run that wrote the model (``unlearn``, ``train``, ``restor-corrupted``, ...);
            a tag.
        base_model: the model that was edited (a local path or hub id); None for a model trained
            from scratch.
        method: the mitigation method (a tag, and the method section's name).
        config: the method's (or run's) resolved configuration, shown as JSON.
        before, after: metrics before and after (``before`` None: one column of final metrics).
        audit: the content of ``audit.json``, when one exists.
        tags: more tags (e.g. the benchmark).
        command: how to reproduce the run.
    """
    from huggingface_hub import ModelCard, ModelCardData

    all_tags = list(dict.fromkeys(["unmemorize", kind, *([method] if method else []), *tags]))
    data = ModelCardData(base_model=base_model, library_name="transformers", tags=all_tags)
    body = [f"# {title}", "", summary, ""]
    if method or config:
        body += ["## Method", ""]
        if method:
            body += [f"`{method}` (`unmemorize ls methods` describes it and names its paper).", ""]
        if config:
            body += ["```json", json.dumps(dict(config), indent=2, default=str), "```", ""]
    if before is not None or after is not None:
        body += ["## Metrics", "", *metrics_table(before, after), ""]
    if audit is not None:
        body += audit_lines(audit)
    if command:
        body += ["## Reproduce", "", "```", command, "```", ""]
    body += [f"Written by unmemorize {__version__}."]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))


def read_audit(directory: str | Path) -> dict | None:
    """``DIR/audit.json`` when it exists (the audit card's figures), else None."""
    from .io import read_json

    path = Path(directory) / "audit.json"
    return read_json(path) if path.is_file() else None


def write_model_card(directory: str | Path, **card: Any) -> Path:
    """Write :func:`model_card` to ``DIR/README.md`` (with the audit of ``DIR/audit.json``).

    Call it on the writer's temporary directory, before it is renamed into place.
    """
    directory = Path(directory)
    card.setdefault("audit", read_audit(directory))
    path = directory / CARD_NAME
    path.write_text(model_card(**card), encoding="utf-8")
    return path


def add_audit_section(directory: str | Path) -> bool:
    """Refresh the audit card of an unmemorize ``DIR/README.md`` from ``DIR/audit.json``.

    Returns False (and changes nothing) where there is no card written by unmemorize or no audit.
    """
    from huggingface_hub import ModelCard

    from .io import atomic_write_text

    directory = Path(directory)
    path, audit = directory / CARD_NAME, read_audit(directory)
    if audit is None or not path.is_file():
        return False
    card = ModelCard.load(path)
    if "unmemorize" not in (card.data.to_dict().get("tags") or []):
        return False  # someone else's card: left alone
    text = str(card)
    section = "\n".join(audit_lines(audit))
    start = text.find(f"\n{AUDIT_HEADING}\n")
    if start >= 0:  # replace the old audit section, up to the next heading
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end + 1 :] if end >= 0 else "")
    else:  # before "## Reproduce" / the closing line
        anchor = text.find("\n## Reproduce\n")
        anchor = anchor if anchor >= 0 else text.rfind("\nWritten by unmemorize")
        anchor = anchor if anchor >= 0 else len(text) - 1
        text = text[: anchor + 1] + section + "\n" + text[anchor + 1 :]
    atomic_write_text(path, text)
    return True


__all__ = [
    "CARD_NAME",
    "add_audit_section",
    "audit_lines",
    "metrics_table",
    "model_card",
    "read_audit",
    "write_model_card",
]
