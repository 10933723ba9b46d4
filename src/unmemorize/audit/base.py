"""The audit's inputs, its configuration and the registry of its checks.

An audit asks whether a model still holds a set of *forget* sequences after a mitigation claimed
to remove them. Every check reads the same :class:`AuditSets` and :class:`AuditConfig` through an
:class:`AuditContext`, which computes the one teacher-forced forward pass over the forget rows
once and hands it to every check that needs it (exact, partial, sampled extraction and
membership inference share it).

Shapes: U forget rows, H holdout rows, R retain rows, T positions, K suffix length, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..registry import Registry, suggest

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .extraction import ForwardStats

QUANT_DTYPES = ("bfloat16", "float16", "int8", "int4")
"""Precisions the quantization check knows (see :mod:`unmemorize.audit.quantization`)."""


@dataclass
class AuditSets:
    """The sequences an audit reads.

    The model is prompted with the first ``prefix_len[i]`` tokens of ``prompt_ids[i]`` (the clean
    prefix) and must not reproduce ``forget_ids[i]`` at positions ``[p_i, p_i + K)`` (clipped to
    T), the convention of :func:`unmemorize.metrics.memorization.memorized`. The *audited
    sequence* of row i is the clean prefix followed by the forget row's tokens from ``p_i`` on;
    the one forward pass, the extraction checks and the membership-inference scores all read it.

    Attributes:
        forget_ids: [U, T] the rows that must be gone (what the model was trained on; noised or
            backdoored rows for TinyMem). Pass only the rows that count (TinyMem: the
            memorization candidates).
        prefix_len: p, one int or a [U] tensor of per-row prompt lengths.
        suffix_len: K, the number of suffix tokens that must not be reproduced.
        prompt_ids: [U, T] clean twins whose prefixes prompt the model; None = ``forget_ids``.
        holdout_ids: [H, T] non-members of the same distribution, never trained on (membership
            inference). Build them like the audited sequences (TinyMem: clean prefix + fresh
            noise), so that members and non-members differ only in membership.
        retain_ids: [R, T] rows the model may keep (the benign relearning attack trains on them).
        eval_ids: [E, T] rows (or ``{name: rows}``) for accuracy and perplexity; None = none.
        pad_id: padding id, never scored; None = no padding.
        decode: token ids -> text, used by the zlib attack; None = compress the token ids' bytes.
    """

    forget_ids: torch.Tensor
    prefix_len: int | torch.Tensor
    suffix_len: int
    prompt_ids: torch.Tensor | None = None
    holdout_ids: torch.Tensor | None = None
    retain_ids: torch.Tensor | None = None
    eval_ids: torch.Tensor | Mapping[str, torch.Tensor] | None = None
    pad_id: int | None = None
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.forget_ids, torch.Tensor) or self.forget_ids.ndim != 2:
            raise ValueError("forget_ids must be a [U, T] tensor of token ids")
        u, t = self.forget_ids.shape
        if u == 0:
            raise ValueError("the forget set is empty: pass at least one row to audit")
        if self.prompt_ids is not None and self.prompt_ids.shape != self.forget_ids.shape:
            raise ValueError(
                f"prompt_ids has shape {tuple(self.prompt_ids.shape)} but forget_ids has "
                f"{tuple(self.forget_ids.shape)}; pass one clean prompt row per forget row"
            )
        if isinstance(self.prefix_len, torch.Tensor):
            if self.prefix_len.shape != (u,):
                raise ValueError(
                    f"prefix_len must be an int or a [{u}] tensor (one per forget row), got "
                    f"shape {tuple(self.prefix_len.shape)}"
                )
        elif not isinstance(self.prefix_len, int) or isinstance(self.prefix_len, bool):
            raise ValueError("prefix_len must be an int or a [U] tensor of ints")
        if not isinstance(self.suffix_len, int) or self.suffix_len < 1:
            raise ValueError(f"suffix_len must be a positive int, got {self.suffix_len!r}")
        for name in ("holdout_ids", "retain_ids"):
            rows = getattr(self, name)
            if rows is not None and (rows.ndim != 2 or rows.shape[1] < 2):
                raise ValueError(f"{name} must be a [n, T] tensor of token ids with T >= 2")

    @classmethod
    def from_memorization(cls, mem: Any, *, candidates_only: bool = True, **kwargs) -> AuditSets:
        """Audit sets from a ``MemorizationSet`` (target, clean prompt, prefix, suffix).

        Args:
            mem: anything with ``target_ids``, ``prompt_ids``, ``prefix_len``, ``suffix_len``
                (and ``window_differs()`` when ``candidates_only``).
            candidates_only: keep only the rows whose target differs from the clean twin inside
                the scored window (elsewhere reproducing it is generalization).
            **kwargs: the other fields (``holdout_ids``, ``retain_ids``, ``eval_ids``, ...).
        """
        keep = (
            mem.window_differs()
            if candidates_only
            else torch.ones(len(mem.target_ids), dtype=torch.bool)
        )
        prefix = mem.prefix_len
        if isinstance(prefix, torch.Tensor):
            prefix = prefix[keep]
        return cls(
            forget_ids=mem.target_ids[keep],
            prefix_len=prefix,
            suffix_len=int(mem.suffix_len),
            prompt_ids=mem.prompt_ids[keep],
            **kwargs,
        )

    @property
    def n_forget(self) -> int:
        return int(self.forget_ids.shape[0])

    def prefix_tensor(self) -> torch.Tensor:
        """[U] long: the prompt length of every forget row."""
        if isinstance(self.prefix_len, int):
            return torch.full((self.n_forget,), self.prefix_len, dtype=torch.long)
        return self.prefix_len.to(torch.long).cpu()

    def prompts(self) -> torch.Tensor:
        """[U, T] the clean prompt rows (``forget_ids`` when none were given)."""
        return self.forget_ids if self.prompt_ids is None else self.prompt_ids

    def audited_ids(self) -> torch.Tensor:
        """[U, T] clean prefix ``prompt[:p]`` followed by ``forget[p:]``, row by row."""
        if self.prompt_ids is None:
            return self.forget_ids
        pos = torch.arange(self.forget_ids.shape[1])[None, :]  # [1, T]
        in_prefix = pos < self.prefix_tensor()[:, None]  # [U, T]
        return torch.where(in_prefix, self.prompt_ids, self.forget_ids)

    def subset(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompt rows, forget rows, prefix lengths)`` of the rows ``index``."""
        return self.prompts()[index], self.forget_ids[index], self.prefix_tensor()[index]


