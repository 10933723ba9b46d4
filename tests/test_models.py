"""Tests of TinyMem model building and of loading/saving local model directories."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math

import pytest
import torch
from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM

from unmemorize.data.tokenizers import math_tokenizer
from unmemorize.models import (
    ModelConfig,
    ModelDirError,
    build_model,
    check_model_dir,
    count_parameters,
    load_model,
    save_model,
)
from unmemorize.registry import UnknownNameError

MATH_IDS = dict(vocab_size=14, bos_id=10, eos_id=11, pad_id=13)
TINY = dict(n_layers=2, d_model=32, n_heads=4, context_length=24)
X = torch.tensor([[10, 7, 12, 1, 4, 12, 2, 1, 11, 13], [10, 9, 12, 1, 6, 12, 2, 3, 11, 13]])


@pytest.fixture(scope="module")
def paper_gpt2():
    return build_model(ModelConfig(), **MATH_IDS, seed=0)


@pytest.fixture(scope="module")
def paper_neox():
    return build_model(ModelConfig(arch="gpt_neox"), **MATH_IDS, seed=0)


def test_gpt2_matches_paper_config(paper_gpt2):
    assert isinstance(paper_gpt2, GPT2LMHeadModel)
    c = paper_gpt2.config
    assert c.activation_function == "relu"
    assert (c.n_layer, c.n_head, c.n_embd, c.n_inner, c.n_positions) == (4, 4, 128, 512, 150)
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.0, 0.0, 0.0)
    assert c.initializer_range == pytest.approx(0.8 / math.sqrt(128))
    assert c.initializer_range == pytest.approx(0.0707107, abs=1e-6)
    assert (c.vocab_size, c.bos_token_id, c.eos_token_id, c.pad_token_id) == (14, 10, 11, 13)
    # The LM head is tied to the embedding (HF default, as in the paper).
    assert paper_gpt2.lm_head.weight is paper_gpt2.transformer.wte.weight
    # 14·128 + 150·128 + 4 blocks · 198,272 + final LayerNorm 256; the tied head counts once.
    assert count_parameters(paper_gpt2) == 814_336


def test_gpt2_init_std(paper_gpt2):
    w = paper_gpt2.transformer.h[0].mlp.c_fc.weight.detach()  # [128, 512] (Conv1D)
    assert w.shape == (128, 512)
    assert w.std().item() == pytest.approx(0.0707, abs=0.0015)
    assert abs(w.mean().item()) < 0.002
    assert (paper_gpt2.transformer.h[0].mlp.c_fc.bias == 0).all()
    # GPT-2 scales residual output projections by 1/sqrt(2·n_layer).
    proj = paper_gpt2.transformer.h[1].mlp.c_proj.weight.detach()
    assert proj.std().item() == pytest.approx(0.0707 / math.sqrt(8), abs=0.001)


def test_init_std_override():
    model = build_model(ModelConfig(init_std=0.02, **TINY), **MATH_IDS)
    assert model.config.initializer_range == 0.02
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, abs=0.002)
    # Default for d_model 32: 0.8 / sqrt(32).
    default = build_model(ModelConfig(**TINY), **MATH_IDS)
    assert default.config.initializer_range == pytest.approx(0.8 / math.sqrt(32))


def test_gpt_neox_shape_and_forward(paper_neox):
    assert isinstance(paper_neox, GPTNeoXForCausalLM)
    c = paper_neox.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size) == (128, 4, 512)
    assert (c.num_hidden_layers, c.max_position_embeddings) == (4, 150)
    assert c.hidden_act == "relu"
    assert (c.attention_dropout, c.hidden_dropout) == (0.0, 0.0)
    assert c.initializer_range == pytest.approx(0.8 / math.sqrt(128))
    assert c.rope_parameters["partial_rotary_factor"] == 0.25
    mlp = paper_neox.gpt_neox.layers[0].mlp
    assert mlp.dense_h_to_4h.weight.shape == (512, 128)
    assert mlp.dense_h_to_4h.weight.std().item() == pytest.approx(0.0707, abs=0.0015)
    # Pythia's output head is not tied to the input embedding.
    assert paper_neox.get_output_embeddings().weight is not paper_neox.get_input_embeddings().weight
    paper_neox.eval()
    with torch.no_grad():
        logits = paper_neox(input_ids=X).logits
    assert logits.shape == (2, 10, 14)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_same_seed_same_weights(arch):
    cfg = ModelConfig(arch=arch, **TINY)
    rng_before = torch.get_rng_state()
    a = build_model(cfg, **MATH_IDS, seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    b = build_model(cfg, **MATH_IDS, seed=3).state_dict()
    c = build_model(cfg, **MATH_IDS, seed=4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    differing = [k for k in a if not torch.equal(a[k], c[k])]
    assert any("mlp" in k for k in differing)
    assert any("embed" in k or "wte" in k for k in differing)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_save_load_round_trip(arch, tmp_path):
    model = build_model(ModelConfig(arch=arch, **TINY), **MATH_IDS, seed=1).eval()
    out = save_model(model, math_tokenizer(), tmp_path / "m", extra_files={"note.txt": "hello"})
    assert out == tmp_path / "m"
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "note.txt"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temp dirs left
    assert check_model_dir(out) == out

    loaded, tok = load_model(out)
    assert type(loaded) is type(model)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=X).logits, model(input_ids=X).logits)
    assert len(tok) == 14
    assert tok("^7 14$")["input_ids"] == [10, 7, 12, 1, 4, 11]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (10, 11, 13)
    assert (out / "note.txt").read_text() == "hello"


def test_save_replaces_existing_dir(tmp_path):
    first = build_model(ModelConfig(**TINY), **MATH_IDS, seed=0)
    second = build_model(ModelConfig(**TINY), **MATH_IDS, seed=1)
    save_model(first, math_tokenizer(), tmp_path / "m")
    save_model(second, math_tokenizer(), tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    want = second.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_load_missing_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "absent")


def test_load_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model(tmp_path)


def test_load_refuses_pickled_weights(tmp_path):
    model = build_model(ModelConfig(**TINY), **MATH_IDS)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match=r"only pickled weights \(pytorch_model.bin\)"):
        load_model(tmp_path)


def test_load_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelDirError, match="no model.safetensors"):
        check_model_dir(tmp_path)


def test_load_refuses_tokenizer_larger_than_embedding(tmp_path):
    model = build_model(ModelConfig(**TINY), vocab_size=10, bos_id=0, eos_id=1, pad_id=9)
    save_model(model, math_tokenizer(), tmp_path / "m")
    with pytest.raises(ModelDirError, match="has 14 tokens but the model embeds only 10"):
        load_model(tmp_path / "m")


def test_load_dir_without_tokenizer(tmp_path):
    model = build_model(ModelConfig(**TINY), **MATH_IDS)
    save_model(model, None, tmp_path / "m")
    with pytest.raises(ModelDirError):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"d_model": 130, "n_heads": 4},
            ValueError,
            r"d_model \(130\) must be divisible by n_heads \(4\)",
        ),
        ({"arch": "gpt-2"}, UnknownNameError, "did you mean 'gpt2'"),
        ({"arch": "gptneox"}, UnknownNameError, "did you mean 'gpt_neox'"),
        ({"n_layers": 0}, ValueError, "must be positive"),
    ],
)
def test_invalid_model_config(kwargs, error, match):
    cfg = ModelConfig(**kwargs)
    with pytest.raises(error, match=match):
        cfg.validate()
    with pytest.raises(error, match=match):
        build_model(cfg, **MATH_IDS)
