"""Weight-level pruning methods: score single MLP weights and zero the most responsible ones.

Four methods of the TinyMem paper (Sakarvadia et al. 2025, §7.3 of the spec): Greedy (Maini et
al. 2023), Durable and Durable-Aggregate (adapted from Neurotoxin, Zhang et al. 2022) and Second
Order Unlearning (OBS / WoodFisher-style saliency). All of them edit only the MLP weight matrices
given by :meth:`MLPAdapter.weight_matrices` and only by zeroing (through
:meth:`MLPAdapter.apply_weight_masks_`); MLP biases are never touched (the original Durable also
zeroed MLP biases). Entries that are already zero are never chosen, so exactly the requested
number of weights changes.

Scores are computed in each parameter's storage orientation (``MLPWeight.parameter``) and turned
into ``[in, out]`` masks only for the edit.

Shapes: B batch, T positions, U forget rows, R retain rows, n entries of one weight matrix,
nb blocks of one matrix, m Fisher samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..metrics.losses import sequence_losses
from ..mlp import MLPAdapter, MLPWeight, ratio_count
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
from .masking import LayersConfig, edited_layers, top_k_masks

logger = logging.getLogger(__name__)

PAPER = "Sakarvadia et al. 2025, Mitigating Memorization in Language Models (arXiv 2410.02159)"


# --------------------------------------------------------------------------- shared helpers


def _trainable_mlp_weights(
    model: PreTrainedModel, layers: Sequence[int] | None
) -> tuple[MLPAdapter, list[MLPWeight]]:
    """Freeze everything but the MLP weight matrices of the edited ``layers`` (None: all).

    These are the only gradients any method needs; with the lower layers frozen, backward passes
    stop at the lowest edited layer.
    """
    adapter = MLPAdapter(model)
    weights = adapter.weight_matrices(edited_layers(adapter, layers))
    freeze(model)
    for w in weights:
        w.parameter.requires_grad_(True)
    return adapter, weights


def _inout_keep(w: MLPWeight, drop: torch.Tensor) -> torch.Tensor:
    """[in, out] bool keep-mask of ``w`` from a bool ``drop`` mask in its storage layout."""
    keep = drop.logical_not_()
    return keep.T if w.transposed else keep


def _rank_nonzero_(score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``score`` with already-zero weights set to -inf in place (zeroing them changes nothing).

    The score keeps its dtype: ranking bfloat16 scores as bfloat16 picks exactly what ranking
    their (exact) float32 casts would, since :func:`top_k_masks` breaks ties by position.
    """
    return score.masked_fill_(weight == 0, -math.inf)


def zero_top_per_matrix(
    adapter: MLPAdapter, weights: Sequence[MLPWeight], scores: Sequence[torch.Tensor], ratio: float
) -> int:
    """Zero the ``floor(ratio * numel)`` highest-scoring nonzero entries of every matrix.

    Args:
        scores: one score tensor per matrix, in its storage layout (the parameter's shape);
            overwritten (ranked in place), so pass buffers the caller no longer needs.

    Returns:
        The number of weights zeroed.
    """
    changed = 0
    for w, score in zip(weights, scores, strict=True):
        k = ratio_count(w.parameter.numel(), ratio)
        (drop,) = top_k_masks([_rank_nonzero_(score, w.parameter)], k)
        if int(drop.sum()) < k:
            logger.warning(
                "%s has only %d nonzero weights left to zero, not %d", w.name, int(drop.sum()), k
            )
        changed += adapter.apply_weight_masks_({w.name: _inout_keep(w, drop)}).changed
    return changed


def zero_top_global(
    adapter: MLPAdapter, weights: Sequence[MLPWeight], scores: Sequence[torch.Tensor], k: int
) -> int:
    """Zero the ``k`` highest-scoring nonzero entries over all matrices together (one ranking).

    :func:`top_k_masks` ranks the matrices together without concatenating their scores (the
    flat float32 copy this used to make was 4 bytes per MLP weight on top of the scores).
    ``scores`` are overwritten (ranked in place).
    """
    ranked = [_rank_nonzero_(s, w.parameter) for w, s in zip(weights, scores, strict=True)]
    drops = top_k_masks(ranked, k)
    chosen = sum(int(d.sum()) for d in drops)
    if chosen < k:
        logger.warning("only %d nonzero MLP weights left to zero, not %d", chosen, k)
    masks = {w.name: _inout_keep(w, d) for w, d in zip(weights, drops, strict=True)}
    return adapter.apply_weight_masks_(masks).changed


