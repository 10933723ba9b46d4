"""Weight-level methods: Greedy, Durable, Durable-Aggregate and Second Order, checked by hand."""

from __future__ import annotations

import pytest
import torch

from unmemorize.benchmarks.tinymem.train import evaluate
from unmemorize.benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from unmemorize.methods import UnlearnData, build_method
from unmemorize.methods.base import forget_retain_batches
from unmemorize.methods.weight import (
    block_fisher,
    fisher_inverse_diag,
    per_row_gradients,
    zero_top_global,
)
from unmemorize.metrics.losses import sequence_losses
from unmemorize.mlp import MLPAdapter

from .test_methods_contract import tiny_data
from .zoo import make_model


def block_fisher_inverse_diag(grads, counts, m, block_size, damping) -> torch.Tensor:
    """[n] diag of (damping I + sum_i counts_i g_i g_i^T / m)^-1, block-diagonal."""
    fisher = block_fisher(grads, counts.double() / m, block_size)
    return fisher_inverse_diag(fisher, damping, grads.shape[1])


def mlp_grads(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    """Gradient of ``loss_fn(model)`` w.r.t. each MLP weight matrix, storage layout."""
    weights = MLPAdapter(model).weight_matrices()
    grads = torch.autograd.grad(loss_fn(model), [w.parameter for w in weights])
    return {w.name: g for w, g in zip(weights, grads, strict=True)}


def zeroed_sets(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, set[int]]:
    """Flat storage indices that changed in each MLP matrix (all must now be zero)."""
    new = dict(after.named_parameters())
    out = {}
    for w in MLPAdapter(before).weight_matrices():
        diff = (new[w.name] != w.parameter).flatten()
        assert (new[w.name].flatten()[diff] == 0).all()
        out[w.name] = set(diff.nonzero().flatten().tolist())
    return out


def forget_mean_ce(data: UnlearnData):
    return lambda model: sequence_losses(model, data.forget_ids, data.pad_id).mean()


# --------------------------------------------------------------------------- durable


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_durable_zeroes_the_top_abs_grad_entries_of_each_matrix(family: str) -> None:
    model, data = make_model(family), tiny_data()
    grads = mlp_grads(model, forget_mean_ce(data))
    ratio = 0.02
    # batch_size 3 splits the 4 forget rows 3 + 1: the accumulated gradient must still be the
    # gradient of the mean over all rows.
    result = build_method("durable", {"ratio": ratio, "batch_size": 3}).apply(model, data)
    got = zeroed_sets(model, result.model)
    for name, g in grads.items():
        k = int(g.numel() * ratio)
        expected = set(torch.topk(g.abs().flatten(), k).indices.tolist())
        assert k > 0 and got[name] == expected, name
    assert result.changed_count == sum(len(s) for s in got.values())


def test_durable_agg_ranks_all_matrices_together() -> None:
    model, data = make_model("gpt2"), tiny_data()
    grads = mlp_grads(model, forget_mean_ce(data))
    names = list(grads)
    flat = torch.cat([grads[n].abs().flatten() for n in names])
    ratio = 0.01
    k = int(flat.numel() * ratio)
    top = torch.topk(flat, k).indices
    offsets = torch.tensor([0] + [grads[n].numel() for n in names]).cumsum(0)
    expected = {
        n: set((top[(top >= offsets[i]) & (top < offsets[i + 1])] - offsets[i]).tolist())
        for i, n in enumerate(names)
    }
    result = build_method("durable_agg", {"ratio": ratio}).apply(model, data)
    got = zeroed_sets(model, result.model)
    assert got == expected
    assert result.changed_count == k
    counts = [len(s) for s in got.values()]
    assert max(counts) > 2 * min(counts), "a global ranking should not split the budget evenly"


def test_global_top_k_gives_the_budget_to_the_larger_scores_and_counts_ties_exactly() -> None:
    model = make_model("gpt_neox")
    adapter = MLPAdapter(model)
    weights = adapter.weight_matrices()
    # matrix 1 scores 2, every other matrix 1: the whole budget goes to matrix 1.
    scores = [torch.full_like(w.parameter, 2.0 if i == 1 else 1.0) for i, w in enumerate(weights)]
    before = make_model("gpt_neox")
    assert zero_top_global(adapter, weights, scores, 100) == 100
    got = zeroed_sets(before, model)
    assert len(got[weights[1].name]) == 100
    assert sum(len(s) for s in got.values()) == 100
    # all tied: still exactly k, and never an entry that is already zero.
    tied = [torch.ones_like(w.parameter) for w in weights]
    assert zero_top_global(adapter, weights, tied, 4000) == 4000


# --------------------------------------------------------------------------- second order


def test_block_fisher_inverse_diag_matches_a_dense_inverse() -> None:
    torch.manual_seed(1)
    r, n, bs, m, damping = 3, 23, 5, 5, 1e-2
    grads = torch.randn(r, n, dtype=torch.float64)
    counts = torch.tensor([2, 1, 2])
    full = damping * torch.eye(n, dtype=torch.float64)
    full += (grads.T * counts) @ grads / m
    block_mask = torch.block_diag(*[torch.ones(bs, bs)] * 4, torch.ones(3, 3)).bool()
    dense = torch.linalg.inv(torch.where(block_mask, full, torch.zeros_like(full))).diagonal()
    got = block_fisher_inverse_diag(grads, counts, m, bs, damping)
    torch.testing.assert_close(got, dense, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "phi3"])
