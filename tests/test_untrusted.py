"""Untrusted input files: bounded readers, no pickles, no YAML objects, no code from model dirs.

Each hostile file is refused with one line that names the file (and line) and the fix, and any
code it carries never runs (a sentinel file it would create stays absent).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unmemorize.benchmarks.tinymem.text_data import load_corpus
from unmemorize.cli.main import main
from unmemorize.data.corpus import open_corpus
from unmemorize.data.sequences import read_sequences
from unmemorize.io import iter_jsonl, read_json, read_text, read_yaml
from unmemorize.models import ModelConfig, ModelDirError, build_model, load_model, save_model

TINY = dict(n_layers=1, d_model=16, n_heads=2, context_length=16)
IDS = dict(vocab_size=14, bos_id=10, eos_id=11, pad_id=13)
SRC = Path(__import__("unmemorize").__file__).parent


def one_line_error(capsys, *argv) -> str:
    """Run the CLI, expect exit 2 and a single ``unmemorize: error:`` line; return it."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unmemorize: error: "), err
    assert "Traceback" not in err
    return lines[0]


class _Payload:
    """Unpickling this creates ``sentinel``: the proof that a pickle was executed."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


# --------------------------------------------------------------------------- model directories


def test_pickled_weights_only_dir_is_refused_and_never_unpickled(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    model = build_model(ModelConfig(**TINY), **IDS)
    model.config.save_pretrained(tmp_path / "m")
    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Payload(sentinel)}, f)
    line = one_line_error(capsys, "measure", "--model", tmp_path / "m")
    assert "only pickled weights (pytorch_model.bin)" in line and "safetensors" in line
    assert not sentinel.exists()


def test_model_dir_that_needs_remote_code_is_refused_and_its_code_never_runs(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    model = build_model(ModelConfig(**TINY), **IDS)
    from unmemorize.data.tokenizers import math_tokenizer

    out = save_model(model, math_tokenizer(), tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "evil_lm"
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (out / "config.json").write_text(json.dumps(config))
    code = f"open({str(sentinel)!r}, 'w').close()\n"
    (out / "configuration_evil.py").write_text(code)
    (out / "modeling_evil.py").write_text(code)

    with pytest.raises(ModelDirError, match="never runs code from a model directory"):
        load_model(out)
    line = one_line_error(capsys, "measure", "--model", out)
    assert "needs its own Python code" in line and "'evil_lm'" in line
    assert not sentinel.exists()


def test_model_dir_with_a_broken_config_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2",')
    (tmp_path / "model.safetensors").write_bytes(b"")
    line = one_line_error(capsys, "measure", "--model", tmp_path)
    assert "config.json: not valid JSON (line 1" in line


@pytest.mark.parametrize(
    ("header", "why"),
    # the reasons are safetensors.safe_open's (it parses the header since issue 17)
    [
        (b"[1, 2]", "invalid JSON in header: invalid type: sequence"),
        (
            b'{"w": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 4]}}',
            'invalid type: string "ab", expected a sequence',
        ),
        (b'{"w": {"dtype": "F32", "shape": [2, -3]}}', "invalid value: integer `-3`"),
        (b'{"w": 5}', "invalid type: integer `5`, expected struct TensorInfo"),
        (b"[" * 50_000 + b"]" * 50_000, "invalid JSON in header"),
        (b"\xff\xfe", "invalid UTF-8 in header"),
        # a valid header whose byte ranges do not cover the file (the data is missing)
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "not fully covered"),
    ],
)
def test_hostile_safetensors_header_is_one_line(tmp_path, capsys, header, why):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    line = one_line_error(capsys, "measure", "--model", tmp_path)
    assert "model.safetensors is not a safetensors file" in line and why in line


def test_safetensors_header_size_is_bounded(tmp_path, capsys):
    """A header length of 1 GB is refused before anything is read (the 100 MB bound)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    line = one_line_error(capsys, "measure", "--model", tmp_path)
    assert "model.safetensors is not a safetensors file (header too large)" in line


