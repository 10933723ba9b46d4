"""The shared trainer of the gradient methods: SOUL's loop, LoRA, the reference model, data parallel.

Every gradient method (:mod:`.gradient`) minimizes a per-step loss over a forget batch x_f (and,
with a retain term, a retain batch x_r) with the SOUL trainer that RESTOR (Rezaei et al., arXiv
2411.00204) used: AdamW, HF's linear schedule (warmup over the first ``max(1, S//10)`` of S steps
from lr 0, none for a 1-step run, then linear decay to 0), ``epochs`` passes over the forget set
in shuffled batches (``max_steps`` caps the total), each forget batch paired with a retain batch
of the same size drawn uniformly at random (with replacement).

Scale-out, with the loss values of the plain loop unchanged:

* ``lora_rank > 0`` trains LoRA adapters (peft, :mod:`unmemorize.lora`) on every attention and
  MLP linear layer instead of all weights, and merges them at the end: the output is a plain
  Hugging Face model.
* The reference model p_ref (NPO, KL) is never a second copy when it can be avoided: NPO's
  reference log-probs of the forget rows are constants, computed once before the first step.
  KL needs p_ref's whole next-token distribution: with LoRA the base weights ARE p_ref (peft's
  ``disable_adapter()``, one extra no-grad forward per step); without LoRA its log-probs at the
  scored forget positions are cached before the first step when they fit in
  :data:`REFERENCE_CACHE_BYTES`, else a frozen copy is kept (on the CPU when the GPU lacks room).
  A cache is computed in other batches than the training steps, so its values differ from a
  per-step forward in the last float bits (the true KL starts at ~1e-8 instead of exactly 0).
* Under ``accelerate launch`` with N processes every rank draws the same global batch, runs the
  forward pass on its rows ``r::N`` only, gathers the per-token values into the global batch
  (:func:`unmemorize.distributed.gather_rows`, with autograd), computes the very loss one
  process would, and averages gradients before each step. ``batch_size`` is the global batch.
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

from .. import distributed
from ..lora import add_lora, check_lora, merge_lora
from ..metrics.losses import masked_nll, next_token_logits, target_logprobs, token_logprobs
from ..runtime import EVAL_OVERHEAD, adamw, available_memory, compiled, run_in_batches
from .base import Edit, Method, check_finite_loss, freeze, model_device
from .data import UnlearnData

Model = PreTrainedModel
Tensor = torch.Tensor

logger = logging.getLogger(__name__)

RESTOR = (
    "Rezaei et al., 'RESTOR: Knowledge Recovery in Machine Unlearning', TMLR 2025 "
    "(arXiv 2411.00204)"
)

#: KL's cached reference log-probs (scored forget positions × vocabulary × 4 bytes) above this
#: fall back to the adapter-disabled model (LoRA) or a frozen copy.
REFERENCE_CACHE_BYTES = 2 * 2**30

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
    check_lora(cfg.lora_rank, cfg.lora_alpha)


@dataclass
class TrainerConfig:
    """The shared trainer's settings, which every gradient method has."""

    lr: float = 1e-5
    """AdamW peak learning rate (linear warmup over the first 10% of steps, then linear decay)."""
    epochs: int = 5
    """Passes over the forget set."""
    batch_size: int = 8
    """Forget rows per optimizer step, over all processes (retain terms pair as many rows)."""
    weight_decay: float = 0.0
    """AdamW (decoupled) weight decay."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: epochs x ceil(U / batch_size))."""
    seed: int = 0
    """Seeds the batch order, the retain pairing and the LoRA init."""
    lora_rank: int = 0
    """0: train every weight; r > 0: LoRA of rank r on the attention+MLP linears, merged after."""
    lora_alpha: int = 16
    """LoRA scale α (the update is (α/r)·B·A); LoRA usually wants a larger lr than full tuning."""

    def validate(self) -> None:
        _check_training(self)


@dataclass
class RetainTermConfig(TrainerConfig):
    """Trainer settings plus the weight of the retain NLL."""

    retain_weight: float = 1.0
    """γ, the weight of the retain NLL (0 drops the retain term)."""


# --------------------------------------------------------------------------- reference model


