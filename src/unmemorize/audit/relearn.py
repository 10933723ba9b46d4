"""Relearning attacks: does a little fine-tuning bring the forgotten sequences back?

Hu et al. 2024 ("Jogging the memory of unlearned LLMs through targeted relearning attacks",
arXiv 2406.13356) and Lynch et al. 2024 ("Eight methods to evaluate robust unlearning in LLMs",
arXiv 2402.16835): unlearning that only hides knowledge lets it return after a few fine-tuning
steps, even on data that does not contain it. Two attacks, each on a fresh copy of the model
(the input model is never touched), for every learning rate of a small grid:

* **forget half**: fine-tune on a random half A of the forget rows (their trained token rows),
  then measure exact extraction on the other half B, which the attack never saw;
* **benign**: fine-tune on retain rows only, then measure exact extraction on every forget row.

Training: AdamW (:func:`unmemorize.runtime.adamw`, float32 master weights for low-precision
models), no weight decay, a constant learning rate, ``steps`` steps of ``batch`` rows drawn
without replacement (the whole set when it is smaller), the loss the mean over rows of
:func:`unmemorize.metrics.losses.sequence_losses`. Seeded: the split and the batches come from
``torch.Generator(seed)``.

Returned fraction over a measured set S: |{i ∈ S ∩ M₀ : memorized_i(θ_attacked)}| / |S ∩ M₀|,
where M₀ is the set the *original* model memorized (every forget row without an original
model). The worst case over the learning-rate grid, after the last step, is the headline; the
curve holds the fraction every ``relearn_every`` steps for every learning rate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from ..metrics.losses import sequence_losses
from ..runtime import adamw
from .base import AUDIT_CHECKS, AuditCheck, AuditContext, CheckResult
from .extraction import exact_verdicts


def relearn_curve(
    model: PreTrainedModel,
    train_ids: torch.Tensor,
    measure: Callable[[PreTrainedModel], torch.Tensor],
    *,
    lr: float,
    steps: int,
    batch_size: int,
    every: int,
    pad_id: int | None,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> tuple[list[tuple[int, torch.Tensor]], PreTrainedModel]:
    """Fine-tune a copy of ``model`` on ``train_ids`` [N, T]; ``measure`` it along the way.

    Returns:
        ``([(step, measure(copy)), ...], copy)``: measured at step 0, every ``every`` steps and
        after the last step.
    """
    attacked = copy.deepcopy(model)
    for param in attacked.parameters():
        param.requires_grad_(True)
    optimizer = adamw(attacked.parameters(), lr=lr, weight_decay=0.0)
    device = next(attacked.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    curve = [(0, measure(attacked))]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout, for models that have it: seeded, caller's RNG kept
        for step in range(1, steps + 1):
            _step(attacked, optimizer, train_ids, generator, batch_size, pad_id, device)
            if on_step is not None:
                on_step()
            if step % every == 0 or step == steps:
                curve.append((step, measure(attacked)))
    optimizer.zero_grad(set_to_none=True)
    return curve, attacked


def _step(model, optimizer, train_ids, generator, batch_size, pad_id, device) -> None:
    rows = torch.randperm(len(train_ids), generator=generator)[: min(batch_size, len(train_ids))]
    model.train()
    loss = sequence_losses(model, train_ids[rows].to(device), pad_id).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.eval()


def _returned(verdict: torch.Tensor, was: torch.Tensor) -> float:
    """Share of the originally memorized rows (``was``) that ``verdict`` finds memorized."""
    n = int(was.sum())
    return float((verdict & was).sum()) / n if n else 0.0


def split_forget(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into the trained half A and the measured half B."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2].sort().values, order[n // 2 :].sort().values


@AUDIT_CHECKS.register("relearn")
class RelearningAttack(AuditCheck):
    """Relearning attacks (Hu et al. 2024, arXiv 2406.13356; Lynch et al. 2024, arXiv
    2402.16835): fine-tune a copy on half the forget set or on benign retain rows, and count the
    originally memorized rows that come back. See the module docstring for the formulas."""

    name = "relearn"
    paper = (
        "Hu et al. 2024, targeted relearning attacks (arXiv 2406.13356); Lynch et al. 2024, "
        "eight methods to evaluate robust unlearning (arXiv 2402.16835)"
    )
    measures = (
        "share of the originally memorized forget rows memorized again after a few fine-tuning "
        "steps on half the forget set (other half measured) or on benign retain rows"
    )
    reading = (
        "0 = the removal held; a large benign_returned_fraction means the sequences were hidden "
        "and come back after ordinary fine-tuning; forget_half_returned_fraction is the stronger "
        "attack (related data)"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        sets, cfg = ctx.sets, ctx.config
        was = ctx.original_memorized
        u = sets.n_forget
        summary: dict = {
            "forget_half_returned_fraction": None,
            "benign_returned_fraction": None,
            "worst_lr": {"forget_half": None, "benign": None},
            "curve": {"forget_half": {}, "benign": {}},
            "n_originally_memorized": int(was.sum()),
            "config": {
                "steps": cfg.relearn_steps,
                "lrs": list(cfg.relearn_lrs),
                "batch_size": cfg.relearn_batch_size,
                "every": cfg.relearn_every,
                "optimizer": "AdamW",
                "weight_decay": 0.0,
                "seed": cfg.seed,
            },
        }
        rows: dict[str, list] = {
            "originally_memorized": was.tolist(),
            "relearn_forget_half": [None] * u,
            "relearn_benign": [None] * u,
        }
        attacks = []
        if u >= 2:
            trained, measured = split_forget(u, cfg.seed)
            summary["config"]["forget_half_trained_rows"] = trained.tolist()
            attacks.append(("forget_half", sets.forget_ids[trained], measured))
        else:
            summary["skipped_forget_half"] = "fewer than 2 forget rows: nothing to split"
        if sets.retain_ids is not None and len(sets.retain_ids) > 0:
            attacks.append(("benign", sets.retain_ids, torch.arange(u)))
        else:
            summary["skipped_benign"] = "no retain rows given"
        progress = ctx.progress_bar
        for attack, train_ids, measured in attacks:
            if not bool(was[measured].any()):
                # nothing the original memorized is measured: nothing can return, skip the cost
                summary[f"{attack}_returned_fraction"] = 0.0
                summary[f"skipped_{attack}"] = "the original model memorized none of these rows"
                continue
            worst = None
            for lr in cfg.relearn_lrs:
                curve, _ = relearn_curve(
                    ctx.model,
                    train_ids,
                    lambda m, measured=measured: exact_verdicts(m, sets, cfg, measured),
                    lr=lr,
                    steps=cfg.relearn_steps,
                    batch_size=cfg.relearn_batch_size,
                    every=cfg.relearn_every,
                    pad_id=sets.pad_id,
                    seed=cfg.seed,
                    on_step=progress,
                )
                was_m = was[measured]
                summary["curve"][attack][repr(lr)] = [
                    [step, _returned(v, was_m)] for step, v in curve
                ]
                final = curve[-1][1]
                value = _returned(final, was_m)
                if worst is None or value > worst[0]:
                    worst = (value, lr, final)
            value, lr, final = worst
            summary[f"{attack}_returned_fraction"] = value
            summary["worst_lr"][attack] = lr
            column = rows[f"relearn_{attack}"]
            for i, v in zip(measured.tolist(), final.tolist(), strict=True):
                column[i] = bool(v)
        return CheckResult(summary, rows)