def test_per_row_gradients_match_one_backward_per_row(family: str) -> None:
    model, data = make_model(family), tiny_data()
    adapter = MLPAdapter(model)
    weights = adapter.weight_matrices()
    for w in weights:
        w.parameter.requires_grad_(True)
    batched = list(per_row_gradients(model, adapter, weights, data.forget_ids, None))
    for row in range(data.n_forget):
        ids = data.forget_ids[row : row + 1]
        single = mlp_grads(model, lambda mod, ids=ids: sequence_losses(mod, ids, None).sum())
        for w, g in zip(weights, batched, strict=True):
            torch.testing.assert_close(g[row], single[w.name], rtol=1e-4, atol=1e-6)


def test_second_order_zeroes_the_top_saliency_per_matrix() -> None:
    model, data = make_model("gpt2"), tiny_data()
    ratio, bs, damping, num_grads = 0.02, 50, 1e-3, 6  # rows 0, 1 drawn twice, rows 2, 3 once
    counts = torch.tensor([2.0, 2.0, 1.0, 1.0])
    expected = {}
    for w in MLPAdapter(model).weight_matrices():
        rows = []
        for i in range(data.n_forget):
            ids = data.forget_ids[i : i + 1]
            rows.append(
                mlp_grads(model, lambda mod, ids=ids: sequence_losses(mod, ids, None))[
                    w.name
                ].flatten()
            )
        g = torch.stack(rows).double()
        inv = block_fisher_inverse_diag(g, counts, num_grads, bs, damping)
        saliency = w.parameter.detach().double().flatten() ** 2 / (2 * inv)
        expected[w.name] = set(
            torch.topk(saliency, int(w.parameter.numel() * ratio)).indices.tolist()
        )
    cfg = {"ratio": ratio, "block_size": bs, "damping": damping, "num_grads": num_grads}
    result = build_method("second_order", cfg).apply(model, data)
    assert zeroed_sets(model, result.model) == expected


# --------------------------------------------------------------------------- greedy


def test_greedy_first_pick_is_the_argmax_of_w_times_grad() -> None:
    model, data = make_model("llama"), tiny_data()
    # one batch holds all 20 rows, so the objective does not depend on the shuffle
    ids, is_forget = next(forget_retain_batches(data, 64, torch.Generator().manual_seed(0)))

    def objective(mod: torch.nn.Module) -> torch.Tensor:
        sign = torch.where(is_forget, 1.0, -1.0)
        return (-sign * sequence_losses(mod, ids, None)).mean()

    grads = mlp_grads(model, objective)
    params = dict(model.named_parameters())
    best = max(grads, key=lambda n: float((params[n].detach() * grads[n]).max()))
    index = int((params[best].detach() * grads[best]).flatten().argmax())
    total = sum(g.numel() for g in grads.values())
    result = build_method("greedy", {"ratio": 1.5 / total}).apply(model, data)
    got = zeroed_sets(model, result.model)
    assert got[best] == {index}
    assert sum(len(s) for s in got.values()) == 1


@pytest.mark.parametrize("per_step", [1, 3])
def test_greedy_zeroes_exactly_the_count_of_distinct_weights(per_step: int) -> None:
    model, data = make_model("gpt_neox"), tiny_data()
    weights = MLPAdapter(model).weight_matrices()
    with torch.no_grad():  # pre-existing zeros must not count towards the budget
        weights[0].parameter[:4] = 0.0
    zeros_before = sum(int((w.parameter == 0).sum()) for w in weights)
    total = sum(w.parameter.numel() for w in weights)
    target = int(total * 0.001)
    result = build_method("greedy", {"ratio": 0.001, "weights_per_step": per_step}).apply(
        model, data
    )
    after = MLPAdapter(result.model).weight_matrices()
    assert sum(int((w.parameter == 0).sum()) for w in after) - zeros_before == target
    assert sum(len(s) for s in zeroed_sets(model, result.model).values()) == target
    assert result.changed_count == target
    assert result.info["passes"] == len(result.losses) == -(-target // per_step)


def test_greedy_skips_batches_without_forget_rows() -> None:
    data = tiny_data()
    data = UnlearnData(data.forget_ids[:1], data.retain_ids)  # 1 forget row among 17
    result = build_method("greedy", {"ratio": 0.001, "batch_size": 2}).apply(
        make_model("gpt2"), data
    )
    # with the forget row a batch's objective is (-l_u + l_r) / 2 ~ 0 or -l_u ~ -log V; a
    # retain-only batch would give +l_r ~ +log V (the untrained model's losses are all ~log V)
    losses = torch.tensor(result.losses)
    assert torch.isfinite(losses).all() and (losses < 1.0).all()
    assert result.info["passes"] == 8


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_baseline(tiny_run) -> tuple[UnlearnData, dict]:
    """The tiny run's forget set (its memorized rows) and its unedited metrics."""
    forget, _ = tinymem_unlearn_data(tiny_run.model, tiny_run.data)
    return forget, evaluate(tiny_run.model, tiny_run.data)


@pytest.mark.parametrize(
    "name, options",
    [
        ("greedy", {"ratio": 0.005, "weights_per_step": 10}),
        ("durable", {"ratio": 0.03}),
        ("durable_agg", {"ratio": 0.03}),
        ("second_order", {"ratio": 0.01}),
    ],
)
def test_weight_methods_lower_memorization(
    tiny_run, tiny_baseline: tuple[UnlearnData, dict], name: str, options: dict
) -> None:
    forget, before = tiny_baseline
    edited = build_method(name, options).apply(tiny_run.model, forget).model
    after = evaluate(edited, tiny_run.data)
    assert after["n_memorized"] < before["n_memorized"]
    assert after["accuracy"] > 0.5