class Reference:
    """p_ref, the frozen starting model, as the forget terms query it.

    ``rows`` [B] are the forget-set indices of the batch ``ids`` [B, T]; ``mask`` [B, T-1] its
    scored targets. ``kind`` names the strategy (recorded in the run's info).
    """

    kind = ""

    def token_logprobs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, T-1] log p_ref of the targets, 0 where ``mask`` is False."""
        raise NotImplementedError

    def log_probs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, T-1, V] float32 log p_ref(·|x_≤t); only the ``mask`` positions are meaningful."""
        raise NotImplementedError


class ModelReference(Reference):
    """A frozen model queried per batch (on its own device; results come back to ``ids``')."""

    kind = "copy"

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    @torch.no_grad()
    def logits(self, ids: Tensor) -> Tensor:
        return next_token_logits(self.model, ids.to(model_device(self.model))).to(ids.device)

    def token_logprobs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        logp = target_logprobs(self.logits(ids), ids)
        return torch.where(mask, logp, torch.zeros_like(logp))

    def log_probs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return F.log_softmax(self.logits(ids).float(), dim=-1)


class AdapterReference(ModelReference):
    """With LoRA the base weights are p_ref: the peft model with its adapters switched off."""

    kind = "lora_base"

    @torch.no_grad()
    def logits(self, ids: Tensor) -> Tensor:
        training = self.model.training
        self.model.eval()  # p_ref is the eval-mode starting model
        try:
            with self.model.disable_adapter():
                return next_token_logits(self.model, ids)
        finally:
            self.model.train(training)


