"""Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024, arXiv 2308.07707).

SSD is retrain-free: it compares a diagonal Fisher importance on the forget set with the same
importance on the whole training set, selects the parameters far more important to the forget
set, and scales them down in proportion to that imbalance. Shapes: U forget rows, R retain rows,
T positions, V vocabulary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from ..metrics.losses import batch_token_mean_loss
from ..mlp import MLPAdapter
from .base import METHODS, Edit, Method, freeze, model_device, row_batches
from .data import UnlearnData

logger = logging.getLogger(__name__)

IMPORTANCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SSDConfig:
    """Settings of SSD (defaults: the paper's code, ResNet18/CIFAR settings)."""

    selection_weight: float = 10.0
    """α: dampen a parameter when I_forget > α · I_full (larger = fewer parameters touched)."""
    dampening_constant: float = 1.0
    """λ: a selected parameter is scaled by min(λ · I_full / I_forget, 1) (smaller = stronger)."""
    batch_size: int = 64
    """Rows per mini-batch of both importance passes. The importance scale depends on it, so
    with fewer forget rows than this use batch_size <= the forget rows (a warning says so)."""
    mlp_only: bool = False
    """Consider only the MLP weight matrices (bounds memory on big models); False = every
    parameter, as in the paper."""
    importance_dtype: str = "float32"
    """dtype of the two importance buffers: float32 or bfloat16 (halves their memory, but sums
    of squared gradients rounded to 3 significant digits move entries across the I_f > α I_D
    line, so the selection can differ from float32's)."""
    importance_device: str = "auto"
    """Where the importance buffers live: auto (next to each parameter) or cpu."""

    def validate(self) -> None:
        for name in ("selection_weight", "dampening_constant"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.importance_dtype not in IMPORTANCE_DTYPES:
            raise ValueError(
                f"importance_dtype must be one of {', '.join(IMPORTANCE_DTYPES)}, "
                f"got {self.importance_dtype!r}"
            )
        if self.importance_device not in ("auto", "cpu"):
            raise ValueError(
                f"importance_device must be 'auto' or 'cpu', got {self.importance_device!r}"
            )


def importance(
    model: PreTrainedModel,
    params: list[nn.Parameter],
    ids: torch.Tensor,
    pad_id: int | None,
    batch_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "auto",
    desc: str = "importance",
    progress: bool = False,
) -> list[torch.Tensor]:
    """SSD's diagonal Fisher: the mean over mini-batches of the squared batch-mean gradient.

    ``I[p] = (1/K) Σ_k (∂ L_k / ∂p)²`` with ``L_k = batch_token_mean_loss`` of the k-th of the K
    consecutive (unshuffled) batches of ``ids`` [N, T]. The model should be in eval mode.

    Each parameter's gradient is squared into its buffer by a post-accumulate-grad hook as soon
    as the backward pass produces it, then dropped, so the gradients of all ``params`` never
    exist at once (``autograd.grad`` returned them all together: one more copy of the model).

    Returns:
        One buffer per parameter, of the parameter's shape, in ``dtype``, on the parameter's
        device (``device="auto"``) or on the CPU.
    """
    run_device = model_device(model)
    buffers = [
        torch.zeros(p.shape, dtype=dtype, device=p.device if device == "auto" else device)
        for p in params
    ]
    for p in params:
        p.requires_grad_(True)
        p.grad = None

    def square_into(buf: torch.Tensor):
        def hook(param: torch.Tensor) -> None:
            square = param.grad.float().square_()  # in place: the gradient is dropped next
            buf.add_(square.to(device=buf.device, dtype=buf.dtype))
            param.grad = None

        return hook

    batches = list(row_batches(len(ids), batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch")
    handles = [
        p.register_post_accumulate_grad_hook(square_into(b))
        for p, b in zip(params, buffers, strict=True)
    ]
    try:
        for idx in batches:
            loss = batch_token_mean_loss(model, ids[idx].to(run_device), pad_id)
            # Each hook clears its .grad, so nothing carries over between batches; a parameter
            # the loss does not reach gets no hook call and adds nothing.
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    for buf in buffers:
        buf.div_(max(1, len(batches)))
    return buffers


@torch.no_grad()
def dampen_(
    param: torch.Tensor,
    forget_importance: torch.Tensor,
    full_importance: torch.Tensor,
    selection_weight: float,
    dampening_constant: float,
) -> int:
    """Apply SSD's rule to one tensor in place; return how many entries were scaled down.

    ``selected = I_f > α · I_D``; ``β = min(λ · I_D / I_f, 1)``; ``θ[selected] *= β[selected]``.
    Selected entries have I_f > 0, so the division is safe where it is used.
    """
    i_f = forget_importance.to(device=param.device, dtype=torch.float32)
    i_d = full_importance.to(device=param.device, dtype=torch.float32)
    selected = i_f > selection_weight * i_d
    beta = torch.where(selected, (dampening_constant * i_d / i_f).clamp(max=1.0), 1.0)
    param.mul_(beta.to(param.dtype))
    return int((beta < 1).sum())


@METHODS.register
class SSD(Method):
    """Selective Synaptic Dampening: shrink the weights far more important to the forget set.

    Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
    Synaptic Dampening", AAAI 2024 (arXiv 2308.07707). With L_k the mean next-token CE (pad
    excluded) of the k-th of K unshuffled mini-batches, the importance of a parameter θ on a set
    S is the diagonal empirical Fisher::

        I_S[θ] = (1/K) Σ_k (∂ L_k / ∂θ)²

    computed on the forget set (I_f) and on the full training set D = retain ∪ forget (I_D) with
    the model in eval mode and the same batch size. Then, element-wise::

        selected = I_f > α · I_D
        β        = min(λ · I_D / I_f, 1)
        θ        ← β · θ   where selected, θ unchanged elsewhere

    (α = ``selection_weight``, λ = ``dampening_constant``; with λ ≤ α every selected weight
    shrinks). No training; the cost is two gradient passes. Counts: entries dampened of the
    entries considered (all parameters, or the MLP matrices with ``mlp_only``).
    """

    name = "ssd"
    family = "dampening"
    paper = (
        "Foster, Schoepf & Brintrup, 'Fast Machine Unlearning Without Retraining Through "
        "Selective Synaptic Dampening', AAAI 2024 (arXiv 2308.07707)"
    )
    Config = SSDConfig

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        cfg = self.config
        if cfg.mlp_only:
            named = [(w.name, w.parameter) for w in MLPAdapter(model).weight_matrices()]
        else:
            named = list(model.named_parameters())  # tied weights appear once
        params = [p for _, p in named]
        if data.n_forget < cfg.batch_size:
            # The squared batch-mean gradient holds a noise term ~1/batch: on a forget batch of
            # U < batch_size rows it is inflated by up to batch_size/U against I_full, which
            # then selects far more weights than alpha suggests (measured: 36% of a tiny model).
            logger.warning(
                "ssd: the forget set has %d rows, fewer than batch_size=%d, so I_forget comes "
                "from smaller batches than I_full and is inflated by up to %.1fx; set "
                "batch_size=%d (or lower) to compare like with like",
                data.n_forget,
                cfg.batch_size,
                cfg.batch_size / data.n_forget,
                data.n_forget,
            )
        dtype = IMPORTANCE_DTYPES[cfg.importance_dtype]
        freeze(model)  # gradients (and backward passes) only for the parameters considered
        model.eval()  # as in the paper: importance without dropout
        common = dict(dtype=dtype, device=cfg.importance_device, progress=progress)
        forget_imp = importance(
            model, params, data.forget_ids, data.pad_id, cfg.batch_size, desc="I_forget", **common
        )
        # D includes the forget rows (the paper's ConcatDataset(retain, forget)), retain first.
        full_ids = torch.cat([data.retain_ids, data.forget_ids])
        full_imp = importance(
            model, params, full_ids, data.pad_id, cfg.batch_size, desc="I_full", **common
        )
        dampened: dict[str, int] = {}
        for (name, param), i_f, i_d in zip(named, forget_imp, full_imp, strict=True):
            n = dampen_(param, i_f, i_d, cfg.selection_weight, cfg.dampening_constant)
            if n:
                dampened[name] = n
        count = sum(dampened.values())
        total = sum(p.numel() for p in params)
        if count == 0:
            logger.warning(
                "ssd dampened nothing: no parameter has I_forget > %g * I_full; lower "
                "selection_weight to select some (the model is returned unchanged)",
                cfg.selection_weight,
            )
        else:
            logger.info("ssd dampened %d of %d entries (%.3g%%)", count, total, 100 * count / total)
        return Edit(
            count,
            total,
            "parameters",
            info={
                "dampened": count,
                "considered": total,
                "dampened_per_tensor": dampened,
                "forget_batches": math.ceil(data.n_forget / cfg.batch_size),
                "full_batches": math.ceil(len(full_ids) / cfg.batch_size),
            },
        )


__all__ = ["SSD", "SSDConfig", "dampen_", "importance"]
