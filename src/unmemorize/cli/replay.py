"""``--config FILE``: rerun a command from the ``run.json`` / ``summary.json`` it wrote.

Every replayable command (:data:`REPLAYABLE`) records how it was called in what it writes, under
``"command"``: ``{"name", "options", "overrides"}`` (:func:`command_record`: the options that
differ from their defaults, without the output ones). ``unmemorize CMD --config FILE [...]``
reads that record back and runs CMD with the recorded options placed before the ones given on
the command line, so options given beside ``--config`` win (argparse keeps an option's last
value) and ``key=value`` overrides given there are applied after the recorded ones. A TinyMem
``experiment.json`` (or a ``train`` run.json written before commands were recorded) replays
``train`` from its resolved experiment (kept in the new run's record as ``"experiment"``).

Kept in the CLI: replay is a property of the command line (options, defaults, ``--out``), not of
the library calls behind it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Commands that record themselves and take ``--config``.
REPLAYABLE = ("train", "demo", "restor", "sweep", "unlearn")
#: Options never recorded: where to write (the output, its tracker), how to show progress, and
#: replay itself. A replay that should log to a tracker again names ``--track`` afresh.
NOT_RECORDED = frozenset(
    {
        "help",
        "config",
        "overrides",
        "out",
        "overwrite",
        "no_progress",
        "resume",
        "handler",
        "track",
        "track_dir",
    }
)
CONFIG_HELP = (
    "rerun the command recorded in a run.json / summary.json (or a TinyMem experiment.json) it "
    "wrote; options and key=value overrides given here override the recorded ones"
)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` on a replayable command."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def command_record(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """What replays ``args``: the command's name, its non-default options and its overrides."""
    options = {}
    for action in parser._actions:
        if action.dest in NOT_RECORDED or not action.option_strings:
            continue
        value = getattr(args, action.dest, None)
        if value != action.default and value is not None:
            options[action.dest] = value
    return {
        "name": args.command,
        "options": options,
        "overrides": list(getattr(args, "overrides", None) or ()),
    }


def _config_path(argv: list[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def _is_experiment(obj: Any) -> bool:
    return isinstance(obj, dict) and {"preset", "task", "data", "model", "train"} <= set(obj)


def read_record(path: str, command: str) -> tuple[dict[str, Any], dict | None]:
    """The recorded command of ``path`` for ``command``, and a TinyMem experiment to train.

    Raises:
        FileNotFoundError, ValueError: no such file, not JSON, no record, or another command's.
    """
    from ..errors import UserError
    from ..io import read_json

    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    obj = read_json(path)
    record = obj.get("command") if isinstance(obj, dict) else None
    experiment = None
    if isinstance(record, dict) and isinstance(record.get("options"), dict):
        if record.get("name") != command:
            raise UserError(
                f"--config {path} was written by `unmemorize {record.get('name')}`; replay it "
                f"with `unmemorize {record.get('name')} --config {path}`"
            )
        # a train run replayed from an experiment keeps that experiment (a replay of a replay)
        return record, record.get("experiment")
    if command == "train":
        experiment = obj if _is_experiment(obj) else None
        if experiment is None and isinstance(obj, dict) and _is_experiment(obj.get("config")):
            experiment = obj["config"]
    if experiment is not None:  # an experiment.json: the experiment itself is the record
        return {"name": "train", "options": {}, "overrides": []}, experiment
    raise UserError(
        f"--config {path} records no command to replay; pass the run.json / summary.json that "
        f"`unmemorize {command}` wrote (or, for train, its experiment.json)"
    )


def _tokens(parser: argparse.ArgumentParser, options: dict[str, Any]) -> list[str]:
    """Command-line tokens that set ``options`` (unknown or output options are left out)."""
    tokens: list[str] = []
    for action in parser._actions:
        if action.dest not in options or action.dest in NOT_RECORDED or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        value = options[action.dest]
        if isinstance(action, argparse._StoreTrueAction):
            tokens += [flag] if value else []
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def expand(
    argv: list[str], subparsers: dict[str, argparse.ArgumentParser]
) -> tuple[list[str], dict[str, Any] | None]:
    """``argv`` with a ``--config`` record's options inserted after the command name.

    Returns the new argv and the replay (``{"overrides", "experiment", "path"}``), or the argv
    unchanged and None when no replayable command has ``--config``.
    """
    at = next((i for i, t in enumerate(argv) if not t.startswith("-")), None)
    if at is None or argv[at] not in REPLAYABLE or argv[at + 1 : at + 2] == ["stats"]:
        return argv, None
    path = _config_path(argv[at + 1 :])
    if path is None:
        return argv, None
    record, experiment = read_record(path, argv[at])
    tokens = _tokens(subparsers[argv[at]], record["options"])
    replay = {"overrides": list(record.get("overrides") or []), "experiment": experiment}
    return [*argv[: at + 1], *tokens, *argv[at + 1 :]], replay


__all__ = ["REPLAYABLE", "add_config_option", "command_record", "expand", "read_record"]
