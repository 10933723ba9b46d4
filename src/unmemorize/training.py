"""Plain next-token training of a causal LM on a stream of batches (no benchmark knowledge).

Used wherever data come from a stream rather than a fixed TinyMem training set: RESTOR's clean
pre-training and corruption, the mining and speed benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from . import tracking
from .metrics.losses import sequence_losses
from .runtime import adamw, compiled


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """Learning-rate multiplier: linear warmup over ``warmup`` steps, then cosine to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train_on_batches(
    model: PreTrainedModel,
    batches: Callable[[int], torch.Tensor],
    steps: int,
    *,
    lr: float,
    pad_id: int | None,
    warmup: int = 0,
    lr_floor: float = 0.1,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.98),
    progress: bool = False,
    desc: str = "train",
) -> list[float]:
    """Next-token training of ``model`` in place on ``batches(step) -> ids [B, T]`` (right-padded).

    The loss is the mean over rows of each row's token-mean cross-entropy (pad targets excluded);
    AdamW over the parameters that require grad, warmup then cosine decay to ``lr * lr_floor``.
    Used for RESTOR's clean pre-training and corruption, where data come from a stream rather
    than a fixed TinyMem training set.

    With an active tracking run (:mod:`unmemorize.tracking`), each step's loss and learning rate
    are logged as ``<desc>/loss`` and ``<desc>/lr``.

    Returns:
        The loss of every step.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=lr, weight_decay=weight_decay, betas=betas)
    device = next(model.parameters()).device
    model.train()
    forward = compiled(model)  # the model itself unless --compile
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True)
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(step, steps, warmup, lr_floor)
            loss = sequence_losses(forward, batches(step).to(device), pad_id).mean()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{desc}: loss became {loss.item()} at step {step + 1}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            tracking.log_scalars(
                {"loss": losses[-1], "lr": optimizer.param_groups[0]["lr"]}, step, prefix=desc
            )
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return losses
