"""The bad-input matrix: every command, one table, run in-process through ``cli.main``.

Each case must end with exit status 2, exactly one stderr line ``unmemorize: error: ...`` that
names the problem (the expected fragment), no traceback, and nothing written anywhere: the whole
workspace (inputs included) and the input model are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from unmemorize import io as uio
from unmemorize.cli.main import main
from unmemorize.data.tokenizers import math_tokenizer
from unmemorize.models import ModelConfig, build_model, save_model


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the names of every directory) under ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            key = str(p)
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of broken and valid inputs; cases refer to its files as {ws}/NAME."""
    return build_workspace(tmp_path_factory.mktemp("bad_input"))


def build_workspace(root: Path) -> Path:
    """Write the matrix's input files into ``root``."""
    tok = math_tokenizer()
    plain = build_model(ModelConfig(n_layers=1, d_model=16, context_length=32), len(tok), 1, 2, 3)
    save_model(plain, tok, root / "plain")  # a loadable HF model that is not a TinyMem run
    (root / "afile").write_text("a regular file, not a directory\n")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("precious")
    (root / "emptydir").mkdir()
    (root / "notjson.jsonl").write_text("this is not json\n")
    (root / "notjson.json").write_text("{nope")
    (root / "empty.jsonl").write_text("")
    (root / "list.json").write_text(json.dumps([1, 2, 3]))
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (root / "ids.jsonl").write_text(json.dumps({"input_ids": list(range(1, 12)) * 4}) + "\n")
    (root / "corpus.txt").write_text("tokens as plain text\n")
    (root / "corpus.bin").write_bytes(np.arange(1, 13, dtype=np.uint16).tobytes() * 20)
    np.save(root / "corpus3d.npy", np.ones((2, 2, 2), dtype=np.int32))
    (root / "space_unknown.json").write_text(json.dumps({"nosuch_method": {"ratio": [0.1]}}))
    (root / "space_badkey.json").write_text(json.dumps({"durable": {"ratioo": [0.1]}}))
    (root / "broken_run").mkdir()
    (root / "broken_run" / "summary.json").write_text("{truncated")
    (root / "norun").mkdir()
    (root / "norun" / "notes.txt").write_text("no run here")
    return root


