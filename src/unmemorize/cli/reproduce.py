"""``unmemorize reproduce tinymem|restor``: a paper's experiment grid over seeds, findings checked.

``tinymem`` and ``restor`` are nested commands (:meth:`~unmemorize.cli.common.Parser.
add_nested_command`), so that each takes ``key=value`` overrides after its options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to the ``unmemorize`` sub-commands."""
    p = sub.add_parser(
        "reproduce",
        usage="unmemorize reproduce {tinymem,restor} --out OUT [options] [key=value ...]",
        help="run a paper's experiment grid over seeds and check its findings (TinyMem, RESTOR)",
        description="Run the experiment grid of a paper at cpu-mini scale, every cell over "
        "--seeds seeded base models with every method (configurations chosen on validation "
        "rows, results as mean and 95% confidence interval), and write OUT/REPORT.md: the cells "
        "side by side with the paper's qualitative finding and whether it holds here. "
        "Resumable: rerun the same command to continue; finished seeds are reused. "
        "tinymem cells: {increment,mult}-{noise,backdoor}, text-noise (duplication groups 1, 10 "
        "and 100x), text-backdoor; about 5-10 minutes per cell and seed on 2 CPU cores. restor "
        "cells: level-0, level-1, level-2, level-1-simplified, level-1-shallow (a shallower "
        "corruption); about 10 minutes per cell and seed. README 'Reproducing the papers' lists "
        "what each checks.",
        epilog="examples:\n  unmemorize reproduce tinymem --seeds 3 --out repro/tinymem\n"
        "  unmemorize reproduce restor --cells level-1 --seeds 3 --out repro/restor\n"
        "  unmemorize report repro/tinymem/increment-noise   one cell with error bars",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=cmd_reproduce_help, parser=p)
    for study, what in (
        ("tinymem", "the TinyMem grid: math and language cells, noise and backdoors"),
        ("restor", "RESTOR's corruption levels, gradient and localization methods"),
    ):
        nested = p.add_nested_command(
            study,
            description=f"unmemorize reproduce {study}: {what} (`unmemorize reproduce --help`).",
        )
        _add_options(nested)
        nested.set_defaults(handler=cmd_reproduce, study=study)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (reused to resume)")
    p.add_argument(
        "--seeds", type=positive_int, default=3, metavar="N", help="seeds per cell (default: 3)"
    )
    p.add_argument("--cells", help="comma-separated cells to run (default: all)")
    p.add_argument("--methods", help="comma-separated methods (default: the study's)")
    p.add_argument(
        "--settings",
        choices=("default", "paper"),
        default="default",
        help="default: this project's fixed defaults; paper: the original code's configuration",
    )
    p.add_argument(
        "--preset", default="cpu-mini", help="the base models' preset (default: %(default)s)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every cell's base model (tinymem: `unmemorize ls keys`; "
        "restor: world.*, clean.*, corrupt.*, eval.*)",
    )


def cmd_reproduce_help(args: argparse.Namespace) -> int:
    """``unmemorize reproduce`` without a study: its help, and a usage error."""
    args.parser.print_help()
    return 2


def cmd_reproduce(args: argparse.Namespace) -> int:
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        from ..methods import METHODS

        for name in methods:
            METHODS.get(name)  # a typo fails before any work
    import importlib

    study = importlib.import_module(f"..benchmarks.{args.study}.reproduce", __package__)
    cells = study.get_cells(args.cells)  # unknown cells fail before any work
    print(
        f"unmemorize reproduce {args.study}: {len(cells)} cells x {args.seeds} seeds -> {args.out}/"
    )
    run = study.reproduce_tinymem if args.study == "tinymem" else study.reproduce_restor
    record = run(
        args.out,
        seeds=args.seeds,
        cells=[c.name for c in cells],
        methods=methods,
        preset=args.preset,
        overrides=args.overrides,
        settings=args.settings,
        progress=not args.no_progress,
    )
    print()
    print(study.format_reproduce_report(record))
    print(f"time {record['seconds']:.0f} s   report: {Path(args.out) / 'REPORT.md'}")
    return 0
