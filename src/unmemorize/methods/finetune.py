"""Fine-tuning mitigations: a few more epochs of ordinary training on clean data (TinyMem §6).

Three recipes share one loop and differ only in their training rows:

* ``finetune_clean``: the clean twins of the forget rows (what the model should say instead);
* ``finetune_extra``: the retain set (the other, clean training data);
* ``finetune_both``: the union of the two.

The optimizer is the TinyMem training optimizer (AdamW, lr 1e-3, weight decay 0.1, betas
(0.9, 0.98), batch 128) and the default is the paper's 5 extra epochs. The original code resumed
the training run's optimizer state; here a fresh AdamW starts unless the data carries that state
(``UnlearnData.finetune_optimizer_state``, which TinyMem's ``--settings paper`` fills from the
run's final checkpoint). Shapes: U forget rows, R retain rows, N training rows, T positions.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..metrics.losses import sequence_losses
from ..runtime import adamw
from .base import (
    METHODS,
    Edit,
    Method,
    check_finite_loss,
    check_positive,
    model_device,
    row_batches,
)
from .data import UnlearnData

logger = logging.getLogger(__name__)

PAPER = (
    "Sakarvadia et al., 'Mitigating Memorization in Language Models', ICLR 2025 "
    "(arXiv 2410.02159), fine-tuning baselines"
)


@dataclass
class FinetuneConfig:
    """Settings of the fine-tuning recipes (defaults: the TinyMem paper's)."""

    epochs: int = 5
    """Passes over the fine-tuning rows (the paper: 5 extra epochs after pre-training)."""
    batch_size: int = 128
    """Sequences per optimizer step."""
    lr: float = 1e-3
    """AdamW learning rate (constant, as in TinyMem training)."""
    weight_decay: float = 0.1
    """AdamW (decoupled) weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    seed: int = 0
    """Seeds the shuffling of the rows (and dropout, where the model has any)."""

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite positive number, got {self.lr}")
        check_positive(self.lr, "lr")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


def missing_clean_twins_error(method: str) -> ValueError:
    return ValueError(
        f"{method} trains on the clean twin of every forget row, but the data has none: pass "
        "UnlearnData(forget_clean_ids=...) with one clean row [U, T] per forget row (the "
        "sequence the model should produce instead); tinymem_unlearn_data fills it from a "
        "TinyMem run's clean sequences. Without twins use finetune_extra (retain set only)."
    )


def resume_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    state: dict,
    params: list[torch.nn.Parameter],
    config: FinetuneConfig,
) -> int:
    """Load a training run's AdamW ``state`` into ``optimizer``; return its step count.

    The moments and step counts continue (AdamW's bias correction included); the recipe's own
    hyperparameters (``config.lr``, ``weight_decay``, ``betas``) replace the stored ones, so a
    run trained with a decaying schedule still fine-tunes at the recipe's learning rate (the
    original's constant 1e-3 was both).

    Raises:
        ValueError: the state was not written for this model's parameters.
    """
    groups = state.get("param_groups") if isinstance(state, dict) else None
    stored = state.get("state") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(stored, dict):
        raise ValueError("finetune_optimizer_state is not an optimizer state_dict")
    n_stored = sum(len(group.get("params", ())) for group in groups)
    if len(groups) != 1 or n_stored != len(params):
        raise ValueError(
            f"finetune_optimizer_state holds {n_stored} parameters in {len(groups)} group(s); "
            f"this model has {len(params)} in one: it was not written by this model's training"
        )
    for index, param in enumerate(params):
        moments = stored.get(index, {})
        exp_avg = moments.get("exp_avg")
        if exp_avg is not None and tuple(exp_avg.shape) != tuple(param.shape):
            raise ValueError(
                f"finetune_optimizer_state's parameter {index} has shape {tuple(exp_avg.shape)}, "
                f"the model's {tuple(param.shape)}: it was not written by this model's training"
            )
    # a copy: the loaded moments are updated in place, and the data's state serves every run
    optimizer.load_state_dict(copy.deepcopy(state))
    for group in optimizer.param_groups:
        group.update(lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))
    steps = [float(m["step"]) for m in optimizer.state.values() if "step" in m]
    return int(max(steps, default=0))


def finetune_rows_(
    model: PreTrainedModel,
    ids: torch.Tensor,
    pad_id: int | None,
    config: FinetuneConfig,
    method: str,
    progress: bool = False,
    optimizer_state: dict | None = None,
) -> list[float]:
    """Train every parameter of ``model`` on ``ids`` [N, T] in place; return the loss per step.

    Loss per step: the mean over the batch of each row's token-mean next-token CE (pad targets
    excluded), exactly the TinyMem training loss. Rows are reshuffled every epoch from one
    generator seeded with ``config.seed``. The model trains in train mode (its configured dropout)
    and is left in eval mode. ``optimizer_state`` (the training run's AdamW state) is resumed
    instead of starting a fresh AdamW (:func:`resume_optimizer_state_`).

    Raises:
        MethodDivergedError: when a loss becomes NaN or infinite.
        ValueError: ``optimizer_state`` does not belong to this model.
    """
    device = model_device(model)
    params = list(model.parameters())  # deduplicates tied weights (GPT-2 wte / lm_head)
    for p in params:
        p.requires_grad_(True)
    optimizer = adamw(
        params, lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas)
    )
    if optimizer_state is not None:
        resumed_at = resume_optimizer_state_(optimizer, optimizer_state, params, config)
        logger.info("%s: resuming the training optimizer (step %d)", method, resumed_at)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs * steps_per_epoch, desc=method, unit="step")
    losses: list[float] = []
    model.train()
    try:
        for _ in range(config.epochs):
            for idx in row_batches(len(ids), config.batch_size, generator=generator, shuffle=True):
                loss = sequence_losses(model, ids[idx].to(device), pad_id).mean()
                value = check_finite_loss(loss, method, len(losses))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}")
    finally:
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        if bar is not None:
            bar.close()
    return losses


class _Finetune(Method):
    """Shared body of the three recipes: subclasses choose the training rows."""

    family = "finetune"
    paper = PAPER
    Config = FinetuneConfig

    def training_rows(self, data: UnlearnData) -> torch.Tensor:
        """[N, T] the rows to fine-tune on."""
        raise NotImplementedError

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        rows = self.training_rows(data)
        # The count of changed entries needs the starting values; a CPU copy keeps the device
        # free for the optimizer state (which is twice this size anyway).
        before = [p.detach().to("cpu", copy=True) for p in model.parameters()]
        resumed = data.finetune_optimizer_state
        losses = finetune_rows_(
            model, rows, data.pad_id, self.config, self.name, progress, optimizer_state=resumed
        )
        changed = total = 0
        with torch.no_grad():
            for p, old in zip(model.parameters(), before, strict=True):
                changed += int((p.detach().cpu() != old).sum())
                total += old.numel()
        epochs = self.config.epochs
        per_epoch = len(losses) // epochs
        epoch_losses = [
            sum(losses[e * per_epoch : (e + 1) * per_epoch]) / per_epoch for e in range(epochs)
        ]
        logger.info(
            "%s: %d rows, %d steps, loss %.4f -> %.4f",
            self.name,
            len(rows),
            len(losses),
            losses[0],
            losses[-1],
        )
        return Edit(
            changed,
            total,
            "parameters",
            losses,
            info={
                "rows": len(rows),
                "steps": len(losses),
                "epoch_losses": epoch_losses,
                "optimizer": "fresh" if resumed is None else "resumed from training",
            },
        )


@METHODS.register
class FinetuneClean(_Finetune):
    """Fine-tune on the clean twins of the memorized sequences (TinyMem "clean" recipe).

    Sakarvadia et al. (arXiv 2410.02159, §6 of the original code): continue training for a few
    epochs on the clean version of every forget row, so the model relearns what it should say at
    the memorized positions. With C the clean twins [U, T] and a batch b ⊂ C::

        L = (1/|b|) Σ_{x∈b} (1/|t(x)|) Σ_{t∈t(x)} −log p_θ(x_{t+1} | x_{≤t})

    where t(x) are the non-pad target positions; AdamW (lr 1e-3, wd 0.1, betas (0.9, 0.98)),
    batch 128, 5 epochs. Needs ``UnlearnData.forget_clean_ids`` (or ``finetune_clean_ids``,
    which replaces them: the twins of training rows when the forget rows are evaluation rows).
    """

    name = "finetune_clean"

    def training_rows(self, data: UnlearnData) -> torch.Tensor:
        twins = data.clean_training_rows
        if twins is None:
            raise missing_clean_twins_error(self.name)
        return twins


@METHODS.register
class FinetuneExtra(_Finetune):
    """Fine-tune on the retain set, the other clean training data (TinyMem "extra" recipe).

    Sakarvadia et al. (arXiv 2410.02159, §6 of the original code): continue training for a few
    epochs on all training data except the noised rows, hoping the memorized rows fade. With R
    the retain rows and a batch b ⊂ R::

        L = (1/|b|) Σ_{x∈b} (1/|t(x)|) Σ_{t∈t(x)} −log p_θ(x_{t+1} | x_{≤t})

    (t(x): non-pad target positions); AdamW (lr 1e-3, wd 0.1, betas (0.9, 0.98)), batch 128,
    5 epochs. Unlike the original, the retain set never contains the forget rows.
    """

    name = "finetune_extra"

    def training_rows(self, data: UnlearnData) -> torch.Tensor:
        data.require_retain(self.name)
        return data.retain_ids


@METHODS.register
class FinetuneBoth(_Finetune):
    """Fine-tune on the clean twins and the retain set together (TinyMem "both" recipe).

    Sakarvadia et al. (arXiv 2410.02159, §6 of the original code): continue training on
    C ∪ R, the clean twins of the forget rows and the retain rows (a twin that already is a
    retain row is used once). For a batch b ⊂ C ∪ R::

        L = (1/|b|) Σ_{x∈b} (1/|t(x)|) Σ_{t∈t(x)} −log p_θ(x_{t+1} | x_{≤t})

    (t(x): non-pad target positions); AdamW (lr 1e-3, wd 0.1, betas (0.9, 0.98)), batch 128,
    5 epochs. Needs ``UnlearnData.forget_clean_ids`` (or ``finetune_clean_ids``) and a retain set.
    """

    name = "finetune_both"

    def training_rows(self, data: UnlearnData) -> torch.Tensor:
        twins = data.clean_training_rows
        if twins is None:
            raise missing_clean_twins_error(self.name)
        data.require_retain(self.name)
        retain = {row.numpy().tobytes() for row in data.retain_ids}
        new = torch.tensor([row.numpy().tobytes() not in retain for row in twins], dtype=torch.bool)
        return torch.cat([twins[new], data.retain_ids])


__all__ = ["FinetuneBoth", "FinetuneClean", "FinetuneConfig", "FinetuneExtra", "finetune_rows_"]
