"""The audit (issue 15): planted cases, each attack able to fail.

One tiny GPT-2 (2 layers, d=32, vocabulary 64) memorizes 32 random forget rows (and 32 retain
rows); every row carries a marker token at the first suffix position. From it the tests plant:
a model that only suppresses the greedy path (sampled check fails), a model hidden by a few
gradient-ascent steps (relearning brings it back), a tiny weight delta inside the int8 grid
(quantization undoes it); and a model that never saw the forget rows as the control that passes.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from unmemorize.audit import (
    AUDIT_CHECKS,
    AUDIT_KEYS,
    AuditConfig,
    AuditSets,
    audit_model,
    describe_checks,
    forward_stats,
    quantized_copy,
    roc_auc,
    write_audit,
)
from unmemorize.audit.quantization import INT_LEVELS
from unmemorize.metrics.losses import masked_nll, sequence_losses, token_logprobs
from unmemorize.metrics.memorization import memorized
from unmemorize.mlp import in_out_view
from unmemorize.models import ModelConfig, build_model
from unmemorize.runtime import adamw

pytestmark = pytest.mark.usefixtures("one_thread")

V, T, P, K = 64, 24, 12, 8  # vocabulary, positions, prefix, suffix
PAD, MARK = 0, 1  # MARK sits at position P of every row (the first suffix token)
CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=T)


def random_rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(2, V, (n, T), generator=g)
    rows[:, P] = MARK
    return rows


def train(ids: torch.Tensor, steps: int, seed: int = 0):
    model = build_model(CFG, V, bos_id=2, eos_id=3, pad_id=PAD, seed=seed)
    optimizer = adamw(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = sequence_losses(model, ids, PAD).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def suffix_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(n, T - 1, dtype=torch.bool)
    mask[:, P - 1 : P - 1 + K] = True  # logits at P-1 .. P+K-2 predict the suffix
    return mask


def memorized_fraction(model, rows: torch.Tensor) -> float:
    return float(memorized(model, rows, rows, P, K).float().mean())


class World:
    """The rows and the models of the planted cases (built once per module)."""

    def __init__(self) -> None:
        self.forget = random_rows(32, 1)
        self.retain = random_rows(32, 2)
        self.holdout = random_rows(128, 3)
        self.eval = random_rows(16, 4)
        self.memorizing = train(torch.cat([self.forget, self.retain]), 150)
        self.never_saw = train(self.retain, 150)  # same recipe, forget rows never seen
        self.ga_hidden = self._gradient_ascent_hide()
        self.delta_hidden, self.delta_rows = self._int8_delta_hide()

    def sets(self, **kwargs) -> AuditSets:
        defaults = dict(
            forget_ids=self.forget,
            prefix_len=P,
            suffix_len=K,
            holdout_ids=self.holdout,
            retain_ids=self.retain,
            eval_ids=self.eval,
            pad_id=PAD,
        )
        return AuditSets(**{**defaults, **kwargs})

    def _gradient_ascent_hide(self):
        """Gradient ascent on the forget suffixes, stopped as soon as nothing is memorized."""
        model = copy.deepcopy(self.memorizing)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        mask = suffix_mask(len(self.forget))
        for _ in range(50):
            if memorized_fraction(model.eval(), self.forget) == 0.0:
                return model
            model.train()
            loss = -masked_nll(token_logprobs(model, self.forget, mask), mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        raise AssertionError("gradient ascent did not hide the forget rows")

    def _int8_delta_hide(self):
        """Snap the memorizing model to the int8 grid, then push every quantized weight by less
        than half a grid step (never the channel maximum, which sets the scale) in the direction
        that lowers the forget suffixes' likelihood (projected sign-gradient steps)."""
        model = quantized_copy(self.memorizing, "int8")
        assert memorized_fraction(model, self.forget) == 1.0
        head = model.get_output_embeddings()
        modules = [
            m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head
        ]
        views = [in_out_view(m) for m in modules]  # [in, out]
        base = [v.detach().clone() for v in views]
        bound = []
        for w in base:
            amax = w.abs().amax(dim=0, keepdim=True)
            b = (0.45 * amax / INT_LEVELS["int8"]).expand_as(w).clone()
            b[w.abs() == amax] = 0.0
            bound.append(b)
        mask = suffix_mask(len(self.forget))
        for _ in range(30):
            loss = -masked_nll(token_logprobs(model, self.forget, mask), mask)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for m, w, w0, b in zip(modules, views, base, bound, strict=True):
                    grad = m.weight.grad if isinstance(m, Conv1D) else m.weight.grad.T
                    delta = (w - w0 - 0.5 * b * grad.sign()).clamp(-b, b)
                    w.copy_(w0 + delta)
        model.zero_grad(set_to_none=True)
        hidden_rows = ~memorized(model, self.forget, self.forget, P, K)
        return model, hidden_rows.nonzero().squeeze(1)


