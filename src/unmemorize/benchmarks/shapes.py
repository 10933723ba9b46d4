"""Random-weight models with the real shapes of the Pythia suite, for speed benchmarks.

Pythia (Biderman et al., "Pythia: A Suite for Analyzing Large Language Models", 2023) is GPT-NeoX:
rotary embeddings on a quarter of each head (rotary_pct 0.25, base 10000), parallel attention + MLP
residual, a 4x GELU MLP, untied input and output embeddings, a 2048-token context. Only the shapes
matter for timing, so the weights are random (nothing is downloaded); speed figures measured on
them hold for the trained checkpoints, memorization verdicts do not.

:func:`matmul_parameters` counts the weights that take part in matrix multiplications (every
linear layer and the output head; not the input embedding lookup), the N of the usual
``6 * N * tokens`` training-FLOP estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class PythiaShape:
    """Shape of one Pythia model (the published configs)."""

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int = 50304


PYTHIA_SHAPES: dict[str, PythiaShape] = {
    "70m": PythiaShape(6, 512, 8),
    "160m": PythiaShape(12, 768, 12),
    "410m": PythiaShape(24, 1024, 16),
    "1b": PythiaShape(16, 2048, 8),
    "1.4b": PythiaShape(24, 2048, 16),
    "2.8b": PythiaShape(32, 2560, 32),
    "6.9b": PythiaShape(32, 4096, 32, vocab_size=50432),
}
"""Pythia sizes by name (``pythia-70m`` ... ``pythia-6.9b``)."""


def pythia_config(name: str, context_length: int = 2048) -> GPTNeoXConfig:
    """The GPT-NeoX config of Pythia-``name`` (e.g. ``"70m"``).

    Raises:
        ValueError: an unknown size.
    """
    if name not in PYTHIA_SHAPES:
        raise ValueError(f"unknown Pythia size {name!r}; use one of {', '.join(PYTHIA_SHAPES)}")
    s = PYTHIA_SHAPES[name]
    return GPTNeoXConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.d_model,
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        intermediate_size=4 * s.d_model,
        hidden_act="gelu",
        max_position_embeddings=context_length,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def random_pythia(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """A randomly initialised Pythia-``name`` model in eval mode, built directly on ``device``."""
    config = pythia_config(name)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM._from_config(config, dtype=dtype or torch.float32)
    return model.eval()


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights used in matrix multiplications: linear layers and the output head, counted once
    (a tied head counts once too); embedding lookups, norms and biases excluded."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | Conv1D):
            w = module.weight
            if id(w) not in seen:
                seen.add(id(w))
                total += w.numel()
    return total


__all__ = ["PYTHIA_SHAPES", "PythiaShape", "matmul_parameters", "pythia_config", "random_pythia"]
