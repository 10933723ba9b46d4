"""Tiny random causal LMs of every supported MLP family, shared by the adapter and method tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
)

D, F, V, B, T = 32, 64, 50, 2, 6
FAMILIES = ["gpt2", "gpt_neox", "llama", "phi3"]


def make_model(kind: str, n_layers: int = 2, seed: int = 0, positions: int = 16) -> nn.Module:
    """A tiny random causal LM in eval mode, no dropout."""
    torch.manual_seed(seed)
    common = dict(vocab_size=V, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if kind == "gpt2":
        config = GPT2Config(
            n_positions=positions,
            n_embd=D,
            n_layer=n_layers,
            n_head=4,
            n_inner=F,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.1,
            **common,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "gpt_neox":
        config = GPTNeoXConfig(
            hidden_size=D,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            intermediate_size=F,
            max_position_embeddings=positions,
            initializer_range=0.1,
            **common,
        )
        model = GPTNeoXForCausalLM(config)
    elif kind == "llama":
        config = LlamaConfig(
            hidden_size=D,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=F,
            max_position_embeddings=positions,
            initializer_range=0.1,
            **common,
        )
        model = LlamaForCausalLM(config)
    elif kind == "phi3":
        config = Phi3Config(
            hidden_size=D,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=F,
            max_position_embeddings=positions,
            initializer_range=0.1,
            **common,
        )
        model = Phi3ForCausalLM(config)
    else:
        raise AssertionError(kind)
    return model.eval()
