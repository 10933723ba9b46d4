"""Utility: does the audited model still do its job? (The figures every run reports.)"""

from __future__ import annotations

import torch

from ..metrics.utility import accuracy_and_perplexity, evaluate_utility
from .base import AUDIT_CHECKS, AuditCheck, AuditContext, CheckResult


@AUDIT_CHECKS.register("utility")
class Utility(AuditCheck):
    """Teacher-forced next-token accuracy and perplexity on the eval rows
    (:func:`unmemorize.metrics.utility.accuracy_and_perplexity`): accuracy = share of non-pad
    targets whose argmax is right, perplexity = exp(Σ CE / number of non-pad targets). Falls back
    to the retain rows when no eval rows are given."""

    name = "utility"
    paper = "TinyMem (arXiv 2410.02159), section 4.1"
    measures = "next-token accuracy and perplexity on held-out (or retain) rows"
    reading = (
        "compare with the original model: a removal that costs much accuracy or perplexity did "
        "not remove selectively"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        sets, cfg = ctx.sets, ctx.config
        rows = sets.eval_ids if sets.eval_ids is not None else sets.retain_ids
        source = "eval" if sets.eval_ids is not None else "retain"
        if rows is None:
            return CheckResult({"skipped": "no eval or retain rows given"})
        if isinstance(rows, torch.Tensor):
            acc, ppl = accuracy_and_perplexity(
                ctx.model, rows, sets.pad_id, batch_size=cfg.batch_size
            )
            summary = {"accuracy": acc, "perplexity": ppl}
        else:
            summary = evaluate_utility(
                ctx.model, dict(rows), sets.pad_id, batch_size=cfg.batch_size
            )
        summary["rows"] = source
        return CheckResult(summary)
