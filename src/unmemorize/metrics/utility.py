"""Model utility: teacher-forced next-token accuracy and perplexity.

Our definitions exclude padding (a target that is the pad id is not scored) and weight every token
equally: perplexity = exp(Σ CE / number of scored tokens). ``legacy=True`` reproduces the original
TinyMem code for comparison with the paper's numbers: pad positions included, accuracy averaged per
batch, and perplexity the mean over batches of exp(batch-mean CE).
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel

from .losses import next_token_logits, token_cross_entropy


@torch.inference_mode()
def accuracy_and_perplexity(
    model: PreTrainedModel,
    ids: torch.Tensor,
    pad_id: int | None,
    *,
    batch_size: int = 256,
    legacy: bool = False,
) -> tuple[float, float]:
    """Teacher-forced next-token accuracy and perplexity of ``model`` on ``ids`` [n, T].

    Returns:
        ``(accuracy, perplexity)``; accuracy in [0, 1].
    """
    if len(ids) == 0:
        raise ValueError("cannot score an empty set of sequences")
    device = next(model.parameters()).device
    correct = total = 0
    loss_sum = 0.0
    batch_acc, batch_ppl = [], []
    for start in range(0, len(ids), batch_size):
        x = ids[start : start + batch_size].to(device)
        logits = next_token_logits(model, x).float()  # [B, T-1, V]
        target = x[:, 1:]
        ce = token_cross_entropy(logits, target)  # [B, T-1]
        hit = logits.argmax(-1) == target
        if legacy:
            batch_acc.append(hit.float().mean().item())
            batch_ppl.append(math.exp(ce.mean().item()))
            continue
        keep = target != pad_id if pad_id is not None else torch.ones_like(hit)
        correct += int((hit & keep).sum())
        total += int(keep.sum())
        loss_sum += float((ce * keep).sum())
    if legacy:
        return sum(batch_acc) / len(batch_acc), sum(batch_ppl) / len(batch_ppl)
    if total == 0:
        raise ValueError("every position is padding: nothing to score")
    return correct / total, math.exp(loss_sum / total)


def evaluate_utility(
    model: PreTrainedModel,
    test_sets: dict[str, torch.Tensor],
    pad_id: int | None,
    *,
    batch_size: int = 256,
    legacy: bool = False,
) -> dict[str, float]:
    """Accuracy and perplexity per test set, plus their means over the sets.

    Returns:
        ``{"accuracy/<name>": ..., "perplexity/<name>": ..., "accuracy": mean, "perplexity": mean}``.
    """
    out: dict[str, float] = {}
    for name, ids in test_sets.items():
        acc, ppl = accuracy_and_perplexity(model, ids, pad_id, batch_size=batch_size, legacy=legacy)
        out[f"accuracy/{name}"] = acc
        out[f"perplexity/{name}"] = ppl
    accs = [v for k, v in out.items() if k.startswith("accuracy/")]
    ppls = [v for k, v in out.items() if k.startswith("perplexity/")]
    out["accuracy"] = sum(accs) / len(accs)
    out["perplexity"] = sum(ppls) / len(ppls)
    return out
