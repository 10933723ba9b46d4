"""TinyMem's unlearning sets: what a TinyMem run's model must forget and what it must keep.

The methods take a benchmark-agnostic :class:`~unmemorize.methods.UnlearnData`; this module
builds one from a TinyMem run (Sakarvadia et al., arXiv 2410.02159): the forget set U is the
memorized noise / backdoor candidates, the retain set R the clean training rows.

Shapes: N training rows, U forget rows, T positions.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from ...methods import NothingToUnlearnError, UnlearnData
from ...metrics.memorization import MemorizationReport, measure_memorization
from .data import TinyMemData

logger = logging.getLogger(__name__)


#: What ``tinymem_unlearn_data(retain=...)`` accepts: ``"clean"`` (default: every training row
#: without noise or backdoor) or ``"all"`` (the original code's: every training row, the noised /
#: poisoned ones included, less the rows being forgotten).
RETAIN_SETS = ("clean", "all")
#: What ``tinymem_unlearn_data(noise_twins=...)`` accepts for noise runs: the clean fine-tuning
#: recipe trains on the twins of the ``"memorized"`` rows (default) or of ``"all"`` noised training
#: rows (the original recipe, ``ft_toy_model.py``).
NOISE_TWINS = ("memorized", "all")


def tinymem_unlearn_data(
    model: PreTrainedModel,
    data: TinyMemData,
    *,
    report: MemorizationReport | None = None,
    batch_size: int = 512,
    retain: str = "clean",
    noise_twins: str = "memorized",
    optimizer_state: dict | None = None,
) -> tuple[UnlearnData, MemorizationReport]:
    """Build the unlearning sets of a TinyMem run from what ``model`` memorizes now.

    The forget set is the memorized candidates (for backdoors: the held-out triggered rows
    on which the backdoor fires); the retain set is every training row that carries no noise
    and no backdoor (``retain="all"``: every training row, as the original code did; rows equal to
    a forget row are still dropped by :class:`UnlearnData`). ``report`` (a measurement of
    ``model`` on ``data.memorization``) skips measuring again.

    The clean fine-tuning rows (``finetune_clean_ids``) are never evaluation rows: for backdoors
    the clean twins of the poisoned TRAINING rows (the forget rows are the held-out rows the attack
    success rate is measured on); for noise the twins of the memorized rows, or of every noised
    training row with ``noise_twins="all"`` (the original recipe). ``optimizer_state`` (the run's
    training optimizer, :func:`~unmemorize.benchmarks.tinymem.experiment.training_optimizer_state`)
    makes the fine-tuning recipes continue from it, as the original did.

    Raises:
        NothingToUnlearnError: when the model memorizes none of the candidates.
        ValueError: an unknown ``retain`` or ``noise_twins``.
    """
    if retain not in RETAIN_SETS:
        raise ValueError(f"retain must be one of {RETAIN_SETS}, got {retain!r}")
    if noise_twins not in NOISE_TWINS:
        raise ValueError(f"noise_twins must be one of {NOISE_TWINS}, got {noise_twins!r}")
    if report is None:
        report = measure_memorization(model, data.memorization, batch_size=batch_size)
    idx = report.memorized_indices()
    if len(idx) == 0:
        raise NothingToUnlearnError(
            f"nothing is memorized: 0 of {report.n_candidates} candidate sequences "
            f"({report.memorized_fraction:.1%}); nothing to unlearn"
        )
    mem = data.memorization.subset(idx)
    retain_ids = data.train_ids if retain == "all" else data.train_ids[~artifact_rows(data)]
    forget_clean = mem.prompt_ids
    if is_backdoor(data):
        finetune_clean = data.poison_clean_ids
        if finetune_clean is None:
            # a run written before the twins were stored: the only twins at hand are those of
            # the held-out evaluation rows, which must never be trained on
            logger.warning(
                "this backdoor run stores no clean twins of its poisoned training rows (written "
                "by an older version); finetune_clean/finetune_both cannot run: retrain it"
            )
            forget_clean = None
    elif noise_twins == "all":
        finetune_clean = data.memorization.prompt_ids
    else:
        finetune_clean = None  # the forget rows' own twins
    return (
        UnlearnData(
            forget_ids=mem.target_ids,
            retain_ids=retain_ids,
            pad_id=data.pad_id,
            forget_prefix_len=mem.prefix_len,
            forget_clean_ids=forget_clean,
            finetune_clean_ids=finetune_clean,
            finetune_optimizer_state=optimizer_state,
        ),
        report,
    )


def is_backdoor(data: TinyMemData) -> bool:
    """Whether ``data`` is a backdoor run (its candidates are held-out rows, not training rows)."""
    return data.info.get("variant") == "backdoor"


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


__all__ = [
    "NOISE_TWINS",
    "RETAIN_SETS",
    "artifact_rows",
    "is_backdoor",
    "tinymem_unlearn_data",
]
