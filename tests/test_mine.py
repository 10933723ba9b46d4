"""``unmemorize mine``: a tiny model trained to memorize known windows, mined back from corpora."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from unmemorize.benchmarks.restor.world import word_tokenizer
from unmemorize.cli.main import main
from unmemorize.data.corpus import open_corpus
from unmemorize.data.sequences import read_sequences
from unmemorize.metrics import generate_memorized
from unmemorize.mining import _NgramIndex, mine
from unmemorize.models import ModelConfig, build_model_for, save_model
from unmemorize.training import train_on_batches
from unmemorize.unlearn import prepare

P, K = 8, 8
W = P + K
CONTEXT = 32
FIRST_WORD = 4  # ids 0-3 of the word tokenizer: <pad>, <eos>, <unk>, newline
N_KNOWN = 20
MIN_UNIQUE = 4


@dataclass
class Memorizer:
    model: torch.nn.Module
    tokenizer: object
    model_dir: Path
    known: np.ndarray  # [20, W] windows trained many times (all tokens distinct)
    variant: np.ndarray  # [W] known[0] with its first token changed, also trained
    degenerate: np.ndarray  # [2, W] one repeated token / an alternating pair, also trained
    corpus: np.ndarray  # [n_windows * W] flat token stream of whole windows

    @property
    def vocab(self) -> int:
        return len(self.tokenizer)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory) -> Memorizer:
    """Train once: planted windows (repeated every step) vs fresh random windows (never twice)."""
    torch.manual_seed(0)
    tok = word_tokenizer([f"w{i}" for i in range(60)])
    v = len(tok)
    rng = np.random.default_rng(0)
    known = np.stack([rng.choice(np.arange(FIRST_WORD, v), W, replace=False) for _ in range(20)])
    variant = known[0].copy()
    variant[0] = next(t for t in range(FIRST_WORD, v) if t not in known[0])
    degenerate = np.stack([np.full(W, 9), np.tile([5, 6], W // 2)])
    planted = torch.from_numpy(np.concatenate([known, variant[None], degenerate]))
    model = build_model_for(
        ModelConfig(arch="gpt2", n_layers=2, d_model=64, n_heads=4, context_length=CONTEXT), tok
    )
    gen = torch.Generator().manual_seed(0)

    def batches(step: int) -> torch.Tensor:
        mem = planted[torch.randint(len(planted), (16,), generator=gen)]
        fresh = torch.randint(FIRST_WORD, v, (16, W), generator=gen)
        return torch.cat([mem, fresh])  # [32, W]

    train_on_batches(model, batches, 250, lr=3e-3, pad_id=None, warmup=20)
    model.eval()
    model_dir = tmp_path_factory.mktemp("memorizer") / "model"
    save_model(model, tok, model_dir)

    # Corpus: 300 unseen random windows, every known window twice, the degenerate ones, and the
    # near-duplicate variant last (so known[0] is the kept copy).
    unseen = rng.integers(FIRST_WORD, v, (300, W))
    windows = np.concatenate([unseen, known, known, degenerate])
    windows = windows[rng.permutation(len(windows))]
    windows = np.concatenate([windows, variant[None]])
    return Memorizer(model, tok, model_dir, known, variant, degenerate, windows.reshape(-1))


def as_set(ids) -> set[tuple[int, ...]]:
    return {tuple(r) for r in np.asarray(ids).tolist()}


def run(memorizer: Memorizer, corpus=None, **kw):
    kw.setdefault("min_unique_suffix_tokens", MIN_UNIQUE)
    kw.setdefault("tokenizer", memorizer.tokenizer)
    return mine(memorizer.model, memorizer.corpus if corpus is None else corpus, P, K, **kw)


# ------------------------------------------------------------------------------ acceptance


def test_mine_finds_the_memorized_windows_and_drops_degenerate_and_duplicates(memorizer):
    res = run(memorizer)
    windows = torch.from_numpy(memorizer.corpus.reshape(-1, W))
    truth, _ = generate_memorized(memorizer.model, windows, windows, P, K)  # real greedy decoding
    assert res.n_scanned == len(windows)
    assert res.n_memorized == int(truth.sum())

    kept, known = as_set(res.input_ids), as_set(memorizer.known)
    recall = len(kept & known) / len(known)
    precision = len(kept & known) / len(kept)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, res.counts())
    assert not kept & as_set(memorizer.degenerate)
    assert res.n_degenerate == 2  # both planted degenerate windows were memorized, then dropped
    # every known window appears twice: the second copy (and the variant of known[0]) fold in
    assert tuple(memorizer.variant) not in kept
    assert res.n_duplicates >= len(kept & known) + 1
    assert res.n_kept == res.n_memorized - res.n_degenerate - res.n_duplicates
    copies = dict(zip(map(tuple, res.input_ids.tolist()), res.copies.tolist(), strict=True))
    assert copies[tuple(memorizer.known[0])] == 3
    assert all(copies[tuple(w)] == 2 for w in memorizer.known[1:] if tuple(w) in copies)

    # sources point at the window's token offset in the stream; scores are suffix log-probs
    for ids, src in zip(res.input_ids.numpy(), res.source, strict=True):
        offset = int(src.split(":")[-1])
        assert np.array_equal(memorizer.corpus[offset : offset + W], ids)
    assert bool((res.score <= 0).all()) and bool((res.score > -1.0).all())
    with torch.no_grad():
        logits = memorizer.model(input_ids=res.input_ids[:1]).logits[0, P - 1 : W - 1]
    want = logits.log_softmax(-1).gather(-1, res.input_ids[0, P:, None]).mean()
    assert float(res.score[0]) == pytest.approx(float(want), abs=1e-5)


def test_early_exit_and_one_pass_give_identical_results(memorizer):
    results = [run(memorizer, check_every=ce, batch_size=64) for ce in (None, 1, 3, 8)]
    first = results[0]
    for other in results[1:]:
        assert torch.equal(other.input_ids, first.input_ids)
        assert torch.equal(other.score, first.score)
        assert torch.equal(other.copies, first.copies)
        assert other.source == first.source
        assert {k: v for k, v in other.counts().items() if k != "seconds"} == {
            k: v for k, v in first.counts().items() if k != "seconds"
        }


def test_dedup_off_keeps_copies_and_variant_and_filter_off_keeps_degenerate(memorizer):
    res = run(memorizer, dedup_jaccard=None, min_unique_suffix_tokens=0)
    assert res.n_duplicates == 0 and res.n_degenerate == 0
    assert res.n_kept == res.n_memorized
    kept = as_set(res.input_ids)
    assert tuple(memorizer.variant) in kept
    assert as_set(memorizer.degenerate) <= kept
    assert bool((res.copies == 1).all())


def test_ngram_index_jaccard_threshold():
    a = np.arange(16)
    b = a.copy()
    b[0] = 99  # changes 1 of 14 trigrams: Jaccard 13 / 15 = 0.8667
    for threshold, dup in ((0.86, True), (0.87, False)):
        index = _NgramIndex(3, threshold)
        assert index.add_or_match(a) is None
        assert index.add_or_match(np.arange(100, 116)) is None  # unrelated: never compared
        assert (index.add_or_match(b) == 0) is dup
    index = _NgramIndex(3, 1.0)
    assert index.add_or_match(a) is None
    assert index.add_or_match(a.copy()) == 0  # threshold 1.0: identical n-gram sets only


# --------------------------------------------------------------------------------- corpora


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(memorizer):
    return run(memorizer)


@pytest.mark.parametrize("fmt", ["npy", "npy2d", "bin-uint16", "bin-int32", "jsonl", "text"])
def test_every_corpus_format_gives_the_same_forget_set(memorizer, reference, tmp_path, fmt):
    stream = memorizer.corpus
    kw = {}
    if fmt == "npy":
        path = tmp_path / "c.npy"
        np.save(path, stream.astype(np.int32))
    elif fmt == "npy2d":  # 4 windows per row: windows never cross rows
        path = tmp_path / "c.npy"
        rows = stream[: len(stream) // (4 * W) * 4 * W].reshape(-1, 4 * W)
        np.save(path, rows.astype(np.uint16))
    elif fmt.startswith("bin"):
        dtype = fmt.split("-")[1]
        path = tmp_path / "c.bin"
        stream.astype(dtype).tofile(path)
        kw["dtype_ids"] = dtype
    else:  # documents of 3 windows plus 5 tokens that no window covers
        docs = [stream[i : i + 3 * W + 5] for i in range(0, len(stream), 3 * W)]
        if fmt == "jsonl":
            lines = [{"input_ids": d.tolist()} for d in docs]
        else:
            lines = [
                {"text": " ".join(memorizer.tokenizer.convert_ids_to_tokens(docs[0].tolist()))}
            ]
            lines += [{"input_ids": d.tolist()} for d in docs[1:]]
        path = write_jsonl(tmp_path / "c.jsonl", lines)
    res = run(memorizer, path, **kw)
    if fmt == "npy2d":  # the last few windows do not fill a row and are not in this corpus
        assert res.n_scanned == len(stream) // (4 * W) * 4
        assert as_set(res.input_ids) <= as_set(reference.input_ids)
        assert res.n_kept >= reference.n_kept - 2
        for ids, src in zip(res.input_ids.numpy(), res.source, strict=True):
            row, offset = (int(v) for v in src.split(":")[-2:])  # FILE:ROW:OFFSET
            assert np.array_equal(rows[row, offset : offset + W], ids)
        return
    assert res.n_scanned == reference.n_scanned
    assert torch.equal(res.input_ids, reference.input_ids)
    assert torch.equal(res.copies, reference.copies)
    assert torch.allclose(res.score, reference.score)
    assert res.source[0].startswith(f"{path}:")


def test_stride_finds_a_window_off_the_grid_and_sources_locate_it(memorizer, tmp_path):
    rng = np.random.default_rng(5)
    doc = np.concatenate(
        [rng.integers(FIRST_WORD, memorizer.vocab, 5), memorizer.known[3], rng.integers(4, 60, 11)]
    )
    path = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": [5, 6]}, {"input_ids": doc.tolist()}])
    on_grid = run(memorizer, path)
    assert on_grid.n_scanned == 2 and tuple(memorizer.known[3]) not in as_set(on_grid.input_ids)
    res = run(memorizer, path, stride=1)
    assert res.n_scanned == len(doc) - W + 1
    i = res.input_ids.tolist().index(memorizer.known[3].tolist())
    assert res.source[i] == f"{path}:2:5"  # 1-based line 2 (line 1 is too short), offset 5


def test_windows_stream_in_bounded_batches(tmp_path):
    stream = np.arange(1000) % 250
    path = tmp_path / "c.bin"
    stream.astype(np.uint16).tofile(path)
    corpus = open_corpus(path, dtype_ids="uint16")
    batches = list(corpus.batches(10, 7, 16))
    assert max(len(ids) for ids, _ in batches) == 16
    ids = np.concatenate([b for b, _ in batches])
    where = np.concatenate([w for _, w in batches])
    assert len(ids) == (1000 - 10) // 7 + 1 == corpus.total_windows(10, 7)
    for row, (_, offset) in zip(ids, where, strict=True):
        assert np.array_equal(row, stream[offset : offset + 10])
    # a long jsonl document is cut into batch-sized slices, windows carried across documents
    docs = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": list(range(200))}, {"input_ids": [1]}])
    sizes = [len(b) for b, _ in open_corpus(docs).batches(4, 2, 16)]
    assert sizes == [16] * 6 + [3]


def test_max_windows_stops_the_scan(memorizer):
    res = run(memorizer, max_windows=50, batch_size=32)
    assert res.n_scanned == 50


# ------------------------------------------------------------------------------ round trip


def test_forget_set_round_trips_through_measure_and_unlearn(memorizer, reference, tmp_path):
    out = reference.write_jsonl(tmp_path / "forget.jsonl")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input_ids"] for r in lines] == reference.input_ids.tolist()
    assert {"score", "copies", "source"} <= set(lines[0])
    ids = read_sequences(out, memorizer.tokenizer, memorizer.vocab, P, K)
    assert torch.equal(ids, reference.input_ids)
    setup = prepare(memorizer.model_dir, forget=out, prefix_len=P, suffix_len=K)
    assert torch.equal(setup.data.forget_ids, reference.input_ids)  # every row still memorized
    assert setup.baseline["memorized_fraction"] == 1.0


# ------------------------------------------------------------------------------------- CLI


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_mine_end_to_end(memorizer, reference, tmp_path, capsys):
    corpus = tmp_path / "c.npy"
    np.save(corpus, memorizer.corpus)
    out = tmp_path / "sub" / "forget.jsonl"
    code, stdout, err = cli(
        capsys, "mine", "--model", memorizer.model_dir, "--corpus", corpus, "--out", out,
        "--prefix-len", P, "--suffix-len", K, "--min-unique", MIN_UNIQUE, "--no-progress",
        "--batch-size", 100, "--check-every", "none",
    )  # fmt: skip
    assert code == 0, err
    assert f"{'kept':<20}{reference.n_kept:>10}" in stdout
    assert f"{'memorized':<20}{reference.n_memorized:>10}" in stdout
    assert f"{'scanned':<20}{reference.n_scanned:>10}" in stdout
    assert "--prefix-len 8 --suffix-len 8" in stdout
    assert err == ""  # --no-progress: no bar
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input_ids"] for r in rows] == reference.input_ids.tolist()
    code, stdout, _ = cli(
        capsys, "measure", "--model", memorizer.model_dir, "--sequences", out,
        "--prefix-len", P, "--suffix-len", K,
    )  # fmt: skip
    assert code == 0 and "100.0%" in stdout


def test_cli_mine_help_teaches(capsys):
    assert main(["mine", "--help"]) == 0
    out = capsys.readouterr().out
    assert "k-extractable" in out and "examples:" in out and "--dtype-ids" in out


def _bad_corpus(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    """A corpus file that must be refused, and extra CLI options; ``kind`` names the case."""
    extra: list[str] = []
    if kind == "missing":
        path = tmp_path / "nope.jsonl"
    elif kind == "unknown-suffix":
        path = tmp_path / "c.txt"
        path.write_text("w1 w2 w3\n")
    elif kind == "not-json":
        path = tmp_path / "c.jsonl"
        path.write_text("hello world\n")
    elif kind == "ids-not-ints":
        path = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": ["a"] * 20}])
    elif kind == "ids-too-large":
        path = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": [5] * 10 + [10_000] * 10}])
    elif kind == "no-known-key":
        path = write_jsonl(tmp_path / "c.jsonl", [{"tokens": [5] * 20}])
    elif kind == "empty":
        path = tmp_path / "c.jsonl"
        path.write_text("")
    elif kind == "only-short-docs":
        path = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": [5] * 10}] * 3)
    elif kind == "npy-floats":
        path = tmp_path / "c.npy"
        np.save(path, np.ones(100, dtype=np.float32))
    elif kind == "npy-garbage":
        path = tmp_path / "c.npy"
        path.write_bytes(b"not a numpy file at all")
    elif kind == "npy-negative":
        path = tmp_path / "c.npy"
        np.save(path, -np.ones(100, dtype=np.int64))
    elif kind == "bin-no-dtype":
        path = tmp_path / "c.bin"
        np.arange(100, dtype=np.uint16).tofile(path)
    elif kind == "bin-odd-bytes":
        path = tmp_path / "c.bin"
        path.write_bytes(b"\x01\x00\x02")
        extra = ["--dtype-ids", "uint16"]
    elif kind == "bin-wrong-dtype":  # int32 ids read as uint16: fine; uint16 read as int32: huge
        path = tmp_path / "c.bin"
        np.full(64, 40, dtype=np.uint16).tofile(path)
        extra = ["--dtype-ids", "int32"]
    elif kind == "dtype-ids-on-npy":
        path = tmp_path / "c.npy"
        np.save(path, np.arange(100) % 50)
        extra = ["--dtype-ids", "uint16"]
    else:
        raise AssertionError(kind)
    return path, extra


BAD_CORPORA = {
    "missing": "does not exist",
    "unknown-suffix": "cannot tell the format",
    "not-json": "not valid JSON",
    "ids-not-ints": "list of integer token ids",
    "ids-too-large": "outside the model's vocabulary",
    "no-known-key": "expected a key",
    "empty": "is empty",
    "only-short-docs": "no document of at least",
    "npy-floats": "must be integers",
    "npy-garbage": "not a readable .npy",
    "npy-negative": "outside the model's vocabulary",
    "bin-no-dtype": "--dtype-ids uint16 or int32",
    "bin-odd-bytes": "not a whole number",
    "bin-wrong-dtype": "outside the model's vocabulary",
    "dtype-ids-on-npy": "applies to raw .bin",
}


@pytest.mark.parametrize("kind", list(BAD_CORPORA))
def test_cli_refuses_bad_corpus(memorizer, tmp_path, capsys, kind):
    path, extra = _bad_corpus(tmp_path, kind)
    out = tmp_path / "forget.jsonl"
    code, stdout, err = cli(
        capsys, "mine", "--model", memorizer.model_dir, "--corpus", path, "--out", out,
        "--prefix-len", P, "--suffix-len", K, "--no-progress", *extra,
    )  # fmt: skip
    assert code == 2
    assert err.startswith("unmemorize: error: ") and err.count("\n") == 1, err
    assert BAD_CORPORA[kind] in err
    assert not out.exists() and stdout == ""


BAD_OPTIONS = {
    "context": (["--prefix-len", 20, "--suffix-len", 20], "exceeds the model's context of 32"),
    "min-unique": (["--min-unique", 9], "--min-unique 9 must lie in 0..8"),
    "jaccard": (["--dedup-jaccard", 0], "--dedup-jaccard must lie in (0, 1]"),
    "stride": (["--stride", 0], "--stride must be positive"),
    "check-every": (["--check-every", "0"], "--check-every must be a positive integer"),
    "ngram": (["--ngram", 17], "--ngram must lie in 1..16"),
    "cuda": (["--device", "cuda"], "CUDA is not available"),
    "device": (["--device", "tpu"], "use cpu, cuda or cuda:N"),
}


@pytest.mark.parametrize("kind", list(BAD_OPTIONS))
def test_cli_refuses_bad_options(memorizer, tmp_path, capsys, kind):
    if kind == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    corpus = tmp_path / "c.npy"
    np.save(corpus, memorizer.corpus[: 10 * W])
    out = tmp_path / "forget.jsonl"
    extra, message = BAD_OPTIONS[kind]
    argv = ["mine", "--model", memorizer.model_dir, "--corpus", corpus, "--out", out]
    argv += ["--prefix-len", P, "--suffix-len", K, "--no-progress", *extra]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert message in err, err
    assert not out.exists()


def test_cli_refuses_an_out_path_it_cannot_write_before_scanning(memorizer, tmp_path, capsys):
    corpus = tmp_path / "c.npy"
    np.save(corpus, memorizer.corpus)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, message in ((tmp_path, "is a directory"), (blocker / "f.jsonl", "lies under a file")):
        code, _, err = cli(
            capsys, "mine", "--model", memorizer.model_dir, "--corpus", corpus, "--out", out,
            "--prefix-len", P, "--suffix-len", K,
        )  # fmt: skip
        assert code == 2 and message in err


def test_cli_never_overwrites_the_corpus(memorizer, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": memorizer.corpus[:64].tolist()}])
    before = corpus.read_bytes()
    code, _, err = cli(
        capsys, "mine", "--model", memorizer.model_dir, "--corpus", corpus, "--out", corpus,
        "--prefix-len", P, "--suffix-len", K,
    )  # fmt: skip
    assert code == 2 and "must differ from --corpus" in err
    assert corpus.read_bytes() == before
