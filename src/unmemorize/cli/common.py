"""What several command modules share: the parser class, shared options, the method table.

Kept light (argparse only at import time): ``unmemorize --help`` imports every command module.
"""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_settings_arg(parser: argparse.ArgumentParser) -> None:
    """``--settings default|paper`` (:mod:`unmemorize.benchmarks.settings`)."""
    parser.add_argument(
        "--settings",
        choices=("default", "paper"),
        default="default",
        help="default: this project's fixed defaults; paper: the original code's hyperparameters, "
        "grid, retain set and metrics (recorded in the output; README 'Paper settings vs "
        "defaults')",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_seeds_arg(parser: argparse.ArgumentParser) -> None:
    """``--seeds N``: N seeded base models, validation-chosen configurations, 95% intervals."""
    parser.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="run on N independently seeded base models (data, init, order; seeds 0..N-1); each "
        "method's configuration is chosen on validation rows and reported on disjoint test rows, "
        "as mean and 95%% confidence interval over seeds, with paired comparisons of the top "
        "methods (OUT/seed-<s>/ per seed; N times the time)",
    )


def resumes_seeds(args: argparse.Namespace) -> bool:
    """True when ``--out`` already holds a ``--seeds`` run (``seed-0/``) and ``--overwrite`` is
    absent: the same command then resumes it, reusing every finished seed of the same
    configuration (a different one is recomputed)."""
    from pathlib import Path

    return bool(args.out) and (Path(args.out) / "seed-0").is_dir() and not args.overwrite


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
    """The demo's table: one line per method run, in the order given (best first).

    Rows that carry an ``"audit"`` summary (``--audit``) add the columns "returns after
    relearning" (the worst of the forget-half and benign relearning attacks) and "MIA AUC"
    (Min-K%).
    """
    rows = list(rows)
    audited = any("audit" in r for r in rows)

    def audit_cells(summary) -> str:
        if not audited:
            return ""
        summary = summary or {}
        back, auc = summary.get("returned_fraction"), summary.get("min_k_auc")
        return (f"{'–' if back is None else f'{back:.1%}':>26}"
                f"{'–' if auc is None else f'{auc:.3f}':>9}")  # fmt: skip

    header = (
        f"{'method':<22}{'memorized':>10}{'left':>8}{'accuracy':>10}{'perplexity':>11}"
        f"{'seconds':>9}{'score':>8}"
        + (f"{'returns after relearning':>26}{'MIA AUC':>9}" if audited else "")
        + "  config"
    )
    lines = [header, "-" * len(header)]
    before = (
        f"{'(before)':<22}{baseline['memorized_fraction']:>10.1%}{baseline['n_memorized']:>8}"
        f"{baseline['accuracy']:>10.1%}{baseline['perplexity']:>11.3f}"
    )
    if audited:
        before = f"{before:<78}{audit_cells(baseline.get('audit'))}"
    lines.append(before)
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<22}  diverged: {r['error']}")
            continue
        lines.append(
            f"{r['method']:<22}{r['memorized_fraction']:>10.1%}{r['n_still_memorized']:>8}"
            f"{r['accuracy']:>10.1%}{r['perplexity']:>11.3f}{r['seconds']:>9.1f}"
            f"{r['score']:>8.3f}{audit_cells(r.get('audit'))}  {' '.join(r['overrides'])}"
        )
    return "\n".join(lines)


#: Audit options: (option, type, help). ``unmemorize audit`` takes them as ``--NAME``; ``unlearn``,
#: ``demo`` and ``sweep`` as ``--audit-NAME`` beside ``--audit``.
_AUDIT_OPTIONS = (
    ("checks", str, "comma-separated checks to run (default: all; `unmemorize ls checks`)"),
    ("relearn-lrs", str, "relearning learning rates, comma-separated (default {lrs})"),
    ("relearn-steps", int, "fine-tuning steps of each relearning attack (default 30)"),
    ("relearn-batch-size", int, "rows per relearning step (default 32)"),
    ("quant-dtypes", str, "quantization precisions (default bfloat16,float16,int8,int4)"),
    ("n-samples", int, "n of (n, p)-discoverable sampled extraction (default 100)"),
    ("temperature", float, "sampling temperature of the sampled check (default 1.0)"),
    ("top-k", int, "top-k of the sampled check (default 0 = off)"),
    ("top-p", float, "top-p of the sampled check (default 1.0 = off)"),
    ("mia-k", float, "k of Min-K%% and Min-K%%++ (default 0.2)"),
)


