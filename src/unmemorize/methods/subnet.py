"""Edge-popup subnetwork methods: learn which MLP weights to drop (TinyMem's Subnet family).

Both methods freeze every weight and learn one score per MLP weight (edge-popup, Ramanujan et al.
2020, "What's Hidden in a Randomly Weighted Neural Network?"). The forward pass uses ``W * M``
where the mask ``M`` drops the ``floor(ratio * numel)`` weights of each matrix with the smallest
``|S|``; the backward pass is straight-through (``dM/d|S| = 1``). At the end ``W * M`` is baked
into the weights, so the edited model is an ordinary model with exactly that many MLP weights
zeroed per matrix.

The masking goes through ``torch.nn.utils.parametrize`` on the method's private copy of the model
(no forked modeling code, no swapped layer classes); the parametrizations are removed before the
bake, even on error.

Tuning notes (cpu-mini demo model, 39 memorized sequences; the figures are in the configs'
docstrings):

* Only the ranking of ``|S|`` matters, so the learning rate acts relative to the init bound
  ``1/sqrt(fan_in)``. At the original lr 0.1, two epochs moved only 3-21% of each matrix's
  dropped set away from the random initial mask: the method was mostly random pruning (a random
  5% mask alone takes 39 memorized to 3 at -2.8 accuracy points: the memorized sequences are
  fragile), and the scores moved too slowly to win the lost accuracy back.
* Dropped weights sit at ``|S| ~ 0`` where ``sign(S)`` flips, so their scores oscillate around
  zero, the more so the larger their gradient. With a constant lr the objective peaks and then
  decays (memorization returns); a cosine decay to 0, the schedule edge-popup itself was trained
  with, lets the mask settle and made results stable across seeds.

Shapes: B batch, T positions, U forget rows, R retain rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel

from ..metrics.losses import sequence_losses
from ..mlp import MaskStats, MLPAdapter, MLPWeight, ratio_count
from .base import (
    METHODS,
    Edit,
    Method,
    check_finite_loss,
    check_positive,
    check_ratio,
    forget_retain_batches,
    freeze,
    model_device,
    row_batches,
)
from .data import UnlearnData
from .masking import LayersConfig, edited_layers

logger = logging.getLogger(__name__)

EDGE_POPUP = (
    "Ramanujan et al. 2020, What's Hidden in a Randomly Weighted Neural Network? (edge-popup); "
    "used for unlearning in Sakarvadia et al. 2025, Mitigating Memorization in Language Models"
)

LR_SCHEDULES = ("cosine", "constant")

Batch = tuple[torch.Tensor, torch.Tensor]  # (ids [B, T], is_forget [B] bool)


# --------------------------------------------------------------------------- masks


def lowest_k_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Bool keep-mask of ``magnitude``'s shape: False at its ``k`` smallest entries, True elsewhere.

    Exactly ``k`` entries are dropped, ties broken by ``topk`` (a threshold would drop every
    tied entry and miss the count). Bool: one byte per weight, not a float mask's four.
    """
    keep = torch.ones_like(magnitude, dtype=torch.bool)
    if k > 0:
        drop = torch.topk(magnitude.detach().flatten(), k, largest=False, sorted=False).indices
        keep.view(-1)[drop] = False
    return keep


class _MaskedWeight(torch.autograd.Function):
    """``W * GetSubnet(|S|)`` with edge-popup's straight-through gradient (see masked_weight)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        keep = lowest_k_mask(scores.detach().abs(), k)
        ctx.save_for_backward(weight, scores, keep)
        return weight * keep

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        weight, scores, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_scores = None
        if ctx.needs_input_grad[1]:
            # dL/dM = dL/dW' * W (in W's dtype), straight through to |S|, times d|S|/dS = sign(S).
            grad_scores = (grad * weight).to(scores.dtype) * scores.sgn()
        return grad_weight, grad_scores, None


def masked_weight(weight: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Edge-popup's masked weight ``W * M``, M = :func:`lowest_k_mask` of ``|scores|``.

    The forward value is exactly ``W`` with its ``k`` lowest-``|S|`` entries zeroed; the gradient
    passes straight through the hard mask to ``|scores|`` (edge-popup's backward returns the
    incoming gradient unchanged), so ``dL/dS = dL/dM * sign(S)`` with ``dL/dM = dL/dW' * W``.
    Only a bool mask is kept for the backward pass (autograd through ``hard + (|S| - |S|)``
    kept float masks and made four float temporaries per weight each forward pass).
    """
    return _MaskedWeight.apply(weight, scores, k)