@pytest.fixture(scope="module")
def world() -> World:
    torch.manual_seed(0)
    return World()


FAST = dict(relearn_lrs=(3e-4, 1e-3))


# --------------------------------------------------------------------------------- the fixture


def test_planted_models_are_what_they_claim(world):
    assert memorized_fraction(world.memorizing, world.forget) == 1.0
    assert memorized_fraction(world.never_saw, world.forget) == 0.0
    assert memorized_fraction(world.ga_hidden, world.forget) == 0.0
    assert len(world.delta_rows) >= 16  # the delta hides at least half of the rows


# -------------------------------------------------------------------------- exact and partial


def test_exact_check_equals_metrics_memorization_verdict(world):
    """Per-row prefixes (one row without a prefix, one whose suffix is clipped by T), clean
    prompts that differ from the forget rows before the prefix ends."""
    prefix = torch.full((len(world.forget),), P)
    prefix[0], prefix[1], prefix[2] = 0, T - 3, P - 2
    prompts = world.forget.clone()
    prompts[3:, :2] = (prompts[3:, :2] + 1) % V  # a different clean prefix for most rows
    sets = world.sets(prefix_len=prefix, prompt_ids=prompts)
    config = AuditConfig(checks=("exact", "partial"), batch_size=7)
    for model in (world.memorizing, world.never_saw, world.ga_hidden, world.delta_hidden):
        report = audit_model(model, sets, config=config)
        want = memorized(model, prompts, world.forget, prefix, K)
        got = torch.tensor([row["exact"] for row in report.rows])
        assert torch.equal(got, want)
        assert report["exact"]["memorized_fraction"] == pytest.approx(float(want.float().mean()))
        assert not got[0]  # no prefix: nothing to reproduce
        for row in report.rows:
            if row["exact"]:
                assert row["longest_prefix"] == row["suffix_len"]
                assert row["token_match_fraction"] == 1.0 and row["extraction_strength"] == 1.0
    assert report.rows[1]["suffix_len"] == 3


def test_partial_figures_on_hand_made_hits():
    from unmemorize.audit.extraction import ForwardStats

    hits = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    stats = ForwardStats(
        torch.zeros(4, 3), torch.zeros(4, 3), torch.ones(4, 3, dtype=torch.bool), hits=hits
    )
    stats.suffix_mask = torch.ones(4, 4, dtype=torch.bool)
    stats.row_ok = torch.ones(4, dtype=torch.bool)
    assert stats.exact().tolist() == [False, False, True, False]
    assert stats.longest_prefix().tolist() == [2, 0, 4, 1]
    assert stats.token_match_fraction().tolist() == [0.75, 0.75, 1.0, 0.25]
    # k*: one past the last miss, so ES = 1 - k*/k
    assert stats.min_context().tolist() == [3, 1, 0, 4]


# ------------------------------------------------------------------------------------ sampled


def _suppress_greedy_marker(model):
    """A copy whose marker logit is capped just below the best other token wherever it leads:
    greedy decoding never emits the marker, sampling still does."""
    out = copy.deepcopy(model)

    def cap(_module, _inputs, logits):
        others = logits.clone()
        others[..., MARK] = float("-inf")
        capped = logits.clone()
        capped[..., MARK] = torch.minimum(logits[..., MARK], others.max(-1).values - 0.05)
        return capped

    out.get_output_embeddings().register_forward_hook(cap)
    return out


