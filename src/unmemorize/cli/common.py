"""What several command modules share: the parser class, shared options, the method table.

Kept light (argparse only at import time): ``unmemorize --help`` imports every command module.
"""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with usage mistakes reported like every other error: one line, exit status 2.

    It also carries *nested commands* (:meth:`add_nested_command`): ``unmemorize restor stats``
    is a command of its own under ``unmemorize restor``, which keeps running the benchmark when
    no nested command is named.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._nested: dict[str, Parser] = {}

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"unmemorize: error: {message} (see `{self.prog} --help`)\n")

    def add_nested_command(self, name: str, **kwargs) -> Parser:
        """Add ``PROG NAME``: a command whose parser replaces this one when NAME comes first.

        argparse's own ``add_subparsers`` cannot nest a command here: under a parser with a
        ``key=value ...`` positional (``nargs="*"``), the sub-command positional claims the first
        override (``unmemorize restor --out X clean.steps=3`` would fail with "invalid choice"),
        and it would change this parser's usage line. So this parser hands its arguments to the
        nested one when the first of them is NAME; its own help, options and errors are unchanged.
        """
        parser = Parser(prog=f"{self.prog} {name}", **kwargs)
        self._nested[name] = parser
        return parser

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if args and args[0] in self._nested:  # the one routing of nested commands
            return self._nested[args[0]].parse_args(args[1:], namespace), []
        return super().parse_known_args(args, namespace)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that train: --overwrite, --no-progress, overrides."""
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=60 model.n_layers=2 (`unmemorize ls keys`)",
    )


def add_track_args(parser: argparse.ArgumentParser) -> None:
    """--track / --track-dir: log loss curves and metrics to an experiment tracker."""
    parser.add_argument(
        "--track",
        choices=["tensorboard", "mlflow", "wandb"],
        help="log loss curves and metrics to TensorBoard, MLflow or W&B (optional extras: "
        'pip install "unmemorize[tensorboard]" / "unmemorize[mlflow]" / wandb)',
    )
    parser.add_argument(
        "--track-dir",
        metavar="DIR",
        help="where --track writes: TensorBoard event files, or a local MLflow store "
        "file:DIR/mlruns (default: unmemorize-tracking; MLflow: $MLFLOW_TRACKING_URI when set)",
    )


def tracked(args: argparse.Namespace, command: str, out, config=None):
    """The tracking run of a command (a context manager; nothing when ``--track`` is absent).

    Named ``<command>-<out name>-<time>`` so that re-running a command starts a new run.
    """
    import time
    from pathlib import Path

    from ..tracking import track

    if getattr(args, "track", None) is None and getattr(args, "track_dir", None) is not None:
        from ..errors import UserError

        raise UserError("--track-dir needs --track tensorboard|mlflow|wandb")
    name = f"{command}-{Path(str(out)).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return track(getattr(args, "track", None), args.track_dir, run_name=name, config=config)


def quiet_transformers() -> None:
    """Silence transformers' info logs and progress bars: the CLI prints its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def format_method_table(rows, baseline: dict) -> str:
    """The demo's table: one line per method run, in the order given (best first)."""
    header = (
        f"{'method':<22}{'memorized':>10}{'left':>8}{'accuracy':>10}{'perplexity':>11}"
        f"{'seconds':>9}{'score':>8}  config"
    )
    lines = [header, "-" * len(header)]
    lines.append(
        f"{'(before)':<22}{baseline['memorized_fraction']:>10.1%}{baseline['n_memorized']:>8}"
        f"{baseline['accuracy']:>10.1%}{baseline['perplexity']:>11.3f}"
    )
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<22}  diverged: {r['error']}")
            continue
        lines.append(
            f"{r['method']:<22}{r['memorized_fraction']:>10.1%}{r['n_still_memorized']:>8}"
            f"{r['accuracy']:>10.1%}{r['perplexity']:>11.3f}{r['seconds']:>9.1f}"
            f"{r['score']:>8.3f}  {' '.join(r['overrides'])}"
        )
    return "\n".join(lines)
