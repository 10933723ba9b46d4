"""Tests of the MLP adapter on tiny random GPT-2, GPT-NeoX, Llama and Phi-3 models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from unmemorize.mlp import MLPAdapter

from .zoo import FAMILIES, B, D, F, T, V, make_model


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def manual_hidden(kind: str, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The F hidden units from raw weights: [B, T, D] -> [B, T, F]."""
    if kind == "gpt2":
        return mlp.act(x @ mlp.c_fc.weight + mlp.c_fc.bias)
    if kind == "gpt_neox":
        return mlp.act(x @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
    if kind == "llama":
        return mlp.act_fn(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    gate, up = (x @ mlp.gate_up_proj.weight.T).chunk(2, dim=-1)
    return mlp.activation_fn(gate) * up


def manual_out(kind: str, mlp: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The MLP output from the hidden units: [B, T, F] -> [B, T, D]."""
    if kind == "gpt2":
        return hidden @ mlp.c_proj.weight + mlp.c_proj.bias
    if kind == "gpt_neox":
        return hidden @ mlp.dense_4h_to_h.weight.T + mlp.dense_4h_to_h.bias
    return hidden @ mlp.down_proj.weight.T


def record_mlp_io(model: nn.Module, adapter: MLPAdapter, index: int):
    """Register hooks storing the input and output of layer ``index``'s MLP block."""
    mlp = adapter.layer(index).out_proj
    parent = next(m for m in model.modules() if any(c is mlp for c in m.children()))
    store: dict[str, torch.Tensor] = {}
    h1 = parent.register_forward_pre_hook(lambda m, a: store.__setitem__("in", a[0].detach()))
    h2 = parent.register_forward_hook(lambda m, a, o: store.__setitem__("out", o.detach()))
    return parent, store, (h1, h2)


def no_pre_hooks(adapter: MLPAdapter) -> bool:
    return all(len(layer.out_proj._forward_pre_hooks) == 0 for layer in adapter.layers)


@pytest.mark.parametrize("kind", FAMILIES)
def test_sizes_names_and_views(kind: str) -> None:
    model = make_model(kind)
    adapter = MLPAdapter(model)
    assert adapter.family == ("llama" if kind == "phi3" else kind)
    assert (adapter.n_layers, adapter.d_model, adapter.width) == (2, D, F)
    assert adapter.neuron_count() == 2 * F
    params = dict(model.named_parameters())
    for i in range(2):
        layer = adapter.layer(i)
        assert params[layer.out_weight_name] is layer.out_proj.weight
        for name, module in zip(layer.in_weight_names, layer.in_projs, strict=True):
            assert params[name] is module.weight
        assert all(name in params and f".{i}.mlp." in name for name in layer.param_names)
        ins = adapter.in_weights(i)
        assert len(ins) == (2 if kind in ("llama", "phi3") else 1)
        assert all(w.shape == (D, F) for w in ins)
        assert adapter.out_weight(i).shape == (F, D)
    expected_names = {
        "gpt2": ("transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"),
        "gpt_neox": (
            "gpt_neox.layers.1.mlp.dense_h_to_4h.weight",
            "gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
        ),
        "llama": ("model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.down_proj.weight"),
        "phi3": ("model.layers.1.mlp.gate_up_proj.weight", "model.layers.1.mlp.down_proj.weight"),
    }[kind]
    assert (adapter.layer(1).in_weight_names[0], adapter.layer(1).out_weight_name) == expected_names


@pytest.mark.parametrize("kind", FAMILIES)
def test_views_share_storage_and_edit_the_model(kind: str) -> None:
    model = make_model(kind)
    adapter = MLPAdapter(model)
    x = inputs()
    before = logits(model, x)
    layer = adapter.layer(1)
    out_param = layer.out_proj.weight
    with torch.no_grad():
        adapter.out_weight(1)[3, 5] = 7.0  # neuron 3 -> residual dim 5
        adapter.in_weights(1)[-1][2, 9] = -7.0  # residual dim 2 -> neuron 9 (of the up branch)
    # The same entries, addressed in each module's own storage orientation.
    stored_out = out_param[3, 5] if kind == "gpt2" else out_param[5, 3]
    assert stored_out.item() == 7.0
    in_param = layer.in_projs[-1].weight
    if kind == "gpt2":
        stored_in = in_param[2, 9]
    elif kind == "phi3":
        stored_in = in_param[F + 9, 2]  # fused [gate; up] rows: up starts at row F
    else:
        stored_in = in_param[9, 2]
    assert stored_in.item() == -7.0
    assert not torch.allclose(before, logits(model, x))


@pytest.mark.parametrize("kind", FAMILIES)
def test_zero_neurons_equals_mask_and_manual_computation(kind: str) -> None:
    model = make_model(kind)
    adapter = MLPAdapter(model)
    x = inputs()
    neurons = [5, 17, 63]
    mask = torch.ones(F)
    mask[neurons] = 0.0

    parent, store, handles = record_mlp_io(model, adapter, 1)
    plain = logits(model, x)
    with adapter.neuron_mask({1: mask}):
        masked = logits(model, x)
    mlp_in, mlp_out_masked = store["in"], store["out"]
    assert not torch.allclose(plain, masked)
    assert no_pre_hooks(adapter)

    # The masked MLP equals a manual computation with those hidden units set to 0.
    with torch.no_grad():
        expected = manual_out(kind, parent, manual_hidden(kind, parent, mlp_in) * mask)
    torch.testing.assert_close(mlp_out_masked, expected, atol=1e-5, rtol=1e-5)

    changed = adapter.zero_neurons_(1, neurons)
    assert changed == len(neurons) * D  # random weights: every entry of those rows was nonzero
    assert torch.count_nonzero(adapter.out_weight(1)[neurons]) == 0
    assert torch.count_nonzero(adapter.out_weight(1)) == (F - len(neurons)) * D
    after = logits(model, x)
    for h in handles:
        h.remove()
    # Zeroing the rows is exactly the mask: same products (0 * w == a * 0), same kernel.
    assert torch.equal(after, masked)
    assert adapter.zero_neurons_(1, torch.tensor(neurons)) == 0  # already zero
    bool_mask = torch.zeros(F, dtype=torch.bool)
    bool_mask[0] = True
    assert adapter.zero_neurons_(0, bool_mask) == D


@pytest.mark.parametrize("kind", FAMILIES)
def test_capture_activations_matches_manual(kind: str) -> None:
    model = make_model(kind)
    adapter = MLPAdapter(model)
    x = inputs()
    parent, store, handles = record_mlp_io(model, adapter, 1)
    with adapter.capture_activations() as acts:
        plain = logits(model, x)
    for h in handles:
        h.remove()
    assert sorted(acts) == [0, 1]
    assert acts[0].shape == (B, T, F) and acts[1].shape == (B, T, F)
    assert not acts[1].requires_grad
    with torch.no_grad():
        expected = manual_hidden(kind, parent, store["in"])
    torch.testing.assert_close(acts[1], expected, atol=1e-6, rtol=1e-5)
    assert no_pre_hooks(adapter)
    torch.testing.assert_close(logits(model, x), plain, atol=0, rtol=0)

    with adapter.capture_activations(layers=[1], keep_graph=True) as acts:
        loss = model(x).logits.sum()
    assert list(acts) == [1]
    assert acts[1].grad_fn is not None
    (grad,) = torch.autograd.grad(loss, acts[1])
    assert grad.shape == (B, T, F) and grad.abs().sum() > 0


def test_hooks_removed_on_exception() -> None:
    model = make_model("gpt2")
    adapter = MLPAdapter(model)
    x = inputs()
    plain = logits(model, x)
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.neuron_mask({0: torch.zeros(F), 1: torch.zeros(F)}):
            assert not no_pre_hooks(adapter)
            raise RuntimeError("boom")
    assert no_pre_hooks(adapter)
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.capture_activations():
            raise RuntimeError("boom")
    assert no_pre_hooks(adapter)
    assert torch.equal(logits(model, x), plain)


def test_neuron_mask_is_differentiable_and_per_example() -> None:
    model = make_model("llama")
    adapter = MLPAdapter(model)
    x = inputs()
    gate = torch.ones(F, requires_grad=True)
    with adapter.neuron_mask({0: gate}):
        model(x).logits.square().mean().backward()
    assert gate.grad is not None and gate.grad.shape == (F,)
    assert gate.grad.abs().sum() > 0

    # A [B, F] mask applies per example and broadcasts over positions.
    plain = logits(model, x)
    per_example = torch.ones(B, F)
    per_example[0] = 0.0
    with adapter.neuron_mask({1: per_example}):
        masked = logits(model, x)
    assert torch.equal(masked[1], plain[1])
    assert not torch.allclose(masked[0], plain[0])


def test_exact_layer_matching_on_12_layers() -> None:
    model = make_model("gpt2", n_layers=12)
    adapter = MLPAdapter(model)
    assert adapter.n_layers == 12
    assert adapter.layer(1).param_names == (
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_fc.bias",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.h.1.mlp.c_proj.bias",
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def changed_params() -> set[str]:
        return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}

    adapter.zero_neurons_(1, range(F))
    assert changed_params() == {"transformer.h.1.mlp.c_proj.weight"}

    stats = adapter.apply_weight_masks_(
        {"transformer.h.1.mlp.c_fc.weight": torch.zeros(D, F, dtype=torch.bool)}
    )
    assert changed_params() == {
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.h.1.mlp.c_fc.weight",
    }
    assert stats.changed == D * F
    assert stats.total == 12 * 2 * D * F
    assert stats.fraction == pytest.approx(1 / 24)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_weight_matrices_and_masks(kind: str) -> None:
    model = make_model(kind)
    adapter = MLPAdapter(model)
    weights = adapter.weight_matrices()
    n_in = 2 if kind == "llama" else 1
    assert len(weights) == 2 * (n_in + 1)
    assert [w.layer for w in weights] == [0] * (n_in + 1) + [1] * (n_in + 1)
    assert [w.role for w in weights[: n_in + 1]] == ["in"] * n_in + ["out"]
    assert all(w.transposed == (kind != "gpt2") for w in weights)
    for w in weights:
        assert w.in_out().shape == ((D, F) if w.role == "in" else (F, D))
        assert w.in_out().data_ptr() == w.parameter.data_ptr()

    target = weights[-1]  # layer 1 out projection, [F, D]
    mask = torch.rand(F, D, generator=torch.Generator().manual_seed(0)) > 0.3
    original = target.in_out().detach().clone()
    stats = adapter.apply_weight_masks_({target.name: mask})
    assert stats.changed == int(((original != 0) & ~mask).sum())
    assert torch.equal(target.in_out(), torch.where(mask, original, torch.zeros(())))

    half = torch.full((D, F), 0.5)
    first = weights[0]
    original = first.in_out().detach().clone()
    assert adapter.apply_weight_masks_({first.name: half}).changed == D * F
    assert torch.equal(first.in_out(), original * 0.5)

    with pytest.raises(ValueError, match="looks transposed"):
        adapter.apply_weight_masks_({first.name: torch.ones(F, D)})
    with pytest.raises(ValueError, match="did you mean"):
        adapter.apply_weight_masks_({first.name.replace("weight", "weigth"): half})


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.fc_in = nn.Linear(4, 8)
        self.mlp.fc_out = nn.Linear(8, 4)


class _FakeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block()])


def test_unsupported_models_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unsupported MLP in layer 0.*fc_in, fc_out.*gate_proj"):
        MLPAdapter(_FakeModel())
    with pytest.raises(ValueError, match=r"cannot find the decoder layers.*Supported MLP layouts"):
        MLPAdapter(nn.Linear(3, 3))


def test_bad_indices_and_masks() -> None:
    adapter = MLPAdapter(make_model("gpt2"))
    with pytest.raises(IndexError, match=r"layer 2 out of range.*0\.\.1"):
        adapter.layer(2)
    with pytest.raises(IndexError, match="neuron indices"):
        adapter.zero_neurons_(0, [F])
    with pytest.raises(ValueError, match=r"expected \[F\] = \[64\]"):
        with adapter.neuron_mask({0: torch.ones(F + 1)}):
            pass
    assert no_pre_hooks(adapter)