class _EdgePopupMask(nn.Module):
    """Parametrization ``W -> W * GetSubnet(|S|)`` with S stored in W's own layout."""

    def __init__(self, scores: nn.Parameter, k: int) -> None:
        super().__init__()
        self.scores = scores
        self.k = k

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return masked_weight(weight, self.scores, self.k)


def init_scores(weight: MLPWeight, generator: torch.Generator) -> torch.Tensor:
    """Edge-popup's score init for one matrix, in the parameter's stored layout.

    Kaiming-uniform with a = sqrt(5), i.e. U(-b, b) with b = 1/sqrt(fan_in) (``nn.Linear``'s own
    init), fan_in being the matrix's true input width whatever its storage layout.
    """
    param = weight.parameter
    bound = 1.0 / math.sqrt(weight.in_out().shape[0])
    values = torch.rand(param.shape, generator=generator, dtype=torch.float32) * 2 - 1  # U(-1, 1)
    return (values * bound).to(device=param.device)


@contextlib.contextmanager
def edge_popup_masks(
    model: nn.Module, scores: Mapping[str, torch.Tensor], ks: Mapping[str, int]
) -> Iterator[None]:
    """Inside the context, weight ``name`` of ``model`` reads as ``W * GetSubnet(|scores[name]|)``.

    Args:
        model: the model (its MLP matrices are parametrized in place).
        scores: exact weight name -> scores in the parameter's stored layout.
        ks: exact weight name -> number of entries to drop.

    The parametrizations are removed on exit, even on error, restoring the original weights
    (``leave_parametrized=False``); :func:`bake_masks_` then makes the mask permanent.
    """
    modules = dict(model.named_modules())
    owners: list[nn.Module] = []
    try:
        for name, score in scores.items():
            owner = modules[name.rsplit(".", 1)[0]]
            parametrize.register_parametrization(owner, "weight", _EdgePopupMask(score, ks[name]))
            owners.append(owner)
        yield
    finally:
        for owner in owners:
            parametrize.remove_parametrizations(owner, "weight", leave_parametrized=False)


def bake_masks_(
    model: nn.Module, scores: Mapping[str, torch.Tensor], ks: Mapping[str, int]
) -> MaskStats:
    """Zero, in place, the ``ks[name]`` entries of each weight with the lowest ``|scores[name]|``."""
    adapter = MLPAdapter(model)
    masks = {}
    for weight in adapter.weight_matrices():
        if weight.name not in scores:
            continue
        keep = lowest_k_mask(scores[weight.name].detach().abs(), ks[weight.name])
        masks[weight.name] = keep.T if weight.transposed else keep  # [in, out]
    return adapter.apply_weight_masks_(masks)


# --------------------------------------------------------------------------- losses


def balanced_loss(ce: torch.Tensor, is_forget: torch.Tensor, retain_weight: float) -> torch.Tensor:
    """``-(1 - w) * mean CE(U rows) + w * mean CE(R rows)`` of one batch; a missing term is 0.

    Args:
        ce: [B] per-row cross-entropy.
        is_forget: [B] bool, True for forget (U) rows.
        retain_weight: w in [0, 1).

    The original code took the mean over an empty selection (NaN) when a batch lacked U or R
    rows; here only the term that exists counts, with its usual weight.
    """
    loss = ce.new_zeros(())
    if is_forget.any():
        loss = loss - (1.0 - retain_weight) * ce[is_forget].mean()
    if (~is_forget).any() and retain_weight > 0:
        loss = loss + retain_weight * ce[~is_forget].mean()
    return loss


def fixed_share_batches(
    data: UnlearnData, batch_size: int, forget_per_batch: int, generator: torch.Generator
) -> Iterator[Batch]:
    """One epoch over R; every batch holds ``min(forget_per_batch, U)`` U rows, the rest R rows.

    U rows are drawn cyclically from one permutation, so every U row is seen equally often; when
    ``forget_per_batch >= U`` every batch holds all of U.
    """
    n_u = min(forget_per_batch, data.n_forget)
    n_r = max(batch_size - n_u, 1)
    u_order = torch.randperm(data.n_forget, generator=generator)
    cursor = 0
    for r_idx in row_batches(data.n_retain, n_r, generator=generator, shuffle=True):
        u_idx = u_order[(torch.arange(n_u) + cursor) % data.n_forget]
        cursor = (cursor + n_u) % data.n_forget
        ids = torch.cat([data.forget_ids[u_idx], data.retain_ids[r_idx]])  # [B, T]
        is_forget = torch.zeros(len(ids), dtype=torch.bool)
        is_forget[:n_u] = True
        yield ids, is_forget


# --------------------------------------------------------------------------- training