def forget_gradients(
    model: PreTrainedModel, weights: Sequence[MLPWeight], data: UnlearnData, batch_size: int
) -> tuple[list[torch.Tensor], float]:
    """Gradient of the mean forget-row CE w.r.t. each MLP matrix, accumulated over batches.

    Each batch contributes ``sum(row losses) / U``, so the total is the gradient of the mean over
    all of U, whatever the batch size (a mean of batch means over-weights a short last batch).

    Returns:
        (one gradient per matrix in storage layout, the mean forget loss).
    """
    device = model_device(model)
    params = [w.parameter for w in weights]
    batches = list(row_batches(data.n_forget, batch_size))
    total: list[torch.Tensor] = []
    loss_sum = 0.0
    for step, idx in enumerate(batches):
        rows = sequence_losses(model, data.forget_ids[idx].to(device), data.pad_id)  # [B]
        loss = rows.sum() / data.n_forget
        loss_sum += check_finite_loss(loss, "forget gradient", step)
        grads = torch.autograd.grad(loss, params)
        if len(batches) == 1:
            # One batch: its gradients are the result, in the parameters' dtype (a float32
            # accumulator would hold the same values at twice a bfloat16 model's size).
            return list(grads), loss_sum
        if not total:  # float32 accumulators: bfloat16 sums lose batches
            total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        for acc, grad in zip(total, grads, strict=True):
            acc += grad
    return total, loss_sum


# --------------------------------------------------------------------------- Durable

#: Which weights ``durable_agg`` ranks and ``greedy`` counts: the MLP weights, or all parameters.
RANK_SCOPES = ("mlp", "all")


def _mlp_share_of_global_top(
    model: PreTrainedModel,
    weights: Sequence[MLPWeight],
    mlp_scores: Sequence[torch.Tensor],
    data: UnlearnData,
    ratio: float,
    batch_size: int,
) -> int:
    """How many MLP entries are among the top floor(ratio * all parameters) |forget gradient|.

    The original Durable-Aggregate's ranking (``durable.py``, ``aggregate_all_layer``): every
    parameter is ranked, only the MLP ones are zeroed. The other parameters' gradients are
    computed here (they are frozen for the edit) and one float32 copy of all scores is made.
    """
    mlp = {id(w.parameter) for w in weights}
    others = [p for p in model.parameters() if id(p) not in mlp]
    flags = [p.requires_grad for p in others]
    device = model_device(model)
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in others]
    try:
        for p in others:
            p.requires_grad_(True)
        for idx in row_batches(data.n_forget, batch_size):
            rows = sequence_losses(model, data.forget_ids[idx].to(device), data.pad_id)
            for acc, g in zip(
                sums, torch.autograd.grad(rows.sum() / data.n_forget, others), strict=True
            ):
                acc += g
    finally:
        for p, flag in zip(others, flags, strict=True):
            p.requires_grad_(flag)
    flat = torch.cat([s.detach().flatten().float() for s in [*mlp_scores, *sums]]).abs_()
    k = ratio_count(len(flat), ratio)
    if k == 0:
        return 0
    threshold = torch.topk(flat, k).values[-1]
    return min(k, sum(int((s.float().abs() >= threshold).sum()) for s in mlp_scores))


@dataclass
class DurableConfig(LayersConfig):
    """Durable / Durable-Aggregate settings (spec §7.3; the paper's best ratios were 1e-4..1e-2
    on Pythia and 1-5% on TinyMem)."""

    ratio: float = 0.01
    """Fraction of MLP weights to zero: of each matrix (durable) or of all of them (durable_agg)."""
    batch_size: int = 64
    """Forget rows per forward pass while accumulating the gradient (does not change the result)."""
    rank_over: str = "mlp"
    """durable_agg only: rank |g| over the MLP weights (``mlp``) or over ALL parameters (``all``,
    the original: the top floor(ratio * all parameters) entries, of which only the MLP ones are
    zeroed; at ratio 0.0075 on the demo model that zeroes 465 MLP weights instead of 983)."""

    def validate(self) -> None:
        check_ratio(self.ratio)
        check_positive(self.batch_size, "batch_size")
        self.validate_layers()
        if self.rank_over not in RANK_SCOPES:
            raise ValueError(f"rank_over must be one of {RANK_SCOPES}, got {self.rank_over!r}")


