"""Crash safety: real ``python -m unmemorize.cli`` processes killed with SIGKILL mid-run.

After every kill, each model directory present must load and be complete (config, safetensors
weights, tokenizer, and run.json where the command writes one) or be absent; temporary
directories are hidden (``.NAME.<host>-<pid>.*.tmp``), never named like an output; and running the
same command again completes, resuming where the command supports it (train checkpoints,
sweeps) and cleaning up the killed writer's temporaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from unmemorize.io import CRASH_AT_ENV, atomic_dir, atomic_write_text
from unmemorize.models import load_model

from .conftest import TINY_OVERRIDES

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WEIGHTS = "model.safetensors"


def cli(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def kill_when(args: list[object], condition: Callable[[], bool], timeout: float = 600) -> None:
    """Start the command and SIGKILL its whole process group the moment ``condition()`` holds.

    Fails if the command ends (or the time runs out) before the condition was seen.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "unmemorize.cli", *map(str, args), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    pytest.fail(f"{args[0]} ended before the kill point: {proc.stderr.read().decode()[-2000:]}")


def crash_at(args: list[object], point: str, timeout: float = 600) -> None:
    """Run the command with ``UNMEMORIZE_CRASH_AT=point``: it SIGKILLs itself at that instant.

    For instants too short to hit by polling from outside (a directory between being complete and
    being renamed into place).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        env={**ENV, CRASH_AT_ENV: point},
        timeout=timeout,
    )
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def hidden_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


def visible_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` that a user (or ``unmemorize``) would take for output."""
    dirs = [root] if root.is_dir() else []
    dirs += [p for p in root.rglob("*") if p.is_dir()]
    return [d for d in dirs if not any(part.startswith(".") for part in d.relative_to(root).parts)]


def check_complete_or_absent(root: Path, run_json: set[Path] = frozenset()) -> int:
    """Every visible directory with weights is a complete, loadable model; returns how many.

    ``checkpoints/epoch-*`` directories must hold weights, optimizer and trainer state; model
    directories must hold config, weights and tokenizer, load with ``load_model``, and, when
    listed in ``run_json``, carry their run.json.
    """
    models = 0
    for d in visible_dirs(root):
        names = set(os.listdir(d))
        if d.parent.name == "checkpoints":
            assert {WEIGHTS, "optimizer.pt", "trainer_state.json"} <= names, (d, names)
            continue
        if not any(n.startswith("model") and n.endswith(".safetensors") for n in names):
            continue  # no weights: cannot load, cannot be mistaken for a model
        assert "config.json" in names and "tokenizer.json" in names, (d, names)
        if d in run_json:
            assert "run.json" in names, (d, names)
            json.loads((d / "run.json").read_text())
        model, _tok = load_model(d)
        assert model is not None
        models += 1
    return models


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


# -- the writers clean up after a killed writer ------------------------------------------------


def _dead_owner() -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return f"{socket.gethostname()}-{int(proc.stdout)}"


def test_a_killed_writers_temporaries_are_removed_and_its_aside_directory_restored(tmp_path):
    dead = _dead_owner()
    stale_file = tmp_path / f".report.json.{dead}.k3j4h5g6.tmp"
    stale_file.write_text('{"half": ')
    stale_dir = tmp_path / f".model.{dead}.a1b2c3d4.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    aside = tmp_path / f".model.old-{dead}"  # killed between its two renames: model/ is missing
    aside.mkdir()
    (aside / "weights").write_text("previous")
    live = tmp_path / f".model.{socket.gethostname()}-{os.getpid()}.zzzzzzzz.tmp"
    live.mkdir()  # a live writer's (here: ours) is left alone
    other_host = tmp_path / ".model.elsewhere-1.yyyyyyyy.tmp"
    other_host.mkdir()  # so is another machine's, on a shared disk

    atomic_write_text(tmp_path / "report.json", "{}")
    assert not stale_file.exists() and (tmp_path / "report.json").read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model"):
        raise RuntimeError("interrupted before completion")
    assert (tmp_path / "model" / "weights").read_text() == "previous"  # put back, not lost
    assert not stale_dir.exists() and not aside.exists()
    assert live.is_dir() and other_host.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "model",
        "report.json",
    ]


def test_outputs_get_the_usual_modes_not_the_private_ones_of_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "# r")
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


# -- train: killed during setup, then mid-training; the same command resumes ---------------------


