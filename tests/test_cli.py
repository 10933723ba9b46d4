"""The command line: happy paths and the bad-input table (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from unmemorize.cli.main import main
from unmemorize.data.tokenizers import math_tokenizer
from unmemorize.metrics import generate_memorized
from unmemorize.models import ModelConfig, build_model, build_model_for, save_model

from .conftest import TINY_OVERRIDES


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_measure_run_candidates_agrees_with_greedy_generation(tiny_run, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, out, _ = run_cli(
        capsys, "measure", "--model", tiny_run.out, "--json", report, "--generate"
    )
    assert code == 0, out
    result = json.loads(report.read_text())
    mem = tiny_run.data.memorization
    verdict, _ = generate_memorized(
        tiny_run.model, mem.prompt_ids, mem.target_ids, mem.prefix_len, mem.suffix_len
    )
    candidate = mem.window_differs()
    assert result["generate_agrees"] is True
    assert [s["memorized"] for s in result["sequences"]] == verdict.tolist()
    assert result["n_memorized"] == int((verdict & candidate).sum()) > 0  # the tiny model memorizes
    assert result["n_candidates"] == int(candidate.sum())
    assert result["memorized_fraction"] == pytest.approx(
        result["n_memorized"] / result["n_candidates"]
    )
    assert "memorized fraction" in out


def test_measure_sequence_file_layouts(tiny_run, tmp_path, capsys):
    mem = tiny_run.data.memorization
    p, k = int(mem.prefix_len[0]), mem.suffix_len
    tok = tiny_run.tokenizer
    rows = [
        {
            "prefix_ids": mem.prompt_ids[i, :p].tolist(),
            "target_ids": mem.target_ids[i, p : p + k].tolist(),
        }
        for i in range(len(mem))
    ]
    rows.append({"input_ids": mem.prompt_ids[0, : p + k].tolist(), "score": 1.0})
    rows.append({"text": tok.decode(mem.prompt_ids[1, : p + k].tolist())})
    seqs = write_jsonl(tmp_path / "seqs.jsonl", rows)
    report = tmp_path / "r.json"
    code, out, err = run_cli(
        capsys,
        "measure",
        "--model",
        tiny_run.out,
        "--sequences",
        seqs,
        "--prefix-len",
        p,
        "--suffix-len",
        k,
        "--json",
        report,
    )
    assert code == 0, err
    got = [s["memorized"] for s in json.loads(report.read_text())["sequences"]]
    expect, _ = generate_memorized(tiny_run.model, mem.prompt_ids, mem.target_ids, p, k)
    assert got[: len(mem)] == expect.tolist()
    assert json.loads(report.read_text())["n_sequences"] == len(mem) + 2


def test_train_via_cli_and_resume_message(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "cpu-mini",
        "--task",
        "mult",
        "--out",
        out,
        "--no-progress",
        *TINY_OVERRIDES,
        "train.epochs=2",
        "train.checkpoint_every=1",
    ]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "trained cpu-mini/mult/noise for 2 epochs" in stdout
    assert (out / "model.safetensors").is_file()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already holds a finished run" in err


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", "measure", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("unmemorize: error: model directory")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    help_ = subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert help_.returncode == 0 and "unmemorize demo" in help_.stdout


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "pickled").mkdir()
    (root / "pickled" / "config.json").write_text("{}")
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"not really")
    small = build_model(ModelConfig(n_layers=1, d_model=16, context_length=32), 10, 1, 2, 3)
    save_model(small, math_tokenizer(), root / "mismatch")  # 14-token tokenizer, 10-row embedding
    nonempty = root / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("precious")
    return root


def _cases(tiny_out: str, root) -> list[tuple[str, list[str], str]]:
    seq = lambda name: str(root / name)  # noqa: E731
    return [
        ("missing model dir", ["measure", "--model", seq("nope")], "does not exist"),
        ("not a HF dir", ["measure", "--model", seq("empty")], "no config.json"),
        ("pickled weights only", ["measure", "--model", seq("pickled")], "pickled weights"),
        (
            "tokenizer/model vocab mismatch",
            ["measure", "--model", seq("mismatch")],
            "does not belong",
        ),
        (
            "sequences too short",
            [
                "measure",
                "--model",
                tiny_out,
                "--sequences",
                seq("short.jsonl"),
                "--prefix-len",
                "16",
                "--suffix-len",
                "16",
            ],
            "short.jsonl:2: sequence has 20 tokens",
        ),
        (
            "malformed jsonl",
            ["measure", "--model", tiny_out, "--sequences", seq("bad.jsonl")],
            "bad.jsonl:3: not valid JSON",
        ),
        (
            "empty jsonl",
            ["measure", "--model", tiny_out, "--sequences", seq("empty.jsonl")],
            "holds no sequences",
        ),
        (
            "missing sequence file",
            ["measure", "--model", tiny_out, "--sequences", seq("nope.jsonl")],
            "does not exist",
        ),
        (
            "unknown layout",
            ["measure", "--model", tiny_out, "--sequences", seq("keys.jsonl")],
            "keys.jsonl:1: expected a key",
        ),
        (
            "id out of vocab",
            [
                "measure",
                "--model",
                tiny_out,
                "--sequences",
                seq("vocab.jsonl"),
                "--prefix-len",
                "4",
                "--suffix-len",
                "4",
            ],
            "outside the model's vocabulary",
        ),
        (
            "window beyond context",
            [
                "measure",
                "--model",
                tiny_out,
                "--sequences",
                seq("short.jsonl"),
                "--prefix-len",
                "40",
                "--suffix-len",
                "40",
            ],
            "exceeds the model's context",
        ),
        (
            "unknown preset",
            ["train", "--preset", "cpu-mni", "--out", seq("o1")],
            "did you mean 'cpu-mini'",
        ),
        ("unknown task", ["train", "--task", "mul", "--out", seq("o2")], "did you mean 'mult'"),
        (
            "unknown variant",
            ["train", "--variant", "backdor", "--out", seq("o3")],
            "did you mean 'backdoor'",
        ),
        (
            "unknown config key",
            ["train", "--out", seq("o4"), "train.epoch=3"],
            "did you mean 'train.epochs'",
        ),
        ("bad config value", ["train", "--out", seq("o5"), "train.lr=fast"], "expected a number"),
        ("non-empty out dir", ["train", "--out", seq("nonempty"), *TINY_OVERRIDES], "not empty"),
        ("demo into non-empty dir", ["demo", "--out", seq("nonempty")], "not empty"),
        ("negative lr", ["train", "--out", seq("o6"), "train.lr=-1"], "lr must be a positive"),
        (
            "regularizer typo",
            ["train", "--out", seq("o7"), *TINY_OVERRIDES, "train.regularizer=spectral"],
            "did you mean 'spectral_norm'",
        ),
    ]


def test_bad_input_table(tiny_run, dirs, tmp_path, capsys):
    write_jsonl(dirs / "short.jsonl", [{"input_ids": [1] * 40}, {"input_ids": [1] * 20}])
    (dirs / "bad.jsonl").write_text(json.dumps({"input_ids": [1] * 40}) + '\n\n{"input_ids": [1,\n')
    (dirs / "empty.jsonl").write_text("\n")
    write_jsonl(dirs / "keys.jsonl", [{"ids": [1, 2, 3]}])
    write_jsonl(dirs / "vocab.jsonl", [{"input_ids": [1, 2, 3, 99, 4, 5, 6, 7]}])
    before = sorted(p.name for p in dirs.iterdir())
    cases = _cases(str(tiny_run.out), dirs)
    assert len(cases) >= 20
    for name, argv, expect in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (name, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("unmemorize: error: "), (name, err)
        assert expect in lines[0], (name, lines[0])
        assert "Traceback" not in err
    assert sorted(p.name for p in dirs.iterdir()) == before  # nothing written
    assert (dirs / "nonempty" / "keep.txt").read_text() == "precious"


def test_nan_loss_is_a_clear_error_and_keeps_checkpoints(tmp_path, capsys):
    out = tmp_path / "nan"
    code, _, err = run_cli(
        capsys,
        "train",
        "--out",
        out,
        "--no-progress",
        *TINY_OVERRIDES,
        "train.epochs=3",
        "train.lr=1e30",
    )
    assert code == 2
    assert "loss became nan" in err.lower() and "lower train.lr" in err
    assert not (out / "model.safetensors").exists()  # no final model from a diverged run


def test_model_dir_is_never_modified(tiny_run, tmp_path, capsys):
    def snapshot():
        return {
            p.relative_to(tiny_run.out): p.read_bytes()
            for p in tiny_run.out.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    run_cli(capsys, "measure", "--model", tiny_run.out, "--json", tmp_path / "a.json")
    assert snapshot() == before
    assert torch.isfinite(next(tiny_run.model.parameters())).all()


def test_overwrite_with_a_bad_option_keeps_the_old_output(tmp_path, capsys):
    old = tmp_path / "demo"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    code, _, err = run_cli(capsys, "demo", "--out", old, "--overwrite", "train.epoch=3")
    assert code == 2 and "did you mean 'train.epochs'" in err
    assert (old / "summary.json").read_text() == "{}"  # validated before anything was cleared


# ------------------------------------------------------------------------------ named windows


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A random model whose context (80) holds both named windows, and 72-token sequences."""
    root = tmp_path_factory.mktemp("wide")
    tok = math_tokenizer()
    model = build_model_for(ModelConfig(n_layers=1, d_model=16, context_length=80), tok)
    save_model(model, tok, root / "model")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (4, 72), generator=gen)
    seqs = write_jsonl(root / "seqs.jsonl", [{"input_ids": r} for r in ids.tolist()])
    return root / "model", seqs


