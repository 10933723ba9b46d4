"""Run an audit and write it: :func:`audit_model`, :func:`write_audit`."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..io import atomic_write_json, atomic_write_text
from .base import AUDIT_CHECKS, AUDIT_KEYS, AuditConfig, AuditContext, AuditSets, CheckResult

log = logging.getLogger(__name__)

AUDIT_JSON = "audit.json"
AUDIT_ROWS = "audit_rows.jsonl"


@dataclass
class AuditReport:
    """An audit's result.

    Attributes:
        sections: one entry per key of :data:`AUDIT_KEYS` (None for a check that did not run).
        rows: one dict per forget row (index, prefix and suffix length, every check's columns).
        config: the resolved configuration.
        seconds: wall-clock seconds per check that ran.
    """

    sections: dict[str, dict | None]
    rows: list[dict]
    config: AuditConfig
    seconds: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> dict | None:
        return self.sections[key]

    def to_dict(self) -> dict[str, dict | None]:
        """The content of ``audit.json``: exactly the keys of :data:`AUDIT_KEYS`."""
        return {key: self.sections.get(key) for key in AUDIT_KEYS}


def _units(name: str, sets: AuditSets, config: AuditConfig) -> int:
    """Progress units of a check: one, or one per relearning step."""
    if name != "relearn":
        return 1
    attacks = int(sets.n_forget >= 2) + int(
        sets.retain_ids is not None and len(sets.retain_ids) > 0
    )
    return max(1, attacks * len(config.relearn_lrs) * config.relearn_steps)


def audit_model(
    model: PreTrainedModel,
    forget: AuditSets,
    *,
    original: PreTrainedModel | None = None,
    reference: PreTrainedModel | None = None,
    config: AuditConfig | None = None,
    progress: bool = False,
) -> AuditReport:
    """Audit ``model`` on the forget rows with every check of ``config.checks``.

    Args:
        model: the edited model; never modified (attacks run on copies, eval mode is restored).
        forget: the forget rows and the holdout / retain / eval rows the checks need.
        original: the model before the edit; decides which rows count as originally memorized
            for the relearning attack (None = every forget row).
        reference: a model that never saw the forget rows, for MUSE's PrivLeak (None = no
            PrivLeak).
        config: the checks and their settings (default: :class:`AuditConfig`).
        progress: show a tqdm bar.

    Returns:
        An :class:`AuditReport`; write it with :func:`write_audit`.

    Raises:
        ValueError: a bad config value or a check whose inputs are missing (e.g. 'mia' without
            holdout rows), before any work is done.
    """
    config = config or AuditConfig()
    config.validate(AUDIT_CHECKS.names())
    names = [key for key in AUDIT_KEYS if config.checks is None or key in config.checks]
    checks = {name: AUDIT_CHECKS.get(name)() for name in names}
    for check in checks.values():
        check.check_inputs(forget, config)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(_units(name, forget, config) for name in names),
        desc="audit",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    ctx = AuditContext(model, forget, config, original=original, reference=reference)
    ctx.progress_bar = bar.update  # the relearning attack ticks once per step
    sections: dict[str, dict | None] = {key: None for key in AUDIT_KEYS}
    columns: dict[str, list] = {}
    seconds: dict[str, float] = {}
    try:
        for name, check in checks.items():
            bar.set_postfix(check=name)
            start = time.perf_counter()
            result: CheckResult = check.run(ctx)
            seconds[name] = time.perf_counter() - start
            sections[name] = dict(result.summary, seconds=round(seconds[name], 3))
            columns.update(result.rows)
            if name != "relearn":
                bar.update(1)
            log.info("audit %s: %.1f s", name, seconds[name])
    finally:
        bar.close()
    return AuditReport(sections, _rows(forget, columns), config, seconds)


def _rows(sets: AuditSets, columns: dict[str, list]) -> list[dict]:
    prefix = sets.prefix_tensor()
    t = sets.forget_ids.shape[1]
    rows = []
    for i, p in enumerate(prefix.tolist()):
        row: dict[str, Any] = {
            "index": i,
            "prefix_len": p,
            "suffix_len": max(0, min(sets.suffix_len, t - p)),
        }
        row.update({name: values[i] for name, values in columns.items()})
        rows.append(row)
    return rows


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / ±inf floats as None (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_audit(report: AuditReport, out_dir: str | Path) -> Path:
    """Write ``DIR/audit_rows.jsonl`` (one row per forget sequence) and then ``DIR/audit.json``
    (exactly the keys of :data:`AUDIT_KEYS`), each atomically. Returns the path of audit.json.

    When DIR is a model directory with an unmemorize model card (``README.md``), the card's audit
    section is refreshed from the new audit.json."""
    from ..model_card import add_audit_section

    out = Path(out_dir)
    lines = "".join(json.dumps(_finite(row), allow_nan=False) + "\n" for row in report.rows)
    atomic_write_text(out / AUDIT_ROWS, lines)
    atomic_write_json(out / AUDIT_JSON, _finite(report.to_dict()))
    add_audit_section(out)
    return out / AUDIT_JSON


def describe_checks() -> list[dict[str, str]]:
    """Name, paper, what it measures and how to read it, for every check (``unmemorize ls``)."""
    return [AUDIT_CHECKS.get(name).describe() for name in AUDIT_KEYS if name in AUDIT_CHECKS]