@METHODS.register
class Durable(Method):
    """Zero the MLP weights with the largest forget-set gradient, per matrix (Neurotoxin-style).

    Adapted from Neurotoxin (Zhang et al. 2022, "Neurotoxin: Durable Backdoors in Federated
    Learning"); introduced for unlearning by Sakarvadia et al. 2025. With
    ``g = d/dW mean_{u in U} CE(u)`` (each row's token-mean next-token cross-entropy, pad
    excluded), every MLP weight matrix W loses its ``floor(ratio * numel(W))`` entries with the
    largest ``|g|``: the weights the memorized rows lean on most.

    Deviation: only MLP weight matrices are masked (the original also zeroed MLP biases).
    """

    name = "durable"
    family = "weight"
    paper = "Zhang et al. 2022, Neurotoxin (ICML); " + PAPER
    Config = DurableConfig
    aggregate = False

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        cfg = self.config
        adapter, weights = _trainable_mlp_weights(model, cfg.layers)
        grads, forget_loss = forget_gradients(model, weights, data, cfg.batch_size)
        scores = [g.abs_() for g in grads]  # in place: the gradients are not needed after
        del grads
        total = sum(w.parameter.numel() for w in weights)
        if self.aggregate and cfg.rank_over == "all":
            k = _mlp_share_of_global_top(model, weights, scores, data, cfg.ratio, cfg.batch_size)
            changed = zero_top_global(adapter, weights, scores, k)
        elif self.aggregate:
            changed = zero_top_global(adapter, weights, scores, ratio_count(total, cfg.ratio))
        else:
            changed = zero_top_per_matrix(adapter, weights, scores, cfg.ratio)
        return Edit(changed, total, "mlp_weights", info={"forget_loss": forget_loss})


@METHODS.register
class DurableAggregate(Durable):
    """Zero the MLP weights with the largest forget-set gradient, ranked over all MLP matrices.

    Durable-Aggregate (Sakarvadia et al. 2025, adapted from Neurotoxin, Zhang et al. 2022): with
    ``g = d/dW mean_{u in U} CE(u)``, the ``floor(ratio * total MLP weights)`` entries with the
    largest ``|g|`` over the concatenation of every MLP weight matrix are zeroed, so matrices with
    larger gradients lose more weights. One flat ``torch.topk`` (the original flattened on the CPU
    and intersected Python sets).

    Deviation: only MLP weight matrices are masked (the original also zeroed MLP biases).
    """

    name = "durable_agg"
    aggregate = True


# --------------------------------------------------------------------------- Greedy


@dataclass
class GreedyConfig(LayersConfig):
    """Greedy settings (spec §7.3; the paper's best Pythia ratio was 1e-5)."""

    ratio: float = 1e-3
    """Fraction of all MLP weights to zero: floor(ratio * total MLP weights) weights in all."""
    batch_size: int = 64
    """Rows of U ∪ R per pass."""
    count_over: str = "mlp"
    """How many weights: floor(ratio * MLP weights) (``mlp``) or floor(ratio * all parameters)
    (``all``, the original: ~1.5x more on math, ~14x more on text at the same ratio)."""
    weights_per_step: int = 1
    """Weights zeroed per forward/backward pass. 1 is the exact algorithm; k > 1 zeroes the top k
    of one gradient (k times faster, an approximation: later picks ignore earlier zeroings)."""
    seed: int = 0
    """Seed of the loader shuffle."""

    def validate(self) -> None:
        check_ratio(self.ratio)
        check_positive(self.batch_size, "batch_size")
        check_positive(self.weights_per_step, "weights_per_step")
        self.validate_layers()
        if self.count_over not in RANK_SCOPES:
            raise ValueError(f"count_over must be one of {RANK_SCOPES}, got {self.count_over!r}")


