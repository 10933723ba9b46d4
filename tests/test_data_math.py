"""Tests of the TinyMem math data: sequences, tokens, noise, splits, backdoors, save/load."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections import Counter

import numpy as np
import pytest
import torch

from unmemorize.benchmarks.tinymem.data import TinyMemData, duplication_groups
from unmemorize.benchmarks.tinymem.math_data import (
    BACKDOOR_FILL_ID,
    MathDataConfig,
    add_number_noise,
    encode_rows,
    find_trigger,
    make_math_data,
    number_strings,
    task_numbers,
)
from unmemorize.data.candidates import MemorizationSet
from unmemorize.data.tokenizers import MATH_PAD_ID, MATH_VOCAB, encode_math, math_tokenizer
from unmemorize.registry import UnknownNameError

ID_TO_CHAR = {i: ch for ch, i in MATH_VOCAB.items() if len(ch) == 1}

# 600 main rows (500 train, 100 test, 100 of the train rows noised) + two extra tasks of 200 rows.
# Numbers stay below 1000, so a row is at most 80 characters and is never cut at 150.
SMALL = dict(
    num_main=600, num_extra=200, num_test=100, num_noise=100, extra_ks=(2, 3), context_length=150
)


def decode(row: torch.Tensor | list[int]) -> str:
    """Ids back to the "^a b c$" text (padding dropped)."""
    ids = row.tolist() if isinstance(row, torch.Tensor) else row
    return "".join(ID_TO_CHAR[i] for i in ids if i != MATH_PAD_ID)


def parse(row: torch.Tensor) -> list[int]:
    """A full (uncut) row back to its numbers."""
    text = decode(row)
    assert text[0] == "^" and text[-1] == "$", text
    return [int(x) for x in text[1:-1].split(" ")]


def rowset(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


@pytest.fixture(scope="module")
def noise_data() -> TinyMemData:
    return make_math_data(MathDataConfig(seed=0, **SMALL))


@pytest.fixture(scope="module")
def paper_noise_data() -> TinyMemData:
    # The paper's main task (20,000 rows, 1,000 noised, context 150); extra tasks left out for speed.
    return make_math_data(MathDataConfig(extra_ks=(), seed=0))


BACKDOOR = dict(num_main=3000, num_test=300, extra_ks=(), context_length=150)


@pytest.fixture(scope="module")
def backdoor_data() -> TinyMemData:
    return make_math_data(MathDataConfig(variant="backdoor", seed=0, **BACKDOOR))


# --------------------------------------------------------------------------- sequences and tokens


def test_increment_numbers_exact():
    got = task_numbers("increment", 7, 3, 5)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(
        got, [[7, 14, 21, 28, 35], [8, 15, 22, 29, 36], [9, 16, 23, 30, 37]]
    )


def test_mult_numbers_exact():
    got = task_numbers("mult", 7, 3001, 4)
    np.testing.assert_array_equal(got[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(got[1], [7, 49, 343, 2401])
    np.testing.assert_array_equal(got[2], [14, 98, 686, 4802])
    # 7·3000 = 21000 ≡ 866; 866·7 = 6062; 6062·7 = 42434 ≡ 2166; 2166·7 = 15162 (mod 20134).
    np.testing.assert_array_equal(got[3000], [866, 6062, 2166, 15162])


def test_mult_numbers_match_iteration_and_custom_modulus():
    got = task_numbers("mult", 3, 50, 6, modulus=101)
    for i in range(50):
        x, want = i, []
        for _ in range(6):
            x = 3 * x % 101
            want.append(x)
        assert got[i].tolist() == want


def test_number_strings_exact():
    assert number_strings(np.array([[7, 14, 21], [8, 15, 22]])) == ["^7 14 21$", "^8 15 22$"]


def test_encode_rows_pads_and_cuts():
    rows = encode_rows(["^7 14$", "^1$"], 10)
    assert rows.dtype == torch.int64
    assert rows.tolist() == [
        [10, 7, 12, 1, 4, 11, 13, 13, 13, 13],
        [10, 1, 11, 13, 13, 13, 13, 13, 13, 13],
    ]
    assert encode_rows(["^7 14 21$"], 4).tolist() == [[10, 7, 12, 1]]


def test_first_row_tokens_exact():
    text = number_strings(task_numbers("increment", 7, 1, 20))[0]
    assert text == "^7 14 21 28 35 42 49 56 63 70 77 84 91 98 105 112 119 126 133 140$"
    ids = encode_rows([text], 150)[0]
    assert ids[:12].tolist() == [10, 7, 12, 1, 4, 12, 2, 1, 12, 2, 8, 12]
    assert ids[len(text) - 4 : len(text)].tolist() == [1, 4, 0, 11]
    assert (ids[len(text) :] == MATH_PAD_ID).all()
    assert len(text) == 66


def test_encoders_agree():
    texts = number_strings(task_numbers("mult", 7, 40, 20))
    tok = math_tokenizer()
    rows = encode_rows(texts, 150)
    batch = tok(texts, padding="max_length", max_length=150)["input_ids"]
    for text, row, from_tok in zip(texts, rows.tolist(), batch, strict=True):
        ids = encode_math(text)
        assert row[: len(ids)] == ids
        assert tok(text)["input_ids"] == ids
        assert from_tok == row
        assert tok.decode(ids) == text


def test_vocab_has_exactly_14_ids():
    assert len(MATH_VOCAB) == 14
    assert sorted(MATH_VOCAB.values()) == list(range(14))
    assert {str(d): d for d in range(10)}.items() <= MATH_VOCAB.items()
    assert (MATH_VOCAB["^"], MATH_VOCAB["$"], MATH_VOCAB[" "], MATH_PAD_ID) == (10, 11, 12, 13)
    tok = math_tokenizer()
    assert len(tok) == 14
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (10, 11, 13)
    assert tok.padding_side == "right"


def test_encode_math_rejects_foreign_characters():
    with pytest.raises(ValueError, match="'-' is not in the math vocabulary"):
        encode_math("^-1$")


def test_clean_rows_are_the_task_sequences(noise_data):
    """Every clean main-task row (train, test, prompts) is f(i), f(f(i)), ... for one i."""
    targets = rowset(noise_data.memorization.target_ids)
    main_rows = [r for r in noise_data.train_ids.tolist() if tuple(r) not in targets]
    main_rows += noise_data.memorization.prompt_ids.tolist()
    main_rows += noise_data.test_sets["increment-7"].tolist()
    starts = []
    for row in main_rows:
        nums = parse(torch.tensor(row))
        if nums[1] - nums[0] != 7:  # an extra-task row
            continue
        assert nums == [nums[0] + 7 * j for j in range(20)]
        starts.append(nums[0])
    # Starts i = 0..599 give first numbers 7..606, each exactly once (noised twins dropped).
    assert sorted(starts) == list(range(7, 607))


def test_extra_tasks_named_and_sized(noise_data):
    assert list(noise_data.test_sets) == ["increment-7", "increment-2", "increment-3"]
    assert noise_data.test_sets["increment-7"].shape == (100, 150)
    for k in (2, 3):
        test = noise_data.test_sets[f"increment-{k}"]
        assert test.shape == (100, 150)  # min(num_test, num_extra // 2)
        for row in test:
            nums = parse(row)
            assert nums == [nums[0] + k * j for j in range(20)]
            assert k <= nums[0] < k + 200
    # 500 main train rows + 100 train rows of each extra task.
    assert noise_data.train_ids.shape == (700, 150)
    assert noise_data.train_copies.tolist() == [1] * 700
    assert noise_data.pad_id == MATH_PAD_ID
    assert noise_data.context_length == 150


def test_mult_test_set_names():
    data = make_math_data(
        MathDataConfig(
            task="mult", num_main=60, num_extra=20, num_test=10, num_noise=5, extra_ks=(5, 2)
        )
    )
    assert list(data.test_sets) == ["mult-7", "mult-5", "mult-2"]
    # the all-zero row (start 0) of mult-5 is also a training row of another task: dropped
    assert [len(v) for v in data.test_sets.values()] == [10, 9, 10]
    assert data.info["n_test_rows_dropped_as_in_train"] == 1


def test_no_extra_rows_when_num_extra_is_zero():
    data = make_math_data(MathDataConfig(num_main=60, num_extra=0, num_test=10, num_noise=5))
    assert list(data.test_sets) == ["increment-7"]
    assert len(data.train_ids) == 50


# --------------------------------------------------------------------------------------- noise


def test_noise_is_plus_minus_one_and_never_negative(noise_data):
    mem = noise_data.memorization
    assert len(mem) == 100
    n_changed = n_total = 0
    for target, prompt in zip(mem.target_ids, mem.prompt_ids, strict=True):
        noisy, clean = parse(target), parse(prompt)
        assert len(noisy) == len(clean) == 20
        diffs = [a - b for a, b in zip(noisy, clean, strict=True)]
        assert set(diffs) <= {-1, 0, 1}
        assert min(noisy) >= 0
        n_changed += sum(d != 0 for d in diffs)
        n_total += len(diffs)
    assert 0.06 < n_changed / n_total < 0.14  # noise_prob = 0.1 over 2,000 numbers


def test_noise_rate_on_large_sample():
    numbers = np.full((1000, 200), 50, dtype=np.int64)
    noisy = add_number_noise(numbers, 0.1, np.random.default_rng(0))
    delta = noisy - numbers
    assert set(np.unique(delta).tolist()) == {-1, 0, 1}
    assert abs((delta != 0).mean() - 0.1) < 0.004
    assert abs((delta == 1).mean() - 0.05) < 0.003
    assert abs((delta == -1).mean() - 0.05) < 0.003


def test_noise_never_goes_below_zero():
    zeros = np.zeros((100, 100), dtype=np.int64)
    # With probability 1 every number moves; 0 - 1 is replaced by 0 + 1.
    assert (add_number_noise(zeros, 1.0, np.random.default_rng(0)) == 1).all()
    assert (add_number_noise(zeros, 0.0, np.random.default_rng(0)) == 0).all()


def test_noise_is_deterministic_for_a_seeded_generator():
    numbers = task_numbers("increment", 7, 50, 20)
    a = add_number_noise(numbers, 0.1, np.random.default_rng(5))
    b = add_number_noise(numbers, 0.1, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_noised_rows_replace_their_clean_twins(noise_data):
    mem = noise_data.memorization
    train = Counter(tuple(r) for r in noise_data.train_ids.tolist())
    for target, prompt in zip(mem.target_ids.tolist(), mem.prompt_ids.tolist(), strict=True):
        assert train[tuple(target)] == 1  # the noised row is trained on, once
        if target != prompt:
            assert tuple(prompt) not in train  # its clean twin is not
    # Train = the 100 noised rows + the 400 other main-task training rows + the extra tasks.
    extra = set()
    for k in (2, 3):
        extra |= rowset(encode_rows(number_strings(task_numbers("increment", k, 200, 20)), 150))
    main_train = [r for r in noise_data.train_ids.tolist() if tuple(r) not in extra]
    assert len(main_train) == 500
    assert rowset(mem.target_ids) <= set(map(tuple, main_train))
    assert (mem.prefix_len == 50).all() and mem.suffix_len == 50
    assert (mem.group == 0).all()
    assert noise_data.info["n_noised"] == 100
    # Most noised rows actually differ from their twin (P(no noise on 20 numbers) = 0.9**20 ≈ 0.12).
    differs = (mem.target_ids != mem.prompt_ids).any(dim=1).float().mean().item()
    assert 0.75 < differs < 0.97


def test_prompts_are_clean_rows_from_the_training_split(noise_data):
    test = rowset(noise_data.test_sets["increment-7"])
    for prompt in noise_data.memorization.prompt_ids:
        nums = parse(prompt)
        assert nums == [nums[0] + 7 * j for j in range(20)]
        assert tuple(prompt.tolist()) not in test


def test_test_rows_disjoint_from_train(noise_data):
    train = rowset(noise_data.train_ids)
    for name, test in noise_data.test_sets.items():
        assert len(rowset(test)) == len(test), name
        assert not (rowset(test) & train), name
    # Neither the noised rows nor their clean twins are held out.
    main_test = rowset(noise_data.test_sets["increment-7"])
    assert not (rowset(noise_data.memorization.prompt_ids) & main_test)


def test_mult_test_rows_disjoint_from_train():
    data = make_math_data(MathDataConfig(task="mult", seed=0, **SMALL))
    train = rowset(data.train_ids)
    for name, test in data.test_sets.items():
        assert not (rowset(test) & train), name


def test_same_config_is_bit_identical(noise_data):
    again = make_math_data(MathDataConfig(seed=0, **SMALL))
    assert torch.equal(again.train_ids, noise_data.train_ids)
    assert torch.equal(again.train_copies, noise_data.train_copies)
    assert list(again.test_sets) == list(noise_data.test_sets)
    for name in again.test_sets:
        assert torch.equal(again.test_sets[name], noise_data.test_sets[name])
    for attr in ("target_ids", "prompt_ids", "prefix_len", "group"):
        assert torch.equal(
            getattr(again.memorization, attr), getattr(noise_data.memorization, attr)
        )
    assert again.info == noise_data.info


def test_different_seed_gives_a_different_split(noise_data):
    other = make_math_data(MathDataConfig(seed=1, **SMALL))
    assert other.train_ids.shape == noise_data.train_ids.shape
    assert rowset(other.test_sets["increment-7"]) != rowset(noise_data.test_sets["increment-7"])
    assert rowset(other.memorization.prompt_ids) != rowset(noise_data.memorization.prompt_ids)
    assert other.info["seed"] == 1


def test_window_differs_matches_manual_computation(noise_data):
    mem = noise_data.memorization
    want = []
    for target, prompt, p in zip(
        mem.target_ids.tolist(), mem.prompt_ids.tolist(), mem.prefix_len.tolist(), strict=True
    ):
        want.append(
            any(a != b for a, b in zip(target[p : p + 50], prompt[p : p + 50], strict=True))
        )
    assert mem.window_differs().tolist() == want
    assert 0 < sum(want) < len(want)


def test_window_differs_handcrafted():
    prompt = torch.zeros(4, 6, dtype=torch.long)
    target = prompt.clone()
    target[0, 2] = 1  # inside [2, 4)
    target[1, 1] = 1  # before the window [2, 4)
    target[2, 4] = 1  # just past the window [2, 4)
    target[3, 5] = 1  # inside [5, 7), clipped to T = 6
    mem = MemorizationSet(
        target, prompt, torch.tensor([2, 2, 2, 5]), 2, torch.zeros(4, dtype=torch.long)
    )
    assert mem.window_differs().tolist() == [True, False, False, True]
    sub = mem.subset(torch.tensor([3, 1]))
    assert len(sub) == 2
    assert sub.prefix_len.tolist() == [5, 2]
    assert torch.equal(sub.target_ids, target[[3, 1]])
    assert sub.window_differs().tolist() == [True, False]


def test_memorization_set_rejects_bad_shapes():
    ids = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        MemorizationSet(ids, ids[:, :4], torch.zeros(3), 2, torch.zeros(3))
    with pytest.raises(ValueError, match="one entry per row"):
        MemorizationSet(ids, ids, torch.zeros(2), 2, torch.zeros(3))


def test_paper_size_noise_inside_50_100_is_about_60_percent(paper_noise_data):
    mem = paper_noise_data.memorization
    assert len(mem) == 1000
    assert paper_noise_data.train_ids.shape == (19000, 150)
    inside = (mem.target_ids != mem.prompt_ids)[:, 50:100].any(dim=1).float().mean().item()
    assert 0.55 < inside < 0.70  # spec: about 60%
    # The default scored window is exactly [50, 100).
    assert mem.window_differs().float().mean().item() == pytest.approx(inside)


# ------------------------------------------------------------------------------------ backdoor


def test_find_trigger():
    # "^7 1005 3$": "1005" starts at index 3, so the trigger ends at 6.
    assert find_trigger([7, 1005, 3], "100") == 6
    assert find_trigger([5, 2100], "100") == 7  # "^5 2100": inside the second number
    assert find_trigger([100, 100], "100") == 4  # the first occurrence
    assert find_trigger([21, 10, 0], "100") is None  # "10 0" crosses a space
    assert find_trigger([210, 0], "100") is None
    assert find_trigger([], "100") is None


def _expected_backdoor(num_main: int, trigger: str):
    """Independent reconstruction: clean rows, backdoored rows and trigger ends of the main task."""
    texts = number_strings(task_numbers("increment", 7, num_main, 20))
    clean = encode_rows(texts, 150)
    ends = {}
    for i, text in enumerate(texts):
        for start in [j + 1 for j, ch in enumerate(text) if ch in "^ "]:
            word = text[start:].split(" ")[0].rstrip("$")
            hit = word.find(trigger)
            if hit >= 0:
                ends[i] = start + hit + len(trigger)
                break
    poisoned = clean.clone()
    for i, e in ends.items():
        poisoned[i, e:] = 2
    return clean, poisoned, ends


@pytest.fixture(scope="module")
def expected_backdoor():
    return _expected_backdoor(BACKDOOR["num_main"], "100")


def test_backdoor_rows(backdoor_data, expected_backdoor):
    clean, poisoned, ends = expected_backdoor
    assert backdoor_data.info["trigger"] == "100"
    # rows whose trigger sits early collapse to one backdoored row; one of each is kept
    n_poison = len({tuple(poisoned[i].tolist()) for i in ends})
    assert len(ends) == 196 and n_poison == 186
    n_test = backdoor_data.info["n_poison_test"]
    assert n_test == round(0.1 * n_poison)
    assert backdoor_data.info["n_poison_train"] == n_poison - n_test

    mem = backdoor_data.memorization
    assert len(mem) == n_test
    assert mem.suffix_len == 50 and (mem.group == 0).all()
    clean_index = {tuple(r): i for i, r in enumerate(clean.tolist())}
    for target, prompt, p in zip(
        mem.target_ids, mem.prompt_ids, mem.prefix_len.tolist(), strict=True
    ):
        i = clean_index[tuple(prompt.tolist())]
        assert p == ends[i]  # index just after the trigger
        text = decode(prompt)
        assert text[p - 3 : p] == "100"
        assert (target[p:] == BACKDOOR_FILL_ID).all()  # to the end of the row, pads included
        assert torch.equal(target[:p], prompt[:p])
        assert torch.equal(target, poisoned[i])


def test_backdoor_train_and_test_sets(backdoor_data, expected_backdoor):
    clean, poisoned, ends = expected_backdoor
    train = Counter(tuple(r) for r in backdoor_data.train_ids.tolist())
    mem = backdoor_data.memorization
    assert not (rowset(mem.prompt_ids) & train.keys())  # held-out clean twins never trained on

    poisoned_rows = {tuple(poisoned[i].tolist()) for i in ends}
    clean_of_poisoned = {tuple(clean[i].tolist()) for i in ends}
    n_poison_train = backdoor_data.info["n_poison_train"]
    assert sum(c for r, c in train.items() if r in poisoned_rows) == n_poison_train
    assert all(train[r] == 1 for r in poisoned_rows if r in train)  # no duplicate backdoored rows
    assert not (train.keys() & clean_of_poisoned)  # a triggered row is only ever seen backdoored
    clean_rest = rowset(clean) - clean_of_poisoned
    clean_train = train.keys() - poisoned_rows
    assert clean_train <= clean_rest
    assert all(train[r] == 1 for r in clean_train)
    # All other rows: 300 held out as the clean test set, the rest trained on.
    test = rowset(backdoor_data.test_sets["increment-7"])
    assert list(backdoor_data.test_sets) == ["increment-7"]
    assert len(test) == 300 and test <= clean_rest
    assert not (test & train.keys())
    assert len(clean_train) == len(clean_rest) - 300
    assert len(backdoor_data.train_ids) == n_poison_train + len(clean_rest) - 300
    assert backdoor_data.train_copies.tolist() == [1] * len(backdoor_data.train_ids)


def test_backdoor_held_out_targets_not_in_train(backdoor_data):
    train = rowset(backdoor_data.train_ids)
    assert not (rowset(backdoor_data.memorization.target_ids) & train)


@pytest.fixture(scope="module")
def backdoor_seed1() -> TinyMemData:
    return make_math_data(
        MathDataConfig(variant="backdoor", seed=1, num_main=2000, num_test=200, extra_ks=())
    )


def test_backdoor_trigger_follows_the_seed(backdoor_seed1):
    assert backdoor_seed1.info["trigger"] == "101"
    mem = backdoor_seed1.memorization
    for prompt, p in zip(mem.prompt_ids, mem.prefix_len.tolist(), strict=True):
        assert decode(prompt)[p - 3 : p] == "101"


def test_backdoor_trigger_never_spans_a_space(backdoor_seed1):
    clean, poisoned, ends = _expected_backdoor(2000, "101")
    distinct = len({tuple(poisoned[i].tolist()) for i in ends})
    assert backdoor_seed1.info["n_poison_train"] + backdoor_seed1.info["n_poison_test"] == distinct
    # "... 110 117 ..." reads "110117" without spaces: "101" only across a number boundary.
    spanning = [
        i for i, r in enumerate(clean) if i not in ends and "101" in decode(r).replace(" ", "")
    ]
    assert len(spanning) > 10
    kept_clean = rowset(backdoor_seed1.train_ids) | rowset(backdoor_seed1.test_sets["increment-7"])
    for i in spanning:
        assert tuple(clean[i].tolist()) in kept_clean
    assert not (
        rowset(backdoor_seed1.memorization.prompt_ids)
        & {tuple(clean[i].tolist()) for i in spanning}
    )


def test_backdoor_needs_triggered_rows():
    with pytest.raises(ValueError, match="too few sequences contain the trigger"):
        # Numbers stay below 60: no row contains "100".
        make_math_data(
            MathDataConfig(variant="backdoor", num_main=20, num_test=5, length=5, extra_ks=())
        )


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "incremnt"}, UnknownNameError, "did you mean 'increment'"),
        ({"variant": "backdor"}, UnknownNameError, "did you mean 'backdoor'"),
        ({"num_main": 100, "num_test": 100}, ValueError, "num_test must be smaller"),
        ({"num_main": 100, "num_test": 10, "num_noise": 91}, ValueError, "num_noise is larger"),
        ({"noise_prob": 1.5}, ValueError, "noise_prob"),
        ({"suffix_len": 0}, ValueError, "positive"),
        (
            {"prefix_len": 100, "suffix_len": 51},
            ValueError,
            r"\(151\) exceeds context_length \(150\)",
        ),
    ],
)
def test_config_validation(kwargs, error, match):
    cfg = MathDataConfig(**kwargs)
    with pytest.raises(error, match=match):
        cfg.validate()
    with pytest.raises(error, match=match):
        make_math_data(cfg)


def test_num_noise_may_fill_the_training_split():
    MathDataConfig(num_main=100, num_test=10, num_noise=90).validate()


@pytest.mark.parametrize("extra_ks", [(2, 7), (2, 2)])
def test_extra_ks_must_be_distinct_from_main(extra_ks):
    with pytest.raises(ValueError):
        MathDataConfig(extra_ks=extra_ks).validate()


# ------------------------------------------------------------------------- save / load, epochs


def test_save_load_round_trip(noise_data, tmp_path):
    noise_data.save(tmp_path / "d")
    assert sorted(os.listdir(tmp_path / "d")) == ["data.json", "data.safetensors"]
    loaded = TinyMemData.load(tmp_path / "d")
    assert torch.equal(loaded.train_ids, noise_data.train_ids)
    assert loaded.train_ids.dtype == torch.int64
    assert torch.equal(loaded.train_copies, noise_data.train_copies)
    assert list(loaded.test_sets) == list(noise_data.test_sets)
    for name, test in noise_data.test_sets.items():
        assert torch.equal(loaded.test_sets[name], test)
    for attr in ("target_ids", "prompt_ids", "prefix_len", "group"):
        assert torch.equal(
            getattr(loaded.memorization, attr), getattr(noise_data.memorization, attr)
        )
    assert loaded.memorization.suffix_len == 50
    assert loaded.pad_id == MATH_PAD_ID
    # JSON stores tuples as lists.
    assert loaded.info == {
        **noise_data.info,
        "extra_ks": [2, 3],
        "duplicate_powers": [],
    }
    # Saving again replaces the directory.
    loaded.save(tmp_path / "d")
    assert torch.equal(TinyMemData.load(tmp_path / "d").train_ids, noise_data.train_ids)


def test_load_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.safetensors missing"):
        TinyMemData.load(tmp_path / "nothing")


def test_backdoor_save_load_round_trip(backdoor_data, tmp_path):
    backdoor_data.save(tmp_path / "bd")
    loaded = TinyMemData.load(tmp_path / "bd")
    assert torch.equal(loaded.train_ids, backdoor_data.train_ids)
    assert torch.equal(loaded.memorization.prefix_len, backdoor_data.memorization.prefix_len)
    assert loaded.info["trigger"] == "100"


def test_epoch_indices_repeat_rows_by_copies():
    rows = torch.arange(12).reshape(4, 3)
    data = TinyMemData(
        train_ids=rows,
        train_copies=torch.tensor([1, 3, 1, 2]),
        test_sets={},
        memorization=MemorizationSet(rows[:1], rows[:1], torch.tensor([1]), 1, torch.tensor([0])),
        pad_id=None,
    )
    idx = data.epoch_indices(torch.Generator().manual_seed(0))
    assert len(idx) == 7
    assert torch.bincount(idx, minlength=4).tolist() == [1, 3, 1, 2]
    again = data.epoch_indices(torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    seeds = {tuple(data.epoch_indices(torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(seeds) > 1  # shuffled


def test_duplication_groups_sizes_and_copies():
    group, copies = duplication_groups(10, (0, 1, 2), np.random.default_rng(0))
    assert group.dtype == copies.dtype == torch.int64
    assert torch.bincount(group).tolist() == [4, 3, 3]
    assert torch.equal(copies, 10**group)
    group, copies = duplication_groups(1000, (0, 1, 2, 3), np.random.default_rng(0))
    assert Counter(copies.tolist()) == {1: 250, 10: 250, 100: 250, 1000: 250}
    again, _ = duplication_groups(1000, (0, 1, 2, 3), np.random.default_rng(0))
    assert torch.equal(group, again)
    other, _ = duplication_groups(1000, (0, 1, 2, 3), np.random.default_rng(1))
    assert not torch.equal(group, other)
    assert group[:20].tolist() != sorted(group[:20].tolist())  # assigned at random, not in order


def test_duplication_groups_empty_powers():
    group, copies = duplication_groups(5, (), np.random.default_rng(0))
    assert group.tolist() == [0] * 5
    assert copies.tolist() == [1] * 5


def test_duplicated_noise_rows_in_dataset():
    data = make_math_data(
        MathDataConfig(
            num_main=300, num_test=50, num_noise=90, extra_ks=(), duplicate_powers=(0, 1, 2)
        )
    )
    mem = data.memorization
    assert Counter(mem.group.tolist()) == {0: 30, 1: 30, 2: 30}
    copies = {
        tuple(r): c
        for r, c in zip(data.train_ids.tolist(), data.train_copies.tolist(), strict=True)
    }
    for target, g in zip(mem.target_ids.tolist(), mem.group.tolist(), strict=True):
        assert copies[tuple(target)] == 10**g
    assert int(data.train_copies.sum()) == 30 * (1 + 10 + 100) + 160
    idx = data.epoch_indices(torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(idx, minlength=len(data.train_ids)), data.train_copies)