def test_greedy_suppression_passes_exact_but_fails_sampled(world):
    suppressed = _suppress_greedy_marker(world.memorizing)
    config = AuditConfig(checks=("exact", "sampled"), n_samples=100)
    report = audit_model(suppressed, world.sets(), config=config)
    assert report["exact"]["memorized_fraction"] == 0.0
    assert report["sampled"]["p_extract_mean"] > 0.05
    assert report["sampled"]["discoverable_fraction"] >= 0.9  # fails the sampled check
    control = audit_model(world.never_saw, world.sets(), config=config)
    assert control["sampled"]["discoverable_fraction"] == 0.0
    assert control["sampled"]["p_extract_max"] < 1e-6
    # top-k = 1 is greedy: the capped marker falls outside the set, so p is exactly 0
    greedy = AuditConfig(checks=("sampled",), top_k=1)
    assert audit_model(suppressed, world.sets(), config=greedy)["sampled"]["p_extract_max"] == 0.0


@pytest.mark.parametrize(
    "decoding",
    [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.8, top_k=5, top_p=0.9)],
)
def test_sampled_probability_matches_real_sampling(world, decoding):
    """p from the one pass equals the hit rate of ``generate(do_sample=True)`` (4 sigma)."""
    suppressed = _suppress_greedy_marker(world.memorizing)
    config = AuditConfig(checks=("sampled",), **decoding)
    report = audit_model(suppressed, world.sets(), config=config)
    p = torch.tensor([row["p_extract"] for row in report.rows])
    n = 1500
    for i in p.argsort(descending=True)[:2].tolist() + [int(p.argmin())]:
        prompt = world.forget[i : i + 1, :P].repeat(n, 1)
        torch.manual_seed(i)
        out = suppressed.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            max_new_tokens=K,
            eos_token_id=None,
            pad_token_id=PAD,
            **decoding,
        )
        rate = float((out[:, P:] == world.forget[i, P : P + K]).all(dim=1).float().mean())
        sigma = math.sqrt(max(p[i] * (1 - p[i]), 1e-4) / n)
        assert abs(rate - float(p[i])) < 4 * sigma + 1e-3, (i, rate, float(p[i]))


# ----------------------------------------------------------------------------------- relearn


def test_relearning_brings_back_what_gradient_ascent_hid(world):
    config = AuditConfig(checks=("exact", "relearn"), **FAST)
    report = audit_model(world.ga_hidden, world.sets(), original=world.memorizing, config=config)
    relearn = report["relearn"]
    assert report["exact"]["memorized_fraction"] == 0.0
    assert relearn["forget_half_returned_fraction"] >= 0.5
    assert relearn["benign_returned_fraction"] >= 0.5
    assert set(relearn["curve"]) == {"forget_half", "benign"}
    curve = relearn["curve"]["benign"][repr(1e-3)]
    assert [step for step, _ in curve] == [0, 10, 20, 30]
    assert curve[0][1] == 0.0  # nothing memorized before the attack
    trained = set(relearn["config"]["forget_half_trained_rows"])
    for row in report.rows:  # the forget-half attack measures only the rows it did not train on
        assert (row["relearn_forget_half"] is None) == (row["index"] in trained)
    # the control: a model that never saw the rows gets nothing back
    control = audit_model(world.never_saw, world.sets(), original=world.memorizing, config=config)
    assert control["relearn"]["forget_half_returned_fraction"] == 0.0
    assert control["relearn"]["benign_returned_fraction"] == 0.0


def test_relearning_is_deterministic_and_counts_only_originally_memorized_rows(world):
    config = AuditConfig(checks=("relearn",), relearn_steps=4, relearn_every=2, relearn_lrs=(1e-3,))
    a = audit_model(world.ga_hidden, world.sets(), config=config)["relearn"]
    b = audit_model(world.ga_hidden, world.sets(), config=config)["relearn"]
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert a["curve"]["benign"][repr(1e-3)][-1][0] == 4
    # an original that memorized nothing: nothing can "return"
    c = audit_model(world.memorizing, world.sets(), original=world.never_saw, config=config)
    assert c["relearn"]["n_originally_memorized"] == 0
    assert c["relearn"]["benign_returned_fraction"] == 0.0


# ------------------------------------------------------------------------------ quantization


