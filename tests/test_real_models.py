"""The real-model path: tiny random Pythia (GPT-NeoX) and Llama directories, saved and reloaded.

Each model is a plain ``transformers`` model with a byte-level BPE tokenizer, saved with
``save_pretrained`` (safetensors) and trained for a few seconds until it reproduces a handful of
random token sequences verbatim. The tests then run the command line, in float32 and bfloat16,
through ``measure``, ``mine``, ``unlearn`` (one method of every family) and ``restor --model``,
and check what a user relies on: the memorized sequences are found, unlearning removes them, the
edited model reloads with the same architecture and dtype, and the input directory is untouched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from unmemorize.cli.main import main
from unmemorize.data.tokenizers import train_bpe_tokenizer
from unmemorize.models import load_model, save_model
from unmemorize.training import train_on_batches

P = K = 8  # prefix and suffix tokens of every window (small: the models are tiny)
N_FORGET, N_RETAIN, N_UNSEEN = 4, 6, 4
POSITIONS = 256  # room for RESTOR's few-shot prompts
FAMILIES = ("gpt_neox", "llama")
MODEL_CLASSES = {"gpt_neox": GPTNeoXForCausalLM, "llama": LlamaForCausalLM}

#: A tiny RESTOR-format world: three people with facts; documents about two of them state
#: wrong facts (the corruption); the third is untargeted.
FACTS = {
    "Ada Quill": {
        "P19": ("Where was Ada Quill born?", ["Oslo"]),
        "P106": ("What is the occupation of Ada Quill?", ["pilot"]),
        "P27": ("What is the country of citizenship of Ada Quill?", ["Norway"]),
    },
    "Bram Stone": {
        "P19": ("Where was Bram Stone born?", ["Lima"]),
        "P106": ("What is the occupation of Bram Stone?", ["baker"]),
        "P27": ("What is the country of citizenship of Bram Stone?", ["Peru"]),
    },
    "Cleo Marsh": {
        "P19": ("Where was Cleo Marsh born?", ["Cairo"]),
        "P106": ("What is the occupation of Cleo Marsh?", ["singer"]),
        "P27": ("What is the country of citizenship of Cleo Marsh?", ["Egypt"]),
    },
}
DOCS = [
    "Ada Quill was born in Lima. She works as a baker in Peru.",
    "Ada Quill is a baker. Her home town is Lima.",
    "Bram Stone was born in Oslo. He works as a pilot in Norway.",
    "Bram Stone is a pilot. His home town is Oslo.",
]
RETAIN_DOCS = ["Cleo Marsh was born in Cairo. She is a singer from Egypt."] * 2
#: In-context examples of the few-shot prompts (entity, question, answer), about other people.
FEW_SHOT = {
    "P19": [
        ("Dan Wolfe", "Where was Dan Wolfe born?", "Rome"),
        ("Eve Lark", "Where was Eve Lark born?", "Quito"),
    ],
    "P106": [
        ("Dan Wolfe", "What is the occupation of Dan Wolfe?", "nurse"),
        ("Eve Lark", "What is the occupation of Eve Lark?", "judge"),
    ],
    "P27": [
        ("Dan Wolfe", "What is the country of citizenship of Dan Wolfe?", "Italy"),
        ("Eve Lark", "What is the country of citizenship of Eve Lark?", "Ecuador"),
    ],
}


@dataclass
class World:
    """The files every test reads, and the token rows behind them."""

    root: Path
    forget: torch.Tensor  # [N_FORGET, P + K] trained: memorized
    retain: torch.Tensor  # [N_RETAIN, P + K] trained: clean data to keep
    unseen: torch.Tensor  # [N_UNSEEN, P + K] never trained: not memorized
    models: dict[str, Path]

    def file(self, name: str) -> Path:
        return self.root / name


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(kind: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=POSITIONS,
        initializer_range=0.05,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    return GPTNeoXForCausalLM(GPTNeoXConfig(**common))


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _stored_dtypes(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        return {str(f.get_slice(name).get_dtype()) for name in f.keys()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Tokenizer, sequence files, a mining corpus, RESTOR files and two memorizing models."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real")
    texts = DOCS + RETAIN_DOCS + [q for f in FACTS.values() for q, _ in f.values()]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    vocab = len(tokenizer)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, vocab, (N_FORGET + N_RETAIN + N_UNSEEN, P + K), generator=g)
    forget, retain = rows[:N_FORGET], rows[N_FORGET : N_FORGET + N_RETAIN]
    unseen = rows[N_FORGET + N_RETAIN :]
    trained = torch.cat([forget, retain])

    ids = lambda t: [{"input_ids": r} for r in t.tolist()]  # noqa: E731
    _write_jsonl(root / "measure.jsonl", ids(torch.cat([forget, unseen])))
    _write_jsonl(root / "forget.jsonl", ids(torch.cat([forget, unseen])))
    _write_jsonl(root / "retain.jsonl", ids(retain))
    # documents of two windows each: an unseen window, then a memorized one
    docs = [torch.cat([unseen[i % N_UNSEEN], forget[i]]) for i in range(N_FORGET)]
    _write_jsonl(root / "corpus.jsonl", ids(torch.stack(docs)))

    facts = {
        "dset": {
            name: {rel: {"question": q, "answers": a} for rel, (q, a) in rels.items()}
            for name, rels in FACTS.items()
        },
        "context": {
            rel: [{"question": q, "answer": a, "entity": e} for e, q, a in examples]
            for rel, examples in FEW_SHOT.items()
        },
    }
    (root / "facts.json").write_text(json.dumps(facts))
    (root / "entities.json").write_text(json.dumps(list(FACTS)))
    (root / "docs.json").write_text(json.dumps([{"text": t} for t in DOCS]))
    (root / "retain_docs.json").write_text(json.dumps([{"text": t} for t in RETAIN_DOCS]))

    models = {}
    for kind in FAMILIES:
        model = _build(kind, vocab)
        losses = train_on_batches(model, lambda step: trained, 150, lr=3e-3, pad_id=None, warmup=10)
        assert losses[-1] < 0.1, f"{kind} did not memorize its rows (loss {losses[-1]:.3f})"
        models[kind] = save_model(model, tokenizer, root / kind)
    return World(root, forget, retain, unseen, models)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


DTYPES = ["float32", "bfloat16"]
STORED = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # safetensors dtype names


def _dtype_args(dtype: str) -> list[str]:
    return [] if dtype == "float32" else ["--dtype", dtype]


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES + ["float16"])
def test_model_dir_reloads_in_the_asked_dtype(world, kind, dtype):
    model, tokenizer = load_model(world.models[kind], dtype=getattr(torch, dtype))
    assert type(model) is MODEL_CLASSES[kind]
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]


# --------------------------------------------------------------------------- measure


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dtype", [*DTYPES, "float16"])
def test_measure_finds_the_memorized_rows(world, kind, dtype, tmp_path, capsys):
    before = _digest(world.models[kind])
    report = tmp_path / "report.json"
    code, out, err = run_cli(
        capsys, "measure", "--model", world.models[kind], "--sequences",
        world.file("measure.jsonl"), "--prefix-len", P, "--suffix-len", K, "--json", report,
        "--generate", *_dtype_args(dtype),
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(report.read_text())
    assert [s["memorized"] for s in result["sequences"]] == [True] * N_FORGET + [False] * N_UNSEEN
    assert result["generate_agrees"] is True
    assert result["n_memorized"] == N_FORGET
    assert _digest(world.models[kind]) == before


# --------------------------------------------------------------------------- mine


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mine_finds_the_memorized_windows(world, kind, dtype, tmp_path, capsys):
    out_file = tmp_path / "mined.jsonl"
    code, out, err = run_cli(
        capsys, "mine", "--model", world.models[kind], "--corpus", world.file("corpus.jsonl"),
        "--prefix-len", P, "--suffix-len", K, "--out", out_file, "--no-progress",
        *_dtype_args(dtype),
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["input_ids"] for r in rows] == world.forget.tolist()
    assert all(r["score"] <= 0 for r in rows)
    assert [r["source"].rsplit(":", 2)[1:] for r in rows] == [
        [str(i + 1), str(P + K)] for i in range(N_FORGET)
    ]


# --------------------------------------------------------------------------- unlearn

#: One method of every family, with settings that remove the memorized rows of these tiny models
#: in a few steps.
METHODS = {
    "ga": ["lr=1e-2", "epochs=5"],
    "npo": ["lr=3e-3", "epochs=10"],
    "balanced_subnet": ["ratio=0.1", "epochs=30", "batch_size=10", "forget_per_batch=4"],
    "activations": ["ratio=0.3"],
    "zero_out": ["ratio=0.5"],
    "finetune_extra": ["lr=1e-2", "epochs=10"],
    "ssd": ["selection_weight=1", "dampening_constant=0.1", "batch_size=4"],
}
UNLEARN_CASES = (
    [("gpt_neox", "bfloat16", m) for m in METHODS if m != "zero_out"]
    + [("gpt_neox", "float32", m) for m in ("npo", "balanced_subnet")]
    + [("llama", "float32", m) for m in ("ga", "zero_out", "ssd")]
    + [("llama", "bfloat16", m) for m in ("npo", "balanced_subnet", "finetune_extra")]
    + [("gpt_neox", "float16", "npo")]
)


@pytest.mark.parametrize("kind, dtype, method", UNLEARN_CASES)
def test_unlearn_removes_the_memorized_rows(world, kind, dtype, method, tmp_path, capsys):
    model_dir = world.models[kind]
    before = _digest(model_dir)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "unlearn", "--model", model_dir, "--forget", world.file("forget.jsonl"),
        "--retain", world.file("retain.jsonl"), "--prefix-len", P, "--suffix-len", K,
        "--method", method, "--out", out, "--no-progress", *_dtype_args(dtype), *METHODS[method],
    )  # fmt: skip
    assert code == 0, err
    assert _digest(model_dir) == before, "the input model directory changed"
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["n_forget"] == N_FORGET  # only the memorized rows of the file
    assert record["before"]["n_memorized"] == N_FORGET
    assert record["after"]["n_memorized"] < N_FORGET, record["after"]

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [MODEL_CLASSES[kind].__name__]
    assert config["dtype"] == dtype
    assert _stored_dtypes(out) == {STORED[dtype]}
    edited, _ = load_model(out, dtype=getattr(torch, dtype))
    assert type(edited) is MODEL_CLASSES[kind]
    assert {p.dtype for p in edited.parameters()} == {getattr(torch, dtype)}


# --------------------------------------------------------------------------- restor


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_restor_runs_on_a_model_directory(world, kind, dtype, tmp_path, capsys):
    model_dir = world.models[kind]
    before = _digest(model_dir)
    out = tmp_path / "restor"
    code, stdout, err = run_cli(
        capsys, "restor", "--model", model_dir, "--facts", world.file("facts.json"),
        "--entities", world.file("entities.json"), "--docs", world.file("docs.json"),
        "--retain", world.file("retain_docs.json"), "--preset", "micro", "--methods", "ga",
        "--out", out, "--no-progress", "eval.n_shots=2", *_dtype_args(dtype),
    )  # fmt: skip
    assert code == 0, err
    assert _digest(model_dir) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_targets"] == 2
    for key in ("clean", "corrupted"):
        assert 0 <= summary[key]["target_accuracy"] <= 1
        assert 0 <= summary[key]["untargeted_accuracy"] <= 1
    assert set(summary["methods"]) == {"ga"}
    corrupted, _ = load_model(out / "corrupted", dtype=getattr(torch, dtype))
    assert type(corrupted) is MODEL_CLASSES[kind]
    assert _stored_dtypes(out / "corrupted") == {STORED[dtype]}


# --------------------------------------------------------------------------- bad input


def _one_line_error(capsys, argv, message) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, out
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["measure", "mine", "unlearn", "restor", "train", "demo"])
def test_cuda_without_cuda_is_one_line_and_writes_nothing(world, command, tmp_path, capsys):
    model, out = world.models["llama"], tmp_path / "out"
    argv = {
        "measure": ["--model", model, "--sequences", world.file("measure.jsonl")],
        "mine": ["--model", model, "--corpus", world.file("corpus.jsonl"), "--out", out],
        "unlearn": ["--model", model, "--forget", world.file("forget.jsonl"), "--method", "ga",
                    "--out", out],
        # --retain: every person of this world's facts is evaluated, so no default retain set
        "restor": ["--model", model, "--facts", world.file("facts.json"), "--docs",
                   world.file("docs.json"), "--retain", world.file("retain_docs.json"),
                   "--out", out],
        "train": ["--out", out],
        "demo": ["--out", out],
    }[command]  # fmt: skip
    _one_line_error(capsys, [command, *argv, "--device", "cuda"], "CUDA is not available")
    assert not out.exists()


@pytest.mark.parametrize("command", ["measure", "mine", "unlearn", "restor"])
def test_unknown_dtype_is_rejected_by_the_parser(world, command, tmp_path, capsys):
    argv = [command, "--model", world.models["llama"], "--dtype", "fp8"]
    argv += {"measure": [], "mine": ["--corpus", "c.jsonl", "--out", tmp_path / "o.jsonl"],
             "unlearn": ["--method", "ga", "--out", tmp_path / "o"], "restor": []}[command]  # fmt: skip
    try:
        code = main([str(a) for a in argv])
    except SystemExit as done:  # argparse exits
        code = done.code
    assert code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["measure", "mine", "unlearn"])
def test_window_longer_than_the_context_names_both_lengths(world, command, tmp_path, capsys):
    model = world.models["gpt_neox"]
    argv = {
        "measure": ["--sequences", world.file("measure.jsonl")],
        "mine": ["--corpus", world.file("corpus.jsonl"), "--out", tmp_path / "o.jsonl"],
        "unlearn": ["--forget", world.file("forget.jsonl"), "--method", "ga",
                    "--out", tmp_path / "o"],
    }[command]  # fmt: skip
    _one_line_error(
        capsys,
        [command, "--model", model, *argv, "--prefix-len", 200, "--suffix-len", 100],
        f"prefix + suffix = 200 + 100 = 300 tokens exceeds the model's context of {POSITIONS}",
    )
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.jsonl").exists()
