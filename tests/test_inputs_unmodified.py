"""Input models and data files are never modified: every model-reading command, hashed before/after.

The fingerprint of an input is the sha256 and modification time (ns) of every file and the
modification time of every directory under it, so a rewritten, touched, added or removed file
(even a temporary one created and deleted inside an input directory) shows up.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from unmemorize.cli.main import main

pytestmark = pytest.mark.slow  # runs RESTOR micro and a sweep end to end


def fingerprint(*paths: Path) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for root in paths:
        for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            stat = os.stat(p)
            content = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p)] = (content, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny TinyMem run, a RESTOR micro run (its clean model and RESTOR-format files) and
    data files of every kind the commands read."""
    root = tmp_path_factory.mktemp("inputs")
    restor = root / "restor"
    assert main(["restor", "--preset", "micro", "--methods", "ga", "--out", str(restor)]) == 0
    mem = tiny_run.data.memorization
    rows = [{"input_ids": ids.tolist()} for ids in mem.target_ids[:6]]
    seqs = root / "seqs.jsonl"
    seqs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    retain = root / "retain.jsonl"
    retain.write_text(
        "".join(
            json.dumps({"input_ids": ids.tolist()}) + "\n" for ids in tiny_run.data.train_ids[:8]
        )
    )
    space = root / "space.json"
    space.write_text(json.dumps({"durable": {"ratio": [0.02]}}))
    files = {"run": tiny_run.out, "restor": restor, "seqs": seqs, "retain": retain, "space": space}
    files["clean"], files["data"] = restor / "clean", restor / "data"
    return files


P, K = "--prefix-len", "--suffix-len"
COMMANDS = {
    "measure run": ["measure", "--model", "{run}", "--json", "{out}.json"],
    "measure file": ["measure", "--model", "{run}", "--sequences", "{seqs}", P, "16", K, "16",
                     "--generate", "--json", "{out}.json"],
    "unlearn run": ["unlearn", "--model", "{run}", "--method", "durable", "--out", "{out}"],
    "unlearn files": ["unlearn", "--model", "{run}", "--method", "grad_diff", "--forget", "{seqs}",
                      "--retain", "{retain}", P, "16", K, "16", "--out", "{out}", "epochs=1"],
    "mine": ["mine", "--model", "{run}", "--corpus", "{seqs}", P, "16", K, "16", "--out",
             "{out}.jsonl"],
    "restor --model": ["restor", "--model", "{clean}", "--facts", "{data}/facts.json",
                       "--entities", "{data}/entities.json", "--docs",
                       "{data}/corruption_docs.json", "--methods", "ga", "--out", "{out}"],
    "sweep --model": ["sweep", "--model", "{run}", "--methods", "durable", "--space", "{space}",
                      "--workers", "1", "--out", "{out}"],
    "report": ["report", "{run}", "{restor}", "--out", "{out}"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_leaves_its_inputs_byte_for_byte_unchanged(command, inputs, tmp_path, capsys):
    argv = [a.format(**inputs, out=tmp_path / "out") for a in COMMANDS[command]]
    watched = list(inputs.values())
    before = fingerprint(*watched)
    code = main(argv if argv[0] == "measure" else [*argv, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert fingerprint(*watched) == before
    assert any(tmp_path.iterdir())  # the command did write its output, elsewhere