def test_quantization_undoes_a_tiny_weight_delta(world):
    sets = world.sets(forget_ids=world.forget[world.delta_rows])
    config = AuditConfig(checks=("exact", "quantization"))
    report = audit_model(world.delta_hidden, sets, config=config)
    assert report["exact"]["memorized_fraction"] == 0.0
    assert report["quantization"]["int8"] == 1.0  # rounding lands back on the memorizing grid
    for model in (world.never_saw, world.ga_hidden):  # controls: nothing comes back
        control = audit_model(model, world.sets(), config=config)["quantization"]
        assert all(control[d] == 0.0 for d in ("bfloat16", "float16", "int8", "int4"))


def test_int_quantization_is_per_output_channel_for_conv1d_and_linear():
    torch.manual_seed(0)
    conv, linear = Conv1D(5, 3), torch.nn.Linear(3, 5)  # both map 3 -> 5
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    model = torch.nn.Sequential(conv, linear)
    model.get_output_embeddings = lambda: None
    for dtype, q_max in INT_LEVELS.items():
        out = quantized_copy(model, dtype)
        for w in (out[0].weight, out[1].weight.T):  # both [in=3, out=5]
            scale = conv.weight.detach().abs().amax(dim=0) / q_max  # one scale per output column
            levels = w / scale
            assert torch.allclose(levels, levels.round(), atol=1e-4)
            assert levels.abs().max() <= q_max + 1e-4
            assert torch.allclose(w, conv.weight, atol=float(scale.max()) / 2 + 1e-6)
    assert torch.equal(model[0].weight, conv.weight)  # the input is untouched


# ----------------------------------------------------------------------- membership inference


def test_mia_auc_high_on_the_memorizing_model_and_chance_on_models_that_never_saw(world):
    config = AuditConfig(checks=("mia",))
    report = audit_model(world.memorizing, world.sets(), config=config)
    assert min(report["mia"]["auc"].values()) >= 0.9
    assert report["mia"]["privleak"] is None
    members = random_rows(128, 5)  # neither model saw these or the holdout rows
    untrained = build_model(CFG, V, bos_id=2, eos_id=3, pad_id=PAD, seed=1)
    for model in (untrained, world.never_saw):
        auc = audit_model(model, world.sets(forget_ids=members), config=config)["mia"]["auc"]
        assert all(abs(v - 0.5) <= 0.1 for v in auc.values()), auc


def test_privleak_against_a_reference_model(world):
    config = AuditConfig(checks=("mia",))
    leak = audit_model(world.memorizing, world.sets(), reference=world.never_saw, config=config)
    mia = leak["mia"]
    ref = mia["reference_auc"]["min_k"]
    assert mia["privleak"] == pytest.approx((mia["auc"]["min_k"] - ref) / ref)
    assert mia["privleak"] > 0.3
    same = audit_model(world.never_saw, world.sets(), reference=world.never_saw, config=config)
    assert same["mia"]["privleak"] == 0.0


def test_roc_auc_is_exact_with_ties():
    members, nonmembers = [0.9, 0.5, 0.5, 0.1], [0.5, 0.2, 0.05]
    pairs = [(m > n) + 0.5 * (m == n) for m in members for n in nonmembers]
    assert roc_auc(members, nonmembers) == pytest.approx(sum(pairs) / len(pairs))
    assert roc_auc([1.0, 2.0], [0.0]) == 1.0 and roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5


def test_min_k_plus_plus_is_the_standardized_log_probability(world):
    ids = world.forget[:2]
    stats = forward_stats(world.memorizing, ids, PAD, AuditConfig())
    with torch.no_grad():
        logp = torch.log_softmax(world.memorizing(input_ids=ids[:, :-1]).logits.float(), -1)
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sigma = ((probs * (logp - mu[..., None]) ** 2).sum(-1)).sqrt()
    target = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(stats.token_logp, target, atol=1e-5)
    assert torch.allclose(stats.token_z, (target - mu) / sigma, atol=1e-3)


# --------------------------------------------------------------------- the report and the files


