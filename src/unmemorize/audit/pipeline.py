"""Audit model directories: find the sets an audit reads, load the models, run, write.

The library behind ``unmemorize audit`` and the ``--audit`` option of ``unlearn``, ``demo`` and
``sweep``. Where the audit's rows come from (:func:`load_audit`):

* a **TinyMem run** (``unmemorize train`` / ``demo``) or an ``unlearn`` output of one (it carries
  the run's ``data/``): the run's own sets (:func:`~unmemorize.benchmarks.tinymem.audit_sets.
  tinymem_audit_sets`: every memorization candidate, fresh noised twins as non-members, the clean
  training rows, the test sets);
* an **unlearn output from sequence files**: the files its ``run.json`` records
  (``sources``), with the same window;
* any model with **files**: ``forget`` (rows that must be gone), ``holdout`` (non-members never
  trained on, for membership inference), ``retain`` (benign relearning data; utility rows when no
  ``eval``), cut to ``prefix_len + suffix_len`` tokens.

The *original* model (which decides what counts as returned) is ``original``, else the source
model an unlearn output records, else the audited model itself for a TinyMem training run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..io import read_json
from .api import AUDIT_JSON, AuditReport, audit_model, write_audit
from .base import AUDIT_KEYS, AuditConfig, AuditSets

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 32
"""P and K of sequence files when none is given (the ``unlearn`` / ``measure`` default)."""

DEMO_RELEARN_LRS = (1e-4,)
"""The relearning grid of ``demo --audit`` and ``sweep --audit``: the one learning rate behind
issue 15's figures, so that auditing 21 methods fits in minutes (``unmemorize audit`` and
``unlearn --audit`` run the full grid of :class:`AuditConfig`)."""


@dataclass
class AuditInputs:
    """A model to audit, its sets and the models it is compared with."""

    model: PreTrainedModel
    sets: AuditSets
    original: PreTrainedModel | None = None
    reference: PreTrainedModel | None = None
    source: dict[str, Any] = field(default_factory=dict)


def _record(model_dir: Path) -> dict:
    path = model_dir / "run.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _source_model(record: Mapping[str, Any], model_dir: Path) -> str | None:
    """The model an unlearn output was edited from (absolute when it recorded it so)."""
    if record.get("kind") != "unlearn":
        return None
    sources = record.get("sources") or {}
    name = sources.get("model") or record.get("model")
    if name is None:
        return None
    if not Path(name).is_dir():
        raise FileNotFoundError(
            f"{model_dir} was edited from {name}, which no longer exists; pass --original DIR "
            "(the model before unlearning)"
        )
    return str(name)


def load_audit(
    model_dir: str | Path,
    *,
    original: str | Path | None = None,
    reference: str | Path | None = None,
    forget: str | Path | None = None,
    holdout: str | Path | None = None,
    retain: str | Path | None = None,
    eval_file: str | Path | None = None,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> AuditInputs:
    """Load ``model_dir`` and the sets and models its audit needs (see the module docstring).

    Raises:
        FileNotFoundError / ModelDirError: a missing model directory or sequence file.
        ValueError: sets that cannot be found (say which option to pass), a bad window.
    """
    from ..benchmarks.tinymem.audit_sets import tinymem_audit_sets
    from ..benchmarks.tinymem.experiment import load_run
    from ..data.sequences import read_sequences
    from ..models import load_model
    from ..runtime import check_window

    model_dir = Path(model_dir)
    files = {"holdout": holdout, "retain": retain, "eval": eval_file}
    for name, path in {"forget": forget, **files}.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{name} {path}: no such file")
    model, tokenizer, run_data = load_run(model_dir, dtype=dtype, device=device)
    model.eval()
    record = _record(model_dir)
    source: dict[str, Any] = {"model": str(model_dir)}
    original_dir = None if original is None else str(original)
    if forget is None and run_data is not None:
        if prefix_len is not None or suffix_len is not None:
            raise ValueError(
                "--prefix-len/--suffix-len apply to --forget; a run uses its own window"
            )
        if any(v is not None for v in files.values()):
            raise ValueError(
                f"{model_dir} is a TinyMem run: it supplies its own holdout, retain and eval rows; "
                "leave --holdout/--retain/--eval out (or pass --forget to audit other rows)"
            )
        sets = AuditSets(**tinymem_audit_sets(run_data, tokenizer=tokenizer))
        source["sets"] = "the TinyMem run's candidates; holdout: fresh noised twins"
        if original_dir is None:
            original_dir = _source_model(record, model_dir)
        if original_dir is None and record.get("kind") == "train":
            original_dir = "self"  # a training run audits itself: what it memorizes is M0
    else:
        sources = record.get("sources") or {}
        if forget is None:
            if not sources.get("forget"):
                raise ValueError(
                    f"{model_dir} is neither a TinyMem run nor an unlearn output that records its "
                    "forget file; pass --forget FILE (and --holdout, --retain)"
                )
            forget = sources["forget"]
            holdout = holdout if holdout is not None else sources.get("holdout")
            retain = retain if retain is not None else sources.get("retain")
            eval_file = eval_file if eval_file is not None else sources.get("eval")
            prefix_len = prefix_len if prefix_len is not None else sources.get("prefix_len")
            suffix_len = suffix_len if suffix_len is not None else sources.get("suffix_len")
            if original_dir is None:
                original_dir = _source_model(record, model_dir)
        p = DEFAULT_WINDOW if prefix_len is None else int(prefix_len)
        k = DEFAULT_WINDOW if suffix_len is None else int(suffix_len)
        check_window(model, p, k)
        vocab = model.get_input_embeddings().weight.shape[0]

        def rows(path):
            return None if path is None else read_sequences(path, tokenizer, vocab, p, k)

        sets = AuditSets(
            forget_ids=rows(forget),
            prefix_len=p,
            suffix_len=k,
            holdout_ids=rows(holdout),
            retain_ids=rows(retain),
            eval_ids=rows(eval_file),
            decode=lambda ids: tokenizer.decode(ids),
        )
        source.update(
            forget=str(forget),
            holdout=None if holdout is None else str(holdout),
            retain=None if retain is None else str(retain),
            eval=None if eval_file is None else str(eval_file),
            prefix_len=p,
            suffix_len=k,
        )
    original_model = None
    if original_dir == "self":
        original_model = model
        source["original"] = "the audited model itself (a training run)"
    elif original_dir is not None:
        original_model, _ = load_model(original_dir, dtype=dtype, device=device)
        original_model.eval()
        source["original"] = original_dir
    else:
        source["original"] = None
    reference_model = None
    if reference is not None:
        reference_model, _ = load_model(reference, dtype=dtype, device=device)
        reference_model.eval()
        source["reference"] = str(reference)
    return AuditInputs(model, sets, original_model, reference_model, source)


def resolve_config(config: AuditConfig, sets: AuditSets) -> tuple[AuditConfig, list[str]]:
    """``config`` without the checks the sets cannot serve, when the checks were not chosen.

    Returns:
        ``(config, notes)``: a note per dropped check saying why (e.g. 'mia' without holdout
        rows). Checks named explicitly are kept (and fail with how to fix the input).
    """
    if config.checks is not None:
        return config, []
    notes = []
    checks = list(AUDIT_KEYS)
    if sets.holdout_ids is None or len(sets.holdout_ids) == 0:
        checks.remove("mia")
        notes.append("mia skipped: no holdout (non-member) rows; pass --holdout FILE")
    if not notes:
        return config, []
    return replace(config, checks=tuple(checks)), notes


def run_audit(
    inputs: AuditInputs,
    config: AuditConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = False,
) -> tuple[AuditReport, list[str]]:
    """Audit ``inputs`` and write ``out/audit.json`` + ``audit_rows.jsonl`` (when ``out``).

    Returns:
        ``(report, notes)``: notes say which checks were skipped and why.
    """
    config, notes = resolve_config(config or AuditConfig(), inputs.sets)
    report = audit_model(
        inputs.model,
        inputs.sets,
        original=inputs.original,
        reference=inputs.reference,
        config=config,
        progress=progress,
    )
    if out is not None:
        write_audit(report, out)
    return report, notes


class BenchmarkAuditor:
    """An :data:`~unmemorize.benchmarks.runner.Auditor` for ``demo --audit`` and sweeps.

    Audits an edited model on its benchmark's sets (:meth:`Benchmark.audit_sets`, built once per
    prepared model) against the unedited model, writes ``out/<method>/audit.json`` (``out/
    before/`` for the unedited model) and returns :func:`audit_summary`. The unedited model is
    audited without the relearning attack (its "returned" fraction is not defined).

    Args:
        benchmark: the registered benchmark that prepared the model.
        config: the audit configuration (default: :class:`AuditConfig` with
            :data:`DEMO_RELEARN_LRS`).
        out: where to write each audit; None = write nothing.
    """

    def __init__(self, benchmark: Any, config: AuditConfig | None = None, out: Path | None = None):
        self.benchmark = benchmark
        self.config = config or AuditConfig(relearn_lrs=DEMO_RELEARN_LRS)
        self.config.validate()
        self.out = None if out is None else Path(out)
        self._sets: tuple[int, AuditSets] | None = None

    def sets(self, prepared: Any) -> AuditSets:
        if self._sets is None or self._sets[0] != id(prepared):
            self._sets = (id(prepared), AuditSets(**self.benchmark.audit_sets(prepared)))
        return self._sets[1]

    def __call__(
        self, model: PreTrainedModel, prepared: Any, row: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        sets = self.sets(prepared)
        config, _ = resolve_config(self.config, sets)
        if row is None:
            checks = [c for c in (config.checks or AUDIT_KEYS) if c != "relearn"]
            config = replace(config, checks=tuple(checks))
        report = audit_model(model, sets, original=prepared.model, config=config)
        if self.out is not None:
            name = "before" if row is None else str(row.get("trial") or row["method"])
            write_audit(report, self.out / name)
        return audit_summary(report.to_dict())


_TRIAL_AUDITORS: dict[tuple[str, str], BenchmarkAuditor] = {}


def audit_trial(
    benchmark: Any,
    prepared: Any,
    model: PreTrainedModel,
    row: Mapping[str, Any],
    config: Mapping[str, Any],
    out: str | Path,
) -> dict[str, Any]:
    """The sweep's audit hook (``unmemorize.audit.pipeline:audit_trial``): audit one trial's
    edited model, write ``out/audit.json`` (the trial's directory) and return
    :func:`audit_summary`. The sets are built once per worker process."""
    cfg = AuditConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    key = (benchmark.name, repr(cfg))
    auditor = _TRIAL_AUDITORS.setdefault(key, BenchmarkAuditor(benchmark, cfg))
    sets = auditor.sets(prepared)
    resolved, _ = resolve_config(auditor.config, sets)
    report = audit_model(model, sets, original=prepared.model, config=resolved)
    write_audit(report, out)
    return audit_summary(report.to_dict())


def audit_summary(audit: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of an ``audit.json`` (what a demo table, a sweep and a report show).

    ``returned_fraction`` is the worst of the two relearning attacks (forget half, benign);
    ``mia_auc`` the Min-K% AUC (MUSE's attack); ``quantization_max`` the highest memorized
    fraction over the quantized precisions.
    """

    def get(section: str, key: str):
        part = audit.get(section)
        return None if not isinstance(part, Mapping) else part.get(key)

    relearn = [
        v
        for v in (
            get("relearn", "forget_half_returned_fraction"),
            get("relearn", "benign_returned_fraction"),
        )
        if v is not None
    ]
    quant = audit.get("quantization") or {}
    quant = {k: v for k, v in quant.items() if k != "seconds"}
    auc = get("mia", "auc") or {}
    seconds = sum(
        float(part.get("seconds", 0.0)) for part in audit.values() if isinstance(part, Mapping)
    )
    return {
        "memorized_fraction": get("exact", "memorized_fraction"),
        "token_match_fraction": get("partial", "token_match_fraction"),
        "discoverable_fraction": get("sampled", "discoverable_fraction"),
        "p_extract_mean": get("sampled", "p_extract_mean"),
        "forget_half_returned_fraction": get("relearn", "forget_half_returned_fraction"),
        "benign_returned_fraction": get("relearn", "benign_returned_fraction"),
        "returned_fraction": max(relearn) if relearn else None,
        "relearn_lrs": (get("relearn", "config") or {}).get("lrs"),
        "quantization": quant or None,
        "quantization_max": max(quant.values()) if quant else None,
        "mia_auc": auc or None,
        "min_k_auc": auc.get("min_k"),
        "privleak": get("mia", "privleak"),
        "seconds": seconds,
    }


def read_audit(directory: str | Path) -> dict[str, Any] | None:
    """``directory/audit.json`` when it exists (None otherwise)."""
    path = Path(directory) / AUDIT_JSON
    return read_json(path) if path.is_file() else None


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"1e-4,3e-4"`` -> ``(1e-4, 3e-4)`` with a one-line error naming the option."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"{what} takes comma-separated numbers, e.g. 1e-4,3e-4; got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{what} is empty; give at least one number")
    return values


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


__all__ = [
    "DEMO_RELEARN_LRS",
    "AuditInputs",
    "BenchmarkAuditor",
    "audit_summary",
    "audit_trial",
    "load_audit",
    "parse_floats",
    "parse_names",
    "read_audit",
    "resolve_config",
    "run_audit",
]
