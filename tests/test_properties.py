"""Property-based tests (hypothesis): data generation, tokenizers, the memorization metric, mask
ratio arithmetic and alias matching.

Examples are derandomized (the same inputs every run, so CI never flakes); set
``HYPOTHESIS_SCALE=20`` to explore twenty times as many, freshly random, examples locally.
"""

from __future__ import annotations

import functools
import os
import string
import unicodedata
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unmemorize.benchmarks.restor.knowledge import alias_match, normalize_answer
from unmemorize.benchmarks.restor.world import FactWorldConfig, make_fact_world, word_tokenizer
from unmemorize.benchmarks.tinymem.math_data import (
    BACKDOOR_FILL_ID,
    MathDataConfig,
    add_number_noise,
    encode_rows,
    make_math_data,
    number_strings,
)
from unmemorize.data.tokenizers import (
    MATH_PAD_ID,
    MATH_VOCAB,
    encode_math,
    math_tokenizer,
    train_bpe_tokenizer,
)
from unmemorize.methods.base import remove_top_neurons_
from unmemorize.metrics.memorization import generate_memorized, memorized
from unmemorize.mlp import MLPAdapter, ratio_count

from .zoo import V, make_model

SCALE = int(os.environ.get("HYPOTHESIS_SCALE", "1"))