def scheduled_lr(config: SubnetConfig | BalancedSubnetConfig, step: int, n_steps: int) -> float:
    """The learning rate of ``step`` (0-based) of ``n_steps``: constant or cosine to 0."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / n_steps))


def train_edge_popup(
    model: PreTrainedModel,
    data: UnlearnData,
    epoch_batches: Callable[[torch.Generator], Iterator[Batch]],
    config: SubnetConfig | BalancedSubnetConfig,
    *,
    name: str,
    retain_weight: float,
) -> Edit:
    """Learn edge-popup masks on the MLP matrices of the edited layers (``config.layers``;
    None: every layer) of ``model`` and bake them in (in place).

    Args:
        model: the private copy to edit.
        data: supplies ``pad_id``.
        epoch_batches: ``epoch_batches(generator)`` yields one epoch of
            ``(ids [B, T], is_forget [B] bool)``.
        config: ratio, epochs, SGD settings, lr schedule and seed.
        name: method name, for errors.
        retain_weight: w of :func:`balanced_loss` (0 = pure ascent on U).

    Returns:
        The edit: MLP weights zeroed, of all MLP weights.
    """
    freeze(model)
    adapter = MLPAdapter(model)
    device = model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    # Scores (and their SGD momentum) for the edited layers only; they stay float32: SGD steps of
    # lr * grad are often below a bfloat16 score's resolution and would be rounded away.
    matrices = adapter.weight_matrices(edited_layers(adapter, config.layers))
    scores = {w.name: nn.Parameter(init_scores(w, generator)) for w in matrices}
    ks = {w.name: ratio_count(w.parameter.numel(), config.ratio) for w in matrices}
    optimizer = torch.optim.SGD(
        list(scores.values()),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    losses: list[float] = []
    with edge_popup_masks(model, scores, ks):
        epoch_list = list(epoch_batches(generator))
        n_steps = len(epoch_list) * config.epochs
        for epoch in range(config.epochs):
            if epoch:
                epoch_list = list(epoch_batches(generator))
            for ids, is_forget in epoch_list:
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(config, len(losses), n_steps)
                # cached(): each masked weight is computed once per forward, not per access.
                with parametrize.cached():
                    ce = sequence_losses(model, ids.to(device), data.pad_id)  # [B]
                    loss = balanced_loss(ce, is_forget.to(device), retain_weight)
                losses.append(check_finite_loss(loss, name, len(losses)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            logger.debug("%s epoch %d: loss %.4f", name, epoch, losses[-1] if losses else 0.0)
    stats = bake_masks_(model, scores, ks)
    info = {"steps": len(losses), "weights_zeroed": stats.changed}
    total = sum(w.parameter.numel() for w in matrices)
    return Edit(stats.changed, total, "mlp_weights", losses, info)


# --------------------------------------------------------------------------- methods


@dataclass
class SubnetConfig(LayersConfig):
    """Settings of :class:`Subnet`; differences from the original are argued per field.

    Demo model (39 memorized, 92.71% accuracy), seeds 0-2: these defaults leave 3-6 memorized
    at -2.1 to -2.5 accuracy points in ~4 s; ratio 0.01 with lr 10 leaves 1 at -4.6 points. The
    original settings (lr 0.1, constant) with ratio 0.01 reach 0 memorized at -9 points.
    """

    ratio: float = 0.005
    """Fraction of every MLP weight matrix to drop (the entries with the lowest |score|)."""
    epochs: int = 30
    """Passes over the forget set (one step per pass while U has at most batch_size rows)."""
    batch_size: int = 64
    """Forget rows per optimizer step."""
    lr: float = 1.0
    """SGD learning rate on the scores (original 0.1: too slow to move scores off their init)."""
    lr_schedule: str = "cosine"
    """"cosine" (decay to 0 over all steps, as edge-popup) or "constant" (the TinyMem code)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay on the scores."""
    seed: int = 0
    """Seeds the score init and the batch order."""

    def validate(self) -> None:
        check_ratio(self.ratio)
        _validate_training(self)


@dataclass
class BalancedSubnetConfig(LayersConfig):
    """Settings of :class:`BalancedSubnet`; differences from the original are argued per field.

    Demo model (39 memorized, 92.71% accuracy), seeds 0-4: these defaults leave 0, 1, 0, 0, 0
    memorized at -0.66 to -0.96 accuracy points in ~11 s; ``forget_per_batch=64`` leaves 0 for
    every seed at -1.1 to -1.4 points. The original settings (lr 0.1 constant, batch 64,
    w = 0.7) leave 1-2 at -1.3 to -2.1 points after 2-3 epochs.
    """

    ratio: float = 0.05
    """Fraction of every MLP weight matrix to drop (the entries with the lowest |score|)."""
    epochs: int = 3
    """Passes over U and R (more epochs let memorization creep back at these settings)."""
    retain_weight: float = 0.8
    """w in L = -(1-w) CE(U) + w CE(R), the original's `loss_weighting` (paper best 0.7; with
    the other defaults 0.7 left 0-3 memorized at -1.7 to -2.5 points on the demo model)."""
    batch_size: int = 128
    """Rows per optimizer step (original 64, which left 0-2 memorized with the other defaults)."""
    forget_per_batch: int = 0
    """U rows put in every batch, the rest R (all of U when smaller); 0 = shuffle U and R
    together as the original, where a batch holds U/(U+R) of U rows on average."""
    lr: float = 10.0
    """SGD learning rate on the scores (original 0.1: too slow to move scores off their init)."""
    lr_schedule: str = "cosine"
    """"cosine" (decay to 0 over all steps, as edge-popup) or "constant" (the TinyMem code)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay on the scores."""
    seed: int = 0
    """Seeds the score init and the batch order."""

    def validate(self) -> None:
        check_ratio(self.ratio)
        _validate_training(self)
        if not 0 <= self.retain_weight < 1:
            raise ValueError(
                f"retain_weight must lie in [0, 1) (0.7 = the paper's best), got "
                f"{self.retain_weight}"
            )
        if not isinstance(self.forget_per_batch, int) or not (
            0 <= self.forget_per_batch < self.batch_size
        ):
            raise ValueError(
                f"forget_per_batch must be an integer in [0, batch_size={self.batch_size}) "
                f"(0 = shuffle U and R together), got {self.forget_per_batch}"
            )


def _validate_training(config: SubnetConfig | BalancedSubnetConfig) -> None:
    config.validate_layers()
    if not isinstance(config.epochs, int) or config.epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {config.epochs}")
    if not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {config.batch_size}")
    check_positive(config.lr, "lr")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    if not 0 <= config.momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {config.momentum}")
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay}")


@METHODS.register
class Subnet(Method):
    """Learn an edge-popup mask of MLP weights whose removal maximizes the loss on U.

    Subnet (Sakarvadia et al. 2025, "random" in their code; edge-popup of Ramanujan et al. 2020).
    Every weight is frozen; each MLP matrix W gets a score S of its shape. The forward pass uses
    W * M, M = 0 for the floor(ratio * numel) entries with the lowest |S| and 1 elsewhere, with a
    straight-through gradient to S (edge-popup's score init and SGD with momentum and weight
    decay, cosine lr). S is trained on

        L = -mean_{x in U} CE(x)        (CE: a row's token-mean next-token cross-entropy)

    i.e. gradient ascent on the forget set through the mask only; then W * M is baked in, so
    exactly floor(ratio * numel) entries of each MLP matrix are zeroed. Without a retain term
    every dropped weight trades accuracy for forgetting: keep ``ratio`` small.
    """

    name = "subnet"
    family = "weight"
    paper = EDGE_POPUP
    Config = SubnetConfig

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        cfg = self.config
        n = data.n_forget

        def epoch(generator: torch.Generator) -> Iterator[Batch]:
            for idx in row_batches(n, cfg.batch_size, generator=generator, shuffle=True):
                yield data.forget_ids[idx], torch.ones(len(idx), dtype=torch.bool)

        return train_edge_popup(model, data, epoch, cfg, name=self.name, retain_weight=0.0)


@METHODS.register
class BalancedSubnet(Method):
    """Learn an edge-popup mask that raises the loss on U while keeping it low on R.

    BalancedSubnet (Sakarvadia et al. 2025, "random_greedy" in their code; the paper's best
    method), built on edge-popup (Ramanujan et al. 2020). Same frozen weights, scores and
    straight-through mask as :class:`Subnet`; each batch of the shuffled union U and R gives

        L = -(1 - w) * mean_{x in U rows} CE(x) + w * mean_{x in R rows} CE(x)

    with w = ``retain_weight`` (the original's ``loss_weighting``). A batch without U rows or
    without R rows uses only the term that exists (the original returned NaN there). U and R are
    shuffled together as in the original, or, with ``forget_per_batch``, every batch carries a
    fixed number of U rows. R never contains U rows (the original's TinyMem retain set did).
    """

    name = "balanced_subnet"
    family = "weight"
    paper = EDGE_POPUP
    Config = BalancedSubnetConfig

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        data.require_retain(self.name)
        cfg = self.config

        def epoch(generator: torch.Generator) -> Iterator[Batch]:
            if cfg.forget_per_batch == 0:
                return forget_retain_batches(data, cfg.batch_size, generator)
            return fixed_share_batches(data, cfg.batch_size, cfg.forget_per_batch, generator)

        return train_edge_popup(
            model, data, epoch, cfg, name=self.name, retain_weight=cfg.retain_weight
        )
