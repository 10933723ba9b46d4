"""Gradient unlearning: train against the forget set (GA, GradDiff, KL, NPO, SimNPO, task vector).

Every method here minimizes a per-step loss over a forget batch x_f (and, where it has a retain
term, a retain batch x_r) with one shared trainer, the SOUL trainer that RESTOR (Rezaei et al.,
arXiv 2411.00204) used: AdamW, HF's linear schedule (warmup over the first ``max(1, S//10)`` of S
steps, from lr 0, none for a 1-step run, then linear decay to 0), ``epochs`` passes over the
forget set in shuffled batches (``max_steps`` caps the total), each forget batch paired with a
retain batch of the same size drawn uniformly at random (with replacement). The defaults
(lr 1e-5, 5 epochs, batch 8, γ 1, no weight decay) are cheap starting points, not the papers'
(RESTOR's grid is unknown; SOUL used lr 5e-6..1e-4 and weight decay 0.1).
Notation (B rows, T positions, V vocabulary):

* log π_θ(y_i) = Σ_t m_it · log p_θ(x_i,t+1 | x_i,≤t): the scored targets m [B, T-1] are the
  memorized continuation when ``forget_prefix_len`` is known, else every non-pad target;
* NLL(x) = −Σ_it m_it log p_θ / Σ_it m_it: the token mean pooled over the batch (HF's
  ``outputs.loss``, which RESTOR's losses use); retain rows score every non-pad target;
* p_ref: the frozen starting model (a deep copy taken before the first step, eval, no grad).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from ..registry import suggest
from .base import METHODS, Edit, Method, UnlearnData, check_finite_loss, freeze, model_device

Model = PreTrainedModel
Tensor = torch.Tensor

logger = logging.getLogger(__name__)

RESTOR = (
    "Rezaei et al., 'RESTOR: Knowledge Recovery in Machine Unlearning', TMLR 2025 "
    "(arXiv 2411.00204)"
)
DIVERGENCES = ("kl", "cross_entropy")
NPO_RATIOS = ("sequence", "token_mean", "batch_mean")
CE_EPS = 1e-12  # RESTOR's log(q + 1e-12)

# --------------------------------------------------------------------------- pure losses


def target_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1] log p(x_t+1 | x_≤t) from ``logits`` [B, T-1, V] of ``ids`` [B, T] (float32)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def forward_logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1, V] next-token logits of ``ids`` [B, T] (the last position predicts nothing)."""
    return model(input_ids=ids[:, :-1], use_cache=False).logits


def token_logprobs(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T-1] target log-probs of ``ids`` [B, T] under ``model``; 0 where ``mask`` is False."""
    logp = target_logprobs(forward_logits(model, ids), ids)
    return torch.where(mask, logp, torch.zeros_like(logp))


def masked_nll(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar: −Σ m·logp / Σ m, the token-mean NLL pooled over the batch (HF ``outputs.loss``)."""
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def reduce_logprobs(logp: torch.Tensor, mask: torch.Tensor, ratio: str) -> torch.Tensor:
    """Per-sequence log-likelihood of masked token log-probs ``logp`` [B, T-1].

    ``sequence``: [B] Σ_t logp (log π(y_i)); ``token_mean``: [B] Σ_t logp / |y_i|;
    ``batch_mean``: [1] the batch-pooled token mean (= −NLL, RESTOR's NPO input).
    """
    logp = logp * mask
    if ratio == "sequence":
        return logp.sum(dim=1)
    if ratio == "token_mean":
        return logp.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    if ratio == "batch_mean":
        return (-masked_nll(logp, mask)).reshape(1)
    raise suggest(ratio, NPO_RATIOS, "NPO ratio")


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Scalar NPO loss −(2/β)·mean_i logσ(−β·Δ_i), Δ_i = logp_i − logp_ref_i (both [B]).

    Its gradient is (2/B)·Σ_i σ(β·Δ_i)·∇logp_i: at Δ = 0 (and as β → 0) every weight is 1/B,
    the gradient of GA's mean_i logp_i; it fades as a sequence becomes unlikely (Δ → −∞).
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref)).mean()


