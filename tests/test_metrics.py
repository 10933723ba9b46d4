"""The memorization metric (one pass == greedy generation) and the utility metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unmemorize.data.candidates import MemorizationSet
from unmemorize.metrics import (
    MemorizationReport,
    accuracy_and_perplexity,
    generate_memorized,
    measure_memorization,
    memorized,
)
from unmemorize.metrics.losses import sequence_losses
from unmemorize.models import ModelConfig, build_model

V, T, N = 14, 40, 48


@pytest.fixture(scope="module")
def memorizing():
    """A 2-layer model trained to memorize N random sequences (most of them verbatim)."""
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(0, 13, (N, T), generator=g)
    model = build_model(
        ModelConfig(n_layers=2, d_model=32, context_length=T), V, 10, 11, 13, seed=1
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(220):
        loss = sequence_losses(model, seqs, None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, seqs


def _mixed_targets(seqs: torch.Tensor, p: int, k: int) -> torch.Tensor:
    """Every third row gets one token changed, at varying depth inside the window [p, p + k)."""
    target = seqs.clone()
    for i in range(0, len(seqs), 3):
        pos = p + (i * 5) % k
        target[i, pos] = (target[i, pos] + 1) % 13
    return target


@pytest.mark.parametrize("p,k", [(8, 16), (16, 24), (20, 20)])
def test_one_pass_equals_greedy_generation(memorizing, p, k):
    model, seqs = memorizing
    target = _mixed_targets(seqs, p, k)
    gen_cached, score = generate_memorized(model, seqs, target, p, k, batch_size=16)
    gen_plain, _ = generate_memorized(model, seqs, target, p, k, batch_size=N, use_cache=False)
    assert torch.equal(gen_cached, gen_plain)
    for check_every in (None, 1, 4, 8, 100):
        for bs in (7, 64):
            one = memorized(model, seqs, target, p, k, batch_size=bs, check_every=check_every)
            assert torch.equal(one, gen_cached), (check_every, bs)
    # a mix of verdicts, or the comparison proves little
    assert 0 < int(gen_cached.sum()) < N
    assert not gen_cached[::3].any()  # perturbed rows cannot be reproduced...
    assert torch.all(score[gen_cached] == 1.0)  # ...and verbatim rows score 1
    assert torch.all(score[~gen_cached] < 1.0)


def test_generate_equals_manual_greedy_loop(memorizing):
    model, seqs = memorizing
    p, k = 12, 10
    verdict, score = generate_memorized(model, seqs[:6], seqs[:6], p, k)
    x = seqs[:6, :p]
    with torch.no_grad():
        for _ in range(k):
            nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)
            x = torch.cat([x, nxt], 1)
    manual = (x[:, p:] == seqs[:6, p : p + k]).all(1)
    assert torch.equal(verdict, manual)
    assert torch.allclose(score, (x[:, p:] == seqs[:6, p : p + k]).float().mean(1))


def test_per_row_prefix_lengths(memorizing):
    model, seqs = memorizing
    prefix = torch.tensor([4, 9, 15, 30, 37] * 9 + [4, 9, 15])
    target = _mixed_targets(seqs, 4, 3)
    one = memorized(model, seqs, target, prefix, 12)
    gen, _ = generate_memorized(model, seqs, target, prefix, 12)
    assert torch.equal(one, gen)
    # one row at a time gives the same verdicts
    for i in (0, 3, 4):
        alone = memorized(model, seqs[i : i + 1], target[i : i + 1], int(prefix[i]), 12)
        assert bool(alone[0]) == bool(one[i])


def test_clean_prefix_prompts_and_noised_target_is_scored(memorizing):
    """The prompt comes from prompt_ids; only target_ids is compared."""
    model, seqs = memorizing
    p, k = 16, 16
    verdict = memorized(model, seqs, seqs, p, k)
    garbage_prompt_tail = seqs.clone()
    garbage_prompt_tail[:, p:] = 0  # what follows the prompt in prompt_ids is never used
    assert torch.equal(memorized(model, garbage_prompt_tail, seqs, p, k), verdict)
    garbage_target_head = seqs.clone()
    garbage_target_head[:, :p] = 0  # the prefix of the target is never used
    assert torch.equal(memorized(model, seqs, garbage_target_head, p, k), verdict)


def test_report_counts_only_candidates_and_groups():
    verdict = torch.tensor([True, True, False, True, False, True])
    candidate = torch.tensor([True, False, True, True, True, True])
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    r = MemorizationReport(verdict, candidate, group)
    assert r.n_candidates == 5 and r.n_memorized == 3
    assert r.memorized_fraction == pytest.approx(0.6)
    assert r.per_group() == {"1": 0.5, "10": 0.5, "100": 1.0}
    assert r.memorized_indices().tolist() == [0, 3, 5]
    assert (
        MemorizationReport(verdict, torch.zeros(6, dtype=torch.bool), group).memorized_fraction
        == 0.0
    )


def test_measure_memorization_filters_window(memorizing):
    model, seqs = memorizing
    p, k = 16, 8
    target = seqs.clone()
    target[:10, p + k + 2] = (target[:10, p + k + 2] + 1) % 13  # noise outside the window
    target[10:20, p + 1] = (target[10:20, p + 1] + 1) % 13  # noise inside the window
    mem = MemorizationSet(target, seqs, torch.full((N,), p), k, torch.zeros(N, dtype=torch.long))
    report = measure_memorization(model, mem)
    assert report.candidate[10:20].all() and not report.candidate[:10].any()
    assert not report.candidate[20:].any()  # identical rows are no candidates
    assert report.n_candidates == 10 and report.n_memorized == 0


def test_accuracy_excludes_padding_and_perplexity_is_token_weighted():
    model = build_model(
        ModelConfig(n_layers=1, d_model=16, context_length=12), V, 10, 11, 13, seed=3
    )
    model.eval()
    ids = torch.randint(0, 13, (5, 12))
    ids[0, 6:] = 13  # padding tail
    ids[3, 9:] = 13
    acc, ppl = accuracy_and_perplexity(model, ids, pad_id=13, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits
    tgt = ids[:, 1:]
    keep = tgt != 13
    ce = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
    assert acc == pytest.approx(float((logits.argmax(-1) == tgt)[keep].float().mean()))
    assert ppl == pytest.approx(math.exp(float(ce[keep].mean())), rel=1e-5)
    legacy_acc, legacy_ppl = accuracy_and_perplexity(
        model, ids, pad_id=13, batch_size=2, legacy=True
    )
    batch_means = [
        float((logits[i : i + 2].argmax(-1) == tgt[i : i + 2]).float().mean()) for i in (0, 2, 4)
    ]
    assert legacy_acc == pytest.approx(sum(batch_means) / 3)
    assert legacy_ppl == pytest.approx(
        sum(math.exp(float(ce[i : i + 2].mean())) for i in (0, 2, 4)) / 3, rel=1e-5
    )
    assert legacy_acc != pytest.approx(acc)


def test_all_padding_is_an_error():
    model = build_model(ModelConfig(n_layers=1, d_model=16, context_length=8), V, 10, 11, 13)
    with pytest.raises(ValueError, match="padding"):
        accuracy_and_perplexity(model, torch.full((2, 8), 13), pad_id=13)
    with pytest.raises(ValueError, match="empty"):
        accuracy_and_perplexity(model, torch.zeros((0, 8), dtype=torch.long), pad_id=13)
