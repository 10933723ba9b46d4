"""Edge-popup methods (subnet, balanced_subnet): masks, gradients, loss guard, bake, TinyMem."""

from __future__ import annotations

import math

import pytest
import torch

from unmemorize.benchmarks.tinymem.train import evaluate
from unmemorize.benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from unmemorize.methods import UnlearnData, build_method
from unmemorize.methods.subnet import (
    BalancedSubnetConfig,
    bake_masks_,
    balanced_loss,
    edge_popup_masks,
    fixed_share_batches,
    init_scores,
    lowest_k_mask,
    masked_weight,
    scheduled_lr,
)
from unmemorize.metrics.losses import sequence_losses
from unmemorize.mlp import MLPAdapter

from .zoo import V, make_model

FAMILIES = ["gpt2", "gpt_neox", "llama"]


def _scores(model: torch.nn.Module, ratio: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = MLPAdapter(model).weight_matrices()
    scores = {w.name: torch.nn.Parameter(init_scores(w, g)) for w in weights}
    ks = {w.name: int(w.parameter.numel() * ratio) for w in weights}
    return scores, ks


def _data(n_forget: int = 4, n_retain: int = 16, t: int = 12) -> UnlearnData:
    g = torch.Generator().manual_seed(0)
    return UnlearnData(
        forget_ids=torch.randint(40, V, (n_forget, t), generator=g),
        retain_ids=torch.randint(2, 40, (n_retain, t), generator=g),
    )


# --------------------------------------------------------------------------- masks


def test_masked_weight_drops_exactly_the_lowest_abs_scores() -> None:
    scores = torch.randn(7, 9, generator=torch.Generator().manual_seed(1))
    k = 10
    mask = masked_weight(torch.ones(7, 9), scores, k)
    lowest = scores.abs().flatten().argsort()[:k]
    flat = mask.detach().flatten()
    assert set(flat.unique().tolist()) == {0.0, 1.0}
    assert flat[lowest].eq(0).all()
    assert int((flat == 0).sum()) == k
    # |S| decides, not S: the most negative scores are kept.
    assert flat[scores.flatten().argmin()] == 1


def test_mask_count_is_exact_with_ties_and_zero_k() -> None:
    assert int((lowest_k_mask(torch.zeros(5, 5), 7) == 0).sum()) == 7
    assert lowest_k_mask(torch.randn(4, 4), 0).eq(1).all()


def test_gradient_passes_straight_through_to_scores() -> None:
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(6, 5, generator=g)
    scores = torch.randn(6, 5, generator=g, requires_grad=True)
    masked_weight(weight, scores, 12).sum().backward()
    # dL/dM = W everywhere (dropped entries included), and d|S|/dS = sign(S).
    torch.testing.assert_close(scores.grad, weight * scores.detach().sign())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_score_gets_a_gradient_and_weights_come_back(family: str) -> None:
    model = make_model(family, n_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores, ks = _scores(model, 0.1)
    with edge_popup_masks(model, scores, ks):
        sequence_losses(model, _data().forget_ids, None).mean().backward()
    for name, score in scores.items():
        assert score.grad is not None and score.grad.abs().sum() > 0, name
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("family", FAMILIES)
def test_baked_model_equals_masked_forward(family: str) -> None:
    model = make_model(family, n_layers=2)
    scores, ks = _scores(model, 0.2, seed=3)
    ids = _data().forget_ids
    with torch.no_grad():
        with edge_popup_masks(model, scores, ks):
            masked = model(ids).logits
        plain = model(ids).logits
        stats = bake_masks_(model, scores, ks)
        baked = model(ids).logits
    assert not torch.allclose(masked, plain)
    torch.testing.assert_close(baked, masked, rtol=0, atol=1e-6)
    assert stats.changed == sum(ks.values())
    for weight in MLPAdapter(model).weight_matrices():
        assert int((weight.parameter == 0).sum()) == ks[weight.name]


# --------------------------------------------------------------------------- loss and batches


def test_balanced_loss_uses_only_the_terms_that_exist() -> None:
    ce = torch.tensor([1.0, 2.0, 3.0, 6.0])
    w = 0.7
    both = balanced_loss(ce, torch.tensor([True, True, False, False]), w)
    assert both.item() == pytest.approx(-(1 - w) * 1.5 + w * 4.5)
    only_u = balanced_loss(ce, torch.ones(4, dtype=torch.bool), w)
    assert only_u.item() == pytest.approx(-(1 - w) * 3.0)
    only_r = balanced_loss(ce, torch.zeros(4, dtype=torch.bool), w)
    assert only_r.item() == pytest.approx(w * 3.0)


def test_balanced_subnet_is_finite_on_batches_without_forget_rows() -> None:
    # 1 U row among 15 R rows in batches of 2: most batches hold no U row (the original's NaN).
    data = _data(n_forget=1, n_retain=15)
    result = build_method("balanced_subnet", ["batch_size=2", "epochs=1"]).apply(
        make_model("gpt2"), data
    )
    assert len(result.losses) == 8
    assert all(math.isfinite(v) for v in result.losses)
    assert sum(v > 0 for v in result.losses) >= 6  # R-only batches: w * CE(R) > 0


def test_fixed_share_batches_hold_every_retain_row_once_and_fixed_forget_rows() -> None:
    data = _data(n_forget=5, n_retain=22)
    batches = list(fixed_share_batches(data, 8, 3, torch.Generator().manual_seed(0)))
    assert all(int(f.sum()) == 3 and bool(f[:3].all()) for _, f in batches)
    retain = torch.cat([ids[~f] for ids, f in batches])
    assert sorted(map(tuple, retain.tolist())) == sorted(map(tuple, data.retain_ids.tolist()))
    forget = torch.cat([ids[f] for ids, f in batches])  # 4 batches x 3 = 12 draws over 5 rows
    counts = [int((forget == row).all(dim=1).sum()) for row in data.forget_ids]
    assert max(counts) - min(counts) <= 1


def test_cosine_schedule_and_validation() -> None:
    cfg = BalancedSubnetConfig(lr=2.0)
    assert scheduled_lr(cfg, 0, 10) == 2.0
    assert scheduled_lr(cfg, 5, 10) == pytest.approx(1.0)
    assert scheduled_lr(cfg, 9, 10) < 0.1
    assert scheduled_lr(BalancedSubnetConfig(lr=2.0, lr_schedule="constant"), 9, 10) == 2.0
    for bad in (["retain_weight=1"], ["forget_per_batch=128"], ["lr_schedule=step"], ["lr=0"]):
        with pytest.raises(ValueError):
            build_method("balanced_subnet", bad)


def test_balanced_subnet_needs_a_retain_set() -> None:
    data = UnlearnData(forget_ids=_data().forget_ids, retain_ids=torch.zeros(0, 12).long())
    with pytest.raises(ValueError, match="retain"):
        build_method("balanced_subnet").apply(make_model("gpt2"), data)


# --------------------------------------------------------------------------- TinyMem


def test_both_methods_lower_memorization_on_tiny_run(tiny_run) -> None:
    model, data = tiny_run.model, tiny_run.data
    forget, report = tinymem_unlearn_data(model, data)
    base = evaluate(model, data)
    assert base["n_memorized"] >= 3

    subnet = build_method("subnet").apply(model, forget)
    after = evaluate(subnet.model, data)
    assert after["n_memorized"] <= base["n_memorized"] - 3

    # Checked on this fixture (trained with 1 and with 2 threads): 10 memorized -> 0 at -0.7 to
    # -1.3 accuracy points.
    balanced = build_method("balanced_subnet", ["ratio=0.04", "batch_size=32", "epochs=8"]).apply(
        model, forget
    )
    after = evaluate(balanced.model, data)
    assert after["n_memorized"] <= 1
    assert after["accuracy"] >= base["accuracy"] - 0.03
    mlp_total = sum(w.parameter.numel() for w in MLPAdapter(model).weight_matrices())
    assert balanced.changed_count == sum(
        int(w.parameter.numel() * 0.04) for w in MLPAdapter(model).weight_matrices()
    )
    assert balanced.changed_fraction == pytest.approx(balanced.changed_count / mlp_total)