@pytest.mark.slow
def test_train_killed_twice_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", out, *TINY_OVERRIDES, "train.epochs=6", "train.checkpoint_every=1"]

    # 1. the run directory is complete at its hidden temporary path, not yet renamed into place
    crash_at(args, "run:filled")
    assert not out.exists()  # all or nothing
    assert any(tmp_path.glob(".run.*.tmp/experiment.json"))  # the kill landed where it should
    check_complete_or_absent(tmp_path)

    # 2. mid-training, right after the second checkpoint
    kill_when(args, lambda: (out / "checkpoints" / "epoch-000002").is_dir())
    assert not (out / WEIGHTS).exists() and not (out / "run.json").exists()
    check_complete_or_absent(tmp_path)

    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert check_complete_or_absent(tmp_path, {out}) == 1
    record = json.loads((out / "run.json").read_text())
    assert record["resumed_from_epoch"] >= 2  # resumed, not restarted
    assert len(json.loads((out / "history.json").read_text())) == 6
    assert hidden_temporaries(tmp_path) == []  # the killed writers' leftovers are gone


# -- unlearn: killed while the model is being written; the old output survives -------------------


@pytest.mark.slow
def test_unlearn_killed_mid_save_leaves_nothing_or_the_previous_model(tiny_run, tmp_path):
    out = tmp_path / "u"
    args = ["unlearn", "--model", tiny_run.out, "--method", "durable", "--out", out]
    before = digest(tiny_run.out)
    crash_at(args, "u:filled")  # the new model is complete but not yet renamed into place
    assert not out.exists()  # the written model is only ever in the hidden temporary
    check_complete_or_absent(tmp_path)

    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert check_complete_or_absent(tmp_path, {out}) == 1
    assert hidden_temporaries(tmp_path) == []
    previous = digest(out)

    crash_at([*args, "--overwrite", "ratio=0.05"], "u:filled")
    assert digest(out) == previous  # --overwrite replaces only once the new model is complete
    assert check_complete_or_absent(tmp_path, {out}) == 1

    # the worst instant: the previous model renamed aside, the new one not yet in place; the next
    # writer puts the previous one back before it starts
    crash_at([*args, "--overwrite", "ratio=0.05"], "u:swapped-out")
    assert not out.exists()
    assert check_complete_or_absent(tmp_path) == 0  # nothing visible is a half model
    done = cli(*args, "--overwrite", "ratio=0.05")
    assert done.returncode == 0, done.stderr
    assert check_complete_or_absent(tmp_path, {out}) == 1
    assert hidden_temporaries(tmp_path) == []
    assert digest(tiny_run.out) == before  # the input model is never touched


# -- restor: the output directory appears complete or not at all ---------------------------------


@pytest.mark.slow
def test_restor_killed_mid_pipeline_keeps_the_previous_output(tmp_path):
    out = tmp_path / "r"
    args = ["restor", "--preset", "micro", "--methods", "ga", "--out", out]
    mid_run = lambda: any(tmp_path.glob(".r.*.tmp/corrupted/model.safetensors"))  # noqa: E731

    kill_when(args, mid_run)
    assert not out.exists()
    check_complete_or_absent(tmp_path)

    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert (out / "summary.json").is_file()
    assert check_complete_or_absent(tmp_path) == 2  # clean/ and corrupted/
    assert hidden_temporaries(tmp_path) == []
    previous = digest(out)

    kill_when([*args, "--overwrite", "unlearn.level=2"], mid_run)
    assert digest(out) == previous
    assert check_complete_or_absent(tmp_path) == 2


# -- sweep: killed while it trains its base model; --resume finishes it --------------------------


@pytest.mark.slow
def test_sweep_killed_while_training_its_base_model_resumes(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"durable": {"ratio": [0.02]}}))
    out = tmp_path / "s"
    base = out / "base"
    args = ["sweep", "--methods", "durable", "--space", space, "--workers", "1", "--out", out]
    args += [*TINY_OVERRIDES, "train.checkpoint_every=10"]

    kill_when(args, lambda: (base / "checkpoints" / "epoch-000020").is_dir())
    assert not (base / WEIGHTS).exists()
    check_complete_or_absent(out)

    done = cli("sweep", "--resume", out)
    assert done.returncode == 0, done.stderr
    assert "trials: 1 complete, 0 failed" in done.stdout
    assert json.loads((base / "run.json").read_text())["resumed_from_epoch"] >= 20
    assert check_complete_or_absent(out, {base}) == 1
    assert json.loads((out / "summary.json").read_text())["counts"]["complete"] == 1
