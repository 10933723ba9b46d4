"""Neuron-level methods: score every MLP neuron, remove the top ``ratio`` of each layer.

The five neuron scorers of MemPi (Chang et al. 2024, "Localizing Paragraph Memorization in
Language Models") as adapted by TinyMem (Sakarvadia et al. 2025, spec §7.2): Zero-Out,
Activations, Slimming, HardConcrete and Integrated Gradients. Each returns one score per neuron
(higher = more responsible for the memorized rows); the shared edit
(:meth:`~unmemorize.methods.base.NeuronMethod.run`) zeroes the out-projection rows of the top
``floor(F * ratio)`` neurons of every layer.

A neuron's activation is the input of the MLP out projection (see :mod:`unmemorize.mlp`); every
gate or scaling goes through :class:`MLPAdapter` hooks, so no modeling file is forked.

Zero-Out and IG need many forward passes of one row with one layer's activations changed in
different ways. :class:`_CopyRunner` runs the row once up to that layer and expands the batch
only at the hooked out projection: the layers below run once, not once per copy.

Shapes: U forget rows, T positions, F MLP width, C copies of one row in one pass, V vocabulary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..metrics.losses import row_mean_loss, sequence_losses, token_cross_entropy
from ..mlp import MLPAdapter
from .base import (
    METHODS,
    Edit,
    NeuronMethod,
    check_finite_loss,
    check_positive,
    check_ratio,
    freeze,
    model_device,
    row_batches,
)
from .data import UnlearnData
from .masking import LayersConfig

logger = logging.getLogger(__name__)

PAPER = (
    "Chang et al. 2024, Localizing Paragraph Memorization in Language Models (MemPi); adapted "
    "by Sakarvadia et al. 2025, Mitigating Memorization in Language Models (arXiv 2410.02159)"
)

#: One score vector [F] per layer.
Scores = list[torch.Tensor]
#: Maps one row's activations [1, T, F] at a layer to its copies' activations [C, T, F].
Expand = Callable[[torch.Tensor], torch.Tensor]

#: Let the copies of one row share the layers below the hooked one (set False to always repeat
#: the row: same result, slower; tests compare the two).
_SHARE_LOWER_LAYERS = True


# --------------------------------------------------------------------------- shared helpers


def _progress(items: Iterable, progress: bool, desc: str, total: int) -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total)


class _CopyRunner:
    """Forward C modified copies of one row, the copies differing only from one layer upward.

    ``expand(acts)`` gets the row's activations at the hooked layer, [1, T, F], and returns the
    C copies' activations [C, T, F]. Fast path: the model runs on the single row and the batch
    grows inside the hook; the residual add after the MLP broadcasts [1, T, D] + [C, T, D], and
    position and causal-mask tensors of batch 1 broadcast too. A model whose code cannot
    broadcast there raises a shape error once; from then on the row is repeated C times instead
    (identical result: the copies are equal below the hooked layer).
    """

    def __init__(self, model: PreTrainedModel, adapter: MLPAdapter) -> None:
        self.model = model
        self.adapter = adapter
        self.share = _SHARE_LOWER_LAYERS

    def logits(self, row: torch.Tensor, layer: int, copies: int, expand: Expand) -> torch.Tensor:
        """[C, T, V] logits of ``row`` [1, T] with layer ``layer``'s activations expanded."""
        if self.share:
            try:
                return self._run(row, layer, copies, expand)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as err:
                logger.info(
                    "batch cannot grow inside %s (%s); repeating rows",
                    type(self.model).__name__,
                    str(err).splitlines()[0],
                )
                self.share = False
        return self._run(row.expand(copies, -1), layer, copies, expand)

    def _run(self, ids: torch.Tensor, layer: int, copies: int, expand: Expand) -> torch.Tensor:
        # The hook sees [1, T, F] (fast path) or C equal rows (repeat path): use the first.
        handle = self.adapter.add_activation_hook(layer, lambda _m, acts: expand(acts[:1]))
        try:
            logits = self.model(input_ids=ids, use_cache=False).logits
        finally:
            handle.remove()
        if logits.shape[0] != copies:
            raise RuntimeError(f"expected {copies} copies of the row, got {logits.shape[0]}")
        return logits


