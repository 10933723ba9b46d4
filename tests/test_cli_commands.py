"""The command-line package: one module per command, one dispatch, nested ``restor stats``,
``ls benchmarks`` / ``ls spaces`` through the benchmark interface, and the measure pipeline."""

from __future__ import annotations

import argparse
import json

import pytest

from unmemorize import benchmarks
from unmemorize.benchmarks import BENCHMARKS, Benchmark, Metric
from unmemorize.cli import main as cli_main
from unmemorize.cli.main import COMMANDS, build_parser, main
from unmemorize.measure import measure


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ------------------------------------------------------------------------------ one dispatch


def test_every_command_is_one_module_with_its_own_handler_in_help_order():
    commands = _commands(build_parser())
    assert list(commands) == list(COMMANDS)  # `unmemorize --help` lists them in this order
    assert list(COMMANDS) == [
        "demo", "train", "measure", "unlearn", "audit", "restor", "ls", "sweep", "mine", "report",
        "eval", "reproduce",
    ]  # fmt: skip
    for name, parser in commands.items():
        handler = parser.get_default("handler")
        assert callable(handler), name
        assert handler.__module__ == f"unmemorize.cli.{name}", (name, handler.__module__)


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in COMMANDS:
        assert f"\n    {name} " in out, name


# ---------------------------------------------------------------------- restor stats (nested)


def test_restor_without_a_nested_command_still_runs_the_benchmark():
    parser = build_parser()
    args = parser.parse_args(["restor", "--out", "X", "clean.steps=3", "corrupt.mode=lora"])
    assert args.handler.__name__ == "cmd_restor"
    assert (args.out, args.overrides) == ("X", ["clean.steps=3", "corrupt.mode=lora"])
    args = parser.parse_args(["restor"])
    assert args.handler.__name__ == "cmd_restor" and args.out == "unmemorize-restor"


def test_restor_stats_is_a_nested_command():
    args = build_parser().parse_args(
        ["-v", "restor", "stats", "--facts", "f.json", "--docs", "a.json", "b.json"]
    )
    assert args.handler.__name__ == "cmd_restor_stats"
    assert (args.command, args.verbose) == ("restor", True)
    assert (args.facts, args.entities, args.docs) == ("f.json", None, ["a.json", "b.json"])
    assert not hasattr(args, "overrides")  # restor's own options are not parsed


def test_restor_and_restor_stats_help_and_usage_errors(capsys):
    code, out, _ = run_cli(capsys, "restor", "--help")
    assert code == 0 and out.startswith("usage: unmemorize restor [-h] [--preset PRESET]")
    assert "stats" not in out.splitlines()[0] and "`unmemorize restor stats --help`" in out
    code, out, _ = run_cli(capsys, "restor", "stats", "--help")
    assert code == 0 and out.startswith("usage: unmemorize restor stats [-h] --facts FACTS")
    assert "Print JSON counts of a RESTOR-format data set" in out
    code, _, err = run_cli(capsys, "restor", "stats")
    assert code == 2
    assert err == (
        "unmemorize: error: the following arguments are required: --facts "
        "(see `unmemorize restor stats --help`)\n"
    )
    code, _, err = run_cli(capsys, "restor", "stats", "--facts", "f.json", "--level", "2")
    assert code == 2
    assert err == (
        "unmemorize: error: unrecognized arguments: --level 2 "
        "(see `unmemorize restor stats --help`)\n"
    )


# ------------------------------------------------------------------ ls benchmarks / ls spaces


class TinyTestBenchmark(Benchmark):
    """A benchmark that exists only in this test module (registered by the fixture)."""

    name = "tiny-test"
    paper = "none: a test benchmark"
    summary = "counts hits, for the ls tests"
    metrics = (
        Metric("hits", "hit rate", True, "pct", "share of hits"),
        Metric("misses", "misses", False, "int", "missed rows"),
        Metric("seconds", "seconds", None, "secs", "wall time"),
    )
    spaces = {
        "small": {"ga": {"lr": [1e-5, 1e-4], "epochs": [1, 2]}, "durable": {"ratio": [0.01]}},
        "wide": {"ga": {"lr": {"low": 1e-5, "high": 1e-3, "log": True}}},
    }
    default_space = "small"


@pytest.fixture
def tiny_benchmark(monkeypatch):
    # the built-in benchmark packages are not needed here (and are written on another branch)
    monkeypatch.setattr(benchmarks, "BUILTIN_MODULES", ())
    BENCHMARKS.register(TinyTestBenchmark)
    yield TinyTestBenchmark
    BENCHMARKS.unregister(TinyTestBenchmark.name)


def test_ls_benchmarks_describes_each_registered_benchmark(tiny_benchmark, capsys):
    code, out, err = run_cli(capsys, "ls", "benchmarks", "--benchmark", "tiny-test")
    assert code == 0, err
    assert out == (
        "tiny-test  counts hits, for the ls tests\n"
        "    paper: none: a test benchmark\n"
        "    hits  hit rate (higher is better)\n"
        "    misses  misses (lower is better)\n"
        "    seconds  seconds\n"
        "    selection: score\n"
        "    spaces: small, wide (default: small)\n"
        "\n"
    )
    code, everything, _ = run_cli(capsys, "ls", "benchmarks")
    assert code == 0 and out in everything  # unfiltered: every registered benchmark


def test_ls_spaces_counts_methods_and_points(tiny_benchmark, capsys):
    code, out, err = run_cli(capsys, "ls", "spaces", "--benchmark", "tiny-test")
    assert code == 0, err
    assert out == (
        "tiny-test\n"
        "  small          2 methods  5 points  (default)\n"  # ga 2 x 2, durable 1
        "  wide           1 method  ranges (TPE only)\n"
        "\n"
    )
    code, everything, _ = run_cli(capsys, "ls", "spaces")
    assert code == 0 and out in everything