@dataclass
class AuditConfig:
    """Every knob of an audit, with the defaults that reproduce issue 15's figures.

    Decoding (sampled extraction) follows Hugging Face's order: temperature, then top-k, then
    top-p.
    """

    checks: tuple[str, ...] | None = None
    """Checks to run (names in ``AUDIT_CHECKS``); None = all. A check not run writes null."""
    batch_size: int = 64
    """Rows per forward pass (halved automatically on out-of-memory)."""
    temperature: float = 1.0
    """Sampling temperature of the sampled-extraction check (> 0)."""
    top_k: int = 0
    """Keep only the k most likely tokens when sampling; 0 = no top-k."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 = off."""
    n_samples: int = 100
    """n of (n, p)-discoverable extraction: samples an adversary draws per prefix."""
    discoverable_prob: float = 0.5
    """p of (n, p)-discoverable extraction: a row counts when 1 - (1 - p_row)^n >= this."""
    relearn_steps: int = 30
    """Fine-tuning steps of each relearning attack."""
    relearn_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    """Learning-rate grid of the relearning attacks; the worst case over it is reported."""
    relearn_batch_size: int = 32
    """Rows per relearning step (the whole set when it is smaller)."""
    relearn_every: int = 10
    """Measure the memorized fraction every this many relearning steps (the curve)."""
    quant_dtypes: tuple[str, ...] = QUANT_DTYPES
    """Precisions of the quantization attack (bfloat16, float16, int8, int4)."""
    mia_k: float = 0.2
    """k of Min-K% and Min-K%++: the fraction of lowest-scoring tokens averaged."""
    seed: int = 0
    """Seed of the forget-set split and of the relearning batches."""

    def validate(self, known_checks: Sequence[str] = ()) -> None:
        """Raise ValueError (one line, saying how to fix it) on any bad value."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        if self.checks is not None:
            need(len(self.checks) > 0, "checks is empty; pass None to run every check")
            for name in self.checks:
                if known_checks and name not in known_checks:
                    raise suggest(name, list(known_checks), "audit check")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"temperature must be > 0, got {self.temperature}; use 1.0 for plain sampling",
        )
        need(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must lie in (0, 1] (1 = off), got {self.top_p}")
        need(self.n_samples >= 1, f"n_samples must be >= 1, got {self.n_samples}")
        need(
            0 < self.discoverable_prob <= 1,
            f"discoverable_prob must lie in (0, 1], got {self.discoverable_prob}",
        )
        need(
            self.relearn_steps >= 1,
            f"relearn_steps must be >= 1, got {self.relearn_steps}; drop 'relearn' from "
            "checks to skip the attack",
        )
        need(len(self.relearn_lrs) > 0, "relearn_lrs is empty; give at least one learning rate")
        for lr in self.relearn_lrs:
            need(
                math.isfinite(lr) and lr > 0,
                f"every relearning learning rate must be > 0, got {lr}; e.g. (1e-4, 3e-4, 1e-3)",
            )
        need(
            self.relearn_batch_size >= 1,
            f"relearn_batch_size must be >= 1, got {self.relearn_batch_size}",
        )
        need(self.relearn_every >= 1, f"relearn_every must be >= 1, got {self.relearn_every}")
        need(len(self.quant_dtypes) > 0, "quant_dtypes is empty; e.g. ('int8', 'int4')")
        for name in self.quant_dtypes:
            if name not in QUANT_DTYPES:
                raise suggest(name, QUANT_DTYPES, "quantization dtype")
        need(0 < self.mia_k <= 1, f"mia_k must lie in (0, 1] (e.g. 0.2), got {self.mia_k}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    """What one check returns.

    Attributes:
        summary: the JSON-able section of ``audit.json`` under the check's name.
        rows: per-forget-row columns (each a list of U JSON-able values) for ``audit_rows.jsonl``.
    """

    summary: dict
    rows: dict[str, list] = field(default_factory=dict)


class AuditCheck:
    """One registered check. Subclasses set the class attributes and implement :meth:`run`.

    Attributes:
        name: the key of its section in ``audit.json``.
        paper: where the check comes from.
        measures: what it measures, in one sentence.
        reading: how to read its figures.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    measures: ClassVar[str]
    reading: ClassVar[str]

    def check_inputs(self, sets: AuditSets, config: AuditConfig) -> None:
        """Raise ValueError before any work when the inputs cannot serve this check."""

    def run(self, ctx: AuditContext) -> CheckResult:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, str]:
        return {
            "name": cls.name,
            "paper": cls.paper,
            "measures": cls.measures,
            "reading": cls.reading,
        }


