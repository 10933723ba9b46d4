"""The ``unmemorize`` command line: thin over the library (parse, call, print).

Every command is one module of this package with ``register(sub)``: it adds its sub-parser to
``sub`` (the ``argparse`` sub-parsers object of ``unmemorize``) and sets its handler with
``parser.set_defaults(handler=cmd_fn)``; ``cmd_fn(args) -> int`` runs the command, importing what
it needs inside (``unmemorize --help`` imports every command module and stays fast). A nested
command (``restor stats``) is added by its parent's module
(:meth:`~unmemorize.cli.common.Parser.add_nested_command`). :func:`main` parses, then calls the
handler: the one dispatch.

User mistakes (missing files, bad options, unknown names, ...) end in one line on stderr,
``unmemorize: error: <what is wrong and how to fix it>``, exit status 2, and no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import UserError
from .common import Parser, quiet_transformers

#: Command modules, in the order their commands appear in ``unmemorize --help``.
COMMANDS: tuple[str, ...] = (
    "demo",
    "train",
    "measure",
    "unlearn",
    "audit",
    "restor",
    "ls",
    "sweep",
    "mine",
    "report",
    "eval",
    "reproduce",
)

EXAMPLES = """\
examples:
  unmemorize demo                                   train a cpu-mini model and measure memorization
  unmemorize train --preset cpu-mini --task mult --out runs/mult
  unmemorize train --preset cpu-mini --out runs/r train.epochs=120 train.regularizer=spectral_norm
  unmemorize measure --model runs/mult              memorized candidates of a TinyMem run
  unmemorize measure --model DIR --sequences seqs.jsonl --prefix-len 32 --suffix-len 32 --json out.json
  unmemorize unlearn --model unmemorize-demo/model --method balanced_subnet --out runs/bs
  unmemorize audit --model runs/bs --out runs/bs     relearning, quantization, sampling, MIA attacks
  unmemorize ls methods                             every method, its paper and its options
  unmemorize restor --out runs/restor               corrupt, unlearn, measure what comes back
  unmemorize eval --model runs/bs --original unmemorize-demo/model --tasks hellaswag --out runs/e
  unmemorize restor stats --facts facts.json --entities entities.json --docs mix_a0.json
  unmemorize demo --seeds 3 --out runs/seeds       every method over 3 base models, 95% intervals
  unmemorize reproduce tinymem --seeds 3 --out repro/tinymem   the paper's grid, findings checked
"""

#: OS errors that are the machine's state, not a bug: printed as one line saying what to do.
_DISK_ERRORS = {
    errno.ENOSPC: "disk full (no space left on device) writing {}; free some space or choose "
    "an output on another disk",
    errno.EDQUOT: "disk quota exceeded writing {}; free some space or choose an output on "
    "another disk",
    errno.EROFS: "read-only file system: cannot write {}; choose an output on a writable disk",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..methods.base import MethodDivergedError
    from ..models import ModelDirError
    from ..training import TrainingDivergedError

    return (
        UserError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ModelDirError,
        TrainingDivergedError,
        MethodDivergedError,
        MemoryError,  # runtime.check_memory_fits: says what the model needs and what to try
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``unmemorize`` parser with every command of :data:`COMMANDS`."""
    parser = Parser(
        prog="unmemorize",
        description="Find what a language model memorized, remove it, and prove the removal worked.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"unmemorize {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


PLUGINS_ENV = "UNMEMORIZE_PLUGINS"


def load_plugins() -> None:
    """Import the modules named in ``$UNMEMORIZE_PLUGINS`` (comma-separated), so that methods and
    benchmarks defined outside the package register themselves before the command runs."""
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(
                f"{PLUGINS_ENV} names {name!r}, which does not import ({err}); put its folder "
                "on PYTHONPATH or fix the name"
            ) from None


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parser of every command, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def main(argv: list[str] | None = None) -> int:
    from .replay import REPLAYABLE, command_record, expand

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    commands = _commands(parser)
    try:
        argv, replay = expand(argv, commands)  # --config FILE: the recorded options first
    except _user_errors() as err:
        print(f"unmemorize: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    if replay is not None:  # recorded overrides first: those given beside --config win
        args.overrides = [*replay["overrides"], *args.overrides]
        args.experiment = replay["experiment"]
    if args.command in REPLAYABLE:
        args.record = command_record(commands[args.command], args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_transformers()
    try:
        from ..runtime import compiling

        load_plugins()
        with compiling(getattr(args, "compile", False)):
            return args.handler(args) or 0
    except BrokenPipeError:  # e.g. `unmemorize ls keys | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("unmemorize: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if (
            isinstance(err, (FileNotFoundError, PermissionError))
            and err.filename
            and str(err.filename) not in message
        ):
            message = f"{message}: {err.filename}"
        print(f"unmemorize: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        print(f"unmemorize: error: {_DISK_ERRORS[err.errno].format(err.filename)}", file=sys.stderr)
        return 2
