"""Memory-frugal paths of the weight/neuron methods against straightforward reference computations.

The frugal paths (buffers only for the edited ``layers``, no concatenated score copy, bfloat16
scores ranked as bfloat16, a bool-mask edge-popup function, per-parameter SSD hooks) must pick
exactly what the plain computation picks.
"""

from __future__ import annotations

import pytest
import torch

from unmemorize.methods import build_method
from unmemorize.methods import subnet as subnet_module
from unmemorize.methods import weight as weight_module
from unmemorize.methods.masking import top_k_masks
from unmemorize.methods.subnet import lowest_k_mask, masked_weight
from unmemorize.metrics.losses import sequence_losses
from unmemorize.mlp import MLPAdapter

from .test_methods_contract import tiny_data
from .zoo import make_model


def stable_top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Reference: one float64 concatenation, a stable descending sort, the first k finite."""
    flat = torch.cat([s.detach().flatten().double() for s in scores])
    order = torch.sort(-flat, stable=True).indices
    order = order[torch.isfinite(flat[order])][:k]
    mask = torch.zeros(len(flat), dtype=torch.bool)
    mask[order] = True
    return [
        m.view_as(s) for m, s in zip(mask.split([s.numel() for s in scores]), scores, strict=True)
    ]


def zeroed(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, set[int]]:
    """name -> flat indices of entries that were nonzero and are zero now."""
    old = dict(before.named_parameters())
    out = {}
    for name, p in after.named_parameters():
        hit = ((old[name] != 0) & (p == 0)).flatten().nonzero().flatten().tolist()
        if hit:
            out[name] = set(hit)
    return out


def changed_names(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    old = dict(before.named_parameters())
    return {n for n, p in after.named_parameters() if not torch.equal(old[n], p)}


def layer_weight_names(model: torch.nn.Module, layers: list[int]) -> set[str]:
    return {w.name for w in MLPAdapter(model).weight_matrices(layers)}


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_top_k_masks_equals_a_stable_sort_with_ties_and_excluded_entries(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        # rounded values: many ties, negatives, zeros of both signs; -inf marks excluded entries
        a = torch.randn(7, 5, generator=g).round(decimals=1).to(dtype)
        b = torch.randn(13, generator=g).round(decimals=1).to(dtype)
        a[0, :3] = -float("inf")
        b[:2] = -0.0
        for k in [0, 1, 5, 17, 40, 45, 100]:
            got = top_k_masks([a, b], k)
            for m, e in zip(got, stable_top_k([a, b], k), strict=True):
                assert torch.equal(m, e), (dtype, k)
            assert sum(int(m.sum()) for m in got) == min(k, 45)


def test_bfloat16_scores_select_what_their_float32_casts_select() -> None:
    g = torch.Generator().manual_seed(1)
    # bfloat16 has 8 mantissa bits: thousands of entries produce many exact ties
    scores = [torch.randn(64, 48, generator=g).abs().bfloat16() for _ in range(3)]
    for k in [1, 100, 2000, 5000]:
        half = top_k_masks(scores, k)
        full = top_k_masks([s.float() for s in scores], k)
        assert all(torch.equal(h, f) for h, f in zip(half, full, strict=True))


# --------------------------------------------------------------------------- weight methods


def reference_forget_grads(model, names: set[str]) -> dict[str, torch.Tensor]:
    """Plain autograd of the mean forget CE w.r.t. the named weights, every parameter live."""
    params = dict(model.named_parameters())
    data = tiny_data()
    loss = sequence_losses(model, data.forget_ids, None).sum() / data.n_forget
    grads = torch.autograd.grad(loss, [params[n] for n in sorted(names)])
    return dict(zip(sorted(names), grads, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_durable_on_one_layer_matches_a_float32_reference_ranking(dtype) -> None:
    model = make_model("gpt_neox", n_layers=4).to(dtype)
    names = layer_weight_names(model, [2])
    result = build_method("durable", ["ratio=0.05", "layers=2"]).apply(model, tiny_data())
    assert changed_names(model, result.model) <= names
    expected: dict[str, set[int]] = {}
    for name, grad in reference_forget_grads(model, names).items():
        weight = dict(model.named_parameters())[name]
        score = grad.float().abs().masked_fill(weight == 0, -float("inf"))
        (mask,) = stable_top_k([score], int(weight.numel() * 0.05))
        expected[name] = set(mask.flatten().nonzero().flatten().tolist())
    assert zeroed(model, result.model) == expected
    total = sum(dict(model.named_parameters())[n].numel() for n in names)
    assert result.changed_count == sum(len(s) for s in expected.values())
    assert result.changed_fraction == pytest.approx(result.changed_count / total)


def test_durable_agg_ranks_the_chosen_layers_together_like_one_concatenation() -> None:
    model = make_model("llama", n_layers=4)
    names = sorted(layer_weight_names(model, [1, 3]))
    result = build_method("durable_agg", ["ratio=0.02", "layers=3,1"]).apply(model, tiny_data())
    grads = reference_forget_grads(model, set(names))
    params = dict(model.named_parameters())
    # the adapter's order (layer, then in before out) is the tie-break order of the ranking
    order = [w.name for w in MLPAdapter(model).weight_matrices([1, 3])]
    k = int(sum(params[n].numel() for n in names) * 0.02)
    masks = stable_top_k([grads[n].abs() for n in order], k)
    expected = {
        n: set(m.flatten().nonzero().flatten().tolist())
        for n, m in zip(order, masks, strict=True)
        if m.any()
    }
    assert zeroed(model, result.model) == expected


@pytest.mark.parametrize(
    "name,opts",
    [
        ("durable", []),
        ("greedy", ["ratio=0.01", "weights_per_step=5"]),
        ("second_order", ["num_grads=4", "block_size=8"]),
        ("subnet", ["epochs=2"]),
        ("balanced_subnet", ["epochs=1", "batch_size=8"]),
    ],
)
def test_weight_methods_touch_and_allocate_only_the_chosen_layer(name, opts, monkeypatch) -> None:
    model = make_model("gpt2", n_layers=4)
    allocated: list[set[str]] = []
    real_trainable, real_masks = (
        weight_module._trainable_mlp_weights,
        subnet_module.edge_popup_masks,
    )

    def spy_trainable(m, layers):
        adapter, weights = real_trainable(m, layers)
        allocated.append({w.name for w in weights})
        # everything outside the edited matrices is frozen: no gradient buffers there
        allocated.append({n for n, p in m.named_parameters() if p.requires_grad})
        return adapter, weights

    def spy_masks(m, scores, ks):
        allocated.append(set(scores))
        return real_masks(m, scores, ks)

    monkeypatch.setattr(weight_module, "_trainable_mlp_weights", spy_trainable)
    monkeypatch.setattr(subnet_module, "edge_popup_masks", spy_masks)
    result = build_method(name, [*opts, "layers=2"]).apply(model, tiny_data())
    layer2 = layer_weight_names(model, [2])
    assert allocated and all(names == layer2 for names in allocated)
    assert changed_names(model, result.model) and changed_names(model, result.model) <= layer2


def test_second_order_on_one_layer_equals_the_full_run_there() -> None:
    # each matrix's Fisher and saliency depend only on its own per-row gradients
    model = make_model("gpt_neox", n_layers=3)
    opts = ["num_grads=4", "block_size=8", "ratio=0.05"]
    full = build_method("second_order", opts).apply(model, tiny_data())
    one = build_method("second_order", [*opts, "layers=1"]).apply(model, tiny_data())
    layer1 = layer_weight_names(model, [1])
    got, want = zeroed(model, one.model), zeroed(model, full.model)
    assert got == {n: s for n, s in want.items() if n in layer1}


# --------------------------------------------------------------------------- edge-popup mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_weight_is_bit_identical_to_autograd_through_a_float_mask(dtype) -> None:
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 12, generator=g).to(dtype)
    upstream = torch.randn(16, 12, generator=g).to(dtype)
    s1 = torch.randn(16, 12, generator=g).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    k = 50
    # the plain formulation: hard + (|S| - |S|.detach()), a float mask cast to W's dtype
    magnitude = s1.abs()
    hard = lowest_k_mask(magnitude, k).float()
    ref = weight * (hard + (magnitude - magnitude.detach())).to(dtype)
    ref.backward(upstream)
    out = masked_weight(weight, s2, k)
    out.backward(upstream)
    assert torch.equal(out, ref.detach())
    assert torch.equal(s2.grad, s1.grad)


# --------------------------------------------------------------------------- neuron methods


@pytest.mark.parametrize(
    "name,opts",
    [
        ("activations", []),
        ("zero_out", ["batch_size=32"]),
        ("integrated_gradients", ["ig_steps=2"]),
    ],
)
def test_neuron_scores_of_one_layer_equal_the_full_scores_there(name, opts) -> None:
    model = make_model("gpt_neox", n_layers=4)
    full = build_method(name, opts).score(model, tiny_data(), False)
    one = build_method(name, [*opts, "layers=2"]).score(model, tiny_data(), False)
    assert len(one) == 1
    torch.testing.assert_close(one[0], full[2], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["slimming", "hard_concrete"])
def test_gated_methods_learn_gates_only_for_the_chosen_layers(name) -> None:
    model = make_model("llama", n_layers=4)
    method = build_method(name, ["epochs=1", "layers=0,3"])
    scores = method.score(model, tiny_data(), False)
    assert [s.shape[0] for s in scores] == [MLPAdapter(model).layer(i).width for i in (0, 3)]
    result = method.apply(model, tiny_data())
    touched = {n.split(".mlp")[0] for n in changed_names(model, result.model)}
    assert touched and touched <= {"model.layers.0", "model.layers.3"}
    width = MLPAdapter(model).layer(0).width
    assert result.changed_count == 2 * int(width * 0.05)
    assert result.changed_fraction == pytest.approx(result.changed_count / (2 * width))


# --------------------------------------------------------------------------- bad input


def test_layers_out_of_range_or_repeated_is_a_clear_error() -> None:
    model = make_model("gpt2", n_layers=4)
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\].*4 MLP layers \(0..3\)"):
        build_method("durable", ["layers=1,7"]).apply(model, tiny_data())
    with pytest.raises(ValueError, match="distinct"):
        build_method("activations", ["layers=1,1"])
    with pytest.raises(ValueError, match="distinct indices >= 0"):
        build_method("subnet", ["layers=-1"])


# --------------------------------------------------------------------------- SSD


def test_ssd_mlp_only_keeps_gradients_off_everything_else(monkeypatch) -> None:
    from unmemorize.methods import ssd as ssd_module

    model = make_model("gpt_neox", n_layers=3)
    seen: list[set[str]] = []
    real = ssd_module.importance

    def spy(m, params, *args, **kwargs):
        out = real(m, params, *args, **kwargs)
        seen.append({n for n, p in m.named_parameters() if p.requires_grad})
        return out

    monkeypatch.setattr(ssd_module, "importance", spy)
    build_method("ssd", ["mlp_only=true", "batch_size=4"]).apply(model, tiny_data())
    mlp = layer_weight_names(model, [0, 1, 2])
    assert seen and all(s == mlp for s in seen)
