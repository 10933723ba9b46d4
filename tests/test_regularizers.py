"""Tests of the TinyMem train-time regularizers on tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from unmemorize.mlp import MLPAdapter
from unmemorize.regularizers import (
    ExampleTiedDropout,
    LossTruncation,
    Regularizer,
    SpectralNormPenalty,
    build_regularizer,
)

D, F, V, H, B, T = 32, 64, 50, 4, 3, 5
HD = D // H


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """A tiny random 2-layer causal LM in eval mode, no dropout."""
    torch.manual_seed(seed)
    common = dict(vocab_size=V, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if kind == "gpt2":
        config = GPT2Config(
            n_positions=16,
            n_embd=D,
            n_layer=2,
            n_head=H,
            n_inner=F,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.1,
            **common,
        )
        return GPT2LMHeadModel(config).eval()
    if kind == "gpt_neox":
        config = GPTNeoXConfig(
            hidden_size=D,
            num_hidden_layers=2,
            num_attention_heads=H,
            intermediate_size=F,
            max_position_embeddings=16,
            initializer_range=0.1,
            **common,
        )
        return GPTNeoXForCausalLM(config).eval()
    config = LlamaConfig(
        hidden_size=D, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=2,
        intermediate_size=F, max_position_embeddings=16, initializer_range=0.1, **common,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- spectral norm


def expected_chunks(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Per-head chunks computed independently from each family's storage layout."""
    chunks: dict[str, torch.Tensor] = {}
    for i in range(2):
        if kind == "gpt2":
            p = f"transformer.h.{i}."
            blk = model.transformer.h[i]
            c_attn = blk.attn.c_attn.weight  # Conv1D [D, 3D] = [Q | K | V] columns
            for k, kind_ in enumerate("qkv"):
                for h in range(H):
                    start = k * D + h * HD
                    chunks[f"{p}attn.c_attn.weight[{kind_}{h}]"] = c_attn[:, start : start + HD]
            for h in range(H):  # output projection: input rows per head
                chunks[f"{p}attn.c_proj.weight[head{h}]"] = blk.attn.c_proj.weight[
                    h * HD : (h + 1) * HD
                ]
            chunks[f"{p}mlp.c_fc.weight"] = blk.mlp.c_fc.weight
            chunks[f"{p}mlp.c_proj.weight"] = blk.mlp.c_proj.weight
        elif kind == "gpt_neox":
            p = f"gpt_neox.layers.{i}."
            blk = model.gpt_neox.layers[i]
            qkv = blk.attention.query_key_value.weight.view(H, 3, HD, D)  # interleaved per head
            for h in range(H):
                for k, kind_ in enumerate("qkv"):
                    chunks[f"{p}attention.query_key_value.weight[{kind_}{h}]"] = qkv[h, k]
            for h in range(H):  # nn.Linear [out, in]: input columns per head
                chunks[f"{p}attention.dense.weight[head{h}]"] = blk.attention.dense.weight[
                    :, h * HD : (h + 1) * HD
                ]
            chunks[f"{p}mlp.dense_h_to_4h.weight"] = blk.mlp.dense_h_to_4h.weight
            chunks[f"{p}mlp.dense_4h_to_h.weight"] = blk.mlp.dense_4h_to_h.weight
        else:
            p = f"model.layers.{i}."
            attn = model.model.layers[i].self_attn
            for kind_, proj, heads in (
                ("q", attn.q_proj, H),
                ("k", attn.k_proj, 2),
                ("v", attn.v_proj, 2),
            ):
                for h in range(heads):
                    chunks[f"{p}self_attn.{kind_}_proj.weight[{kind_}{h}]"] = proj.weight[
                        h * HD : (h + 1) * HD
                    ]
            for h in range(H):
                chunks[f"{p}self_attn.o_proj.weight[head{h}]"] = attn.o_proj.weight[
                    :, h * HD : (h + 1) * HD
                ]
            mlp = model.model.layers[i].mlp
            for name in ("gate_proj", "up_proj", "down_proj"):
                chunks[f"{p}mlp.{name}.weight"] = getattr(mlp, name).weight
    return chunks


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_spectral_sigma_converges_to_matrix_norm_per_head(kind: str) -> None:
    model = make_model(kind)
    reg = SpectralNormPenalty(strength=0.01)
    reg.attach(model)
    expected = expected_chunks(model, kind)
    n_attn = (3 * H + H) if kind != "llama" else (H + 2 + 2 + H)
    n_mlp = 3 if kind == "llama" else 2
    assert len(reg.matrix_names) == 2 * (n_attn + n_mlp)
    assert set(reg.matrix_names) == set(expected)
    with torch.no_grad():
        for _ in range(400):
            reg.penalty(model)
    sigmas = reg.last_sigmas()
    for name, chunk in expected.items():
        true = torch.linalg.matrix_norm(chunk.detach(), ord=2).item()
        assert sigmas[name] == pytest.approx(true, abs=1e-3), name


