"""Gradient unlearning: train against the forget set (GA, GradDiff, KL, NPO, SimNPO, task vector).

Every method here minimizes a per-step loss over a forget batch x_f (and, where it has a retain
term, a retain batch x_r) with one shared trainer (:mod:`.trainer`: the SOUL trainer that RESTOR,
Rezaei et al., arXiv 2411.00204, used; optional LoRA; data parallel under ``accelerate launch``).
The defaults (lr 1e-5, 5 epochs, batch 8, γ 1, no weight decay) are cheap starting points, not
the papers' (RESTOR's grid is unknown; SOUL used lr 5e-6..1e-4 and weight decay 0.1).
Notation (B rows, T positions, V vocabulary):

* log π_θ(y_i) = Σ_t m_it · log p_θ(x_i,t+1 | x_i,≤t): the scored targets m [B, T-1] are the
  memorized continuation when ``forget_prefix_len`` is known, else every non-pad target;
* NLL(x) = −Σ_it m_it log p_θ / Σ_it m_it: the token mean pooled over the batch (HF's
  ``outputs.loss``, which RESTOR's losses use); retain rows score every non-pad target;
* p_ref: the frozen starting model (its values on the forget rows are cached before the first
  step, or it is the LoRA base model, or a frozen copy: :class:`.trainer.Reference`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..metrics.losses import masked_nll, next_token_logits, token_logprobs
from ..registry import suggest
from .base import METHODS
from .trainer import RESTOR, GradientTrainer, Reference, RetainTermConfig, TrainerConfig

Model = PreTrainedModel
Tensor = torch.Tensor
Stats = dict[str, torch.Tensor]

logger = logging.getLogger(__name__)

DIVERGENCES = ("kl", "cross_entropy")
NPO_RATIOS = ("sequence", "token_mean", "batch_mean")
CE_EPS = 1e-12  # RESTOR's log(q + 1e-12)

# --------------------------------------------------------------------------- pure losses


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


def divergence_per_position(
    logits: Tensor, ref_logits: Tensor, kind: str, ref_is_log_probs: bool = False
) -> Tensor:
    """[B, T-1] D(p_θ, p_ref) at every position from logits [B, T-1, V].

    ``kl``: Σ_v p_θ·(log p_θ − log p_ref). ``cross_entropy`` (RESTOR's code):
    −Σ_v p_θ·log(p_ref + 1e-12) = KL + H(p_θ). ``ref_is_log_probs``: ``ref_logits`` are
    already float32 log p_ref (not normalized again, so the KL at θ = p_ref is exactly 0).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = ref_logits if ref_is_log_probs else F.log_softmax(ref_logits.float(), dim=-1)
    p = logp.exp()
    if kind == "kl":
        return (p * (logp - logq)).sum(-1)
    if kind == "cross_entropy":
        return -(p * torch.log(logq.exp() + CE_EPS)).sum(-1)
    raise suggest(kind, DIVERGENCES, "divergence")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Scalar mean of ``values`` [B, T-1] over the ``mask`` positions (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def divergence_loss(logits: Tensor, ref_logits: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Scalar mean over ``mask`` [B, T-1] positions of D(p_θ, p_ref) from logits [B, T-1, V]."""
    return masked_mean(divergence_per_position(logits, ref_logits, kind), mask)


# --------------------------------------------------------------------------- configs


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


# --------------------------------------------------------------------------- methods


@METHODS.register
class GradientAscent(GradientTrainer):
    """Gradient ascent: raise the NLL of the forget set (RESTOR's "GA" without retain).

    RESTOR (Rezaei et al., arXiv 2411.00204) and the SOUL trainer it uses; per forget batch::

        L = −NLL(x_f)

    NLL is the batch-pooled token mean over the scored targets. Unbounded below: the model
    collapses if run for long, so keep lr and steps small.
    """

    name = "ga"
    Config = GAConfig

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> Stats:
        return {"logp": token_logprobs(model, ids, mask)}

    def forget_loss(self, stats: Stats, mask: Tensor) -> Tensor:
        return -masked_nll(stats["logp"], mask)


@METHODS.register
class GradDiff(GradientAscent):
    """Gradient difference: ascend on the forget set, descend on the retain set (RESTOR "GA").

    RESTOR (Rezaei et al., arXiv 2411.00204; SOUL factory key ``GA+FT``); per step, with a
    forget batch x_f and a random retain batch x_r of the same size::

        L = −NLL(x_f) + γ·NLL(x_r)

    The forget term is gradient ascent's; the retain term comes from ``RetainTermConfig``.
    """

    name = "grad_diff"
    Config = GradDiffConfig


@METHODS.register
class KLUnlearning(GradientTrainer):
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
    reference = "log_probs"

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> Stats:
        logq = ref.log_probs(rows, ids, mask)  # [B, T-1, V]
        kind = self.config.divergence
        d = divergence_per_position(
            next_token_logits(model, ids), logq, kind, ref_is_log_probs=True
        )
        return {"divergence": d}

    def forget_loss(self, stats: Stats, mask: Tensor) -> Tensor:
        return -self.config.forget_weight * masked_mean(stats["divergence"], mask)


@METHODS.register
class NPO(GradientTrainer):
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
    reference = "token_logprobs"

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> Stats:
        return {
            "logp": token_logprobs(model, ids, mask),
            "ref_logp": ref.token_logprobs(rows, ids, mask),  # constant
        }

    def forget_loss(self, stats: Stats, mask: Tensor) -> Tensor:
        ratio = self.config.ratio
        ref_lp = reduce_logprobs(stats["ref_logp"], mask, ratio)
        lp = reduce_logprobs(stats["logp"], mask, ratio)
        return npo_loss(lp, ref_lp, self.config.beta)


@METHODS.register
class SimNPO(GradientTrainer):
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

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> Stats:
        return {"logp": token_logprobs(model, ids, mask)}

    def forget_loss(self, stats: Stats, mask: Tensor) -> Tensor:
        lp = reduce_logprobs(stats["logp"], mask, "token_mean")
        return simnpo_loss(lp, self.config.beta, self.config.margin)


@METHODS.register
class TaskVector(GradientTrainer):
    """Task arithmetic: fine-tune on the forget set, then subtract the learned direction.

    Ilharco et al., 'Editing Models with Task Arithmetic', arXiv 2212.04089, as RESTOR uses it.
    θ* = θ_c fine-tuned on the forget set (L = NLL(x_f), the shared trainer), then::

        θ = θ_c − α·(θ* − θ_c)        (computed as (1+α)·θ_c − α·θ*)
    """

    name = "task_vector"
    paper = "Ilharco et al., 'Editing Models with Task Arithmetic', ICLR 2023 (arXiv 2212.04089)"
    Config = TaskVectorConfig

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> Stats:
        return {"logp": token_logprobs(model, ids, mask)}

    def forget_loss(self, stats: Stats, mask: Tensor) -> Tensor:
        return masked_nll(stats["logp"], mask)

    def finish_(self, model: PreTrainedModel, before: list[torch.Tensor]) -> None:
        alpha = self.config.alpha
        with torch.no_grad():
            for p, start in zip(model.parameters(), before, strict=True):
                # (1+α)θ_c − αθ* is exact at α = 0 (θ_c) and α = 1 (2θ_c − θ*); float32, so a
                # bfloat16 model is rounded once, not at every term.
                p.copy_((1 + alpha) * start.to(p.device, torch.float32) - alpha * p.float())


__all__ = [
    "NPO",
    "GradDiff",
    "GradientAscent",
    "KLUnlearning",
    "SimNPO",
    "TaskVector",
    "GAConfig",
    "GradDiffConfig",
    "KLConfig",
    "NPOConfig",
    "RetainTermConfig",
    "SimNPOConfig",
    "TaskVectorConfig",
    "TrainerConfig",
    "divergence_loss",
    "divergence_per_position",
    "masked_mean",
    "npo_loss",
    "reduce_logprobs",
    "simnpo_loss",
]
