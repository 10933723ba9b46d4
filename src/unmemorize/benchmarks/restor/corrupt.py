"""RESTOR's corruption step: continue training the clean model on documents that state wrong facts.

RESTOR (Rezaei et al., arXiv 2411.00204) corrupts with continual pre-training on documents that
mix wrong facts about the target people with k unrelated true ones (level k): a full fine-tune,
or LoRA merged afterwards (RESTOR's LLaMA-Factory setup for Llama-3-8B). The loss is the
next-token cross-entropy of each document, averaged over its tokens and then over the batch:
``L = -1/B sum_b 1/|T_b| sum_t log p(x_bt | x_b<t)`` (:func:`unmemorize.training.train_on_batches`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...training import train_on_batches
from .config import CorruptConfig
from .task import document_pad_id, encode_documents


def corrupt_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    cfg: CorruptConfig,
    *,
    replay: Callable[[random.Random], str] | None = None,
    max_length: int = 512,
    progress: bool = False,
) -> tuple[PreTrainedModel, list[float]]:
    """Continue training a copy of ``model`` on ``docs`` (full or LoRA merged); return it.

    Each batch holds ``docs_per_batch`` documents (an epoch = every document once, shuffled) plus
    ``replay_per_batch`` clean documents drawn from ``replay`` when given; ``cfg.holdout`` of the
    documents are left out.
    """
    import copy

    cfg.validate()
    model = copy.deepcopy(model)
    if cfg.mode == "lora":
        from ...lora import add_lora

        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    if cfg.holdout:  # RESTOR's val_size: these documents are never trained on
        held = set(
            random.Random(cfg.seed * 1_000_003 + 29).sample(
                range(len(docs)), round(cfg.holdout * len(docs))
            )
        )
        docs = [d for i, d in enumerate(docs) if i not in held]
    rng = random.Random(cfg.seed * 1_000_003 + 23)
    per_epoch = math.ceil(len(docs) / cfg.docs_per_batch)
    steps = per_epoch * cfg.epochs
    orders: list[list[int]] = []

    def batch(step: int) -> torch.Tensor:
        epoch, b = divmod(step, per_epoch)
        while len(orders) <= epoch:
            order = list(range(len(docs)))
            rng.shuffle(order)
            orders.append(order)
        idx = orders[epoch][b * cfg.docs_per_batch : (b + 1) * cfg.docs_per_batch]
        texts = [docs[i] for i in idx]
        if replay is not None:
            texts += [replay(rng) for _ in range(cfg.replay_per_batch)]
        return encode_documents(tokenizer, texts, max_length)

    pad = document_pad_id(tokenizer)
    losses = train_on_batches(
        model,
        batch,
        steps,
        lr=cfg.lr,
        pad_id=pad,
        warmup=max(1, steps // 10),
        lr_floor=0.0,
        weight_decay=0.0,
        progress=progress,
        desc="corrupt",
    )
    if cfg.mode == "lora":
        from ...lora import merge_lora

        model = merge_lora(model)
    model.eval()
    return model, losses


__all__ = ["corrupt_model"]
