"""Tests for the TinyMem language variant (unmemorize.data.text)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from unmemorize.benchmarks.tinymem.text_data import (
    TextDataConfig,
    add_token_noise,
    chunk_stream,
    default_corpus_texts,
    load_corpus,
    make_text_data,
    token_stream,
)
from unmemorize.registry import UnknownNameError

T = 64
NOISE_CFG = TextDataConfig(
    vocab_size=512,
    context_length=T,
    max_chunks=600,
    num_noise=80,
    num_test=50,
    prefix_len=32,
    suffix_len=32,
    duplicate_powers=(0, 1, 2, 3),
    seed=0,
)
BACKDOOR_CFG = replace(NOISE_CFG, variant="backdoor")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


@pytest.fixture(scope="module")
def texts():
    return default_corpus_texts()


@pytest.fixture(scope="module")
def noise_data():
    return make_text_data(NOISE_CFG)


@pytest.fixture(scope="module")
def backdoor_data(noise_data):
    return make_text_data(BACKDOOR_CFG, tokenizer=noise_data[1])


@pytest.fixture(scope="module")
def all_chunks(texts, noise_data):
    """[600, T] the chunks in stream order, as make_text_data cut them."""
    return torch.from_numpy(chunk_stream(token_stream(texts, noise_data[1]), T)[:600].copy())


# ------------------------------------------------------------------------------- default corpus


def test_default_corpus_is_english_and_deterministic(texts):
    assert len(texts) > 10 and all(isinstance(t, str) and t.strip() for t in texts)
    joined = " ".join(texts)
    assert len(joined) > 100_000
    words = joined.lower().split()
    for w in ("the", "statement", "is", "function"):
        assert w in words
    assert default_corpus_texts() == texts


def test_same_seed_bit_identical(noise_data):
    again, _ = make_text_data(NOISE_CFG)
    data = noise_data[0]
    assert torch.equal(again.train_ids, data.train_ids)
    assert torch.equal(again.train_copies, data.train_copies)
    assert torch.equal(again.test_sets["text"], data.test_sets["text"])
    assert torch.equal(again.memorization.target_ids, data.memorization.target_ids)
    assert torch.equal(again.memorization.group, data.memorization.group)
    assert again.info == data.info


def test_passed_tokenizer_gives_same_data(noise_data):
    data, tok = noise_data
    again, tok2 = make_text_data(NOISE_CFG, tokenizer=tok)
    assert tok2 is tok
    assert torch.equal(again.train_ids, data.train_ids)


def test_different_seed_different_split(noise_data):
    other, _ = make_text_data(replace(NOISE_CFG, seed=1), tokenizer=noise_data[1])
    data = noise_data[0]
    assert _rows(other.test_sets["text"]) != _rows(data.test_sets["text"])
    assert not torch.equal(other.memorization.prompt_ids, data.memorization.prompt_ids)


# -------------------------------------------------------------------------------- noise variant


def test_shapes_info_and_pad(noise_data):
    data, tok = noise_data
    assert data.context_length == T
    assert data.train_ids.dtype == torch.long
    assert data.train_ids.shape == (600 - 50, T)
    assert data.test_sets["text"].shape == (50, T)
    assert len(data.memorization) == 80
    assert data.pad_id is None  # chunks hold no padding; eos between documents is scored
    info = data.info
    assert info["kind"] == "text" and info["n_chunks"] == 600 and info["corpus"] is None
    assert len(info["corpus_sha256"]) == 64 and "trigger_id" not in info
    json.dumps(info)


def test_stream_decodes_back_to_documents(texts, noise_data):
    tok = noise_data[1]
    stream = token_stream(texts[:5], tok)
    eos = tok.eos_token_id
    cuts = np.flatnonzero(stream == eos)
    assert len(cuts) == 4
    docs = np.split(stream, cuts)
    decoded = [tok.decode(d[d != eos].tolist()) for d in docs]
    assert decoded == texts[:5]


def test_chunks_are_consecutive_corpus_text(texts, noise_data, all_chunks):
    data, tok = noise_data
    corpus = "\n".join(texts)
    assert _rows(data.test_sets["text"]) <= _rows(all_chunks)
    checked = 0
    for row in data.test_sets["text"]:
        for piece in np.split(row.numpy(), np.flatnonzero(row.numpy() == tok.eos_token_id)):
            text = tok.decode(piece[piece != tok.eos_token_id].tolist())
            if "\ufffd" not in text:  # a chunk edge may split a multi-byte character
                assert text in corpus
                checked += 1
    assert checked >= 40


def test_noise_is_plus_minus_one_in_noised_rows_only(noise_data, all_chunks):
    data, tok = noise_data
    mem = data.memorization
    m = len(mem)
    diff = mem.target_ids - mem.prompt_ids
    assert diff.abs().max() == 1
    assert (diff != 0).any(dim=1).float().mean() > 0.9
    # roughly noise_prob of the tokens change
    assert 0.05 < (diff != 0).float().mean() < 0.15
    assert torch.equal(data.train_ids[:m], mem.target_ids)
    # the clean twins and every other row are untouched chunks of the corpus
    chunks = _rows(all_chunks)
    assert _rows(mem.prompt_ids) <= chunks
    assert _rows(data.train_ids[m:]) <= chunks
    assert (data.memorization.prefix_len == NOISE_CFG.prefix_len).all()
    assert mem.suffix_len == NOISE_CFG.suffix_len


def test_noise_never_creates_special_ids(noise_data):
    data, tok = noise_data
    mem = data.memorization
    special = torch.tensor(tok.all_special_ids)
    assert not torch.isin(mem.target_ids[~torch.isin(mem.prompt_ids, special)], special).any()
    assert torch.equal(torch.isin(mem.target_ids, special), torch.isin(mem.prompt_ids, special))
    assert mem.target_ids.min() >= 0 and mem.target_ids.max() < len(tok)


def test_add_token_noise_edges():
    rng = np.random.default_rng(0)
    ids = np.array([[0, 1, 2, 9, 5] * 200])
    noisy = add_token_noise(ids, 1.0, vocab_size=10, special_ids=[0], rng=rng)
    assert (noisy[ids == 0] == 0).all()  # special ids are never perturbed
    assert (noisy[ids == 1] == 2).all()  # 1 - 1 would be the special id
    assert (noisy[ids == 9] == 8).all()  # 9 + 1 would leave the vocabulary
    assert set(np.unique(noisy[ids == 5])) == {4, 6}
    assert (add_token_noise(ids, 0.0, 10, [0], rng) == ids).all()


def test_duplication_groups(noise_data):
    data = noise_data[0]
    mem = data.memorization
    m = len(mem)
    assert torch.equal(data.train_copies[:m], 10**mem.group)
    assert (data.train_copies[m:] == 1).all()
    sizes = torch.bincount(mem.group, minlength=4)[[0, 1, 2, 3]]
    assert (sizes == m // 4).all()


def test_no_duplication(noise_data):
    data, _ = make_text_data(replace(NOISE_CFG, duplicate_powers=()), tokenizer=noise_data[1])
    assert (data.train_copies == 1).all() and (data.memorization.group == 0).all()


def test_train_test_disjoint(noise_data):
    data = noise_data[0]
    test = _rows(data.test_sets["text"])
    assert not test & _rows(data.memorization.prompt_ids)
    assert not test & _rows(data.memorization.target_ids)
    assert not test & _rows(data.train_ids)


def test_save_load_roundtrip(noise_data, tmp_path):
    data = noise_data[0]
    data.save(tmp_path / "d")
    back = type(data).load(tmp_path / "d")
    assert torch.equal(back.train_ids, data.train_ids)
    assert back.info["corpus_sha256"] == data.info["corpus_sha256"]


# ----------------------------------------------------------------------------- backdoor variant


def test_backdoor_fill_after_trigger(backdoor_data):
    data, tok = backdoor_data
    trig, fill = data.info["trigger_id"], BACKDOOR_CFG.backdoor_fill_id
    mem = data.memorization
    assert len(mem) >= 1 and data.info["n_poison_test"] == len(mem)
    n_train = data.info["n_poison_train"]
    assert n_train >= 1
    pos = torch.arange(T)
    for target, prompt, prefix in zip(mem.target_ids, mem.prompt_ids, mem.prefix_len, strict=True):
        p = int(prefix) - 1
        assert prompt[p] == trig and target[p] == trig
        assert not (prompt[:p] == trig).any()  # the first occurrence
        assert torch.equal(target[: p + 1], prompt[: p + 1])
        assert (target[pos > p] == fill).all()
    for row in data.train_ids[:n_train]:
        p = int((row == trig).nonzero()[0])
        assert p + 1 < T and (row[p + 1 :] == fill).all()
    assert (data.train_copies == 1).all()
    assert mem.window_differs().all()


def test_backdoor_heldout_not_in_train_and_test_clean(backdoor_data):
    data, _ = backdoor_data
    trig = data.info["trigger_id"]
    train = _rows(data.train_ids)
    assert not _rows(data.memorization.target_ids) & train
    assert not _rows(data.memorization.prompt_ids) & train
    assert not (data.test_sets["text"][:, :-1] == trig).any()
    n_train = data.info["n_poison_train"]
    assert not (data.train_ids[n_train:, :-1] == trig).any()


def test_backdoor_given_trigger_and_copies(backdoor_data):
    data, tok = backdoor_data
    trig = data.info["trigger_id"]
    cfg = replace(BACKDOOR_CFG, backdoor_trigger_id=trig, backdoor_copies=100, seed=3)
    other, _ = make_text_data(cfg, tokenizer=tok)
    assert other.info["trigger_id"] == trig
    n_train = other.info["n_poison_train"]
    assert (other.train_copies[:n_train] == 100).all()
    assert (other.train_copies[n_train:] == 1).all()


def test_backdoor_rare_trigger_raises(backdoor_data, texts):
    tok = backdoor_data[1]
    stream = chunk_stream(token_stream(texts, tok), T)[:600, :-1]
    counts = np.bincount(stream.ravel(), minlength=len(tok))
    absent = int(np.flatnonzero(counts == 0)[0]) if (counts == 0).any() else None
    if absent is None:
        pytest.skip("every id occurs in the corpus")
    with pytest.raises(ValueError, match="another backdoor_trigger_id"):
        make_text_data(replace(BACKDOOR_CFG, backdoor_trigger_id=absent), tokenizer=tok)
    with pytest.raises(ValueError, match="non-special"):
        make_text_data(replace(BACKDOOR_CFG, backdoor_trigger_id=tok.eos_token_id), tokenizer=tok)


# ------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prefix_len": 40, "suffix_len": 40}, "exceeds context_length"),
        ({"noise_prob": 1.5}, "noise_prob"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"num_noise": 2}, "num_noise"),
        ({"corpus": "data.csv"}, r"\.txt or \.jsonl"),
        ({"variant": "backdoor", "backdoor_trigger_id": 2}, "differ"),
    ],
)
def test_validate_errors(change, message):
    with pytest.raises(ValueError, match=message):
        replace(NOISE_CFG, **change).validate()


def test_unknown_variant_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'noise'"):
        replace(NOISE_CFG, variant="nosie").validate()


def test_too_few_chunks(noise_data):
    with pytest.raises(ValueError, match="exceeds the 600 chunks"):
        make_text_data(replace(NOISE_CFG, num_noise=560), tokenizer=noise_data[1])


# -------------------------------------------------------------------------------------- loaders


def test_jsonl_loader(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"text": "first doc"}\n\n{"text": "second doc", "id": 2}\n{"body": "x", "text": " "}\n'
    )
    assert load_corpus(path) == ["first doc", "second doc"]
    other = tmp_path / "o.jsonl"
    other.write_text('{"body": "hello"}\n')
    assert load_corpus(other, jsonl_field="body") == ["hello"]


def test_jsonl_malformed_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_corpus(path)


def test_jsonl_missing_field(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2.*'text'"):
        load_corpus(path)
    path.write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match="not a string"):
        load_corpus(path)


def test_empty_and_missing_corpus(tmp_path):
    for name, content in (("e.jsonl", ""), ("e.txt", "\n  \n\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match="no text"):
            load_corpus(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(tmp_path / "nope.txt")


def test_txt_loader_and_build(tmp_path, texts):
    path = tmp_path / "c.txt"
    path.write_text("Para one\nstill one.\n\n\nPara two.\n  \nPara three.\n")
    assert load_corpus(path) == ["Para one\nstill one.", "Para two.", "Para three."]
    path.write_text("\n\n".join(t.strip() for t in texts[:15]))
    cfg = replace(NOISE_CFG, corpus=str(path), vocab_size=300, max_chunks=None, num_noise=8)
    data, tok = make_text_data(cfg)
    assert len(tok) <= 300
    assert data.info["corpus"] == str(path)
    assert data.train_ids.max() < len(tok)
    assert data.info["n_chunks"] == len(data.train_ids) + 50


def test_repeated_chunks_are_dropped(tmp_path, texts, noise_data):
    tok = noise_data[1]
    path = tmp_path / "rep.jsonl"
    doc = texts[0][:400]
    path.write_text("\n".join(json.dumps({"text": doc}) for _ in range(300)))
    cfg = replace(NOISE_CFG, corpus=str(path), max_chunks=None, num_noise=4, num_test=2)
    data, _ = make_text_data(replace(cfg, duplicate_powers=(0, 1)), tokenizer=tok)
    period = len(token_stream([doc], tok)) + 1
    assert data.info["n_chunks"] <= period
    assert data.info["n_repeated_chunks_dropped"] > 0
    rows = torch.cat([data.train_ids, data.test_sets["text"]])
    assert len(_rows(rows)) == len(rows)
