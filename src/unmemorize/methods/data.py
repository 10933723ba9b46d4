"""What a method unlearns: the forget set U and the retain set R, benchmark-agnostic.

Every method's ``apply(model, data)`` takes an :class:`UnlearnData`; a benchmark (or the user's
files, :mod:`unmemorize.unlearn`) builds it. Building it from a benchmark's run is the benchmark's
job (TinyMem: :func:`unmemorize.benchmarks.tinymem.unlearn_data.tinymem_unlearn_data`), so this
module knows nothing about any benchmark.

Shapes: U forget rows, R retain rows, T positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


class NothingToUnlearnError(ValueError):
    """The forget set is empty: the model memorizes none of the given sequences."""


@dataclass
class UnlearnData:
    """What to forget and what to keep.

    Attributes:
        forget_ids: [U, T] the sequences the model memorized (the forget / unlearn set U).
        retain_ids: [R, T] clean data whose behaviour must be kept (the retain set R). Rows equal
            to a forget row are removed on construction: the original TinyMem code kept the
            forget rows in R, which trains them back in.
        pad_id: padding id (excluded from every loss), or None when rows hold no padding.
        forget_prefix_len: [U] where the memorized continuation starts in each forget row (the
            prompt length); None = unknown (methods that score only the continuation then use
            the whole row).
        forget_clean_ids: [U, T] the clean twin of each forget row (what the model should say
            instead); None when there are no twins.
        finetune_clean_ids: [C, T] the clean rows ``finetune_clean``/``finetune_both`` train on;
            None = ``forget_clean_ids``. A benchmark sets it when the forget rows are evaluation
            rows that must never be trained on (TinyMem backdoors: the forget rows are the
            held-out triggered rows that measure the attack, and the original recipe trains on
            the clean twins of the poisoned TRAINING rows), or when the recipe trains on more
            twins than the forget rows have (TinyMem's paper setting: every noised row's twin).
        finetune_optimizer_state: the ``state_dict`` of the AdamW that trained the model (one
            parameter group over ``model.parameters()``); the fine-tuning recipes then continue
            from its moments and step count instead of starting a fresh AdamW, as TinyMem's
            original fine-tuning did (``--settings paper``). None (default): a fresh optimizer.
    """

    forget_ids: torch.Tensor
    retain_ids: torch.Tensor
    pad_id: int | None = None
    forget_prefix_len: torch.Tensor | None = None
    forget_clean_ids: torch.Tensor | None = None
    finetune_clean_ids: torch.Tensor | None = None
    finetune_optimizer_state: dict | None = field(default=None, repr=False)
    n_retain_overlap_removed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("forget_ids", "retain_ids", "forget_clean_ids", "finetune_clean_ids"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.ndim != 2:
                raise ValueError(f"{name} must be a 2-D token tensor [rows, positions]")
            if value.dtype != torch.long:
                setattr(self, name, value.long())
        if len(self.forget_ids) == 0:
            raise NothingToUnlearnError("the forget set is empty: nothing to unlearn")
        t = self.forget_ids.shape[1]
        if self.retain_ids.shape[1] != t and len(self.retain_ids):
            raise ValueError(
                f"forget rows have {t} positions but retain rows have "
                f"{self.retain_ids.shape[1]}; pad or cut them to one length"
            )
        if self.forget_prefix_len is not None:
            self.forget_prefix_len = torch.as_tensor(self.forget_prefix_len, dtype=torch.long)
            if self.forget_prefix_len.shape != (len(self.forget_ids),):
                raise ValueError("forget_prefix_len must hold one prompt length per forget row")
        if self.forget_clean_ids is not None and self.forget_clean_ids.shape != (
            self.forget_ids.shape
        ):
            raise ValueError("forget_clean_ids must have the shape of forget_ids")
        if (
            self.finetune_clean_ids is not None
            and self.finetune_clean_ids.shape[1:] != (self.forget_ids.shape[1:])
        ):
            raise ValueError("finetune_clean_ids rows must have as many positions as forget rows")
        if len(self.retain_ids):
            forget_rows = {row.numpy().tobytes() for row in self.forget_ids}
            keep = torch.tensor(
                [row.numpy().tobytes() not in forget_rows for row in self.retain_ids],
                dtype=torch.bool,
            )
            self.n_retain_overlap_removed = int((~keep).sum())
            if self.n_retain_overlap_removed:
                logger.info(
                    "removed %d retain rows that are also forget rows",
                    self.n_retain_overlap_removed,
                )
                self.retain_ids = self.retain_ids[keep]

    @property
    def n_forget(self) -> int:
        return len(self.forget_ids)

    @property
    def n_retain(self) -> int:
        return len(self.retain_ids)

    @property
    def clean_training_rows(self) -> torch.Tensor | None:
        """[C, T] the clean rows the clean fine-tuning recipe trains on (None: no twins)."""
        if self.finetune_clean_ids is not None:
            return self.finetune_clean_ids
        return self.forget_clean_ids

    def require_retain(self, method: str) -> None:
        """Raise a clear error when ``method`` needs a retain set and there is none."""
        if self.n_retain == 0:
            raise ValueError(
                f"{method} needs a retain set (clean data to keep); pass --retain FILE"
            )

    def continuation_mask(self) -> torch.Tensor:
        """[U, T-1] bool: the next-token targets that belong to each row's memorized continuation.

        Target position j predicts token j+1; the continuation starts at ``forget_prefix_len``, so
        targets ``j >= prefix_len - 1`` count. Padding never counts.
        """
        u, t = self.forget_ids.shape
        pos = torch.arange(t - 1)[None, :]
        if self.forget_prefix_len is None:
            mask = torch.ones(u, t - 1, dtype=torch.bool)
        else:
            mask = pos >= (self.forget_prefix_len[:, None] - 1).clamp(min=0)
        if self.pad_id is not None:
            mask &= self.forget_ids[:, 1:] != self.pad_id
        return mask


__all__ = ["NothingToUnlearnError", "UnlearnData"]
