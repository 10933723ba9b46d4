"""Gradient unlearning (GA, GradDiff, KL, NPO, SimNPO, task vector): hand-computed loss values,
NPO's gradient form, training signs, exact task arithmetic, and forgetting on the tiny run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from unmemorize.benchmarks.tinymem.train import evaluate
from unmemorize.benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from unmemorize.methods import METHODS, UnlearnData, build_method
from unmemorize.methods.gradient import divergence_loss, npo_loss, reduce_logprobs, simnpo_loss
from unmemorize.metrics.losses import masked_nll, target_logprobs, token_logprobs

from .test_methods_contract import tiny_data
from .zoo import make_model

NAMES = ["ga", "grad_diff", "kl", "npo", "simnpo", "task_vector"]
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def close(a: torch.Tensor | float, b: float, tol: float = 1e-6) -> bool:
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


def padded_data(n_retain: int = 16) -> UnlearnData:
    """tiny_data with pad id 1 on the right of two forget rows and of the first retain row."""
    data = tiny_data()
    forget, retain = data.forget_ids.clone(), data.retain_ids[:n_retain].clone()
    forget[0, 9:] = 1
    forget[2, 7:] = 1
    retain[0, 5:] = 1
    return UnlearnData(forget, retain, pad_id=1, forget_prefix_len=data.forget_prefix_len)


def manual_nll(model: torch.nn.Module, ids: torch.Tensor, keep: torch.Tensor) -> float:
    """Token-mean NLL pooled over the ``keep`` [B, T-1] targets, straight from F.cross_entropy."""
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return float(ce[keep].mean())


# --------------------------------------------------------------------------- loss values


def test_target_logprobs_and_pooled_nll_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]])  # [1, 2, 3]
    ids = torch.tensor([[2, 0, 1]])
    logp = target_logprobs(logits, ids)
    assert torch.allclose(logp, torch.tensor([[-LN3, -LN4]]))
    assert close(masked_nll(logp, torch.tensor([[True, False]])), LN3)
    assert close(masked_nll(logp, torch.tensor([[True, True]])), (LN3 + LN4) / 2)
    # Pooled over the batch (HF outputs.loss), not a mean of row means: (1+2+3)/3, not 2.25.
    pooled = masked_nll(torch.tensor([[-1.0, -2.0], [-3.0, -9.0]]), torch.tensor([[1, 1], [1, 0]]))
    assert close(pooled, 2.0)


def test_reduce_logprobs_per_ratio() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert torch.equal(reduce_logprobs(logp, mask, "sequence"), torch.tensor([-6.0, -4.0]))
    assert torch.equal(reduce_logprobs(logp, mask, "token_mean"), torch.tensor([-2.0, -4.0]))
    assert torch.equal(reduce_logprobs(logp, mask, "batch_mean"), torch.tensor([-2.5]))
    with pytest.raises(ValueError, match="sequence"):
        reduce_logprobs(logp, mask, "sequnce")


def test_npo_loss_by_hand() -> None:
    # Δ = (0, ln 3): logσ(0) = −ln 2, logσ(−ln 3) = ln(1/4); β = 1 gives −2·mean = 3 ln 2.
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0 - LN3])
    assert close(npo_loss(logp, ref, 1.0), 3 * LN2)
    # RESTOR's loss starts (Δ = 0) at (2/β)·ln 2 = 13.86 for β = 0.1.
    assert close(npo_loss(logp, logp, 0.1), 20 * LN2, 1e-5)


def test_npo_gradient_form_and_its_ga_limit() -> None:
    ref = torch.tensor([-3.0, -1.0, -2.0])
    logp = torch.tensor([-2.0, -1.0, -4.0], requires_grad=True)  # Δ = (1, 0, −2)
    delta = (logp - ref).detach()
    for beta in (0.1, 1.0, 3.0):
        (grad,) = torch.autograd.grad(npo_loss(logp, ref, beta), logp)
        # ∂L/∂logπ_i = (2/B)·σ(β·Δ_i): positive, so descent lowers log π (ascent on the NLL).
        assert torch.allclose(grad, 2 / 3 * torch.sigmoid(beta * delta))
        assert close(grad[1], 1 / 3)  # Δ = 0: GA's weight 1/B for any β
    (grad,) = torch.autograd.grad(npo_loss(logp, ref, 1e-6), logp)
    assert torch.allclose(grad, torch.full((3,), 1 / 3))  # β → 0: GA on mean_i log π(y_i)


def test_simnpo_loss_and_gradient_by_hand() -> None:
    # −β·ℓ − δ = 2.5 − 0.5 = 2, so L = −(2/2)·logσ(2) = log(1 + e^−2).
    ell = torch.tensor([-1.25], requires_grad=True)
    loss = simnpo_loss(ell, 2.0, 0.5)
    assert close(loss, math.log1p(math.exp(-2)))
    (grad,) = torch.autograd.grad(loss, ell)
    assert close(grad[0], 2 * torch.sigmoid(torch.tensor(-2.0)).item())  # 2·σ(β·ℓ + δ)
    two = simnpo_loss(torch.tensor([-1.25, 0.0]), 2.0, 0.5)
    assert close(two, (math.log1p(math.exp(-2)) + math.log1p(math.exp(0.5))) / 2)


def test_divergence_loss_by_hand() -> None:
    # Position 0: p = (1/2, 1/2), q = (1/4, 3/4). Position 1 (masked out at first): p ≠ q.
    logits = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    ref = torch.tensor([[[0.0, LN3], [0.0, 0.0]]])
    first = torch.tensor([[True, False]])
    kl = 0.5 * math.log(4 / 3)  # ½ln(½/¼) + ½ln(½/¾)
    ce = 0.5 * (LN4 + math.log(4 / 3))  # −½ln¼ − ½ln¾ = KL + H(p) = KL + ln 2
    assert close(divergence_loss(logits, ref, first, "kl"), kl)
    assert close(divergence_loss(logits, ref, first, "cross_entropy"), ce)
    assert close(ce - kl, LN2)
    p1 = torch.softmax(torch.tensor([5.0, 0.0]), 0)
    kl1 = float((p1 * (p1.log() - math.log(0.5))).sum())
    both = torch.tensor([[True, True]])
    assert close(divergence_loss(logits, ref, both, "kl"), (kl + kl1) / 2)
    assert close(divergence_loss(logits, logits, first, "kl"), 0.0)  # 0 at θ = ref
    assert close(divergence_loss(logits, logits, first, "cross_entropy"), LN2)  # = H(p)
    with pytest.raises(ValueError, match="cross_entropy"):
        divergence_loss(logits, ref, first, "kll")


# --------------------------------------------------------------------------- on a model


def forget_batch(data: UnlearnData) -> tuple[torch.Tensor, torch.Tensor]:
    return data.forget_ids, data.continuation_mask()


def param_grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters()]
    return list(torch.autograd.grad(loss, params, allow_unused=False))


def test_npo_gradient_on_a_model_reduces_to_ga_and_to_its_weighted_form() -> None:
    model = make_model("gpt2")
    ref = copy.deepcopy(model)
    ids, mask = forget_batch(padded_data())
    ga = build_method("ga").forget_term(model, None, ids, mask)
    # At θ = ref (Δ = 0) RESTOR's batch-mean NPO has exactly GA's gradient.
    npo = build_method("npo", ["ratio=batch_mean"]).forget_term(model, ref, ids, mask)
    assert close(npo, 20 * LN2, 1e-5)
    for g_npo, g_ga in zip(param_grads(model, npo), param_grads(model, ga), strict=True):
        assert torch.allclose(g_npo, g_ga, atol=1e-7, rtol=1e-5)
    # Away from the reference: ∇L = (2/B)·Σ_i σ(β·Δ_i)·∇log π_θ(y_i), per sequence.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = build_method("npo", ["beta=0.5"])
    seq = reduce_logprobs(token_logprobs(model, ids, mask), mask, "sequence")  # [B]
    ref_seq = reduce_logprobs(token_logprobs(ref, ids, mask), mask, "sequence").detach()
    weights = 2 / len(seq) * torch.sigmoid(0.5 * (seq - ref_seq)).detach()
    assert not torch.allclose(weights, weights[0].expand_as(weights))  # the weights differ
    expected = param_grads(model, (weights * seq).sum())
    got = param_grads(model, method.forget_term(model, ref, ids, mask))
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


def test_first_loss_scores_only_the_continuation_and_skips_padding() -> None:
    model = make_model("gpt2")
    data = padded_data(n_retain=1)  # one retain row: the random pairing must pick it
    keep_f = data.continuation_mask()
    assert keep_f.sum() < (data.forget_ids[:, 1:] != 1).sum()  # prefix targets are excluded
    nll_f = manual_nll(model, data.forget_ids, keep_f)
    retain = data.retain_ids.expand(8, -1)
    nll_r = manual_nll(model, retain, retain[:, 1:] != 1)
    ga = build_method("ga", ["batch_size=8", "max_steps=1"]).apply(model, data)
    assert close(ga.losses[0], -nll_f, 1e-5)
    gd = build_method("grad_diff", ["batch_size=8", "max_steps=1", "retain_weight=0.3"])
    assert close(gd.apply(model, data).losses[0], -nll_f + 0.3 * nll_r, 1e-5)
    tv = build_method("task_vector", ["batch_size=8", "max_steps=1"]).apply(model, data)
    assert close(tv.losses[0], nll_f, 1e-5)


def test_ga_step_raises_forget_nll_and_grad_diff_protects_retain() -> None:
    model = make_model("llama")
    data = tiny_data()
    keep_f, keep_r = data.continuation_mask(), torch.ones(16, 11, dtype=torch.bool)
    f0, r0 = manual_nll(model, data.forget_ids, keep_f), manual_nll(model, data.retain_ids, keep_r)
    one = build_method("ga", ["lr=1e-3", "max_steps=1"]).apply(model, data).model
    assert manual_nll(one, data.forget_ids, keep_f) > f0 + 1e-3
    opts = ["lr=3e-3", "epochs=20", "batch_size=4"]
    ga = build_method("ga", opts).apply(model, data).model
    gd = build_method("grad_diff", [*opts, "retain_weight=3"]).apply(model, data).model
    assert manual_nll(gd, data.forget_ids, keep_f) > f0 + 0.1
    r_ga, r_gd = manual_nll(ga, data.retain_ids, keep_r), manual_nll(gd, data.retain_ids, keep_r)
    assert r_gd < r_ga and r_gd < r0 + 0.5 * (r_ga - r0)


def test_kl_is_zero_at_the_reference_and_its_divergences_differ() -> None:
    model = make_model("gpt_neox")
    ref = copy.deepcopy(model)
    ids, mask = forget_batch(tiny_data())
    kl = build_method("kl").forget_term(model, ref, ids, mask)
    ce = build_method("kl", ["divergence=cross_entropy", "forget_weight=2"])
    ce_term = ce.forget_term(model, ref, ids, mask)
    assert close(kl, 0.0, 1e-6)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).logits, -1)
        entropy = float(-(logp.exp() * logp).sum(-1)[mask].mean())
    assert close(ce_term, -2 * entropy, 1e-4)  # −γ_f·(KL + H) with KL = 0
    data = tiny_data()
    runs = [
        build_method("kl", [d, "lr=1e-3"]).apply(model, data).model
        for d in ("divergence=kl", "divergence=cross_entropy")
    ]
    assert not torch.equal(runs[0].lm_head.weight.detach(), runs[1].lm_head.weight.detach())


def test_task_vector_arithmetic_is_exact() -> None:
    model = make_model("gpt2")
    data = tiny_data()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opts = ["lr=1e-3", "epochs=3", "batch_size=2"]
    zero = build_method("task_vector", [*opts, "alpha=0"]).apply(model, data)
    assert all(torch.equal(zero.model.state_dict()[k], v) for k, v in start.items())
    assert zero.changed_count == 0
    tuned = build_method("task_vector", [*opts, "alpha=-1"]).apply(model, data).model  # θ*
    keep = data.continuation_mask()
    assert manual_nll(tuned, data.forget_ids, keep) < manual_nll(model, data.forget_ids, keep)
    one = build_method("task_vector", opts).apply(model, data).model.state_dict()
    star = tuned.state_dict()
    moved = 0
    for key, theta_c in start.items():
        assert torch.equal(one[key], 2 * theta_c - star[key]), key
        moved += int((star[key] != theta_c).sum())
    assert moved > 0


# --------------------------------------------------------------------------- tiny TinyMem run


def retain_mask(data: UnlearnData) -> torch.Tensor:
    return data.retain_ids[:, 1:] != data.pad_id


@pytest.mark.parametrize(
    ("name", "options"),
    [(n, []) for n in NAMES if n != "kl"] + [("kl", ["divergence=cross_entropy"])],
)
def test_default_run_raises_forget_nll_more_than_retain_nll(tiny_run, name, options) -> None:
    # True KL (kl's default) has zero gradient at the start, so its forget term is checked
    # through RESTOR's cross-entropy; measured: forget NLL 0.0441 -> ~0.047, retain +1e-4.
    model, run = tiny_run.model, tiny_run.data
    data, _ = tinymem_unlearn_data(model, run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = build_method(name, options).apply(model, data)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    keep_f, keep_r = data.continuation_mask(), retain_mask(data)
    d_f = manual_nll(result.model, data.forget_ids, keep_f) - manual_nll(
        model, data.forget_ids, keep_f
    )
    d_r = manual_nll(result.model, data.retain_ids, keep_r) - manual_nll(
        model, data.retain_ids, keep_r
    )
    assert d_f > 1e-3 and abs(d_r) < 0.2 * d_f


@pytest.mark.parametrize(
    ("name", "options"),
    [
        # Measured on the fixture (its weights depend on the thread count): 10 -> 0-3
        # memorized, accuracy 0.897 -> 0.85-0.87.
        ("ga", ["lr=2e-4"]),
        ("grad_diff", ["lr=3e-4"]),
        ("kl", ["lr=3e-4", "epochs=10", "retain_weight=3"]),
        ("npo", ["lr=1.5e-4"]),
        ("simnpo", ["lr=3e-4"]),
        ("task_vector", ["lr=1e-3"]),
    ],
)
def test_lowers_memorization_on_tiny_run(tiny_run, name, options) -> None:
    data, _ = tinymem_unlearn_data(tiny_run.model, tiny_run.data)
    before = evaluate(tiny_run.model, tiny_run.data)
    after = evaluate(build_method(name, options).apply(tiny_run.model, data).model, tiny_run.data)
    assert before["n_memorized"] >= 3
    assert after["n_memorized"] <= before["n_memorized"] // 2
    assert after["accuracy"] > before["accuracy"] - 0.06


# --------------------------------------------------------------------------- config and data


@pytest.mark.parametrize(
    ("name", "option", "match"),
    [
        ("ga", "lr=0", "lr"),
        ("ga", "lr=nan", "lr"),
        ("grad_diff", "epochs=0", "epochs"),
        ("npo", "batch_size=0", "batch_size"),
        ("simnpo", "weight_decay=-0.1", "weight_decay"),
        ("ga", "max_steps=0", "max_steps"),
        ("grad_diff", "retain_weight=-1", "retain_weight"),
        ("npo", "beta=0", "beta"),
        ("simnpo", "beta=-2.5", "beta"),
        ("npo", "ratio=tokens", "token_mean"),
        ("simnpo", "margin=inf", "margin"),
        ("kl", "divergence=kll", "kl"),
        ("kl", "forget_weight=0", "forget_weight"),
        ("kl", "retain_weight=0", "cross_entropy"),
        ("task_vector", "alpha=nan", "alpha"),
    ],
)
def test_bad_config_values_are_rejected(name: str, option: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_method(name, [option])


@pytest.mark.parametrize("name", ["grad_diff", "kl", "npo", "simnpo"])
def test_retain_term_needs_a_retain_set(name: str) -> None:
    data = tiny_data()
    empty = UnlearnData(data.forget_ids, data.retain_ids[:0])
    with pytest.raises(ValueError, match="retain set"):
        build_method(name).apply(make_model("gpt2"), empty)
    if name != "kl":
        build_method(name, ["retain_weight=0"]).apply(make_model("gpt2"), empty)


def test_ga_and_task_vector_need_no_retain_and_max_steps_caps() -> None:
    data = tiny_data()
    empty = UnlearnData(data.forget_ids, data.retain_ids[:0])
    for name in ("ga", "task_vector"):
        result = build_method(name, ["batch_size=1", "max_steps=7"]).apply(
            make_model("gpt2"), empty
        )
        assert len(result.losses) == 7 and result.info["steps"] == 7
        assert result.info["warmup_steps"] == 1


def test_methods_are_registered_documented_and_write_their_loss() -> None:
    for name in NAMES:
        cls = METHODS.get(name)
        assert cls.family == "gradient" and cls.paper
        assert "L =" in cls.__doc__ or "θ =" in cls.__doc__
        assert "arXiv" in cls.__doc__
