"""Sweeps: search spaces, the results store, local and Ray backends, resume after kill -9."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from unmemorize.benchmarks.spaces import (
    grid_points,
    params_to_overrides,
    space_size,
    trial_key,
)
from unmemorize.cli.main import main
from unmemorize.sweep import ResultsStore, StorageError, make_spec, resolve_space, run_sweep
from unmemorize.sweep.backends import check_ray_address

# Fast on the tiny model: 2 + 2 + 2 = 6 trials, each well under a few seconds.
SMALL_SPACE = {
    "durable": {"ratio": [0.01, 0.02]},
    "zero_out": {"ratio": [0.05, 0.1]},
    "balanced_subnet": {"ratio": [0.01, 0.05], "epochs": [1]},
}
# For the kill test: 11 trials, slow enough that the sweep is surely mid-way when killed.
KILL_SPACE = {
    "durable": {"ratio": [0.005, 0.01, 0.02]},
    "zero_out": {"ratio": [0.05, 0.1]},
    "balanced_subnet": {"ratio": [0.01, 0.02, 0.05], "epochs": [2, 4]},
}


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _db_rows(sweep_dir: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(sweep_dir / "sweep.db") as conn:
        return conn.execute("SELECT key, status, attempts FROM unmemorize_trials").fetchall()


# -- search spaces -------------------------------------------------------------------------------


def test_grid_points_are_the_cartesian_product_in_a_stable_order():
    points = grid_points({"lr": [1, 2], "alpha": ["a", "b", "c"]})
    assert len(points) == 6
    assert points[0] == {"alpha": "a", "lr": 1} and points[-1] == {"alpha": "c", "lr": 2}
    assert grid_points({}) == [{}]
    assert space_size({"lr": [1, 2], "x": [0]}) == 2
    assert space_size({"lr": {"low": 1e-5, "high": 1e-3}}) is None


def test_a_scalar_is_a_fixed_value_and_a_list_of_dicts_the_union_of_their_grids():
    assert grid_points({"lr": 1, "alpha": ["a", "b"]}) == [
        {"alpha": "a", "lr": 1},
        {"alpha": "b", "lr": 1},
    ]
    spec = [{"ratio": 0.05, "max_rows": 8}, {}, {"ratio": [0.01, 0.02]}]
    assert grid_points(spec) == [
        {"max_rows": 8, "ratio": 0.05},
        {},
        {"ratio": 0.01},
        {"ratio": 0.02},
    ]
    assert space_size(spec) == 4
    assert resolve_space(["zero_out"], {"zero_out": spec}) == {"zero_out": spec}
    with pytest.raises(ValueError, match="listed twice"):
        resolve_space(["ga"], {"ga": [{"lr": 1e-5}, {"lr": 1e-5}]})
    with pytest.raises(ValueError, match="TPE needs one"):
        resolve_space(["ga"], {"ga": [{"lr": 1e-5}]}, "tpe")


def test_trial_keys_are_stable_and_distinguish_configs():
    a = trial_key("ga", {"lr": 1e-5, "epochs": 1})
    assert a == trial_key("ga", {"epochs": 1, "lr": 1e-5})  # order does not matter
    assert a != trial_key("ga", {"lr": 2e-5, "epochs": 1})
    assert a != trial_key("npo", {"lr": 1e-5, "epochs": 1})
    assert a.startswith("ga-")
    assert params_to_overrides({"lr": 1e-4, "divergence": "kl"}) == ["divergence=kl", "lr=0.0001"]


def test_shipped_spaces_are_valid_and_name_registered_methods():
    from unmemorize.benchmarks import get_benchmark
    from unmemorize.methods import METHODS

    for name in ("paper", "cpu-mini", "demo"):
        space = resolve_space(None, name)
        assert set(space) <= set(METHODS.names()), name
    paper = get_benchmark("tinymem").space("paper")
    assert paper["balanced_subnet"]["retain_weight"] == [0.05, 0.5, 0.7]
    # the original code ignored its ig_steps argument: every run used 20 steps (issue 14)
    assert paper["integrated_gradients"]["ig_steps"] == [20]


@pytest.mark.parametrize(
    ("space", "search", "message"),
    [
        ({"ga": {"learning_rate": [1e-5]}}, "grid", "unknown option of ga 'learning_rate'"),
        ({"ga": {"lr": []}}, "grid", "empty"),
        ({"ga": {"lr": {"low": 1e-5, "high": 1e-3}}}, "grid", "grid search needs a list"),
        ({"ga": {"lr": {"low": 1e-3, "high": 1e-5}}}, "tpe", "low < high"),
        ({"ga": {"lr": [1e-5, 1e-5]}}, "grid", "listed twice"),
        ({"durable": {"ratio": [1.5]}}, "grid", "ratio"),
        ({"ga": {"lr": "fast"}}, "grid", "ga option lr"),
        ({"ga": ["lr"]}, "grid", "must map method names"),
    ],
)
def test_bad_search_spaces_are_refused_with_the_reason(space, search, message):
    with pytest.raises(ValueError, match=message):
        resolve_space(list(space), space, search)


def test_unknown_method_and_space_names_suggest_the_right_one():
    with pytest.raises(ValueError, match="did you mean 'balanced_subnet'"):
        resolve_space(["balanced_subnett"], "cpu-mini")
    with pytest.raises(ValueError, match="unknown search space 'papr'"):
        resolve_space(None, "papr")
    with pytest.raises(ValueError, match="no methods"):
        resolve_space([], "cpu-mini")


# -- the results store ---------------------------------------------------------------------------


def test_store_records_each_trial_once_and_requeues_interrupted_ones(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    assert store.add_pending("s", "k1", "ga", {"lr": 1e-5})
    assert not store.add_pending("s", "k1", "ga", {"lr": 1e-5})  # exactly once
    assert store.add_pending("s", "k2", "ga", {"lr": 2e-5})
    assert store.add_pending("other", "k1", "ga", {"lr": 1e-5})  # another sweep, same db
    store.mark_running("s", "k1")
    store.mark_running("s", "k2")
    store.complete("s", "k1", {"accuracy": 0.9}, -0.5, 1.25, "out/k1")
    assert store.counts("s") == {"pending": 0, "running": 1, "complete": 1, "failed": 0}
    assert store.requeue("s") == 1  # the running one (a killed coordinator's)
    records = {r.key: r for r in store.records("s")}
    assert records["k1"].status == "complete" and records["k1"].result == {"accuracy": 0.9}
    assert records["k1"].score == -0.5 and records["k1"].seconds == 1.25
    assert records["k2"].status == "pending" and records["k2"].attempts == 1
    store.fail("s", "k2", "boom")
    assert store.records("s", "failed")[0].error == "boom"
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        ("sqlite:////nonexistent-dir-xyz/sub/s.db", "does not exist"),
        ("nosuchdb://host/db", "no database driver"),
    ],
)
def test_storage_that_cannot_be_opened_is_a_clear_error(url, message):
    with pytest.raises(StorageError, match=message):
        ResultsStore(url)


# -- running sweeps ------------------------------------------------------------------------------


def test_local_sweep_runs_every_trial_once_and_rerun_skips_them(tiny_run, tmp_path):
    spec = make_spec(list(SMALL_SPACE), space=SMALL_SPACE, model=tiny_run.out)
    out = tmp_path / "sweep"
    summary = run_sweep(spec, out, workers=2, progress=False)
    assert summary["counts"] == {"pending": 0, "running": 0, "complete": 6, "failed": 0}
    keys = [row["trial"] for row in summary["runs"]]
    assert len(keys) == len(set(keys)) == 6
    assert set(summary["methods"]) == set(SMALL_SPACE)
    base = summary["baseline"]["memorized_fraction"]
    for row in summary["runs"]:
        assert (out / "trials" / row["trial"] / "run.json").is_file()
        assert row["memorized_fraction"] <= base
        assert row["score"] < 0  # every configuration here removes some memorization
    for method, best in summary["methods"].items():
        scores = [r["score"] for r in summary["runs"] if r["method"] == method]
        assert best["score"] == min(scores)
        assert best["trial"] in summary["pareto"][method]  # the best score is never dominated
    assert json.loads((out / "summary.json").read_text())["kind"] == "sweep"
    # the same sweep again: nothing left to run, nothing stored twice
    again = run_sweep(spec, out, workers=2, progress=False)
    assert again["counts"]["complete"] == 6
    assert len(_db_rows(out)) == 6 and all(attempts == 1 for _k, _s, attempts in _db_rows(out))


def test_a_different_sweep_in_the_same_directory_is_refused(tiny_run, tmp_path):
    out = tmp_path / "sweep"
    spec = make_spec(["durable"], space={"durable": {"ratio": [0.01]}}, model=tiny_run.out)
    run_sweep(spec, out, workers=1, progress=False)
    other = make_spec(["durable"], space={"durable": {"ratio": [0.02]}}, model=tiny_run.out)
    with pytest.raises(FileExistsError, match="holds a different sweep"):
        run_sweep(other, out, workers=1, progress=False)


def test_tpe_search_runs_the_budget_of_distinct_trials(tiny_run, tmp_path):
    space = {"zero_out": {"ratio": {"low": 0.01, "high": 0.2, "log": True}, "max_rows": [8, 16]}}
    spec = make_spec(["zero_out"], space=space, search="tpe", trials=4, model=tiny_run.out)
    out = tmp_path / "tpe"
    summary = run_sweep(spec, out, workers=2, progress=False)
    assert summary["counts"]["complete"] == 4
    params = [row["params"] for row in summary["runs"]]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 4
    assert all(0.01 <= p["ratio"] <= 0.2 and p["max_rows"] in (8, 16) for p in params)
    assert run_sweep(spec, out, workers=2, progress=False)["counts"]["complete"] == 4


def test_tpe_stops_when_a_small_categorical_space_is_exhausted(tiny_run, tmp_path):
    spec = make_spec(
        ["durable"],
        space={"durable": {"ratio": [0.01, 0.02]}},
        search="tpe",
        trials=5,
        model=tiny_run.out,
    )
    summary = run_sweep(spec, tmp_path / "tpe", workers=1, progress=False)
    assert summary["counts"]["complete"] == 2


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_with_every_trial_exactly_once(tiny_run, tmp_path):
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(KILL_SPACE))
    total = sum(space_size(v) for v in KILL_SPACE.values())
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_run.out), "--space", str(space_file)]
    args += [
        "--methods",
        ",".join(KILL_SPACE),
        "--workers",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unmemorize.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    complete = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "sweep.db").is_file():
            try:
                complete = sum(s == "complete" for _k, s, _a in _db_rows(out))
            except sqlite3.OperationalError:  # the table is being created
                complete = 0
            if complete >= 2:
                break
        time.sleep(0.1)
    assert proc.poll() is None, f"the sweep ended before the kill: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator only: its workers must die with it
    proc.wait()
    rows = _db_rows(out)
    with sqlite3.connect(out / "sweep.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done_before = sum(s == "complete" for _k, s, _a in rows)
    assert 2 <= done_before < total, rows
    assert any(s == "running" for _k, s, _a in rows)  # the trials in flight at the kill

    resumed = _cli("sweep", "--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    rows = _db_rows(out)
    assert len(rows) == total
    assert Counter(k for k, _s, _a in rows).most_common(1)[0][1] == 1  # exactly once
    assert all(s == "complete" for _k, s, _a in rows), rows
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["complete"] == total
    assert len({r["trial"] for r in summary["runs"]}) == total
    assert "balanced_subnet" in resumed.stdout and "trials: 11 complete" in resumed.stdout


# -- Ray -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_fails_within_seconds():
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="cannot reach a Ray cluster"):
        check_ray_address(f"127.0.0.1:{port}", timeout=3)
    with pytest.raises(ValueError, match="not host:port"):
        check_ray_address("localhost")
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_ray_backend_runs_the_sweep_on_a_local_ray_instance(tiny_run, tmp_path):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    # Token authentication, the setting a shared cluster should use; the token comes from the
    # environment, so a ~/.ray/auth_token left by another Ray user on this machine plays no part.
    env = {
        **os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }  # fmt: skip
    start = subprocess.run(
        [str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        space_file = tmp_path / "space.json"
        space_file.write_text(json.dumps(SMALL_SPACE))
        out = tmp_path / "ray-sweep"
        args = (
            "sweep", "--model", str(tiny_run.out), "--space", str(space_file),
            "--methods", ",".join(SMALL_SPACE), "--backend", "ray",
            "--ray-address", f"127.0.0.1:{port}", "--no-progress",
        )  # fmt: skip
        # without the token: one line that says what to set, no traceback, no results
        no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        denied = _cli(
            *args, "--out", str(tmp_path / "denied"), env={**no_token, "HOME": str(tmp_path)}
        )
        assert denied.returncode == 2, denied.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in denied.stderr and "Traceback" not in denied.stderr
        assert not (tmp_path / "denied" / "summary.json").exists()

        result = _cli(*args, "--out", str(out), env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["counts"]["complete"] == 6
        assert set(summary["methods"]) == set(SMALL_SPACE)
        assert "trials: 6 complete, 0 failed" in result.stdout
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--methods", "durable"], "--out DIR is required"),
        (["sweep", "--resume", "{tmp}"], "not a sweep directory"),
        (["sweep", "--methods", "nosuch", "--out", "{tmp}/s"], "unknown method 'nosuch'"),
        (["sweep", "--methods", "durable", "--space", "{tmp}/none.json", "--out", "{tmp}/s"],
         "no such file"),
        (["sweep", "--methods", "durable", "--space", "{bad_json}", "--out", "{tmp}/s"],
         "not valid JSON"),
        (["sweep", "--methods", "durable", "--space", "{empty}", "--out", "{tmp}/s"], "empty"),
        (["sweep", "--methods", "durable", "--trials", "0", "--out", "{tmp}/s"], "--trials"),
        (["sweep", "--methods", "durable", "--model", "{tmp}", "--out", "{tmp}/s"],
         "not a TinyMem run directory"),
        (["sweep", "--methods", "durable", "--storage", "sqlite:////no/such/dir/x.db",
          "--model", "{model}", "--out", "{tmp}/s"], "does not exist"),
        (["sweep", "--methods", "durable", "--backend", "ray", "--ray-address", "127.0.0.1:{port}",
          "--model", "{model}", "--out", "{tmp}/s"], "cannot reach a Ray cluster"),
        (["sweep", "--methods", "durable", "--workers", "0", "--model", "{model}",
          "--out", "{tmp}/s"], "--workers"),
    ],
)  # fmt: skip
def test_sweep_bad_input_is_one_line_and_writes_no_results(
    args, message, tmp_path, tiny_run, capsys
):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"durable": {"ratio": []}}))
    fill = {"tmp": tmp_path, "bad_json": bad_json, "empty": empty, "model": tiny_run.out}
    fill["port"] = _free_port()
    argv = [a.format(**fill) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unmemorize: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "s" / "summary.json").exists()
    assert not (tmp_path / "s" / "trials").exists()