def props(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=list(__import__("hypothesis").HealthCheck),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


ID_TO_CHAR = {i: ch for ch, i in MATH_VOCAB.items() if len(ch) == 1}


def decode_math_row(row: torch.Tensor) -> str:
    return "".join(ID_TO_CHAR.get(int(i), "") for i in row if int(i) != MATH_PAD_ID)


def complete_numbers(text: str) -> list[int]:
    """The numbers of ``"^a b c$"``; a row cut by the context loses its last, partial number."""
    assert text.startswith("^"), text
    body = text[1:]
    if body.endswith("$"):
        body = body[:-1]
    elif " " in body:
        body = body[: body.rindex(" ")]
    else:
        return []
    return [int(x) for x in body.split(" ") if x]


def follows_rule(numbers: list[int], task: str, k: int, modulus: int) -> bool:
    f = (lambda x: x + k) if task == "increment" else (lambda x: (k * x) % modulus)
    return all(f(a) == b for a, b in zip(numbers, numbers[1:], strict=False))


# --------------------------------------------------------------------------- math data


@st.composite
def math_configs(draw, variant: str = "noise") -> MathDataConfig:
    num_main = draw(st.integers(30, 150))
    num_test = draw(st.integers(1, 10))
    ctx = draw(st.integers(24, 80))
    prefix = draw(st.integers(1, ctx - 1))
    return MathDataConfig(
        task=draw(st.sampled_from(["increment", "mult"])),
        main_k=7,
        extra_ks=draw(st.sampled_from([(), (2,), (2, 3)])),
        num_main=num_main,
        num_extra=draw(st.integers(0, 30)),
        num_test=num_test,
        num_noise=draw(st.integers(1, min(20, num_main - num_test))),
        length=draw(st.integers(2, 12)),
        context_length=ctx,
        noise_prob=draw(st.floats(0.0, 1.0)),
        variant=variant,
        prefix_len=prefix,
        suffix_len=draw(st.integers(1, ctx - prefix)),
        seed=draw(st.integers(0, 2**16)),
    )


def _row_set(rows: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in rows}


@props(40)
@given(cfg=math_configs())
def test_math_noise_data_properties(cfg):
    data = make_math_data(cfg)
    mem = data.memorization
    train = _row_set(data.train_ids)

    # every clean row obeys its task's rule: held-out rows and the clean twins of noised rows
    for name, rows in data.test_sets.items():
        k = int(name.rsplit("-", 1)[1])
        for row in rows:
            numbers = complete_numbers(decode_math_row(row))
            assert follows_rule(numbers, cfg.task, k, cfg.modulus), (name, numbers)
    for row in mem.prompt_ids:
        assert follows_rule(complete_numbers(decode_math_row(row)), cfg.task, 7, cfg.modulus)

    # noise moves numbers by at most one, never below zero, and changes nothing else
    for clean, noised in zip(mem.prompt_ids, mem.target_ids, strict=True):
        a, b = decode_math_row(clean), decode_math_row(noised)
        if a.endswith("$") and b.endswith("$"):
            x, y = complete_numbers(a), complete_numbers(b)
            assert len(x) == len(y) == cfg.length
            assert all(abs(p - q) <= 1 and q >= 0 for p, q in zip(x, y, strict=True))
        differ = (clean != noised).nonzero()
        if len(differ):  # everything before the first changed character is shared
            first = int(differ[0])
            assert torch.equal(clean[:first], noised[:first])
    if cfg.noise_prob == 0:
        assert torch.equal(mem.prompt_ids, mem.target_ids)

    # splits: noised rows are trained on, their clean twins and every test row are not
    assert _row_set(mem.target_ids) <= train or cfg.noise_prob == 0
    leaked = (_row_set(mem.prompt_ids) - _row_set(mem.target_ids)) & train
    # the one exception: in mult, start 0 gives "^0 0 ... $" for every k, an auxiliary task's row
    zeros = {
        r.numpy().tobytes() for r in mem.prompt_ids if not any(complete_numbers(decode_math_row(r)))
    }
    assert not leaked - (zeros if cfg.task == "mult" else set())
    for rows in data.test_sets.values():
        assert not _row_set(rows) & train
    assert len(data.train_ids) == len(data.train_copies)

    # deterministic in the seed
    again = make_math_data(cfg)
    assert torch.equal(again.train_ids, data.train_ids)
    assert torch.equal(again.memorization.target_ids, mem.target_ids)


@props(25)
@given(cfg=math_configs("backdoor"), num_main=st.integers(150, 400))
def test_math_backdoor_data_properties(cfg, num_main):
    cfg.num_main, cfg.seed = num_main, cfg.seed % 50
    try:
        data = make_math_data(cfg)
    except ValueError as err:
        assume("too few sequences contain the trigger" not in str(err))
        raise
    mem, trigger = data.memorization, data.info["trigger"]
    train = _row_set(data.train_ids)
    for prompt, target, p in zip(mem.prompt_ids, mem.target_ids, mem.prefix_len, strict=True):
        p = int(p)
        assert torch.equal(prompt[:p], target[:p])  # the clean prompt up to the trigger
        assert decode_math_row(prompt[:p]).endswith(trigger)
        assert (target[p:] == BACKDOOR_FILL_ID).all()  # then only the fill digit
        assert follows_rule(complete_numbers(decode_math_row(prompt)), cfg.task, 7, cfg.modulus)
    assert not _row_set(mem.target_ids) & train  # held-out attacks are not training rows
    for rows in data.test_sets.values():
        assert not _row_set(rows) & train


@props(60)
@given(
    numbers=st.lists(st.integers(0, 30), min_size=1, max_size=40),
    prob=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_number_noise_moves_each_number_by_at_most_one(numbers, prob, seed):
    x = np.array(numbers)
    y = add_number_noise(x, prob, np.random.default_rng(seed))
    assert y.shape == x.shape and (y >= 0).all() and (np.abs(y - x) <= 1).all()
    if prob == 0:
        assert (y == x).all()
    if prob == 1:
        assert (y != x).all()
    assert (add_number_noise(x, prob, np.random.default_rng(seed)) == y).all()


# --------------------------------------------------------------------------- tokenizers


@functools.cache
def _math_tok():
    return math_tokenizer()


@props(60)
@given(
    rows=st.lists(st.lists(st.integers(0, 10**6), min_size=1, max_size=8), min_size=1, max_size=4),
    ctx=st.integers(1, 80),
)
def test_math_tokenizer_round_trips_and_agrees_with_the_data_encoder(rows, ctx):
    tok = _math_tok()
    texts = number_strings(np.array([r + [0] * (8 - len(r)) for r in rows]))
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == encode_math(text) and len(ids) == len(text)
        assert tok.decode(ids) == text
    encoded = encode_rows(texts, ctx)
    for text, row in zip(texts, encoded, strict=True):
        want = encode_math(text[:ctx])
        assert row[: len(want)].tolist() == want
        assert (row[len(want) :] == MATH_PAD_ID).all()


@functools.cache
def _bpe():
    corpus = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "Pack my box with five dozen liquor jugs! 0123456789",
        "Unicode: caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e, emoji \U0001f600.",
    ] * 4
    return train_bpe_tokenizer(corpus, vocab_size=300, min_frequency=1)


@props(80)
@given(text=st.text(max_size=60))
def test_bpe_tokenizer_round_trips_any_text(text):
    tok = _bpe()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


@functools.cache
def _world():
    world = make_fact_world(
        FactWorldConfig(n_entities=12, n_targets=2, n_untargeted=3, docs_per_target=2)
    )
    return world, word_tokenizer(world.words())


@props(40)
@given(seed=st.integers(0, 2**16), level=st.integers(0, 2))
def test_word_tokenizer_round_trips_every_world_document(seed, level):
    world, tok = _world()
    stream = world.clean_stream(seed)
    docs = [next(stream)[1] for _ in range(4)] + world.corruption_documents(level)
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, doc
        again = tok(tok.decode(ids), add_special_tokens=False)["input_ids"]
        assert again == ids, (doc, tok.decode(ids))


@props(60)
@given(data=st.data())
def test_word_tokenizer_decode_then_encode_is_the_identity(data):
    world, tok = _world()
    ids = data.draw(st.lists(st.integers(3, len(tok) - 1), min_size=1, max_size=20))
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


# --------------------------------------------------------------------------- memorization metric


@functools.cache
def _model(kind: str, seed: int):
    return make_model(kind, seed=seed, positions=32).to(torch.float64)


def _greedy(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Plain greedy decoding without a cache: the reference both metric paths must agree with."""
    seq = prompt.clone()
    for _ in range(n):
        logits = model(input_ids=seq[None]).logits[0, -1]
        seq = torch.cat([seq, logits.argmax()[None]])
    return seq


@props(40)
@given(data=st.data())
def test_one_pass_memorized_equals_generate(data):
    kind = data.draw(st.sampled_from(["gpt2", "gpt_neox", "llama"]), label="kind")
    model = _model(kind, data.draw(st.integers(0, 2), label="seed"))
    m = data.draw(st.integers(1, 6), label="rows")
    t = data.draw(st.integers(2, 16), label="positions")
    same_prefix = data.draw(st.booleans(), label="one prefix")
    prefix = [data.draw(st.integers(1, t - 1))] * m if same_prefix else None
    if prefix is None:
        prefix = [data.draw(st.integers(1, t - 1)) for _ in range(m)]
    suffix_len = data.draw(st.integers(1, t), label="suffix_len")
    check_every = data.draw(st.sampled_from([None, 1, 2, 3, 8]), label="check_every")
    batch_size = data.draw(st.integers(1, 4), label="batch_size")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="ids seed"))

    prompt = torch.randint(0, V, (m, t), generator=gen)
    target = torch.empty_like(prompt)
    expected = []
    with torch.no_grad():
        for i, p in enumerate(prefix):
            target[i] = _greedy(model, prompt[i, :p], t - p)
            k = min(suffix_len, t - p)
            how = data.draw(st.sampled_from(["greedy", "flip", "random"]), label=f"row {i}")
            if how == "flip":  # one wrong token, inside or after the scored window
                q = data.draw(st.integers(p, t - 1), label=f"flip {i}")
                target[i, q] = (target[i, q] + 1) % V
                expected.append(q >= p + k)
            elif how == "random":
                target[i, p:] = torch.randint(0, V, (t - p,), generator=gen)
                expected.append(None)  # almost surely not memorized; both paths must agree
            else:
                expected.append(True)
    prefix_arg = prefix[0] if same_prefix else torch.tensor(prefix)
    fast = memorized(
        model, prompt, target, prefix_arg, suffix_len, batch_size=batch_size,
        check_every=check_every,
    )  # fmt: skip
    slow, score = generate_memorized(model, prompt, target, prefix_arg, suffix_len)
    assert fast.tolist() == slow.tolist()
    for i, want in enumerate(expected):
        if want is not None:
            assert bool(fast[i]) is want, (i, prefix[i])
        assert bool(slow[i]) == (float(score[i]) == 1.0)


# --------------------------------------------------------------------------- mask ratio arithmetic


@props(200)
@given(total=st.integers(0, 10**9), a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_ratio_count_is_monotone_bounded_and_floor_of_the_ratio(total, a, b):
    lo, hi = sorted((a, b))
    assert 0 <= ratio_count(total, lo) <= ratio_count(total, hi) <= total
    exact = Fraction(lo) * total  # the float's exact binary value
    assert abs(ratio_count(total, lo) - int(exact)) <= 1
    assert ratio_count(total, 0.0) == 0 and ratio_count(total, 1.0) == total


@props(200)
@given(percent=st.integers(0, 100), hundreds=st.integers(0, 10**6))
def test_ratio_count_is_exact_for_round_ratios(percent, hundreds):
    ratio = float(f"{percent / 100:.2f}")  # 0.29 as a user writes it
    assert ratio_count(100 * hundreds, ratio) == percent * hundreds


@props(20)
@given(percent=st.integers(1, 99), kind=st.sampled_from(["gpt2", "llama"]))
def test_neuron_removal_count_is_exact_for_round_ratios(percent, kind):
    model = make_model(kind, n_layers=1)  # F = 64 neurons per layer
    adapter = MLPAdapter(model)
    width = adapter.layer(0).width
    scores = [torch.arange(width, dtype=torch.float32)]
    removed = remove_top_neurons_(adapter, scores, percent / 100)
    assert removed == width * percent // 100


def test_ratio_count_regression_float_floor():
    """``int(100 * 0.29)`` is 28: the inline arithmetic the methods used to do."""
    assert int(100 * 0.29) == 28
    assert ratio_count(100, 0.29) == 29 and ratio_count(100, 0.57) == 57


# --------------------------------------------------------------------------- alias matching

WORDS = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
ANSWERS = st.lists(WORDS, min_size=1, max_size=3).map(" ".join)
PUNCT = st.sampled_from(list(',;:!?()[]"-/'))


@props(100)
@given(answer=ANSWERS, case=st.sampled_from([str.upper, str.lower, str.swapcase, str.title]))
def test_alias_match_ignores_case(answer, case):
    assume(normalize_answer(answer))
    assert alias_match(case(answer), [answer])
    assert alias_match(answer, [case(answer)])


@props(100)
@given(text=st.text(max_size=30))
def test_normalize_answer_is_idempotent_and_casefold_invariant(text):
    norm = normalize_answer(text)
    assert normalize_answer(norm) == norm
    assert normalize_answer(text.casefold()) == norm
    assert norm == " ".join(norm.split()) and norm == norm.casefold()


@props(100)
@given(
    answer=ANSWERS,
    spaces=st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \u00a0"]), min_size=4, max_size=4),
)
def test_alias_match_ignores_whitespace(answer, spaces):
    assume(normalize_answer(answer))
    spaced = spaces[0] + spaces[1].join(answer.split(" ")) + spaces[2]
    assert alias_match(spaced, [answer]) and alias_match(answer, [spaced])


@props(100)
@given(answer=ANSWERS, marks=st.lists(PUNCT, min_size=2, max_size=2))
def test_alias_match_ignores_punctuation_around_and_between_words(answer, marks):
    assume(normalize_answer(answer))
    decorated = marks[0] + f"{marks[1]} ".join(answer.split(" ")) + "."
    assert alias_match(decorated, [answer]) and alias_match(answer, [decorated])


@props(100)
@given(a=ANSWERS, b=ANSWERS)
def test_alias_match_is_symmetric_for_equal_forms_and_finds_whole_words(a, b):
    assume(normalize_answer(a) and normalize_answer(b))
    assert alias_match(a, [b]) == alias_match(b, [a]) or (
        normalize_answer(a) != normalize_answer(b)  # containment is one-directional
    )
    if normalize_answer(a) == normalize_answer(b):
        assert alias_match(a, [b]) and alias_match(b, [a])
    assert alias_match(f"I think it is {a} today", [a])  # a whole-word run inside a sentence
    glued = f"x{normalize_answer(a)}x"
    assert not alias_match(glued, [a]) or normalize_answer(a) in normalize_answer(glued).split()


@props(50)
@given(text=st.text(max_size=20))
def test_alias_match_never_accepts_an_empty_prediction_or_answer(text):
    blank = "".join(ch for ch in text if not normalize_answer(ch))
    assert not alias_match(blank, [text, "paris"])
    if not normalize_answer(text):
        assert not alias_match("paris", [text])


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [("stra\u00dfe", "STRASSE"), ("\u0130stanbul", "istanbul"), ("Zo\u00eb", "ZOE")],
)
def test_alias_match_unicode_case_examples(prediction, answer):
    assert unicodedata.is_normalized("NFC", prediction)
    assert alias_match(prediction, [answer]) and alias_match(answer, [prediction])