def test_ls_unknown_benchmark_is_one_line_with_a_suggestion(tiny_benchmark, capsys):
    code, out, err = run_cli(capsys, "ls", "spaces", "--benchmark", "tiny-tset")
    assert code == 2 and out == ""
    assert err.startswith("unmemorize: error: unknown benchmark 'tiny-tset': did you mean")
    assert len(err.splitlines()) == 1


def test_a_builtin_benchmark_that_fails_to_import_is_never_hidden(monkeypatch, capsys):
    monkeypatch.setattr(benchmarks, "BUILTIN_MODULES", ("unmemorize.benchmarks.no_such_package",))
    for kind in ("benchmarks", "spaces"):
        with pytest.raises(ModuleNotFoundError, match="no_such_package"):
            main(["ls", kind])  # a broken install fails loudly, never lists fewer benchmarks


# ------------------------------------------------------------------------------------ sweep


@pytest.mark.parametrize(("argv", "expect"), [([], "tinymem"), (["--benchmark", "x"], "x")])
def test_sweep_passes_the_benchmark_to_the_spec(argv, expect, monkeypatch, tmp_path, capsys):
    import unmemorize.sweep

    seen = {}

    def make_spec(methods, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(unmemorize.sweep, "make_spec", make_spec)
    code, _, err = run_cli(capsys, "sweep", "--out", tmp_path / "s", *argv)
    assert code == 2 and err == "unmemorize: error: stop here\n"
    assert seen["benchmark"] == expect
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------- measure pipeline


def test_measure_pipeline_returns_what_the_cli_writes(tiny_run, tmp_path, capsys):
    path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "measure", "--model", tiny_run.out, "--json", path)
    assert code == 0, err
    written = json.loads(path.read_text())
    measured = measure(tiny_run.out, report_path=tmp_path / "again.json")
    assert (
        measured.source == f"{len(tiny_run.data.memorization)} memorization candidates of the run"
    )
    again = json.loads((tmp_path / "again.json").read_text())
    for report in (measured.report, again):
        assert {k: v for k, v in report.items() if k != "seconds"} == {
            k: v for k, v in written.items() if k != "seconds"
        }
    assert f"measured {measured.source} in " in out and f"report: {path}" in out
    bare = measure(tiny_run.out)  # no report: no per-sequence rows
    assert bare.report["sequences"] == [] and bare.report["n_memorized"] == written["n_memorized"]


def test_cli_package_exposes_main():
    assert cli_main is main


def test_plugins_env_registers_a_method_from_outside_the_package(tmp_path, monkeypatch, capsys):
    """A method in a user's own module reaches the CLI through $UNMEMORIZE_PLUGINS."""
    from unmemorize.methods import METHODS

    (tmp_path / "my_plugin_methods.py").write_text(
        "from dataclasses import dataclass\n"
        "from unmemorize.methods import METHODS, Edit, Method\n\n"
        "@dataclass\nclass PlugConfig:\n    factor: float = 0.5\n\n"
        "@METHODS.register\nclass Plug(Method):\n"
        "    '''A test plugin.'''\n"
        "    name, family, paper, Config = 'plug_test', 'weight', 'none', PlugConfig\n\n"
        "    def run(self, model, data, progress):\n        return Edit(0, 1, 'parameters')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("UNMEMORIZE_PLUGINS", "my_plugin_methods")
    try:
        assert main(["ls", "methods"]) == 0
        assert "plug_test" in capsys.readouterr().out
    finally:
        METHODS.unregister("plug_test")


def test_plugins_env_naming_a_missing_module_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("UNMEMORIZE_PLUGINS", "no_such_plugin_module_xyz")
    assert main(["ls", "methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "UNMEMORIZE_PLUGINS" in err[0] and "no_such_plugin_module_xyz" in err[0]
    )


# ------------------------------------------------------------------------ --config replay


def test_config_replay_puts_recorded_options_before_the_given_ones(tmp_path):
    """Issue 17: `CMD --config FILE` = the recorded options, then the command line's (which win)."""
    import json

    from unmemorize.cli.replay import REPLAYABLE, command_record, expand

    parser = build_parser()
    commands = _commands(parser)
    for name in REPLAYABLE:
        assert "--config" in commands[name]._option_string_actions, name
    recorded = {"methods": "ga,npo", "search": "tpe", "trials": 3, "seed": 7}
    summary = tmp_path / "summary.json"
    command = {"name": "sweep", "options": recorded, "overrides": ["train.epochs=4"]}
    summary.write_text(json.dumps({"command": command}))
    argv, replay = expand(
        ["sweep", "--config", str(summary), "--out", "X", "--trials", "5"], commands
    )
    args = parser.parse_args(argv)
    assert (args.methods, args.search, args.trials, args.seed, args.out) == (
        "ga,npo", "tpe", 5, 7, "X",
    )  # fmt: skip
    assert replay["overrides"] == ["train.epochs=4"]
    record = command_record(commands["sweep"], args)
    assert record["options"] == {**recorded, "trials": 5}  # --out and --config are not recorded
    # a store_true option replays as its flag; restor's nested `stats` is left alone
    restor = tmp_path / "restor.json"
    restor.write_text(json.dumps({"command": {"name": "restor", "options": {"simplified": True}}}))
    argv, _ = expand(["restor", "--config", str(restor)], commands)
    assert parser.parse_args(argv).simplified is True
    stats = ["restor", "stats", "--facts", "f.json"]
    assert expand(stats, commands) == (stats, None)