def simnpo_loss(logp_mean: torch.Tensor, beta: float, margin: float) -> torch.Tensor:
    """Scalar SimNPO loss −(2/β)·mean_i logσ(−β·ℓ_i − δ), ℓ_i = log π(y_i)/|y_i| [B]."""
    return -(2.0 / beta) * F.logsigmoid(-beta * logp_mean - margin).mean()


def divergence_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """Scalar mean over ``mask`` [B, T-1] positions of D(p_θ, p_ref) from logits [B, T-1, V].

    ``kl``: Σ_v p_θ·(log p_θ − log p_ref). ``cross_entropy`` (RESTOR's code):
    −Σ_v p_θ·log(p_ref + 1e-12) = KL + H(p_θ).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    p = logp.exp()
    if kind == "kl":
        per = (p * (logp - logq)).sum(-1)  # [B, T-1]
    elif kind == "cross_entropy":
        per = -(p * torch.log(logq.exp() + CE_EPS)).sum(-1)
    else:
        raise suggest(kind, DIVERGENCES, "divergence")
    return (per * mask).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------- configs


def _check_training(cfg: Any) -> None:
    """Validate the trainer fields every config here shares."""
    for name in ("epochs", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {cfg.lr}")
    wd = cfg.weight_decay
    if not (math.isfinite(wd) and wd >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    steps = cfg.max_steps
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"max_steps must be a positive integer or None, got {steps}")
    retain = getattr(cfg, "retain_weight", 0.0)
    if not (math.isfinite(retain) and retain >= 0):
        raise ValueError(f"retain_weight must be >= 0 (0 drops the retain term), got {retain}")
    beta = getattr(cfg, "beta", 1.0)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite positive number, got {beta}")


@dataclass
class TrainerConfig:
    """The shared trainer's settings, which every gradient method has."""

    lr: float = 1e-5
    """AdamW peak learning rate (linear warmup over the first 10% of steps, then linear decay)."""
    epochs: int = 5
    """Passes over the forget set."""
    batch_size: int = 8
    """Forget rows per optimizer step (methods with a retain term pair as many retain rows)."""
    weight_decay: float = 0.0
    """AdamW (decoupled) weight decay."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: epochs x ceil(U / batch_size))."""
    seed: int = 0
    """Seeds the batch order and the retain pairing."""

    def validate(self) -> None:
        _check_training(self)


@dataclass
class RetainTermConfig(TrainerConfig):
    """Trainer settings plus the weight of the retain NLL."""

    retain_weight: float = 1.0
    """γ, the weight of the retain NLL (0 drops the retain term)."""


@dataclass
class GAConfig(TrainerConfig):
    """Gradient ascent settings (the shared trainer; no retain term)."""


@dataclass
class GradDiffConfig(RetainTermConfig):
    """Gradient difference settings."""


@dataclass
class KLConfig(RetainTermConfig):
    """KL unlearning settings."""

    forget_weight: float = 1.0
    """γ_f, the weight of the divergence from the reference model on the forget batch."""
    divergence: str = "kl"
    """``kl`` (true KL(p_θ ‖ p_ref)) or ``cross_entropy`` (RESTOR's code: H(p_θ, p_ref))."""

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.forget_weight) and self.forget_weight > 0):
            raise ValueError(f"forget_weight must be positive, got {self.forget_weight}")
        if self.divergence not in DIVERGENCES:
            raise suggest(self.divergence, DIVERGENCES, "divergence")
        if self.divergence == "kl" and self.retain_weight == 0:
            raise ValueError(
                "kl with divergence=kl and retain_weight=0 never moves: the KL to the starting "
                "model has zero gradient at the start; set retain_weight > 0 or "
                "divergence=cross_entropy"
            )