def test_spectral_gradient_is_u_v_transpose() -> None:
    model = make_model("gpt2")
    reg = SpectralNormPenalty(strength=0.5, form="sum")
    reg.attach(model)
    name = "transformer.h.1.mlp.c_fc.weight"
    weight = model.transformer.h[1].mlp.c_fc.weight  # Conv1D: already the [in, out] matrix
    u_before = reg.state_dict()["u"][name]
    reg.penalty(model).backward()
    with torch.no_grad():
        v = nn.functional.normalize(weight.T @ u_before, dim=0)
        u = nn.functional.normalize(weight @ v, dim=0)
    # d/dW of (λ/2)·uᵀWv is (λ/2)·u vᵀ (u, v held fixed).
    torch.testing.assert_close(weight.grad, 0.25 * torch.outer(u, v), atol=1e-7, rtol=1e-5)
    # Attention and MLP weights get gradients; embeddings, norms and biases do not.
    assert model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert model.transformer.h[0].attn.c_proj.weight.grad.abs().sum() > 0
    assert model.transformer.wte.weight.grad is None
    assert model.transformer.h[0].ln_1.weight.grad is None
    assert model.transformer.h[0].mlp.c_fc.bias.grad is None


def test_spectral_sum_versus_squared_forms() -> None:
    model = make_model("gpt_neox")
    squared = build_regularizer("spectral_norm", strength=0.1)
    summed = build_regularizer("spectral_norm", strength=0.1, form="sum")
    assert squared.form == "squared"
    squared.attach(model)
    summed.attach(model)
    p_squared = squared.penalty(model)
    p_sum = summed.penalty(model)
    sigmas = torch.tensor(list(squared.last_sigmas().values()))
    assert squared.last_sigmas() == summed.last_sigmas()  # same seed, same iteration
    assert p_squared.item() == pytest.approx(0.05 * (sigmas**2).sum().item(), rel=1e-5)
    assert p_sum.item() == pytest.approx(0.05 * sigmas.sum().item(), rel=1e-5)
    assert p_sum.item() != pytest.approx(p_squared.item(), rel=1e-3)


def test_spectral_state_dict_round_trip(tmp_path) -> None:
    model = make_model("llama")
    first = SpectralNormPenalty(seed=0)
    first.attach(model)
    for _ in range(3):
        first.penalty(model)
    path = tmp_path / "reg.pt"
    torch.save(first.state_dict(), path)
    state = torch.load(path, weights_only=True)

    attached_then_loaded = SpectralNormPenalty(seed=123)
    attached_then_loaded.attach(model)
    fresh = attached_then_loaded.penalty(model)
    attached_then_loaded.attach(model)
    attached_then_loaded.load_state_dict(state)
    loaded_then_attached = SpectralNormPenalty(seed=456)
    loaded_then_attached.load_state_dict(state)
    loaded_then_attached.attach(model)

    expected = first.penalty(model)
    assert torch.equal(attached_then_loaded.penalty(model), expected)
    assert torch.equal(loaded_then_attached.penalty(model), expected)
    assert not torch.equal(fresh, expected)

    other = SpectralNormPenalty()
    other.attach(make_model("gpt2"))
    with pytest.raises(ValueError, match="different architecture"):
        other.load_state_dict(state)


