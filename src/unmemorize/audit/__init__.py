"""Prove the removal: attacks that test whether a forgotten sequence is gone or only hidden.

``audit_model(model, AuditSets(...))`` runs every registered check of :data:`AUDIT_CHECKS`
(exact and partial extraction, sampled extraction, relearning, quantization, membership
inference, utility) and returns an :class:`AuditReport`; :func:`write_audit` writes
``audit.json`` and ``audit_rows.jsonl``. Each check's class docstring names its paper and writes
its formula; :func:`describe_checks` lists them.
"""

from . import extraction, mia, quantization, relearn, utility  # noqa: F401  (registers checks)
from .api import AUDIT_JSON, AUDIT_ROWS, AuditReport, audit_model, describe_checks, write_audit
from .base import (
    AUDIT_CHECKS,
    AUDIT_KEYS,
    QUANT_DTYPES,
    AuditCheck,
    AuditConfig,
    AuditContext,
    AuditSets,
    CheckResult,
)
from .extraction import ForwardStats, decoding_log_probs, forward_stats, within_n
from .mia import MIA_ATTACKS, membership_scores, roc_auc
from .quantization import quantized_copy, rtn_quantize_
from .relearn import relearn_curve, split_forget

__all__ = [
    "AUDIT_CHECKS",
    "AUDIT_JSON",
    "AUDIT_KEYS",
    "AUDIT_ROWS",
    "MIA_ATTACKS",
    "QUANT_DTYPES",
    "AuditCheck",
    "AuditConfig",
    "AuditContext",
    "AuditReport",
    "AuditSets",
    "CheckResult",
    "ForwardStats",
    "audit_model",
    "decoding_log_probs",
    "describe_checks",
    "forward_stats",
    "membership_scores",
    "quantized_copy",
    "relearn_curve",
    "roc_auc",
    "rtn_quantize_",
    "split_forget",
    "within_n",
    "write_audit",
]