AUDIT_CHECKS: Registry[type[AuditCheck]] = Registry("audit check")
"""Every check, by name, in the order of ``audit.json``'s keys (see :data:`AUDIT_KEYS`)."""

AUDIT_KEYS = ("exact", "partial", "sampled", "relearn", "quantization", "mia", "utility")
"""The top-level keys of ``audit.json``, in order."""


class AuditContext:
    """What checks share: the inputs, the models, and the one forward pass over the forget rows.

    Args:
        model: the audited (edited) model; never modified.
        sets: the audit's rows.
        config: the audit's configuration.
        original: the model before the edit (decides which rows were memorized); None = treat
            every forget row as originally memorized.
        reference: a model that never saw the forget rows (MUSE's retrained model), for PrivLeak.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        sets: AuditSets,
        config: AuditConfig,
        original: PreTrainedModel | None = None,
        reference: PreTrainedModel | None = None,
    ) -> None:
        self.model = model
        self.sets = sets
        self.config = config
        self.original = original
        self.reference = reference
        self.progress_bar: Callable[[], Any] | None = None
        """Called once per relearning step (a progress bar's ``update``); None = silent."""
        self._stats: ForwardStats | None = None
        self._original_memorized: torch.Tensor | None = None

    @property
    def stats(self) -> ForwardStats:
        """The one teacher-forced pass of ``model`` over the audited forget rows (computed once)."""
        if self._stats is None:
            from .extraction import forward_stats

            self._stats = forward_stats(
                self.model,
                self.sets.audited_ids(),
                self.sets.pad_id,
                self.config,
                prefix_len=self.sets.prefix_tensor(),
                suffix_len=self.sets.suffix_len,
            )
        return self._stats

    @property
    def original_memorized(self) -> torch.Tensor:
        """[U] bool: the rows the original model memorized (all True without ``original``)."""
        if self._original_memorized is None:
            if self.original is None:
                self._original_memorized = torch.ones(self.sets.n_forget, dtype=torch.bool)
            else:
                from .extraction import exact_verdicts

                self._original_memorized = exact_verdicts(self.original, self.sets, self.config)
        return self._original_memorized