def _row_subset(n: int, max_rows: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of at most ``max_rows`` of ``n`` rows."""
    if max_rows is None or max_rows >= n:
        return torch.arange(n)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return pick[:max_rows].sort().values


def _validate(cfg: object, positive: tuple[str, ...], nonnegative: tuple[str, ...] = ()) -> None:
    """Shared config checks: ``ratio`` in (0, 1), the named fields > 0 (or None), >= 0."""
    check_ratio(cfg.ratio)  # type: ignore[attr-defined]
    cfg.validate_layers()  # type: ignore[attr-defined]
    for key in positive:
        if getattr(cfg, key) is not None:
            check_positive(getattr(cfg, key), key)
    for key in nonnegative:
        if not getattr(cfg, key) >= 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(cfg, key)}")


def _widths(adapter: MLPAdapter, layers: list[int]) -> list[int]:
    return [adapter.layer(i).width for i in layers]


# --------------------------------------------------------------------------- Zero-Out


@dataclass
class ZeroOutConfig(LayersConfig):
    """Zero-Out settings (spec §7.2.1; the paper's TinyMem runs used ratios 0.1-5%)."""

    ratio: float = 0.05
    """Fraction of each layer's neurons to remove."""
    batch_size: int = 256
    """Single-neuron ablations per forward pass (memory only: does not change the result)."""
    max_rows: int | None = None
    """Score on a seeded random subset of at most this many forget rows (cost is linear in the
    rows); None = all of U, the method as published."""
    seed: int = 0
    """Seed of the ``max_rows`` subset."""

    def validate(self) -> None:
        _validate(self, ("batch_size", "max_rows"))


@METHODS.register
class ZeroOut(NeuronMethod):
    """Remove the neurons whose single ablation raises the memorized rows' loss the most.

    Zero-Out (Chang et al. 2024, MemPi; TinyMem §7.2). For every layer l and neuron j::

        score[l, j] = mean_{u in U} CE_u(model with a_{l,j} = 0) - mean_{u in U} CE_u(model)

    where ``CE_u`` is row u's token-mean next-token cross-entropy (pad excluded) and
    ``a_{l,j}`` the neuron's activation at every position. Cost: n_layers x F ablations of U.

    Deviation: the original mask was one-hot (it kept only neuron j); here every neuron but j
    is kept, the ablation the method describes. Exact speed-up: all ablations of one row and
    layer run as copies of that row that share the layers below the ablated one.
    """

    name = "zero_out"
    paper = PAPER
    Config = ZeroOutConfig

    @torch.no_grad()
    def score(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Scores:
        cfg = self.config
        adapter = MLPAdapter(model)
        device = model_device(model)
        runner = _CopyRunner(model, adapter)
        layers = self.layer_indices(adapter)
        rows = data.forget_ids[_row_subset(data.n_forget, cfg.max_rows, cfg.seed)]
        base = torch.cat(
            [
                sequence_losses(model, rows[idx].to(device), data.pad_id)
                for idx in row_batches(len(rows), cfg.batch_size)
            ]
        ).double()  # [U]
        sums = [
            torch.zeros(w, dtype=torch.float64, device=device) for w in _widths(adapter, layers)
        ]
        for u in _progress(range(len(rows)), progress, "zero_out", len(rows)):
            ids = rows[u : u + 1].to(device)  # [1, T]
            for li, layer in enumerate(layers):
                width = adapter.layer(layer).width
                for start in range(0, width, cfg.batch_size):
                    neurons = torch.arange(start, min(width, start + cfg.batch_size), device=device)
                    mask = torch.ones(len(neurons), width, device=device)  # [C, F]
                    mask[torch.arange(len(neurons), device=device), neurons] = 0.0

                    def ablate(acts: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                        return acts * mask[:, None, :].to(acts.dtype)  # [C, T, F]

                    logits = runner.logits(ids[:, :-1], layer, len(neurons), ablate)
                    target = ids[0, 1:].expand(len(logits), -1)  # [C, T-1]
                    ce = token_cross_entropy(logits, target)  # [C, T-1]
                    sums[li][neurons] += row_mean_loss(ce, target, data.pad_id).double()
        mean_base = base.mean()
        return [(s / len(rows) - mean_base).float().cpu() for s in sums]


# --------------------------------------------------------------------------- Activations


@dataclass
class ActivationsConfig(LayersConfig):
    """Activations settings (spec §7.2.2; the paper's best runs removed 5% of neurons)."""

    ratio: float = 0.05
    """Fraction of each layer's neurons to remove."""
    batch_size: int = 64
    """Forget rows per forward pass (memory only)."""

    def validate(self) -> None:
        _validate(self, ("batch_size",))


@METHODS.register
class Activations(NeuronMethod):
    """Remove the neurons that write the most into the residual stream on the memorized text.

    Activations / "largest_act" (Chang et al. 2024, MemPi; TinyMem §7.2)::

        score[l, j] = mean_{(u, t) in C} |a_{l,j}(u, t)| * ||W_out[l][j, :]||_2

    over the memorized continuation C: positions t = prefix_len - 1 ... T - 2 of every forget row
    (the positions whose next token is a continuation token; ``UnlearnData.continuation_mask``,
    pad excluded; the whole row when the prompt length is unknown), pooled over rows.
    """

    name = "activations"
    paper = PAPER
    Config = ActivationsConfig

    @torch.no_grad()
    def score(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Scores:
        adapter = MLPAdapter(model)
        device = model_device(model)
        layers = self.layer_indices(adapter)
        mask = data.continuation_mask()  # [U, T-1]
        count = int(mask.sum())
        if count == 0:
            raise ValueError("activations: no continuation positions to score (prompt covers rows)")
        sums = [
            torch.zeros(w, dtype=torch.float64, device=device) for w in _widths(adapter, layers)
        ]
        batches = list(row_batches(data.n_forget, self.config.batch_size))
        with adapter.capture_activations(layers) as acts:
            for idx in _progress(batches, progress, "activations", len(batches)):
                model(input_ids=data.forget_ids[idx, :-1].to(device), use_cache=False)
                m = mask[idx].to(device=device, dtype=torch.float64)  # [B, T-1]
                for li, layer in enumerate(layers):
                    sums[li] += torch.einsum("btf,bt->f", acts[layer].abs().double(), m)
        return [
            (s / count * adapter.out_weight(i).double().norm(dim=1)).float().cpu()
            for i, s in zip(layers, sums, strict=True)
        ]


# --------------------------------------------------------------------------- learned gates


class _SlimGates:
    """Slimming gates s_l [F], init 1, applied as clamp(s_l, 0, 1); penalty ||s||_1 / N."""

    def __init__(self, widths: list[int], device: torch.device, cfg: SlimmingConfig) -> None:
        self.params = [torch.ones(w, device=device, requires_grad=True) for w in widths]

    def masks(self) -> dict[int, torch.Tensor]:
        return {i: p.clamp(0.0, 1.0) for i, p in enumerate(self.params)}

    def penalty(self) -> torch.Tensor:
        n = sum(p.numel() for p in self.params)
        return torch.stack([p.abs().sum() for p in self.params]).sum() / n

    def scores(self) -> Scores:
        return [p.detach().clamp(0.0, 1.0).cpu() for p in self.params]


class _HardConcreteGates:
    """L0 hard-concrete gates (Louizos et al. 2018) with logits g_l [F] ~ N(0, init_std)."""

    LEFT, RIGHT = -0.1, 1.1  # the stretch interval (l, r)

    def __init__(self, widths: list[int], device: torch.device, cfg: HardConcreteConfig) -> None:
        self.beta = cfg.beta
        self.params = [
            (torch.randn(w, device=device) * cfg.init_std).requires_grad_(True) for w in widths
        ]

    def masks(self) -> dict[int, torch.Tensor]:
        """One sample per gate for this step, shared by the batch (as the original)."""
        out = {}
        for i, logit in enumerate(self.params):
            # u is clamped away from 0 and 1 so the logistic noise stays finite.
            u = torch.rand_like(logit).clamp(1e-4, 1 - 1e-4)
            s = torch.sigmoid((u.log() - (1 - u).log() + logit) / self.beta)
            out[i] = (s * (self.RIGHT - self.LEFT) + self.LEFT).clamp(0.0, 1.0)
        return out

    def penalty(self) -> torch.Tensor:
        shift = self.beta * math.log(-self.LEFT / self.RIGHT)
        return torch.stack([torch.sigmoid(p - shift).mean() for p in self.params]).mean()

    def scores(self) -> Scores:
        return [torch.sigmoid(p.detach()).cpu() for p in self.params]


class _GatedMethod(NeuronMethod):
    """Scores are gates trained on the frozen model to keep the forget loss low under a sparsity
    penalty; the edit also reports the loss curve and the stopping facts."""

    Gates: ClassVar[type]
    #: Check the early stop at steps that are multiples of this.
    check_every: ClassVar[int] = 1
    _trace: tuple[list[float], dict] = ([], {})

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        edit = super().run(model, data, progress)
        losses, info = self._trace
        return Edit(edit.count, edit.total, edit.unit, losses, {**edit.info, **info})

    def score(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Scores:
        """Adam on ``CE(U batch) + lambda_l1 * penalty`` over the gates only.

        Stops early once the penalty (before lambda) is below ``stop_loss`` at a checked step;
        the check comes before that step's update, as in the original.
        """
        cfg = self.config
        adapter = MLPAdapter(model)
        device = model_device(model)
        layers = self.layer_indices(adapter)
        gates = self.Gates(_widths(adapter, layers), device, cfg)
        freeze(model)
        optimizer = torch.optim.Adam(gates.params, lr=cfg.lr)
        losses: list[float] = []
        step, stopped = 0, False
        check_epochs = getattr(cfg, "check_epochs", 0)
        for epoch in _progress(range(cfg.epochs), progress, self.name, cfg.epochs):
            for batch, idx in enumerate(
                row_batches(data.n_forget, cfg.batch_size or data.n_forget)
            ):
                masks = {layers[i]: mask for i, mask in gates.masks().items()}
                with adapter.neuron_mask(masks):
                    rows = data.forget_ids[idx].to(device)
                    ce = sequence_losses(model, rows, data.pad_id).mean()
                penalty = gates.penalty()
                loss = ce + cfg.lambda_l1 * penalty
                if check_epochs:  # the original's cadence: the first step of every N-th epoch
                    check = batch == 0 and epoch > 0 and epoch % check_epochs == 0
                else:
                    check = (step + 1) % self.check_every == 0
                if check and float(penalty.detach()) < cfg.stop_loss:
                    stopped = True
                    break
                losses.append(check_finite_loss(loss, self.name, step))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
            if stopped:
                break
        with torch.no_grad():
            final = float(gates.penalty())
        self._trace = (losses, {"steps": step, "early_stop": stopped, "final_penalty": final})
        return gates.scores()


# --------------------------------------------------------------------------- Slimming


@dataclass
class SlimmingConfig(LayersConfig):
    """Slimming settings (spec §7.2.3: lambda 1000, stop 0.1, lr 0.1)."""

    ratio: float = 0.05
    """Fraction of each layer's neurons to remove."""
    epochs: int = 5
    """Passes over U (the original CLI default; its sweeps used {1, 10, 30} on TinyMem and
    {1, 10, 20} on Pythia)."""
    lambda_l1: float = 1000.0
    """Weight of the L1 term ||s||_1 / N."""
    stop_loss: float = 0.1
    """Stop once ||s||_1 / N is below this (checked every 10 steps)."""
    lr: float = 0.1
    """Adam learning rate of the gates."""
    batch_size: int | None = None
    """Forget rows per step; None = all of U in one step (the original)."""

    def validate(self) -> None:
        _validate(self, ("epochs", "lr", "batch_size"), ("lambda_l1", "stop_loss"))


@METHODS.register
class Slimming(_GatedMethod):
    """Learn a sparse [0, 1] gate per neuron that keeps the memorized loss low; remove the kept.

    Slimming (Chang et al. 2024, MemPi; network slimming after Liu et al. 2017; TinyMem §7.2).
    Gates s_l in R^F (init 1) multiply the activations as clamp(s_l, 0, 1); the model is frozen
    and Adam minimizes::

        L(s) = mean_{u in U} CE_u(model with gates s) + lambda_l1 * sum_l ||s_l||_1 / N

    (N = number of gates), stopping once ||s||_1 / N < stop_loss (checked every 10 steps).
    score[l, j] = clamp(s_{l,j}, 0, 1): gates that survive the L1 pressure mark the neurons the
    memorized rows need, and those are removed.
    """

    name = "slimming"
    paper = PAPER
    Config = SlimmingConfig
    Gates = _SlimGates
    check_every = 10


# --------------------------------------------------------------------------- HardConcrete


@dataclass
class HardConcreteConfig(LayersConfig):
    """HardConcrete settings (spec §7.2.4: mask_p 0.5, beta 2/3, (l, r) = (-0.1, 1.1))."""

    ratio: float = 0.05
    """Fraction of each layer's neurons to remove."""
    epochs: int = 5
    """Passes over U (the original CLI default; its sweeps used {1, 10, 30} on TinyMem and
    {1, 10, 20} on Pythia)."""
    lambda_l1: float = 1000.0
    """Weight of the expected-L0 regularizer."""
    stop_loss: float = 0.1
    """Stop once the regularizer (before lambda) is below this (checked every step)."""
    lr: float = 0.1
    """Adam learning rate of the gate logits."""
    batch_size: int = 64
    """Forget rows per step (the original's 64)."""
    beta: float = 2 / 3
    """Temperature of the hard-concrete distribution."""
    init_std: float = 0.01
    """Std of the N(0, std) initial gate logits (the original's mask_p = 0.5 constant start was
    overwritten by this)."""
    seed: int = 0
    """Seed of the logit init and of the gate noise."""
    check_epochs: int = 0
    """0: check the early stop before every step; N > 0: only at the first step of epochs N, 2N,
    ... (the original ``hard_concrete.py`` checked every 10 epochs; it then left only the inner
    loop, a bug not reproduced: here the check stops training)."""

    def validate(self) -> None:
        _validate(
            self, ("epochs", "lr", "batch_size", "beta"), ("lambda_l1", "stop_loss", "init_std")
        )
        if not isinstance(self.check_epochs, int) or self.check_epochs < 0:
            raise ValueError(f"check_epochs must be an integer >= 0, got {self.check_epochs}")


@METHODS.register
class HardConcrete(_GatedMethod):
    """Learn L0 hard-concrete gates per neuron that keep the memorized loss low; remove the kept.

    HardConcrete (Chang et al. 2024, MemPi; L0 gates after Louizos et al. 2018; TinyMem §7.2).
    Gate logits g_l in R^F, init N(0, 0.01). Each step samples u ~ U(0, 1) per gate::

        s = clamp(sigmoid((log u - log(1 - u) + g) / beta) * (r - l) + l, 0, 1)
        reg = mean_l mean_j sigmoid(g_{l,j} - beta * log(-l / r))
        L(g) = mean_{u in U_batch} CE_u(model with activations * s) + lambda_l1 * reg

    with (l, r) = (-0.1, 1.1), Adam on g only (model frozen), early stop once reg < stop_loss.
    score[l, j] = sigmoid(g_{l,j}).

    Deviation: gradients are zeroed every step (the original zeroed them once per epoch, so the
    batches of one epoch accumulated).
    """

    name = "hard_concrete"
    paper = PAPER
    Config = HardConcreteConfig
    Gates = _HardConcreteGates


# --------------------------------------------------------------------------- Integrated gradients


@dataclass
class IntegratedGradientsConfig(LayersConfig):
    """Integrated-gradients settings (spec §7.2.5; the paper swept ig_steps {1, 10, 20})."""

    ratio: float = 0.05
    """Fraction of each layer's neurons to remove."""
    ig_steps: int = 20
    """Riemann steps m of the path integral from 0 to the activation (cost is linear in m)."""
    batch_size: int = 256
    """Scaled copies (positions x steps of one row) per forward pass (memory only)."""
    max_rows: int | None = None
    """Score on a seeded random subset of at most this many forget rows (cost is linear in the
    rows); None = all of U, the method as published."""
    seed: int = 0
    """Seed of the ``max_rows`` subset."""

    def validate(self) -> None:
        _validate(self, ("ig_steps", "batch_size", "max_rows"))


@METHODS.register
class IntegratedGradients(NeuronMethod):
    """Remove the neurons with the largest integrated gradient on the memorized tokens.

    Knowledge-neuron integrated gradients (Dai et al. 2022; MemPi, Chang et al. 2024; TinyMem
    §7.2). For forget row u, layer l and continuation position t (``continuation_mask``: the
    positions predicting a continuation token x_{t+1}), with a = a_l(u, t) in R^F the activation
    vector there and only that vector scaled (other positions and layers untouched)::

        IG_{u,t}[j] = a_j * (1/m) * sum_{k=1..m} d P(x_{t+1} | alpha_k * a) / d a_j,
            alpha_k = k / m
        score[l, j] = sum_u mean_t IG_{u,t}[j]

    Deviations: ``ig_steps`` and the prompt length are honoured (the original hard-coded 20
    steps and a 50-token prompt, and divided by a constant 10); the steps follow the paper's
    right Riemann sum (the original's linspace(0, 1) included the zero baseline). All positions
    and steps of one row run as one batch of copies sharing the layers below l.
    """

    name = "integrated_gradients"
    paper = "Dai et al. 2022, Knowledge Neurons in Pretrained Transformers; " + PAPER
    Config = IntegratedGradientsConfig

    def score(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Scores:
        cfg = self.config
        m = cfg.ig_steps
        adapter = MLPAdapter(model)
        device = model_device(model)
        runner = _CopyRunner(model, adapter)
        layers = self.layer_indices(adapter)
        freeze(model)  # gradients flow to the scaled activations only
        keep = _row_subset(data.n_forget, cfg.max_rows, cfg.seed)
        rows, mask = data.forget_ids[keep], data.continuation_mask()[keep]  # [U, T], [U, T-1]
        scores = [
            torch.zeros(w, dtype=torch.float64, device=device) for w in _widths(adapter, layers)
        ]
        alphas = torch.arange(1, m + 1, device=device, dtype=torch.float32) / m  # [m]
        with torch.enable_grad():
            for u in _progress(range(len(rows)), progress, self.name, len(rows)):
                positions = mask[u].nonzero().flatten().to(device)  # [n_t]
                if len(positions) == 0:
                    continue
                ids = rows[u : u + 1].to(device)  # [1, T]
                # Copies ordered position-major, so a chunk needs only the row up to its last t.
                t_all = positions.repeat_interleave(m)  # [n_t * m]
                a_all = alphas.repeat(len(positions))  # [n_t * m]
                for li, layer in enumerate(layers):
                    for start in range(0, len(t_all), cfg.batch_size):
                        t_idx = t_all[start : start + cfg.batch_size]
                        alpha = a_all[start : start + cfg.batch_size]
                        contrib = _ig_chunk(runner, ids, layer, t_idx, alpha)  # [F]
                        scores[li] += contrib / (m * len(positions))
        return [s.float().cpu() for s in scores]


def _ig_chunk(runner: _CopyRunner, ids: Tensor, layer: int, t_idx: Tensor, alpha: Tensor) -> Tensor:
    """Sum over the chunk's copies of a_t * dP(x_{t+1}) / d(alpha * a_t), [F]."""
    copies = len(t_idx)
    rows = torch.arange(copies, device=t_idx.device)
    held: dict[str, torch.Tensor] = {}

    def scale(acts: torch.Tensor) -> torch.Tensor:  # [1, T', F] -> [C, T', F]
        base = acts.detach()
        held["a"] = base[0, t_idx]  # [C, F]
        x = (alpha[:, None].to(base.dtype) * held["a"]).requires_grad_(True)
        held["x"] = x
        out = base.expand(copies, -1, -1).clone()
        out[rows, t_idx] = x
        return out

    length = int(t_idx.max()) + 1  # inputs 0..t_max predict up to x_{t_max + 1}
    logits = runner.logits(ids[:, :length], layer, copies, scale)  # [C, T', V]
    picked = logits[rows, t_idx].float()  # [C, V]
    target = ids[0, t_idx + 1]  # [C]
    prob = picked.softmax(dim=-1).gather(1, target[:, None]).squeeze(1)  # [C]
    (grad,) = torch.autograd.grad(prob.sum(), held["x"])  # [C, F]
    return (held["a"].double() * grad.double()).sum(dim=0)


__all__ = ["Activations", "HardConcrete", "IntegratedGradients", "Slimming", "ZeroOut"]