class CachedReference(Reference):
    """p_ref's values on the forget rows, computed once from the starting model.

    ``token_logprobs`` [U, T-1] (NPO); or the log-probs at the scored positions only,
    ``values`` [n_scored, V] with ``slot`` [U, T-1] (−1 where a target is not scored) (KL).
    """

    kind = "cached"

    def __init__(
        self,
        token_lp: Tensor | None = None,
        values: Tensor | None = None,
        slot: Tensor | None = None,
    ) -> None:
        self.token_lp, self.values, self.slot = token_lp, values, slot

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: PreTrainedModel, ids: Tensor, mask: Tensor, what: str, batch_size: int
    ) -> CachedReference:
        """Evaluate ``model`` (eval mode) once over the forget rows ``ids`` [U, T]."""
        device = model_device(model)
        training = model.training
        model.eval()
        slot = torch.full(mask.shape, -1, dtype=torch.long)
        slot[mask] = torch.arange(int(mask.sum()))

        def chunk(start: int, stop: int) -> Tensor:
            logits = next_token_logits(model, ids[start:stop].to(device))
            m = mask[start:stop].to(device)
            if what == "token_logprobs":
                lp = target_logprobs(logits, ids[start:stop].to(device))
                return torch.where(m, lp, torch.zeros_like(lp)).cpu()
            return F.log_softmax(logits.float(), dim=-1)[m].cpu()  # [n_scored_chunk, V]

        try:
            parts = run_in_batches(chunk, len(ids), batch_size, what="reference batch")
        finally:
            model.train(training)
        if what == "token_logprobs":
            return cls(token_lp=torch.cat(parts))
        return cls(values=torch.cat(parts), slot=slot)

    def token_logprobs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return self.token_lp[rows.cpu()].to(ids.device)

    def log_probs(self, rows: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        slot = self.slot[rows.cpu()]  # [B, T-1]
        out = torch.zeros(*slot.shape, self.values.shape[1])
        scored = slot >= 0
        out[scored] = self.values[slot[scored]]
        return out.to(ids.device)


def as_reference(ref: PreTrainedModel | Reference | None) -> Reference | None:
    """A model given directly (e.g. in a test) is a :class:`ModelReference`."""
    if ref is None or isinstance(ref, Reference):
        return ref
    return ModelReference(ref)


def _reference_copy(model: PreTrainedModel) -> ModelReference:
    """A frozen eval-mode copy; on the CPU when a CUDA trainee's device has no room for it."""
    device = model_device(model)
    need = sum(p.numel() * p.element_size() for p in model.parameters()) * EVAL_OVERHEAD
    free = available_memory(device) if device.type == "cuda" else None
    if free is None or need <= free:
        ref = copy.deepcopy(model)
    else:
        # Copy through the CPU: the trainee visits the CPU once (no optimizer holds it yet).
        ref = copy.deepcopy(model.to("cpu"))
        model.to(device)
        logger.warning("reference model kept on the CPU (%.1f GiB)", need / 2**30)
    freeze(ref)
    return ModelReference(ref.eval())


# --------------------------------------------------------------------------- trainer


class GradientTrainer(Method):
    """Shared trainer; a method defines its forget term in two halves.

    ``forget_stats`` runs the model on (this process's share of) the forget rows and returns
    per-token tensors [B, T-1]; ``forget_loss`` turns the whole batch's tensors into the scalar
    loss. ``reference`` says what the term needs from p_ref: None, ``"token_logprobs"`` (NPO) or
    ``"log_probs"`` (KL).
    """

    family = "gradient"
    paper = RESTOR
    reference: ClassVar[str | None] = None

    def forget_stats(
        self, model: Model, ref: Reference | None, rows: Tensor, ids: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        """Per-token tensors [B, T-1] of forget rows ``ids`` [B, T] (forget-set indices ``rows``)."""
        raise NotImplementedError

    def forget_loss(self, stats: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Scalar loss from the batch's ``stats`` over its scored targets ``mask`` [B, T-1]."""
        raise NotImplementedError

    def forget_term(
        self, model: Model, ref: PreTrainedModel | Reference | None, ids: Tensor, mask: Tensor
    ) -> Tensor:
        """Scalar forget loss of the rows ``ids`` [B, T] in one process (``ref`` may be a model)."""
        rows = torch.arange(len(ids))
        return self.forget_loss(self.forget_stats(model, as_reference(ref), rows, ids, mask), mask)

    @property
    def retain_weight(self) -> float:
        return float(getattr(self.config, "retain_weight", 0.0))

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        if self.retain_weight > 0:
            data.require_retain(self.name)
        # The changed count needs the start; a CPU copy leaves the device to the optimizer.
        before = [p.detach().to("cpu", copy=True) for p in model.parameters()]
        losses, info = self.train_(model, data, progress)
        self.finish_(model, before)
        changed = total = 0
        with torch.no_grad():
            for p, old in zip(model.parameters(), before, strict=True):
                changed += int((p.detach() != old.to(p.device)).sum())
                total += old.numel()
        return Edit(changed, total, "parameters", losses, info)

    def finish_(self, model: PreTrainedModel, before: list[Tensor]) -> None:
        """Post-training edit (the task vector's arithmetic); nothing by default."""

    def make_reference(
        self, trainee: PreTrainedModel, data: UnlearnData, forget_mask: Tensor
    ) -> Reference | None:
        """p_ref for this method, before the first step (see the module docstring)."""
        need = self.reference
        if need is None:
            return None
        cfg = self.config
        if need == "log_probs" and cfg.lora_rank:
            # Exact: with B = 0 the adapted and the base forward agree bit for bit at the start.
            return AdapterReference(trainee)
        if need == "log_probs":
            vocab = int(trainee.config.vocab_size)
            size = int(forget_mask.sum()) * vocab * 4
            cpu_free = available_memory(torch.device("cpu"))
            budget = min(
                REFERENCE_CACHE_BYTES, cpu_free // 2 if cpu_free else REFERENCE_CACHE_BYTES
            )
            if size > budget:
                logger.info("reference log-probs need %.1f GiB: not cached", size / 2**30)
                return _reference_copy(trainee)
        return CachedReference.build(trainee, data.forget_ids, forget_mask, need, cfg.batch_size)

    def train_(
        self, model: PreTrainedModel, data: UnlearnData, progress: bool
    ) -> tuple[list[float], dict]:
        """Run the shared trainer on ``model`` in place; return (loss per step, info)."""
        cfg = self.config
        device = model_device(model)
        state = distributed.process_state(device)
        rank, size = (state.process_index, state.num_processes) if state else (0, 1)
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
        trainee = add_lora(model, cfg.lora_rank, cfg.lora_alpha) if cfg.lora_rank else model
        ref = self.make_reference(trainee, data, forget_mask)
        if cfg.lora_rank:
            params = [p for p in trainee.parameters() if p.requires_grad]
        else:
            params = list(model.parameters())  # deduplicates tied weights (GPT-2 wte / lm_head)
            for p in params:
                p.requires_grad_(True)
        distributed.broadcast_parameters(params)  # LoRA inits agree across ranks
        optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
        generator = torch.Generator().manual_seed(cfg.seed)
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=self.name, unit="step")
        losses: list[float] = []
        forget_terms: list[float] = []
        retain_nlls: list[float] = []
        trainee.train()
        forward = compiled(trainee)  # the trainee itself unless --compile
        try:
            while len(losses) < total:
                order = torch.randperm(data.n_forget, generator=generator)
                for start in range(0, data.n_forget, cfg.batch_size):
                    if len(losses) >= total:
                        break
                    idx = order[start : start + cfg.batch_size]
                    # SOUL's pairing: a uniformly random retain row per forget row (drawn on
                    # every rank alike, from the shared generator).
                    r_idx = None
                    if use_retain:
                        r_idx = torch.randint(data.n_retain, (len(idx),), generator=generator)
                    stats = self._batch_stats(
                        forward, ref, data, (forget_mask, retain_mask), (idx, r_idx), rank, size
                    )
                    forget = self.forget_loss(
                        {k: v for k, v in stats.items() if k != _RETAIN},
                        forget_mask[idx].to(device),
                    )
                    loss = forget
                    if use_retain:
                        retain = masked_nll(stats[_RETAIN], retain_mask[r_idx].to(device))
                        loss = forget + self.retain_weight * retain
                        retain_nlls.append(float(retain.detach()))
                    value = check_finite_loss(loss, self.name, len(losses))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    distributed.average_gradients(params)
                    optimizer.step()
                    schedule.step()
                    losses.append(value)
                    forget_terms.append(float(forget.detach()))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{value:.3f}")
        finally:
            trainee.eval()
            optimizer.zero_grad(set_to_none=True)
            if bar is not None:
                bar.close()
            if cfg.lora_rank:
                merged = merge_lora(trainee)
                if merged is not model:  # pragma: no cover - peft unwraps the same object today
                    model.load_state_dict(merged.state_dict())
        logger.info("%s: %d steps, loss %.4f -> %.4f", self.name, total, losses[0], losses[-1])
        info: dict = {"steps": total, "warmup_steps": warmup, "forget_term": _ends(forget_terms)}
        if use_retain:
            info["retain_nll"] = _ends(retain_nlls)
        info["reference"] = ref.kind if ref is not None else None
        info["trainable_parameters"] = sum(p.numel() for p in params)
        if cfg.lora_rank:
            info["lora_rank"] = cfg.lora_rank
        if size > 1:
            info["processes"] = size
        return losses, info

    def _batch_stats(
        self,
        model: PreTrainedModel,
        ref: Reference | None,
        data: UnlearnData,
        masks: tuple[Tensor, Tensor],
        batch: tuple[Tensor, Tensor | None],
        rank: int,
        size: int,
    ) -> dict[str, Tensor]:
        """Per-token tensors [B, T-1] of the global batch ``idx`` (and retain rows ``r_idx``).

        ``masks`` are the forget [U, T-1] and retain [R, T-1] scored targets, ``batch`` the
        forget-set indices ``idx`` [B] and paired retain indices ``r_idx`` [B] (or None).

        With N processes this rank runs the model on rows ``rank::N`` only (a rank left without
        rows runs one and keeps none of it, so every rank joins the collectives) and the
        tensors are gathered back into batch order.
        """
        device = model_device(model)
        (forget_mask, retain_mask), (idx, r_idx) = masks, batch
        mine = slice(rank, None, size)
        keep = len(idx[mine])
        local = idx[mine] if keep else idx[:1]
        stats = self.forget_stats(
            model, ref, local, data.forget_ids[local].to(device), forget_mask[local].to(device)
        )
        if r_idx is not None:
            r_local = r_idx[mine] if keep else r_idx[:1]
            stats[_RETAIN] = token_logprobs(
                model, data.retain_ids[r_local].to(device), retain_mask[r_local].to(device)
            )
        if size == 1:
            return stats
        names = list(stats)
        stacked = torch.stack([stats[k][:keep].float() for k in names], dim=1)  # [b, K, T-1]
        full = distributed.gather_rows(stacked, len(idx))  # [B, K, T-1]
        return {k: full[:, i] for i, k in enumerate(names)}


_RETAIN = "_retain_logp"


def _ends(values: list[float]) -> list[float]:
    """[first, last] of a per-step curve (the info stays small)."""
    return [values[0], values[-1]]


__all__ = [
    "REFERENCE_CACHE_BYTES",
    "RESTOR",
    "AdapterReference",
    "CachedReference",
    "GradientTrainer",
    "ModelReference",
    "Reference",
    "RetainTermConfig",
    "TrainerConfig",
    "as_reference",
]