# (name, argv, expected fragment of the one error line). {ws}: the workspace, {run}: a tiny
# trained TinyMem run, {out}: a fresh output path that must not be created.
W8 = ["--prefix-len", "8", "--suffix-len", "8"]  # a window that fits the tiny model's context
CASES: list[tuple[str, list[str], str]] = [
    # -- argparse-level mistakes: one line too, not a usage dump
    ("unknown command", ["trian"], "invalid choice: 'trian'"),
    ("missing required option", ["unlearn", "--model", "{run}", "--out", "{out}"],
     "--method"),
    ("non-integer option", ["measure", "--model", "{run}", "--batch-size", "many"],
     "invalid int value"),
    ("ls unknown kind", ["ls", "widgets"], "invalid choice: 'widgets'"),
    ("sweep search choice", ["sweep", "--search", "random", "--out", "{out}"],
     "invalid choice: 'random'"),
    # -- demo
    ("demo unknown method", ["demo", "--out", "{out}", "--methods", "balanced_subnett"],
     "did you mean 'balanced_subnet'"),
    ("demo out is a file", ["demo", "--out", "{ws}/afile"], "is a file"),
    ("demo out under a file", ["demo", "--out", "{ws}/afile/demo"], "under a file"),
    # -- train
    ("train zero epochs", ["train", "--out", "{out}", "train.epochs=0"], "epochs"),
    ("train negative batch", ["train", "--out", "{out}", "train.batch_size=-4"], "batch_size"),
    ("train zero layers", ["train", "--out", "{out}", "model.n_layers=0"], "n_layers"),
    ("train nan lr", ["train", "--out", "{out}", "train.lr=nan"], "lr"),
    ("train unknown regularizer option",
     ["train", "--out", "{out}", "train.regularizer=spectral_norm",
      "train.regularizer_options={{\"strenght\": 1}}"], "strenght"),
    ("train out under a file", ["train", "--out", "{ws}/afile/run"], "under a file"),
    ("train malformed override", ["train", "--out", "{out}", "train.epochs"], "key=value"),
    # -- measure
    ("measure zero batch", ["measure", "--model", "{run}", "--batch-size", "0"], "--batch-size"),
    ("measure window without sequences", ["measure", "--model", "{run}", "--prefix-len", "4"],
     "--sequences"),
    ("measure non-run without sequences", ["measure", "--model", "{ws}/plain"], "--sequences"),
    ("measure sequences not json", ["measure", "--model", "{run}", "--sequences",
     "{ws}/notjson.jsonl"], "not valid JSON"),
    ("measure binary sequences", ["measure", "--model", "{run}", "--sequences",
     "{ws}/binary.jsonl"], "binary.jsonl"),
    ("measure unknown device", ["measure", "--model", "{run}", "--device", "tpu"],
     "unknown device"),
    ("measure unknown dtype", ["measure", "--model", "{run}", "--dtype", "float13"], "float13"),
    ("measure json under a file", ["measure", "--model", "{run}", "--json",
     "{ws}/afile/report.json"], "under a file"),
    ("measure json is a dir", ["measure", "--model", "{run}", "--json", "{ws}/emptydir"],
     "is a directory"),
    ("measure negative prefix", ["measure", "--model", "{run}", "--sequences", "{ws}/ids.jsonl",
     "--prefix-len", "-3", "--suffix-len", "4"], "prefix"),
    # -- unlearn
    ("unlearn unknown method", ["unlearn", "--model", "{run}", "--method", "balanced_subnett",
     "--out", "{out}"], "did you mean 'balanced_subnet'"),
    ("unlearn out is the model", ["unlearn", "--model", "{run}", "--method", "durable",
     "--out", "{run}", "--overwrite"], "must differ from --model"),
    ("unlearn unknown option", ["unlearn", "--model", "{run}", "--method", "durable",
     "--out", "{out}", "ratioo=0.1"], "ratioo"),
    ("unlearn ratio out of range", ["unlearn", "--model", "{run}", "--method",
     "balanced_subnet", "--out", "{out}", "ratio=2"], "ratio"),
    ("unlearn diverging lr", ["unlearn", "--model", "{run}", "--method", "ga", "--out", "{out}",
     "lr=1e9", "--no-progress"], "lower"),
    ("unlearn missing forget", ["unlearn", "--model", "{run}", "--method", "durable",
     "--forget", "{ws}/missing.jsonl", *W8, "--out", "{out}"], "missing.jsonl"),
    ("unlearn plain model without forget", ["unlearn", "--model", "{ws}/plain", "--method",
     "durable", "--out", "{out}"], "--forget"),
    ("unlearn non-empty out", ["unlearn", "--model", "{run}", "--method", "durable",
     "--out", "{ws}/nonempty"], "not empty"),
    ("unlearn zero batch", ["unlearn", "--model", "{run}", "--method", "durable",
     "--out", "{out}", "--batch-size", "0"], "--batch-size"),
    ("unlearn out under a file", ["unlearn", "--model", "{run}", "--method", "durable",
     "--out", "{ws}/afile/x"], "under a file"),
    # -- restor
    ("restor unknown preset", ["restor", "--preset", "mikro", "--out", "{out}"],
     "did you mean 'micro'"),
    ("restor data without model", ["restor", "--facts", "{ws}/list.json", "--out", "{out}"],
     "--facts needs --model"),
    ("restor model without facts", ["restor", "--model", "{run}", "--out", "{out}"],
     "--facts"),
    ("restor missing facts file", ["restor", "--model", "{run}", "--facts",
     "{ws}/missing.json", "--docs", "{ws}/list.json", "--out", "{out}"], "missing.json"),
    ("restor negative level", ["restor", "--level", "-1", "--out", "{out}"], "level"),
    ("restor unknown method", ["restor", "--methods", "npoo", "--out", "{out}"],
     "did you mean 'npo'"),
    ("restor unknown key", ["restor", "--out", "{out}", "clean.stepz=3"], "clean.steps"),
    ("restor out under a file", ["restor", "--out", "{ws}/afile/r"], "under a file"),
    # -- restor stats
    ("stats missing facts", ["restor", "stats", "--facts", "{ws}/missing.json"], "missing.json"),
    ("stats facts not json", ["restor", "stats", "--facts", "{ws}/notjson.json"], "notjson.json"),
    ("stats facts wrong shape", ["restor", "stats", "--facts", "{ws}/list.json"], "list.json"),
    # -- ls
    ("ls keys unknown task", ["ls", "keys", "--task", "mul"], "did you mean 'mult'"),
    # -- sweep
    ("sweep unknown method in space file", ["sweep", "--space", "{ws}/space_unknown.json",
     "--model", "{run}", "--out", "{out}"], "nosuch_method"),
    ("sweep unknown option in space file", ["sweep", "--space", "{ws}/space_badkey.json",
     "--model", "{run}", "--out", "{out}"], "ratioo"),
    ("sweep resume missing dir", ["sweep", "--resume", "{ws}/missing"], "missing"),
    ("sweep out under a file", ["sweep", "--methods", "durable", "--model", "{run}",
     "--out", "{ws}/afile/s"], "under a file"),
    # -- mine
    ("mine missing corpus", ["mine", "--model", "{run}", "--corpus", "{ws}/missing.jsonl",
     *W8, "--out", "{out}"], "does not exist"),
    ("mine unknown corpus format", ["mine", "--model", "{run}", "--corpus", "{ws}/corpus.txt",
     *W8, "--out", "{out}"], "corpus.txt"),
    ("mine bin without dtype", ["mine", "--model", "{run}", "--corpus", "{ws}/corpus.bin",
     *W8, "--out", "{out}"], "--dtype-ids"),
    ("mine 3-d npy", ["mine", "--model", "{run}", "--corpus", "{ws}/corpus3d.npy",
     *W8, "--out", "{out}"], "3-D"),
    ("mine empty corpus", ["mine", "--model", "{run}", "--corpus", "{ws}/empty.jsonl",
     *W8, "--out", "{out}"], "empty"),
    ("mine check-every zero", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     *W8, "--out", "{out}", "--check-every", "0"], "--check-every"),
    ("mine jaccard out of range", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     *W8, "--out", "{out}", "--dedup-jaccard", "1.5"], "--dedup-jaccard"),
    ("mine zero prefix", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     "--out", "{out}", "--prefix-len", "0"], "--prefix-len"),
    ("mine out is a dir", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     *W8, "--out", "{ws}/emptydir"], "is a directory"),
    ("mine out is the corpus", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     *W8, "--out", "{ws}/ids.jsonl"], "must differ from --corpus"),
    ("mine window beyond context", ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl",
     "--out", "{out}", "--prefix-len", "40", "--suffix-len", "40"], "context"),
    # -- report
    ("report missing dir", ["report", "{ws}/missing"], "does not exist"),
    ("report dir without runs", ["report", "{ws}/norun", "--out", "{out}"], "no run"),
    ("report broken summary", ["report", "{ws}/broken_run", "--out", "{out}"], "summary.json"),
    ("report out is a file", ["report", "{ws}/broken_run", "--out", "{ws}/afile"], "afile"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "argv", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    name, argv, expect, ws, tiny_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # commands with a default --out would write here
    out = tmp_path / "out"
    fill = {"ws": ws, "run": tiny_run.out, "out": out}
    args = [a.format(**fill) for a in argv]
    before = snapshot(ws, tiny_run.out, tmp_path)
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (name, captured.out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unmemorize: error: "), (name, err)
    assert expect in lines[0], (name, lines[0])
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
    assert snapshot(ws, tiny_run.out, tmp_path) == before, name  # nothing written, nothing changed


def test_the_matrix_spans_every_command_with_at_least_30_cases():
    commands = {
        argv[0] if argv[:2] != ["restor", "stats"] else "restor stats" for _n, argv, _e in CASES
    }
    expected = {"demo", "train", "measure", "unlearn", "restor", "restor stats", "ls", "sweep"}
    assert expected | {"mine", "report"} <= commands
    assert len(CASES) >= 30


# -- unwritable output and a full disk ----------------------------------------------------------


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory nobody may create files in: chmod 0o500, or (as root, which ignores
    permissions) a path under a regular file, which no one can create either."""
    if os.geteuid() == 0:
        blocker = tmp_path / "blocker"
        blocker.write_text("a file")
        return blocker
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{locked}/run"],
        ["unlearn", "--model", "{run}", "--method", "durable", "--out", "{locked}/u"],
        ["measure", "--model", "{run}", "--json", "{locked}/m.json"],
        ["mine", "--model", "{run}", "--corpus", "{ws}/ids.jsonl", "--out", "{locked}/f.jsonl"],
        ["report", "{ws}/broken_run", "--out", "{locked}/rep"],
        ["sweep", "--methods", "durable", "--model", "{run}", "--out", "{locked}/s"],
        ["restor", "--out", "{locked}/r"],
        ["demo", "--out", "{locked}/d"],
    ],
    ids=["train", "unlearn", "measure", "mine", "report", "sweep", "restor", "demo"],
)
def test_unwritable_output_location_is_refused_up_front(argv, ws, tiny_run, tmp_path, capsys):
    locked = _unwritable_dir(tmp_path)
    try:
        args = [a.format(ws=ws, run=tiny_run.out, locked=locked) for a in argv]
        before = snapshot(ws, tiny_run.out, tmp_path)
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("unmemorize: error: "), err
        assert str(locked) in err and ("under a file" in err or "cannot write" in err), err
        assert snapshot(ws, tiny_run.out, tmp_path) == before
    finally:
        if locked.is_dir():
            locked.chmod(0o700)


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_report_file_leaves_nothing(
    tiny_run, tmp_path, capsys, monkeypatch
):
    target = tmp_path / "m.json"
    monkeypatch.setattr(uio, "_write_and_sync", _no_space)
    assert main(["measure", "--model", str(tiny_run.out), "--json", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unmemorize: error: disk full"), err
    assert "m.json" in err and "free" in err
    assert list(tmp_path.iterdir()) == []  # no target, no temporary file


def test_disk_full_while_saving_a_model_leaves_no_partial_model(
    tiny_run, tmp_path, capsys, monkeypatch
):
    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def save_then_fill_the_disk(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # some bytes land, then the disk is full
        raise OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / "model.safetensors")
        )

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_fill_the_disk)
    out = tmp_path / "u"
    before = snapshot(tiny_run.out)
    argv = ["unlearn", "--model", str(tiny_run.out), "--method", "durable", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unmemorize: error: disk full"), err
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary directory
    assert snapshot(tiny_run.out) == before