# ---------------------------------------------------------------------------- loss truncation


def test_loss_truncation_drops_expected_sequences(tmp_path) -> None:
    reg = build_regularizer(
        "loss_truncation", drop_fraction=0.25, buffer_size=9, min_count=9, recompute_every=9
    )

    def step(values: list[float]) -> float:
        return reg.reduce(torch.tensor(values, dtype=torch.float64)).item()

    assert step([1, 2, 3]) == 2.0  # warm-up: plain mean
    assert step([4, 5, 6]) == 5.0
    assert reg.cutoff is None
    # 9 losses seen: cutoff = 0.75 quantile of 1..9 = 7; losses >= 7 are dropped.
    assert step([7, 8, 9]) == 0.0
    assert reg.cutoff == 7.0
    # Only 3 new losses since: the cutoff stays 7 although the buffer now holds 100.
    assert step([7, 6.5, 100]) == pytest.approx(6.5 / 3)  # dropped ones stay in the denominator
    path = tmp_path / "truncation.pt"
    torch.save(reg.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert step([0, 0, 0]) == 0.0
    # 9 new losses: recompute over the ring [7, 6.5, 100, 0, 0, 0, 1, 2, 3] (1..9 evicted).
    assert step([1, 2, 3]) == 2.0
    assert reg.cutoff == 6.5
    assert step([6.5, 6, 7]) == 2.0

    resumed = LossTruncation(drop_fraction=0.25, buffer_size=9, min_count=9, recompute_every=9)
    resumed.load_state_dict(state)
    for values, expected in (([0, 0, 0], 0.0), ([1, 2, 3], 2.0), ([6.5, 6, 7], 2.0)):
        assert resumed.reduce(torch.tensor(values, dtype=torch.float64)).item() == expected
    assert resumed.cutoff == 6.5


def test_loss_truncation_gradient_and_small_min_count() -> None:
    reg = LossTruncation(drop_fraction=0.5, buffer_size=100, min_count=4, recompute_every=1000)
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    # cutoff = median of 1..4 = 2.5: keep 1 and 2.
    reg.reduce(losses).backward()
    assert reg.cutoff == 2.5
    assert losses.grad.tolist() == [0.25, 0.25, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        reg.reduce(torch.ones(2, 3))
    assert LossTruncation().min_count == 10_000


# ---------------------------------------------------------------------------- example-tied dropout


def test_example_tied_masks_are_tied_to_examples() -> None:
    model = make_model("gpt2")
    reg = ExampleTiedDropout(p_fixed=0.2, p_mem=0.1, seed=0)
    reg.attach(model)
    n_fixed = 12  # floor(0.2 * 64)
    a = reg.masks(torch.tensor([3, 7]))
    assert a.shape == (2, 2, F) and a.dtype == torch.bool
    assert torch.equal(a[0], reg.masks(torch.tensor([3]))[0])
    assert torch.equal(a[0], reg.masks(torch.tensor([5, 3]))[1])  # independent of the batch
    assert not torch.equal(a[0], a[1])
    many = reg.masks(torch.arange(200))
    assert many[:, :, :n_fixed].all()
    kept = many[:, :, n_fixed:].float().mean().item()
    assert 0.08 < kept < 0.12  # p_mem = 0.1 over 200 * 2 * 52 draws
    assert len({tuple(m.flatten().tolist()) for m in many}) == 200  # all examples differ
    other_seed = ExampleTiedDropout(seed=1)
    other_seed.attach(make_model("gpt2"))
    assert not torch.equal(other_seed.masks(torch.tensor([3]))[0], a[0])


def test_example_tied_dropout_masks_hidden_units_not_positions() -> None:
    model = make_model("gpt_neox")
    adapter = MLPAdapter(model)
    x = inputs()
    model.train()
    with adapter.capture_activations() as plain:
        model(x)
    plain = dict(plain)
    reg = build_regularizer("example_tied_dropout")
    reg.attach(model)
    index = torch.tensor([4, 9, 4])
    reg.set_batch(index)
    with adapter.capture_activations() as masked:  # registered after the dropout hook
        model(x)
    masks = reg.masks(index)  # [B, L, F]
    # Layer 0 sees the unmasked input, so its activations are the plain ones times the mask,
    # broadcast over positions.
    assert torch.equal(masked[0], plain[0] * masks[:, 0, None, :].float())
    for layer in (0, 1):
        m = masks[:, layer]  # [B, F]
        per_unit = masked[layer].abs().sum(dim=1)  # [B, F], summed over positions
        # Unit j of example b is zero at every position exactly when its mask is off.
        assert (per_unit[~m] == 0).all()
        assert (per_unit[m] > 0).all()
    # Examples 0 and 2 share an index, hence the same units.
    assert torch.equal(masks[0], masks[2])

    reg.set_batch(torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="set_batch got 2 indices but the batch has 3"):
        model(x)
    reg.detach()
    fresh = ExampleTiedDropout()
    fresh.attach(model)
    with pytest.raises(RuntimeError, match="call set_batch"):
        model(x)
    fresh.detach()
    assert all(len(layer.out_proj._forward_pre_hooks) == 0 for layer in adapter.layers)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_example_tied_finalize_equals_eval_mode(kind: str, tmp_path) -> None:
    model = make_model(kind)
    x = inputs()
    with torch.no_grad():
        original = model(x).logits
    reg = ExampleTiedDropout(p_fixed=0.25, p_mem=0.1)
    reg.attach(model)
    model.eval()
    adapter = MLPAdapter(model)
    with torch.no_grad(), adapter.capture_activations() as acts:
        hooked = model(x).logits
    # Eval transform: non-fixed units zeroed, fixed units scaled by (0.25 + 0.1) / 0.25.
    assert (acts[0][..., 16:] == 0).all()
    assert not torch.allclose(hooked, original)
    reg.finalize(model)
    assert all(len(layer.out_proj._forward_pre_hooks) == 0 for layer in adapter.layers)
    out = adapter.out_weight(1)
    assert torch.count_nonzero(out[16:]) == 0
    with torch.no_grad():
        baked = model(x).logits
    torch.testing.assert_close(baked, hooked, atol=1e-5, rtol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, hooked, atol=1e-5, rtol=1e-5)


def test_example_tied_state_dict() -> None:
    reg = ExampleTiedDropout(seed=3)
    state = reg.state_dict()
    ExampleTiedDropout(seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="masks would differ"):
        ExampleTiedDropout(seed=4).load_state_dict(state)


# ---------------------------------------------------------------------------- building


def test_build_regularizer_names_and_errors() -> None:
    assert isinstance(build_regularizer("spectral_norm"), SpectralNormPenalty)
    assert isinstance(build_regularizer("loss_truncation"), LossTruncation)
    assert isinstance(build_regularizer("example_tied_dropout", p_mem=0.3), ExampleTiedDropout)
    with pytest.raises(ValueError, match="did you mean 'spectral_norm'"):
        build_regularizer("spectral_norms")
    with pytest.raises(ValueError, match="did you mean 'example_tied_dropout'"):
        build_regularizer("example_tied_dropot")
    with pytest.raises(ValueError, match="did you mean 'drop_fraction'"):
        build_regularizer("loss_truncation", drop_fracton=0.1)
    with pytest.raises(ValueError, match="form must be"):
        build_regularizer("spectral_norm", form="cube")
    with pytest.raises(ValueError, match="p_fixed"):
        build_regularizer("example_tied_dropout", p_fixed=0.0)


def test_base_regularizer_is_a_no_op() -> None:
    reg = Regularizer()
    reg.attach(nn.Linear(2, 2))
    reg.set_batch(torch.tensor([0]))
    assert reg.reduce(torch.ones(3)) is None
    assert reg.penalty(nn.Linear(2, 2)) is None
    assert reg.state_dict() == {}
