"""TinyMem models as plain ``transformers`` models, and loading/saving of local model directories.

TinyMem (Sakarvadia et al., arXiv 2410.02159, section 3) uses GPT-2 with 4 heads, d_model 128,
a 4× ReLU MLP, no dropout, weights initialised with std 0.8/sqrt(d_model) and a 150-token context;
2, 4, 8 or 16 layers. The same shape is offered as GPT-NeoX (Pythia's architecture: rotary
embeddings on a quarter of each head, parallel attention + MLP residual, untied output head).

Model directories are Hugging Face directories: ``config.json``, ``model.safetensors`` and the
tokenizer files. Nothing is ever fetched from a hub, pickled weights are never loaded and code
shipped inside a model directory is never run (unless a library caller passes
``trust_remote_code=True``; the command line has no such flag).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .io import atomic_dir, read_json
from .registry import suggest
from .runtime import DEVICE_MAPS, check_memory_fits, resolve_device

log = logging.getLogger(__name__)

ARCHITECTURES = ("gpt2", "gpt_neox")


class ModelDirError(ValueError):
    """A model directory that cannot be used (missing, not a HF model, unsafe weights, ...)."""


@dataclass
class ModelConfig:
    """Shape of a TinyMem model (defaults: the paper's 4-layer model)."""

    arch: str = "gpt2"
    """``gpt2`` (GPT2LMHeadModel, as the paper) or ``gpt_neox`` (Pythia's architecture)."""
    n_layers: int = 4
    """Transformer blocks (the paper uses 2, 4, 8 and 16)."""
    d_model: int = 128
    """Residual width D."""
    n_heads: int = 4
    """Attention heads."""
    mlp_ratio: int = 4
    """MLP width F = mlp_ratio · D."""
    context_length: int = 150
    """Maximum positions."""
    init_std: float | None = None
    """Weight init std; None = 0.8 / sqrt(d_model) as TinyMem."""

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise suggest(self.arch, ARCHITECTURES, "architecture")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if min(self.n_layers, self.d_model, self.n_heads, self.context_length) < 1:
            raise ValueError("n_layers, d_model, n_heads and context_length must be positive")


def build_model(
    cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0
) -> PreTrainedModel:
    """Build a freshly initialised TinyMem model (deterministic for a given ``seed``)."""
    cfg.validate()
    std = cfg.init_std if cfg.init_std is not None else 0.8 / math.sqrt(cfg.d_model)
    common = dict(
        vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    if cfg.arch == "gpt2":
        config = GPT2Config(
            n_layer=cfg.n_layers,
            n_embd=cfg.d_model,
            n_head=cfg.n_heads,
            n_inner=cfg.mlp_ratio * cfg.d_model,
            n_positions=cfg.context_length,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=std,
            **common,
        )
        model_cls = GPT2LMHeadModel
    else:
        config = GPTNeoXConfig(
            num_hidden_layers=cfg.n_layers,
            hidden_size=cfg.d_model,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.mlp_ratio * cfg.d_model,
            max_position_embeddings=cfg.context_length,
            hidden_act="relu",
            attention_dropout=0.0,
            hidden_dropout=0.0,
            initializer_range=std,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
            **common,
        )
        model_cls = GPTNeoXForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model


def build_model_for(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> PreTrainedModel:
    """:func:`build_model` with the vocabulary and special ids of ``tokenizer``.

    A tokenizer without a bos token (e.g. the RESTOR word-level one) uses its eos id as bos.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return build_model(
        cfg,
        vocab_size=len(tokenizer),
        bos_id=bos,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
    )


def check_model_dir(path: str | Path, trust_remote_code: bool = False) -> Path:
    """Check that ``path`` is a local HF causal-LM directory with safetensors weights.

    A directory whose architecture transformers does not ship (``config.json`` names Python code
    through ``auto_map``) is refused unless ``trust_remote_code``: that code would run on load.
    The command line never sets it.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(
            f"model directory {path} does not exist; pass a local HF model directory"
        )
    if not (path / "config.json").is_file():
        raise ModelDirError(
            f"{path} is not a Hugging Face model directory (no config.json); "
            "pass a directory written by `unmemorize train` or `save_pretrained`"
        )
    try:
        config = read_json(path / "config.json")
    except ValueError as err:
        raise ModelDirError(str(err)) from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{path / 'config.json'} must hold a JSON object (a model config)")
    model_type = config.get("model_type")
    if not trust_remote_code and "auto_map" in config and model_type not in CONFIG_MAPPING:
        raise ModelDirError(
            f"{path} needs its own Python code to load (model_type {model_type!r} with auto_map "
            "in config.json); unmemorize never runs code from a model directory: use a model "
            "whose architecture transformers supports natively"
        )
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") for n in names):
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickled:
            raise ModelDirError(
                f"{path} holds only pickled weights ({pickled[0]}), which can execute code when "
                "loaded; convert them to safetensors with a trusted tool first"
            )
        raise ModelDirError(f"{path} has no model.safetensors weights")
    return path


def load_model(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, never from a hub.

    Args:
        device_map: None places the whole model on ``device``; one of :data:`DEVICE_MAPS` (or a
            ``{module: device}`` dict) lets accelerate shard the layers over every GPU, then
            the CPU, for a model larger than one GPU (``device`` is then ignored).

    Raises:
        ModelDirError: missing directory, no config, only pickled weights, or a tokenizer whose
            vocabulary is larger than the model's embedding.
        MemoryError: the weights in ``dtype`` will not fit in ``device``'s free memory (the
            message says how much they need and what to try).
        ValueError: ``device`` is CUDA on a machine without it.
    """
    path = check_model_dir(path, trust_remote_code)
    if device_map is None:
        check_memory_fits(path, dtype, resolve_device(device))
    elif isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ValueError(f"unknown device map {device_map!r}; use one of {', '.join(DEVICE_MAPS)}")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((path / name).is_file() for name in tokenizer_files):
        raise ModelDirError(
            f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json); "
            "save the tokenizer into the model directory (tokenizer.save_pretrained(DIR))"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=dtype if dtype is not None else torch.float32,
            **({} if device_map is None else {"device_map": device_map}),
        )
    except (OSError, ValueError, KeyError) as err:
        raise ModelDirError(
            f"cannot load a causal LM from {path}: {str(err).splitlines()[0]}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError) as err:
        raise ModelDirError(
            f"cannot load the tokenizer from {path}: {str(err).splitlines()[0]}"
        ) from None
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ModelDirError(
            f"tokenizer in {path} has {len(tokenizer)} tokens but the model embeds only {n_embed}; "
            "the tokenizer does not belong to this model"
        )
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tokenizer


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    path: str | Path,
    extra_files: dict[str, str] | None = None,
    extra_dirs: dict[str, str | Path] | None = None,
) -> Path:
    """Write a model directory atomically: safetensors weights, config, tokenizer, extra files.

    Args:
        extra_files: file name -> text to write beside the model (e.g. ``run.json``).
        extra_dirs: directory name -> existing directory to copy in (e.g. a run's ``data/``).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, source in (extra_dirs or {}).items():
            shutil.copytree(source, tmp / name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