@pytest.mark.parametrize(
    "window, lengths", [("tinymem-32-40", (32, 40)), ("pythia-32-32", (32, 32))]
)
def test_measure_and_mine_take_a_named_window(wide_model, tmp_path, capsys, window, lengths):
    model, seqs = wide_model
    report = tmp_path / "r.json"
    argv = ["measure", "--model", model, "--sequences", seqs, "--json", report]
    code, _, err = run_cli(capsys, *argv, "--window", window)
    assert code == 0, err
    named = json.loads(report.read_text())
    assert (named["prefix_len"], named["suffix_len"]) == lengths
    p, k = (str(n) for n in lengths)
    code, _, err = run_cli(capsys, *argv, "--prefix-len", p, "--suffix-len", k)
    assert code == 0, err
    assert json.loads(report.read_text())["sequences"] == named["sequences"]
    code, out, err = run_cli(
        capsys, "mine", "--model", model, "--corpus", seqs, "--out", tmp_path / "f.jsonl",
        "--window", window, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert f"windows of {p} + {k} tokens" in out


def test_unlearn_takes_a_named_window(wide_model, tmp_path, capsys):
    model, seqs = wide_model
    code, _, err = run_cli(
        capsys, "unlearn", "--model", model, "--forget", seqs, "--method", "ga",
        "--out", tmp_path / "o", "--window", "tinymem-32-40",
    )  # fmt: skip
    # a random model reproduces nothing: the message names the window it checked
    assert code == 2 and "first 32 tokens (40 must match)" in err, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--window", "tinymem-32-4O"], "did you mean 'tinymem-32-40'"),
        (["--window", "pythia-32-32", "--suffix-len", "8"], "--window sets both"),
    ],
)
def test_bad_window_is_one_line(wide_model, capsys, extra, message):
    model, seqs = wide_model
    code, _, err = run_cli(capsys, "measure", "--model", model, "--sequences", seqs, *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err