@dataclass
class NPOConfig(RetainTermConfig):
    """NPO settings."""

    beta: float = 0.1
    """β, the inverse temperature (the paper's and RESTOR's 0.1)."""
    ratio: str = "sequence"
    """Δ per ``sequence`` (paper: summed log-probs), ``token_mean`` or ``batch_mean`` (RESTOR)."""

    def validate(self) -> None:
        super().validate()
        if self.ratio not in NPO_RATIOS:
            raise suggest(self.ratio, NPO_RATIOS, "NPO ratio")


@dataclass
class SimNPOConfig(RetainTermConfig):
    """SimNPO settings."""

    beta: float = 2.5
    """β, the inverse temperature (the paper's 2.5)."""
    margin: float = 0.0
    """δ, the reward margin (the paper's γ; 0 by default)."""

    def validate(self) -> None:
        super().validate()
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin}")


@dataclass
class TaskVectorConfig(TrainerConfig):
    """Task-vector settings: fine-tune on the forget set with the trainer, then subtract."""

    alpha: float = 1.0
    """α in θ_c − α·(θ* − θ_c) (0 returns the input; −1 returns the fine-tuned θ*)."""

    def validate(self) -> None:
        super().validate()
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")


# --------------------------------------------------------------------------- trainer


class _GradientMethod(Method):
    """Shared trainer; subclasses define ``forget_term`` (and say whether they need p_ref)."""

    family = "gradient"
    paper = RESTOR
    needs_reference: ClassVar[bool] = False

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss on forget rows ``ids`` [B, T] over the scored targets ``mask`` [B, T-1]."""
        raise NotImplementedError

    @property
    def retain_weight(self) -> float:
        return float(getattr(self.config, "retain_weight", 0.0))

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        if self.retain_weight > 0:
            data.require_retain(self.name)
        ref = None
        if self.needs_reference:
            ref = copy.deepcopy(model).eval()
            freeze(ref)
            before = [p.detach() for p in ref.parameters()]
        else:
            # The changed count needs the start; a CPU copy leaves the device to the optimizer.
            before = [p.detach().to("cpu", copy=True) for p in model.parameters()]
        losses, info = self.train_(model, ref, data, progress)
        self.finish_(model, before)
        changed = total = 0
        with torch.no_grad():
            for p, old in zip(model.parameters(), before, strict=True):
                changed += int((p.detach() != old.to(p.device)).sum())
                total += old.numel()
        return Edit(changed, total, "parameters", losses, info)

    def finish_(self, model: PreTrainedModel, before: list[torch.Tensor]) -> None:
        """Post-training edit (the task vector's arithmetic); nothing by default."""

    def train_(
        self,
        model: PreTrainedModel,
        ref: PreTrainedModel | None,
        data: UnlearnData,
        progress: bool,
    ) -> tuple[list[float], dict]:
        """Run the shared trainer on ``model`` in place; return (loss per step, info)."""
        cfg = self.config
        device = model_device(model)
        forget_mask = data.continuation_mask()  # [U, T-1]
        retain_mask = torch.ones(data.n_retain, data.retain_ids.shape[1] - 1, dtype=torch.bool)
        if data.pad_id is not None:
            retain_mask = data.retain_ids[:, 1:] != data.pad_id  # [R, T-1]
        use_retain = self.retain_weight > 0
        total = cfg.epochs * math.ceil(data.n_forget / cfg.batch_size)
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        # SOUL: max(1, steps // 10); HF's warmup starts at lr 0, so a 1-step run gets none.
        warmup = max(1, total // 10) if total > 1 else 0
        params = list(model.parameters())  # deduplicates tied weights (GPT-2 wte / lm_head)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
        generator = torch.Generator().manual_seed(cfg.seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=self.name, unit="step")
        losses: list[float] = []
        forget_terms: list[float] = []
        retain_nlls: list[float] = []
        model.train()
        try:
            while len(losses) < total:
                order = torch.randperm(data.n_forget, generator=generator)
                for start in range(0, data.n_forget, cfg.batch_size):
                    if len(losses) >= total:
                        break
                    idx = order[start : start + cfg.batch_size]
                    forget = self.forget_term(
                        model, ref, data.forget_ids[idx].to(device), forget_mask[idx].to(device)
                    )
                    loss = forget
                    if use_retain:
                        # SOUL's pairing: a uniformly random retain row per forget row.
                        r_idx = torch.randint(data.n_retain, (len(idx),), generator=generator)
                        r_mask = retain_mask[r_idx].to(device)
                        r_logp = token_logprobs(model, data.retain_ids[r_idx].to(device), r_mask)
                        retain = masked_nll(r_logp, r_mask)
                        loss = forget + self.retain_weight * retain
                        retain_nlls.append(float(retain.detach()))
                    value = check_finite_loss(loss, self.name, len(losses))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    losses.append(value)
                    forget_terms.append(float(forget.detach()))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{value:.3f}")
        finally:
            model.eval()
            optimizer.zero_grad(set_to_none=True)
            if bar is not None:
                bar.close()
        logger.info("%s: %d steps, loss %.4f -> %.4f", self.name, total, losses[0], losses[-1])
        info: dict = {"steps": total, "warmup_steps": warmup, "forget_term": _ends(forget_terms)}
        if use_retain:
            info["retain_nll"] = _ends(retain_nlls)
        return losses, info


def _ends(values: list[float]) -> list[float]:
    """[first, last] of a per-step curve (the info stays small)."""
    return [values[0], values[-1]]


# --------------------------------------------------------------------------- methods


@METHODS.register("ga")
class GradientAscent(_GradientMethod):
    """Gradient ascent: raise the NLL of the forget set (RESTOR's "GA" without retain).

    RESTOR (Rezaei et al., arXiv 2411.00204) and the SOUL trainer it uses; per forget batch::

        L = −NLL(x_f)

    NLL is the batch-pooled token mean over the scored targets. Unbounded below: the model
    collapses if run for long, so keep lr and steps small.
    """

    name = "ga"
    Config = GAConfig

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        return -masked_nll(token_logprobs(model, ids, mask), mask)


@METHODS.register("grad_diff")
class GradDiff(_GradientMethod):
    """Gradient difference: ascend on the forget set, descend on the retain set (RESTOR "GA").

    RESTOR (Rezaei et al., arXiv 2411.00204; SOUL factory key ``GA+FT``); per step, with a
    forget batch x_f and a random retain batch x_r of the same size::

        L = −NLL(x_f) + γ·NLL(x_r)
    """

    name = "grad_diff"
    Config = GradDiffConfig

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        return -masked_nll(token_logprobs(model, ids, mask), mask)


@METHODS.register("kl")
class KLUnlearning(_GradientMethod):
    """KL unlearning: push the forget-set predictions away from the starting model's.

    RESTOR (Rezaei et al., arXiv 2411.00204; SOUL key ``KL+FT``); p_ref is the frozen starting
    (corrupted) model::

        L = −γ_f·mean_{(i,t)∈m} D(p_θ(·|x_i,≤t), p_ref(·|x_i,≤t)) + w_r·NLL(x_r)

    with D = KL(p_θ ‖ p_ref) (``divergence=kl``, the README formula) or D = H(p_θ, p_ref) =
    −Σ_v p_θ,v·log(p_ref,v + 1e-12) (``cross_entropy``, what RESTOR's code computes; it equals
    KL + H(p_θ), so it also rewards raising the entropy). Both average over the scored non-pad
    targets m; RESTOR's code averaged over every position, padding included. The true KL has
    zero gradient at θ = p_ref, so its forget term acts only once the retain term has moved θ.
    """

    name = "kl"
    paper = RESTOR + "; README KL and code cross-entropy variants"
    Config = KLConfig
    needs_reference = True

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        with torch.no_grad():
            ref_logits = forward_logits(ref, ids)
        d = divergence_loss(forward_logits(model, ids), ref_logits, mask, self.config.divergence)
        return -self.config.forget_weight * d


@METHODS.register("npo")
class NPO(_GradientMethod):
    """Negative preference optimization: gradient ascent that fades once a sequence is forgotten.

    Zhang, Lin, Bai, Mei, 'Negative Preference Optimization', arXiv 2404.05868, as used by RESTOR.
    With Δ_i = log π_θ(y_i) − log π_ref(y_i) over the scored targets of forget row i::

        L = −(2/β)·mean_i logσ(−β·Δ_i) + γ·NLL(x_r)
        ∇L_f = (2/B)·Σ_i σ(β·Δ_i)·∇log π_θ(y_i)       (= GA's gradient at Δ = 0 and as β → 0)

    ``ratio``: ``sequence`` (the paper: Σ_t log-probs), ``token_mean`` (each row's token mean)
    or ``batch_mean`` (RESTOR's code: Δ of the batch-pooled token means, one NPO term per batch).
    """

    name = "npo"
    paper = "Zhang et al., 'Negative Preference Optimization', COLM 2024 (arXiv 2404.05868)"
    Config = NPOConfig
    needs_reference = True

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        ratio = self.config.ratio
        with torch.no_grad():
            ref_lp = reduce_logprobs(token_logprobs(ref, ids, mask), mask, ratio)
        lp = reduce_logprobs(token_logprobs(model, ids, mask), mask, ratio)
        return npo_loss(lp, ref_lp, self.config.beta)


@METHODS.register("simnpo")
class SimNPO(_GradientMethod):
    """SimNPO: reference-free, length-normalized NPO.

    Fan et al., 'Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning', arXiv 2410.07163. With |y_i| the number of scored targets of forget row i::

        L = −(2/β)·mean_i logσ(−(β/|y_i|)·log π_θ(y_i) − δ) + γ·NLL(x_r)
    """

    name = "simnpo"
    paper = (
        "Fan et al., 'Simplicity Prevails: Rethinking NPO for LLM Unlearning' (arXiv 2410.07163)"
    )
    Config = SimNPOConfig

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        lp = reduce_logprobs(token_logprobs(model, ids, mask), mask, "token_mean")
        return simnpo_loss(lp, self.config.beta, self.config.margin)


@METHODS.register("task_vector")
class TaskVector(_GradientMethod):
    """Task arithmetic: fine-tune on the forget set, then subtract the learned direction.

    Ilharco et al., 'Editing Models with Task Arithmetic', arXiv 2212.04089, as RESTOR uses it.
    θ* = θ_c fine-tuned on the forget set (L = NLL(x_f), the shared trainer), then::

        θ = θ_c − α·(θ* − θ_c)        (computed as (1+α)·θ_c − α·θ*)
    """

    name = "task_vector"
    paper = "Ilharco et al., 'Editing Models with Task Arithmetic', ICLR 2023 (arXiv 2212.04089)"
    Config = TaskVectorConfig

    def forget_term(self, model: Model, ref: Model | None, ids: Tensor, mask: Tensor) -> Tensor:
        return masked_nll(token_logprobs(model, ids, mask), mask)

    def finish_(self, model: PreTrainedModel, before: list[torch.Tensor]) -> None:
        alpha = self.config.alpha
        with torch.no_grad():
            for p, start in zip(model.parameters(), before, strict=True):
                # (1+α)θ_c − αθ* is exact at α = 0 (θ_c) and α = 1 (2θ_c − θ*).
                p.copy_((1 + alpha) * start.to(p.device, p.dtype) - alpha * p)


__all__ = [
    "NPO",
    "GradDiff",
    "GradientAscent",
    "KLUnlearning",
    "SimNPO",
    "TaskVector",
    "divergence_loss",
    "forward_logits",
    "masked_nll",
    "npo_loss",
    "reduce_logprobs",
    "simnpo_loss",
    "target_logprobs",
    "token_logprobs",
]