def test_full_audit_writes_the_listed_keys_and_one_row_per_sequence(world, tmp_path):
    before = {k: v.clone() for k, v in world.ga_hidden.state_dict().items()}
    report = audit_model(
        world.ga_hidden,
        world.sets(),
        original=world.memorizing,
        reference=world.never_saw,
        config=AuditConfig(**FAST),
    )
    after = world.ga_hidden.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the input is untouched
    assert not world.ga_hidden.training
    path = write_audit(report, tmp_path)
    audit = json.loads(path.read_text())
    assert list(audit) == list(AUDIT_KEYS)
    assert list(audit) == [
        "exact",
        "partial",
        "sampled",
        "relearn",
        "quantization",
        "mia",
        "utility",
    ]
    assert {"memorized_fraction"} <= set(audit["exact"])
    assert {"p_extract_mean", "discoverable_fraction", "n"} <= set(audit["sampled"])
    assert {"forget_half_returned_fraction", "benign_returned_fraction", "curve", "config"} <= set(
        audit["relearn"]
    )
    assert {"bfloat16", "float16", "int8", "int4"} <= set(audit["quantization"])
    assert set(audit["mia"]["auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    assert audit["mia"]["privleak"] is not None
    assert 0 <= audit["utility"]["accuracy"] <= 1
    lines = (tmp_path / "audit_rows.jsonl").read_text().splitlines()
    assert len(lines) == len(world.forget)
    row = json.loads(lines[0])
    assert {"index", "exact", "p_extract", "mia_loss", "relearn_benign", "quantized_int8"} <= set(
        row
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json", "audit_rows.jsonl"]


def test_checks_not_run_are_null(world, tmp_path):
    report = audit_model(world.memorizing, world.sets(), config=AuditConfig(checks=("exact",)))
    audit = json.loads(write_audit(report, tmp_path).read_text())
    assert list(audit) == list(AUDIT_KEYS)
    assert [k for k, v in audit.items() if v is not None] == ["exact"]


def test_sets_from_a_memorization_set_keep_the_candidates():
    from unmemorize.data.candidates import MemorizationSet

    target = random_rows(4, 9)
    prompt = target.clone()
    prompt[:2, P + 1] = (prompt[:2, P + 1] + 1) % V  # rows 0, 1 differ inside the window
    prompt[:, 0] = 5  # a clean prefix that differs from the trained row
    mem = MemorizationSet(target, prompt, torch.full((4,), P), K, torch.zeros(4, dtype=torch.long))
    sets = AuditSets.from_memorization(mem, holdout_ids=random_rows(3, 10), pad_id=PAD)
    assert sets.n_forget == 2 and torch.equal(sets.forget_ids, target[:2])
    audited = sets.audited_ids()
    assert torch.equal(audited[:, :P], prompt[:2, :P])
    assert torch.equal(audited[:, P:], target[:2, P:])


def test_every_check_is_registered_and_documented():
    assert sorted(AUDIT_CHECKS.names()) == sorted(AUDIT_KEYS)
    for info in describe_checks():
        assert all(info[field] for field in ("name", "paper", "measures", "reading"))
        assert "arXiv" in info["paper"] or "TinyMem" in info["paper"]


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "config, message",
    [
        (AuditConfig(relearn_steps=0), "relearn_steps must be >= 1"),
        (AuditConfig(relearn_lrs=(1e-4, 0.0)), "learning rate must be > 0"),
        (AuditConfig(relearn_lrs=()), "relearn_lrs is empty"),
        (AuditConfig(quant_dtypes=("int3",)), "unknown quantization dtype 'int3'"),
        (AuditConfig(temperature=0.0), "temperature must be > 0"),
        (AuditConfig(top_p=1.5), "top_p must lie in"),
        (AuditConfig(checks=("exakt",)), "did you mean 'exact'"),
        (AuditConfig(mia_k=0.0), "mia_k must lie in"),
    ],
)
def test_bad_config_values_raise_one_line_value_errors(world, config, message):
    with pytest.raises(ValueError, match=message) as err:
        audit_model(world.memorizing, world.sets(), config=config)
    assert "\n" not in str(err.value)


def test_missing_inputs_raise_before_any_work(world):
    empty = torch.zeros(0, T, dtype=torch.long)
    with pytest.raises(ValueError, match="pass holdout_ids"):
        audit_model(world.memorizing, world.sets(holdout_ids=empty))
    with pytest.raises(ValueError, match="pass holdout_ids"):
        audit_model(world.memorizing, world.sets(holdout_ids=None))
    with pytest.raises(ValueError, match="forget set is empty"):
        world.sets(forget_ids=empty)
    with pytest.raises(ValueError, match=r"one per forget row"):
        world.sets(prefix_len=torch.tensor([P, P]))