def add_audit_options(parser: argparse.ArgumentParser, *, prefix: str = "", lrs: str) -> None:
    """The audit's configuration options (``--audit-`` prefixed on commands that run one)."""
    group = parser.add_argument_group("audit options" if prefix else "audit configuration")
    for name, kind, text in _AUDIT_OPTIONS:
        group.add_argument(
            f"--{prefix}{name}",
            dest=f"{prefix}{name}".replace("-", "_"),
            type=kind,
            metavar=name.split("-")[-1].upper(),
            help=text.format(lrs=lrs),
        )


def auditor_factory(args: argparse.Namespace, benchmark: str = "tinymem"):
    """``run_dir -> BenchmarkAuditor`` writing under ``run_dir/audit`` with the demo's audit
    options (one run's directory, or each seed's with ``--seeds``), or None without
    ``--audit``."""
    if not args.audit:
        return None
    from ..audit.pipeline import DEMO_RELEARN_LRS, BenchmarkAuditor
    from ..benchmarks import get_benchmark

    config = audit_config_from_args(args, prefix="audit-", default_lrs=DEMO_RELEARN_LRS)

    def factory(run_dir: Path) -> BenchmarkAuditor:
        return BenchmarkAuditor(get_benchmark(benchmark), config, Path(run_dir) / "audit")

    return factory


def audit_config_from_args(args: argparse.Namespace, *, prefix: str = "", default_lrs=None):
    """An :class:`~unmemorize.audit.AuditConfig` from the options of :func:`add_audit_options`.

    Raises:
        ValueError: a bad value (one line, naming the option).
    """
    from ..audit import AuditConfig
    from ..audit.pipeline import parse_floats, parse_names

    def value(name: str):
        return getattr(args, f"{prefix}{name}".replace("-", "_"), None)

    fields: dict = {}
    if default_lrs is not None:
        fields["relearn_lrs"] = tuple(default_lrs)
    if value("checks") is not None:
        fields["checks"] = parse_names(value("checks"))
    if value("relearn-lrs") is not None:
        fields["relearn_lrs"] = parse_floats(value("relearn-lrs"), f"--{prefix}relearn-lrs")
    if value("quant-dtypes") is not None:
        fields["quant_dtypes"] = parse_names(value("quant-dtypes"))
    for name in ("relearn-steps", "relearn-batch-size", "n-samples", "temperature", "top-k",
                 "top-p", "mia-k"):  # fmt: skip
        if value(name) is not None:
            fields[name.replace("-", "_")] = value(name)
    config = AuditConfig(**fields)
    from ..audit import AUDIT_CHECKS

    config.validate(AUDIT_CHECKS.names())
    return config


def audit_requested(args: argparse.Namespace) -> None:
    """Refuse ``--audit-*`` options without ``--audit`` (they would silently do nothing)."""
    from ..errors import UserError

    if getattr(args, "audit", False):
        return
    for name, _, _ in _AUDIT_OPTIONS:
        if getattr(args, f"audit_{name}".replace("-", "_"), None) is not None:
            raise UserError(f"--audit-{name} needs --audit")


def add_audit_flag(parser: argparse.ArgumentParser, what: str, lrs: str) -> None:
    """``--audit`` and its ``--audit-*`` options on a command that edits models."""
    parser.add_argument(
        "--audit",
        action="store_true",
        help=f"audit {what} (relearning, quantization, sampling, membership inference; "
        "`unmemorize ls checks`)",
    )
    add_audit_options(parser, prefix="audit-", lrs=lrs)


def audit_line(summary: dict) -> str:
    """One line of an audit summary (:func:`unmemorize.audit.pipeline.audit_summary`)."""

    def pct(x):
        return "–" if x is None else f"{x:.0%}"

    parts = [
        f"memorized {pct(summary.get('memorized_fraction'))}",
        f"discoverable (sampling) {pct(summary.get('discoverable_fraction'))}",
        f"returns after relearning {pct(summary.get('returned_fraction'))}",
        f"after quantization {pct(summary.get('quantization_max'))}",
    ]
    auc = summary.get("min_k_auc")
    parts.append("MIA AUC –" if auc is None else f"MIA AUC {auc:.2f}")
    return ", ".join(parts)
