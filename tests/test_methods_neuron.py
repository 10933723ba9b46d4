"""The five neuron-level methods: exact scores against hand computations, and unlearning."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import unmemorize.methods.neuron as neuron
from unmemorize.benchmarks.tinymem.train import evaluate
from unmemorize.benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from unmemorize.methods import UnlearnData, build_method
from unmemorize.methods.base import mean_sequence_loss
from unmemorize.mlp import MLPAdapter

from .zoo import F, V, make_model

T = 12
PAD = 1  # the zoo models' pad_token_id

NEURON_METHODS = ["zero_out", "activations", "slimming", "hard_concrete", "integrated_gradients"]


def padded_data(prefix: list[int] | None = None) -> UnlearnData:
    """4 forget rows over tokens 40..49, row 0 ending in two pads; 8 retain rows."""
    g = torch.Generator().manual_seed(1)
    forget = torch.randint(40, V, (4, T), generator=g)
    forget[0, -2:] = PAD
    retain = torch.randint(2, 40, (8, T), generator=g)
    return UnlearnData(
        forget_ids=forget,
        retain_ids=retain,
        pad_id=PAD,
        forget_prefix_len=torch.tensor(prefix or [3, 5, 6, 8]),
    )


def act_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """GPT-2's activation function module: its output is the out projection's input."""
    return model.transformer.h[layer].mlp.act


def activations(model: torch.nn.Module, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """[B, T, F] activations of a GPT-2 layer, read by a plain forward hook (no adapter)."""
    seen: dict[str, torch.Tensor] = {}
    handle = act_module(model, layer).register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("a", out.detach().clone())
    )
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen["a"]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "phi3"])
def test_zero_out_score_is_the_loss_change_of_zeroing_the_neuron(family: str) -> None:
    model = make_model(family)
    data = padded_data()
    # batch_size 24 splits the 64 neurons of a layer into chunks of 24, 24 and 16
    scores = build_method("zero_out", ["batch_size=24"]).score(model, data, False)
    with torch.no_grad():
        base = float(mean_sequence_loss(model, data.forget_ids, PAD))
        for layer, j in [(0, 0), (0, 23), (0, 24), (1, 47), (1, F - 1)]:
            edited = copy.deepcopy(model)
            MLPAdapter(edited).zero_neurons_(layer, [j])
            expected = float(mean_sequence_loss(edited, data.forget_ids, PAD)) - base
            assert float(scores[layer][j]) == pytest.approx(expected, abs=2e-6)
    assert all(s.shape == (F,) for s in scores)
    assert float(torch.cat(scores).abs().max()) > 1e-3  # ablations do change the loss


def test_zero_out_row_subset_equals_scoring_those_rows() -> None:
    model = make_model("llama")
    data = padded_data()
    sub = build_method("zero_out", ["max_rows=2", "seed=3"]).score(model, data, False)
    keep = neuron._row_subset(4, 2, 3)
    assert len(keep) == 2
    only = UnlearnData(data.forget_ids[keep], data.retain_ids, pad_id=PAD)
    full = build_method("zero_out").score(model, only, False)
    for a, b in zip(sub, full, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["zero_out", "integrated_gradients"])
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_shared_lower_layers_give_the_same_scores_as_repeated_rows(
    name: str, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(family)
    data = padded_data()
    opts = ["ig_steps=3", "batch_size=16"] if name == "integrated_gradients" else []
    fast = build_method(name, opts).score(model, data, False)
    monkeypatch.setattr(neuron, "_SHARE_LOWER_LAYERS", False)
    slow = build_method(name, opts).score(model, data, False)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_activations_score_matches_a_hand_computation() -> None:
    model = make_model("gpt2")
    data = padded_data()
    scores = build_method("activations", ["batch_size=3"]).score(model, data, False)
    mask = data.continuation_mask().float()  # [U, T-1]
    assert mask[0, -1] == 0 and mask[1, 4] == 1 and mask[1, 3] == 0  # pad and prompt excluded
    for layer in range(2):
        a = activations(model, layer, data.forget_ids[:, :-1]).abs()  # [U, T-1, F]
        mean_abs = (a * mask[..., None]).sum(dim=(0, 1)) / mask.sum()
        w_out = model.transformer.h[layer].mlp.c_proj.weight  # Conv1D: [F, D]
        expected = mean_abs * w_out.norm(dim=1)
        torch.testing.assert_close(scores[layer], expected.detach(), rtol=1e-5, atol=1e-7)


def manual_ig(model, row: torch.Tensor, layer: int, t: int, steps: int) -> torch.Tensor:
    """Integrated gradients of P(row[t+1]) w.r.t. the activations at position t, one step at a
    time on the truncated row, through a plain forward hook (no adapter)."""
    ids = row[None, : t + 1]
    a = activations(model, layer, ids)[0, t]  # [F]
    total = torch.zeros_like(a)
    for k in range(1, steps + 1):
        x = (k / steps * a).requires_grad_(True)

        def patch(_m, _i, out, x=x):
            out = out.clone()
            out[0, t] = x
            return out

        handle = act_module(model, layer).register_forward_hook(patch)
        prob = model(ids).logits[0, t].softmax(-1)[row[t + 1]]
        handle.remove()
        (grad,) = torch.autograd.grad(prob, x)
        total += grad
    return a * total / steps


def test_integrated_gradients_matches_a_step_by_step_computation() -> None:
    model = make_model("gpt2")
    g = torch.Generator().manual_seed(2)
    rows = torch.randint(2, V, (2, T), generator=g)
    # prompt lengths 10 and 9: the continuation targets are positions {9, 10} and {8, 9, 10}
    data = UnlearnData(rows, rows[:0], forget_prefix_len=torch.tensor([10, 9]))
    scores = build_method("integrated_gradients", ["ig_steps=3", "batch_size=4"]).score(
        model, data, False
    )
    for layer in range(2):
        expected = sum(
            torch.stack([manual_ig(model, rows[u], layer, t, 3) for t in ts]).mean(0)
            for u, ts in [(0, [9, 10]), (1, [8, 9, 10])]
        )
        torch.testing.assert_close(scores[layer], expected, rtol=1e-4, atol=1e-8)


def test_integrated_gradients_scores_a_silent_neuron_zero() -> None:
    model = make_model("gpt2")
    with torch.no_grad():  # neuron 5 of layer 0 gets pre-activation 0, so gelu gives 0
        model.transformer.h[0].mlp.c_fc.weight[:, 5] = 0
        model.transformer.h[0].mlp.c_fc.bias[5] = 0
    scores = build_method("integrated_gradients", ["ig_steps=2"]).score(model, padded_data(), False)
    assert float(scores[0][5]) == 0.0
    assert int((scores[0] != 0).sum()) == F - 1


def test_slimming_one_step_moves_each_gate_against_its_gradient() -> None:
    # One Adam step moves every gate by lr against the sign of its gradient; with lambda 0 that
    # is the sign of dCE/ds, which at s = 1 is sum_t a_j(t) dCE/da_j(t).
    model = make_model("gpt2")
    data = padded_data()
    method = build_method("slimming", ["epochs=1", "lambda_l1=0", "lr=0.25"])
    scores = method.score(model, data, False)
    gates = [torch.ones(F, requires_grad=True) for _ in range(2)]
    handles = [
        act_module(model, i).register_forward_hook(lambda _m, _i, out, s=s: out * s)
        for i, s in enumerate(gates)
    ]
    loss = mean_sequence_loss(model, data.forget_ids, PAD)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(loss, gates)
    # Adam's first step is lr * g / (|g| + eps); the forward clamps s back into [0, 1]
    raw = [1 - 0.25 * g / (g.abs() + 1e-8) for g in grads]
    for score, r in zip(scores, raw, strict=True):
        torch.testing.assert_close(score, r.clamp(0, 1))
    assert {float(v) for v in torch.cat(scores).round(decimals=3)} == {0.75, 1.0}
    info = method._trace[1]
    assert info["steps"] == 1 and info["early_stop"] is False
    assert info["final_penalty"] == pytest.approx(float(torch.cat(raw).abs().mean()), rel=1e-5)


def test_slimming_checks_its_stop_every_ten_steps() -> None:
    result = build_method("slimming", ["epochs=50", "stop_loss=2"]).apply(
        make_model("gpt2"), padded_data()
    )
    # the L1 term starts at 1 < 2, but the first check is at the 10th step (before its update)
    assert result.info["steps"] == 9 and result.info["early_stop"] is True
    assert len(result.losses) == 9


def test_hard_concrete_regularizer_and_early_stop() -> None:
    model, data = make_model("llama"), padded_data()
    result = build_method("hard_concrete", ["epochs=100", "batch_size=2", "lr=0.5"]).apply(
        model, data
    )
    info = result.info
    assert info["early_stop"] is True and info["final_penalty"] < 0.1 < info["steps"]
    assert len(result.losses) == info["steps"]
    # score = sigmoid(g) and reg = mean_l mean_j sigmoid(g - beta log(-l/r))
    method = build_method("hard_concrete", ["epochs=3", "batch_size=2"])
    torch.manual_seed(0)
    scores = method.score(model, data, False)
    shift = 2 / 3 * math.log(0.1 / 1.1)
    reg = torch.stack([torch.sigmoid(torch.logit(s.double()) - shift).mean() for s in scores])
    assert method._trace[1]["final_penalty"] == pytest.approx(float(reg.mean()), rel=1e-5)
    assert method._trace[1]["steps"] == 6  # 3 epochs x 2 batches of 2 rows


@pytest.mark.parametrize(
    "name, bad",
    [
        ("zero_out", "max_rows=0"),
        ("zero_out", "batch_size=0"),
        ("integrated_gradients", "ig_steps=0"),
        ("slimming", "lambda_l1=-1"),
        ("slimming", "epochs=0"),
        ("hard_concrete", "beta=0"),
        ("hard_concrete", "stop_loss=-0.1"),
    ],
)
def test_bad_options_are_rejected(name: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        build_method(name, [bad])


#: Configs checked on the tiny run (2 layers, 128 neurons each; 6 removed per layer at 5%).
TINY_CONFIGS = {
    # the fixture memorizes 10 rows; more would cost accuracy (measured: 10 -> 0-1 memorized,
    # accuracy 0.897 -> 0.80-0.82 for zero_out, 0.84-0.87 for slimming)
    "zero_out": ["max_rows=2"],
    "activations": [],
    "slimming": ["epochs=1"],
    "hard_concrete": [],
    "integrated_gradients": ["ig_steps=2"],
}


@pytest.mark.parametrize("name", NEURON_METHODS)
def test_each_method_lowers_memorization_on_the_tiny_run(tiny_run, name: str) -> None:
    model, data = tiny_run.model, tiny_run.data
    forget, _ = tinymem_unlearn_data(model, data)
    base = evaluate(model, data)
    result = build_method(name, TINY_CONFIGS[name]).apply(model, forget)
    after = evaluate(result.model, data)
    assert base["n_memorized"] >= 3
    assert after["n_memorized"] <= base["n_memorized"] // 2, (name, after["n_memorized"])
    assert after["accuracy"] > 0.85 * base["accuracy"]
    assert result.changed_count == 2 * int(0.05 * MLPAdapter(model).width)