def _cycle_batches(
    data: UnlearnData, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled epochs over U ∪ R, skipping batches without forget rows.

    A batch without U rows carries no forget signal: it would zero weights only to lower the
    retain loss. (The original had no guard for such batches.)
    """
    while True:
        for ids, is_forget in forget_retain_batches(data, batch_size, generator):
            if is_forget.any():
                yield ids, is_forget


@METHODS.register
class Greedy(Method):
    """Zero, one at a time, the MLP weight whose removal most raises the forget loss (Maini et al.).

    Maini et al. 2023, "Can Neural Network Memorization Be Localized?" (ICML), as adapted by
    Sakarvadia et al. 2025. Each pass takes a shuffled batch of U ∪ R with labels y = +1 (U) and
    y = -1 (R) and the per-row losses l_i (token-mean CE), and forms

        obj = mean_i(-y_i * l_i)        (ascent on U, descent on R)

    Zeroing weight w moves it by -w, changing obj by about -w * dobj/dw to first order, so the
    still-nonzero MLP weight with the largest ``w * dobj/dw`` lowers obj the most; it is zeroed and
    the next pass starts. This repeats until floor(ratio * total MLP weights) distinct weights are
    zero. The original's factor B in obj does not change the argmax and is dropped.

    Deviations: the count uses the MLP weights (the original counted all parameters while editing
    only MLP weights); batches without U rows are skipped; ``weights_per_step`` > 1 is an opt-in
    speed-up. The paper reports 2-10 hours on Pythia with one weight per pass.
    """

    name = "greedy"
    family = "weight"
    paper = "Maini et al. 2023, Can Neural Network Memorization Be Localized? (ICML); " + PAPER
    Config = GreedyConfig

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        cfg = self.config
        adapter, weights = _trainable_mlp_weights(model, cfg.layers)
        params = [w.parameter for w in weights]
        total = sum(p.numel() for p in params)
        counted = total if cfg.count_over == "mlp" else sum(p.numel() for p in model.parameters())
        target = ratio_count(counted, cfg.ratio)
        device = model_device(model)
        batches = _cycle_batches(data, cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
        bar = tqdm(total=target, desc="greedy", unit="weight", disable=not progress)
        zeroed, losses = 0, []
        while zeroed < target:
            ids, is_forget = next(batches)
            rows = sequence_losses(model, ids.to(device), data.pad_id)  # [B]
            sign = torch.where(is_forget.to(device), 1.0, -1.0)
            objective = (-sign * rows).mean()
            losses.append(check_finite_loss(objective, self.name, len(losses)))
            grads = torch.autograd.grad(objective, params)
            k = min(cfg.weights_per_step, target - zeroed)
            changed = self._zero_best(adapter, weights, grads, k)
            if changed == 0:
                logger.warning("greedy: no nonzero MLP weight left after %d", zeroed)
                break
            zeroed += changed
            bar.update(changed)
        bar.close()
        return Edit(zeroed, total, "mlp_weights", losses, info={"passes": len(losses)})

    @staticmethod
    @torch.no_grad()
    def _zero_best(
        adapter: MLPAdapter,
        weights: Sequence[MLPWeight],
        grads: Sequence[torch.Tensor],
        k: int,
    ) -> int:
        """Zero the k nonzero weights with the largest ``w * grad`` over all matrices.

        Each matrix offers the entries at or above its own k-th largest score (the global top k
        is among them, ties included), so only one matrix's scores exist at a time. The products
        are float32: a bfloat16 product is rounded, which can reorder or tie the candidates (the
        float32 product of two bfloat16 numbers is exact).
        """
        values, owners, flat_idx = [], [], []
        for index, (w, g) in enumerate(zip(weights, grads, strict=True)):
            score = _rank_nonzero_(w.parameter.float() * g.float(), w.parameter).view(-1)  # [n]
            kth = torch.topk(score, min(k, score.numel()), sorted=False).values.min()
            candidates = (score >= kth).nonzero().flatten()  # in index order, ties kept
            values.append(score[candidates])
            flat_idx.append(candidates)
            owners.append(torch.full_like(candidates, index))
        (chosen,) = top_k_masks([torch.cat(values)], k)
        owner, flat = torch.cat(owners)[chosen], torch.cat(flat_idx)[chosen]
        masks = {}
        for i in owner.unique().tolist():
            drop = torch.zeros_like(weights[i].parameter, dtype=torch.bool)
            drop.view(-1)[flat[owner == i]] = True
            masks[weights[i].name] = _inout_keep(weights[i], drop)
        return adapter.apply_weight_masks_(masks).changed if masks else 0


# --------------------------------------------------------------------------- Second order


@dataclass
class SecondOrderConfig(LayersConfig):
    """Second Order Unlearning settings (spec §7.3; the paper's values, TinyMem only)."""

    ratio: float = 0.01
    """Fraction of each MLP weight matrix to zero."""
    num_grads: int = 512
    """Per-row forget gradients in the empirical Fisher (U is cycled when smaller)."""
    block_size: int = 50
    """Size of the diagonal blocks of the Fisher (consecutive entries of a flattened matrix)."""
    damping: float = 1e-7
    """lambda added to the Fisher diagonal: F = lambda I + G^T G / m."""
    batch_size: int = 64
    """Forget rows per forward pass when computing per-row gradients."""
    seed: int = 0
    """Seed of the row subset when num_grads < U."""

    def validate(self) -> None:
        check_ratio(self.ratio)
        for name in ("num_grads", "block_size", "damping", "batch_size"):
            check_positive(getattr(self, name), name)
        self.validate_layers()


def _projection_modules(adapter: MLPAdapter, weights: Sequence[MLPWeight]) -> list[nn.Module]:
    """The Linear/Conv1D module owning each MLP weight matrix, in ``weights`` order."""
    layers = [adapter.layer(i) for i in sorted({w.layer for w in weights})]
    modules = [m for layer in layers for m in (*layer.in_projs, layer.out_proj)]
    if len(modules) != len(weights) or any(
        m.weight is not w.parameter for m, w in zip(modules, weights, strict=False)
    ):
        raise RuntimeError("MLP projection modules and weight matrices are out of step")
    return modules


def per_row_gradients(
    model: PreTrainedModel,
    adapter: MLPAdapter,
    weights: Sequence[MLPWeight],
    ids: torch.Tensor,
    pad_id: int | None,
) -> Iterator[torch.Tensor]:
    """[B, *param shape] gradient of each row's own CE w.r.t. each MLP matrix, in one pass.

    The projections are linear (``y = x W_io + b``), so row b's weight gradient is
    ``sum_t x[b, t]^T dy[b, t]``: the inputs are recorded by forward hooks and the output
    gradients come from one backward of the summed row losses (rows do not interact).

    Yields one matrix's gradients at a time, in ``weights`` order (B copies of a matrix each; a
    list of all of them would hold B copies of every MLP matrix at once).
    """
    modules = _projection_modules(adapter, weights)
    captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if module in captured:
            raise RuntimeError("an MLP projection ran twice in one forward pass")
        captured[module] = (args[0].detach(), output)

    handles = [m.register_forward_hook(record) for m in modules]
    try:
        rows = sequence_losses(model, ids, pad_id)  # [B]
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(modules):
        raise RuntimeError(f"expected {len(modules)} MLP projection calls, saw {len(captured)}")
    check_finite_loss(rows.sum(), "second_order", 0)
    inputs = [captured[m][0] for m in modules]
    out_grads = torch.autograd.grad(rows.sum(), [captured[m][1] for m in modules])
    captured.clear()  # the outputs were only needed for the backward pass
    del rows
    for w, x, dy in zip(weights, inputs, out_grads, strict=True):
        x, dy = x.flatten(1, -2), dy.flatten(1, -2)  # [B, T, in], [B, T, out]
        pattern = "bti,bto->boi" if w.transposed else "bti,bto->bio"
        yield torch.einsum(pattern, x, dy)


def block_fisher(grads: torch.Tensor, weights: torch.Tensor, block_size: int) -> torch.Tensor:
    """[nb, bs, bs] diagonal blocks of ``sum_i weights_i g_i g_i^T`` (float64).

    Blocks hold ``block_size`` consecutive entries; the last one is padded with zero-gradient
    entries, which decouple from the rest once damping is added.

    Args:
        grads: [r, n] sample gradients.
        weights: [r] nonnegative weight of each sample.
    """
    r, n = grads.shape
    nb = -(-n // block_size)
    g = grads.double().mul_(weights.double().sqrt()[:, None])  # one float64 copy, scaled in place
    if nb * block_size != n:
        g = torch.nn.functional.pad(g, (0, nb * block_size - n))
    g = g.view(r, nb, block_size)
    return torch.einsum("rki,rkj->kij", g, g)


def fisher_inverse_diag(fisher: torch.Tensor, damping: float, n: int) -> torch.Tensor:
    """[n] diagonal of ``(fisher + damping * I)^-1`` for block-diagonal ``fisher`` [nb, bs, bs].

    Each block is inverted exactly in float64 (a batched solve; damping is tiny, so float32 would
    lose the small eigenvalues).
    """
    damped = fisher + damping * torch.eye(
        fisher.shape[-1], dtype=fisher.dtype, device=fisher.device
    )
    return torch.linalg.inv(damped).diagonal(dim1=-2, dim2=-1).reshape(-1)[:n]


@METHODS.register
class SecondOrder(Method):
    """Zero the MLP weights of highest OBS saliency under the forget-set Fisher (per matrix).

    Second Order Unlearning (Sakarvadia et al. 2025), after Optimal Brain Surgeon (Hassibi & Stork
    1993) and WoodFisher (Singh & Alistarh 2020). For each MLP weight matrix, with g_i the gradient
    of forget row i's CE (``num_grads`` draws cycling through U), the empirical Fisher
    ``F = lambda I + sum_i g_i g_i^T / m`` is kept block-diagonal (blocks of ``block_size``
    consecutive entries) and the saliency of weight j is

        s_j = w_j^2 / (2 [F^-1]_jj)

    (the forget-loss increase from removing w_j under the quadratic model). The top
    ``floor(ratio * numel)`` weights by s of every matrix are zeroed (no OBS compensation update,
    as in the original).

    Deviations: gradients are reset between samples (the original accumulated them), each sample
    is one row (the same row drawn twice gives the same gradient, so it is computed once and
    weighted), and only MLP matrices get a Fisher. Memory: ``block_size`` float64s per edited MLP
    weight (TinyMem-sized models, or a few ``layers`` of a large one; the paper ran it on TinyMem
    only, ~1,200 s on 8 layers). The blocks stay float64: damping is 1e-7, far below float32's
    resolution of the Fisher's entries, so float32 blocks would change the inverse.
    """

    name = "second_order"
    family = "weight"
    paper = "Hassibi & Stork 1993 (OBS); Singh & Alistarh 2020 (WoodFisher); " + PAPER
    Config = SecondOrderConfig

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        cfg = self.config
        adapter, weights = _trainable_mlp_weights(model, cfg.layers)
        device = model_device(model)
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.num_grads >= data.n_forget:
            draws = torch.arange(cfg.num_grads) % data.n_forget
        else:
            draws = torch.randperm(data.n_forget, generator=generator)[: cfg.num_grads]
        rows, counts = torch.unique(draws, return_counts=True)  # distinct rows, draws per row
        share = (counts.double() / cfg.num_grads).to(device)  # [r] each row's weight in F
        # The Fisher blocks are accumulated batch by batch: memory is block_size floats per MLP
        # weight, whatever num_grads is.
        fishers: list[torch.Tensor | None] = [None] * len(weights)
        for idx in row_batches(len(rows), cfg.batch_size):
            ids = data.forget_ids[rows[idx]].to(device)
            grads = per_row_gradients(model, adapter, weights, ids, data.pad_id)
            for j, g in enumerate(grads):
                part = block_fisher(g.flatten(1), share[idx], cfg.block_size)  # [nb, bs, bs]
                fishers[j] = part if fishers[j] is None else fishers[j].add_(part)
        # Matrix by matrix (a matrix's saliency depends only on its own weights and Fisher), so
        # one saliency buffer exists at a time and each Fisher is freed once used.
        changed = 0
        for j, w in enumerate(weights):
            inv_diag = fisher_inverse_diag(fishers[j], cfg.damping, w.parameter.numel())  # [n]
            fishers[j] = None
            saliency = w.parameter.detach().double().flatten() ** 2 / (2 * inv_diag)
            changed += zero_top_per_matrix(adapter, [w], [saliency.view_as(w.parameter)], cfg.ratio)
        total = sum(w.parameter.numel() for w in weights)
        return Edit(changed, total, "mlp_weights", info={"fisher_rows": len(rows)})