def test_torch_load_with_weights_only_refuses_a_pickle_payload(tmp_path):
    """What checkpoint resume relies on: ``weights_only=True`` never runs a pickled object."""
    sentinel = tmp_path / "pwned"
    torch.save({"state": _Payload(sentinel)}, tmp_path / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert not sentinel.exists()


def test_source_audit_every_reader_is_safe():
    """No unsafe deserializer anywhere in the package: a new one must take the safe form."""
    unsafe = {
        r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
        r"np\.load\((?![^)]*allow_pickle=False)": "np.load without allow_pickle=False",
        r"yaml\.(?:load|unsafe_load|full_load)\(": "yaml.load (use io.read_yaml)",
        r"^\s*(?:import pickle|from pickle|import dill|import joblib)": "a pickle import",
        r"trust_remote_code=True(?!`)": "trust_remote_code=True",
        r"\.read_text\(": "read_text (use io.read_text / read_json: they are bounded)",
        r"json\.load\(": "json.load on a file (use io.read_json)",
    }
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for pattern, what in unsafe.items():
            for m in re.finditer(pattern, text, flags=re.MULTILINE):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- size and line bounds


def test_line_at_the_limit_is_read_one_byte_more_is_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    line = json.dumps({"input_ids": list(range(30))})
    path.write_text(f"{line}\n\n{line}\n")
    assert [n for n, _ in iter_jsonl(path, max_line_bytes=len(line))] == [1, 3]
    with pytest.raises(ValueError) as err:
        list(iter_jsonl(path, max_line_bytes=len(line) - 1))
    msg = str(err.value)
    assert f"x.jsonl:1: line longer than the limit of {len(line) - 1} bytes" in msg
    assert "UNMEMORIZE_MAX_LINE_BYTES" in msg and "\n" not in msg


def test_a_line_without_newline_is_never_read_whole(tmp_path):
    path = tmp_path / "endless.jsonl"
    path.write_bytes(b'{"text": "' + b"a" * 200_000)  # no newline, no closing quote
    with pytest.raises(ValueError, match="endless.jsonl:1: line longer than the limit of 1000"):
        next(iter_jsonl(path, max_line_bytes=1000))


def test_oversized_sequence_line_and_file_are_refused_via_environment(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "seqs.jsonl"
    path.write_text(json.dumps({"input_ids": [1] * 40}) + "\n")
    monkeypatch.setenv("UNMEMORIZE_MAX_LINE_BYTES", "50")
    with pytest.raises(ValueError, match=r"seqs.jsonl:1: line longer than the limit of 50 bytes"):
        read_sequences(path, None, 14, 4, 4)
    monkeypatch.setenv("UNMEMORIZE_MAX_LINE_BYTES", "1000")
    assert read_sequences(path, None, 14, 4, 4).shape == (1, 8)

    size = path.stat().st_size
    monkeypatch.setenv("UNMEMORIZE_MAX_FILE_BYTES", str(size - 1))
    with pytest.raises(ValueError) as err:
        read_sequences(path, None, 14, 4, 4)
    assert f"has {size} bytes, more than the limit of {size - 1}" in str(err.value)
    assert f"UNMEMORIZE_MAX_FILE_BYTES={size}" in str(err.value)

    monkeypatch.setenv("UNMEMORIZE_MAX_FILE_BYTES", "lots")
    with pytest.raises(ValueError, match="UNMEMORIZE_MAX_FILE_BYTES must be a positive number"):
        read_json(path)


def test_oversized_files_are_refused_by_every_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMEMORIZE_MAX_FILE_BYTES", "16")
    big = "x" * 17
    cases = {
        "a.json": lambda p: read_json(p),
        "a.yaml": lambda p: read_yaml(p),
        "a.txt": lambda p: load_corpus(p),
        "b.jsonl": lambda p: load_corpus(p),
    }
    for name, read in cases.items():
        path = tmp_path / name
        path.write_text(big)
        with pytest.raises(ValueError, match=f"{name} has 17 bytes, more than the limit of 16"):
            read(path)


def test_streamed_corpus_bounds_lines_not_files(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"input_ids": [i] * 8}) + "\n" for i in range(4)))
    monkeypatch.setenv("UNMEMORIZE_MAX_FILE_BYTES", "16")  # the corpus is streamed: no file limit
    ids = np.concatenate([b for b, _ in open_corpus(path).batches(8, 8, 2)])
    assert ids[:, 0].tolist() == [0, 1, 2, 3]
    monkeypatch.setenv("UNMEMORIZE_MAX_LINE_BYTES", "20")
    with pytest.raises(ValueError, match="c.jsonl:1: line longer than the limit of 20 bytes"):
        next(open_corpus(path).batches(8, 8, 2))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
        ('{"input_ids": [' + "9" * 5000 + "]}", "not valid JSON (Exceeds the limit"),
        ('{"input_ids": [1, 2,]}', "not valid JSON (column 21: Expecting value)"),
    ],
)
def test_hostile_json_lines_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "h.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(ValueError) as err:
        list(iter_jsonl(path))
    assert str(err.value).startswith(f"{path}:1: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "h.json").write_text(content)
    with pytest.raises(ValueError, match="h.json: not valid JSON"):
        read_json(tmp_path / "h.json")


def test_non_utf8_text_is_refused_with_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(bad byte at offset 3\)"):
        read_text(path)
    with pytest.raises(ValueError, match=r"latin1.txt:1: not UTF-8 text"):
        list(iter_jsonl(path))


def test_missing_file_is_file_not_found(tmp_path):
    for read in (read_text, read_json, read_yaml, lambda p: list(iter_jsonl(p))):
        with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
            read(tmp_path / "nope.json")


# --------------------------------------------------------------------------- YAML and numpy


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {sentinel}']",
        "!!python/object/new:subprocess.Popen [['touch', '{sentinel}']]",
        "!!python/name:os.system",
    ],
)
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, tag, capsys):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "space.yaml"
    path.write_text("ga:\n  lr: " + tag.format(sentinel=sentinel) + "\n")
    with pytest.raises(ValueError, match=r"space.yaml: YAML tag 'tag:yaml.org,2002:python/"):
        read_yaml(path)
    line = one_line_error(
        capsys, "sweep", "--methods", "ga", "--space", path, "--out", tmp_path / "s"
    )
    assert "is not allowed; only plain YAML data" in line
    assert not sentinel.exists()
    assert not (tmp_path / "s").exists()


def test_plain_yaml_is_read_and_broken_yaml_is_one_line(tmp_path):
    path = tmp_path / "space.yml"
    path.write_text("ga:\n  lr: [1.0e-5, 5.0e-5]\nbalanced_subnet:\n  ratio: {low: 0.001}\n")
    assert read_yaml(path) == {
        "ga": {"lr": [1e-5, 5e-5]},
        "balanced_subnet": {"ratio": {"low": 0.001}},
    }
    path.write_text("ga: [1, 2\n")
    with pytest.raises(ValueError, match=r"space.yml: not valid YAML \(.* at line 2\)"):
        read_yaml(path)


def test_npy_with_object_dtype_is_refused_and_never_unpickled(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "corpus.npy"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _Payload(sentinel), 1
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ValueError) as err:
        open_corpus(path)
    msg = str(err.value)
    assert "corpus.npy is not a readable .npy array" in msg and "numpy.save" in msg
    assert "\n" not in msg
    assert not sentinel.exists()
