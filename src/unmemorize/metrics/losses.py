"""The one place where next-token losses are computed (training, methods, metrics all use it).

Shapes: B rows, T positions, V vocabulary. Position j of the logits predicts token j+1, so a
batch ``ids`` [B, T] has T-1 targets ``ids[:, 1:]``. Every loss is computed in float32 whatever
the model's dtype, and padding targets (``pad_id``) never count.

Three reductions are in use, and they are not interchangeable:

* :func:`sequence_losses` — [B] the token-mean loss of each row (a row's loss does not depend on
  the other rows; TinyMem's training, BalancedSubnet, Durable, finetuning).
* :func:`batch_token_mean_loss` — scalar, every target of the batch weighted equally (Hugging
  Face's ``outputs.loss`` with pad labels ignored; SSD's importances).
* :func:`masked_nll` — scalar from per-token log-probs and a mask (the gradient methods, which
  also need the log-probs themselves for NPO / KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel


def next_token_logits(model: PreTrainedModel, ids: Tensor) -> Tensor:
    """[B, T-1, V] next-token logits of ``ids`` [B, T] (the last position predicts nothing)."""
    return model(input_ids=ids[:, :-1], use_cache=False).logits


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """[B, T-1] float32 cross-entropy of ``logits`` [B, T-1, V] against ``targets`` [B, T-1]."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")


def row_mean_loss(ce: Tensor, targets: Tensor, pad_id: int | None) -> Tensor:
    """[B] mean of ``ce`` [B, T-1] over each row's non-pad ``targets`` (a row of pads gives 0)."""
    if pad_id is None:
        return ce.mean(dim=1)
    keep = (targets != pad_id).float()
    return (ce * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def sequence_losses(model: PreTrainedModel, ids: Tensor, pad_id: int | None) -> Tensor:
    """[B] mean next-token cross-entropy of each row of ``ids`` [B, T], pad targets excluded."""
    targets = ids[:, 1:]
    return row_mean_loss(
        token_cross_entropy(next_token_logits(model, ids), targets), targets, pad_id
    )


def batch_token_mean_loss(model: PreTrainedModel, ids: Tensor, pad_id: int | None) -> Tensor:
    """Scalar: mean next-token cross-entropy over every non-pad target of the batch ``ids`` [B, T].

    The causal-LM loss of Hugging Face models (``labels=ids`` with pad labels ignored): a
    token-weighted mean over the batch. A batch without targets gives 0.
    """
    logits = next_token_logits(model, ids)
    target = ids[:, 1:]
    if pad_id is not None:
        target = target.masked_fill(target == pad_id, -100)
    total = F.cross_entropy(
        logits.transpose(1, 2).float(), target, ignore_index=-100, reduction="sum"
    )
    return total / (target != -100).sum().clamp(min=1)


def target_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """[B, T-1] log p(x_t+1 | x_≤t) from ``logits`` [B, T-1, V] of ``ids`` [B, T] (float32)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def token_logprobs(model: PreTrainedModel, ids: Tensor, mask: Tensor) -> Tensor:
    """[B, T-1] target log-probs of ``ids`` [B, T] under ``model``; 0 where ``mask`` is False."""
    logp = target_logprobs(next_token_logits(model, ids), ids)
    return torch.where(mask, logp, torch.zeros_like(logp))


def masked_nll(logp: Tensor, mask: Tensor) -> Tensor:
    """Scalar: −Σ m·logp / Σ m, the token-mean NLL pooled over the batch (HF ``outputs.loss``)."""
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


__all__ = [
    "batch_token_mean_loss",
    "masked_nll",
    "next_token_logits",
    "row_mean_loss",
    "sequence_losses",
    "target_logprobs",
    "token_cross_entropy",
    "token_logprobs",
]
