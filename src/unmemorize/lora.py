"""LoRA adapters (peft) for training, merged back so the result is a plain Hugging Face model.

Hu et al., 'LoRA: Low-Rank Adaptation of Large Language Models', arXiv 2106.09685: every
targeted linear layer W (attention and MLP; not the embeddings or the output head) gets
W + (α/r)·B·A with A [r, in], B [out, r] and B = 0 at the start, so the adapted model starts
equal to the base model and only A and B train. Used by RESTOR's corruption step and by the
gradient unlearning trainer (``lora_rank``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def check_lora(rank: int, alpha: float) -> None:
    """Raise a one-line error for a LoRA rank < 0 or a non-positive alpha."""
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"lora_rank must be an integer >= 0 (0 = full fine-tune), got {rank}")
    if not alpha > 0:
        raise ValueError(f"lora_alpha must be positive, got {alpha}")


def add_lora(model: PreTrainedModel, rank: int, alpha: float):
    """Wrap ``model`` in a peft LoRA model over all its linear layers but the output head.

    The base weights are frozen; the adapters are the only trainable parameters. ``model``
    itself is modified in place (its linear layers become LoRA layers until :func:`merge_lora`).
    """
    from peft import LoraConfig, get_peft_model

    check_lora(rank, alpha)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        # GPT-2 stores its linear layers transposed (Conv1D)
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    return get_peft_model(model, config)


def merge_lora(peft_model) -> PreTrainedModel:
    """Fold the adapters into the base weights; return the plain model (the wrapped object)."""
    return peft_model.merge_and_unload()


__all__ = ["add_lora", "check_lora", "merge_lora"]
