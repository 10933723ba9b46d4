"""TinyMem's unlearning sets: what a TinyMem run's model must forget and what it must keep.

The methods take a benchmark-agnostic :class:`~unmemorize.methods.UnlearnData`; this module
builds one from a TinyMem run (Sakarvadia et al., arXiv 2410.02159): the forget set U is the
memorized noise / backdoor candidates, the retain set R the clean training rows.

Shapes: N training rows, U forget rows, T positions.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ...methods import NothingToUnlearnError, UnlearnData
from ...metrics.memorization import MemorizationReport, measure_memorization
from .data import TinyMemData


def tinymem_unlearn_data(
    model: PreTrainedModel,
    data: TinyMemData,
    *,
    report: MemorizationReport | None = None,
    batch_size: int = 512,
) -> tuple[UnlearnData, MemorizationReport]:
    """Build the unlearning sets of a TinyMem run from what ``model`` memorizes now.

    The forget set is the memorized candidates (for backdoors: the held-out triggered rows
    on which the backdoor fires); the retain set is every training row that carries no noise
    and no backdoor. ``report`` (a measurement of ``model`` on ``data.memorization``) skips
    measuring again.

    Raises:
        NothingToUnlearnError: when the model memorizes none of the candidates.
    """
    if report is None:
        report = measure_memorization(model, data.memorization, batch_size=batch_size)
    idx = report.memorized_indices()
    if len(idx) == 0:
        raise NothingToUnlearnError(
            f"nothing is memorized: 0 of {report.n_candidates} candidate sequences "
            f"({report.memorized_fraction:.1%}); nothing to unlearn"
        )
    mem = data.memorization.subset(idx)
    retain = data.train_ids[~artifact_rows(data)]
    return (
        UnlearnData(
            forget_ids=mem.target_ids,
            retain_ids=retain,
            pad_id=data.pad_id,
            forget_prefix_len=mem.prefix_len,
            forget_clean_ids=mem.prompt_ids,
        ),
        report,
    )


def artifact_rows(data: TinyMemData) -> torch.Tensor:
    """[N] bool: training rows that carry the noise or backdoor (never part of a retain set).

    Noise: rows equal to a memorization target. Backdoor: the poisoned training rows, which both
    TinyMem generators put first (``info["n_poison_train"]``).
    """
    targets = {row.numpy().tobytes() for row in data.memorization.target_ids}
    mask = torch.tensor(
        [row.numpy().tobytes() in targets for row in data.train_ids], dtype=torch.bool
    )
    n_poison = int(data.info.get("n_poison_train", 0) or 0)
    mask[:n_poison] = True
    return mask


__all__ = ["artifact_rows", "tinymem_unlearn_data"]
