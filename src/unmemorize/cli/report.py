"""``unmemorize report DIR... [--out REPORT_DIR]``: one HTML + Markdown report from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Write a report of finished runs: OUT/report.html (one self-contained file: tables, figures
embedded as images, no network needed to view it), OUT/report.md (the same tables, figures
linked from OUT/figures/*.png) and OUT/figures/. One section per DIR, in order; the kind of each
directory is read from its files:

  demo / sweep   summary.json of `unmemorize demo` / `unmemorize sweep`: best run per method,
                 every run, memorization-vs-accuracy scatter with Pareto fronts, training
                 curves, wall time per method
  restor         summary.json of `unmemorize restor`: clean vs corrupted vs each method,
                 QA accuracy and answer log-probability bars
  train          run.json + history.json of `unmemorize train`: final metrics, training curves
  unlearn        run.json of `unmemorize unlearn`: metrics before and after

A DIR that holds no run itself stands for its sub-directories that do (e.g. runs/). Input
files are only read; the report files are replaced atomically."""

EPILOG = """\
examples:
  unmemorize report unmemorize-demo                  writes unmemorize-demo/report.html
  unmemorize report unmemorize-demo unmemorize-restor --out reports/today
  unmemorize report runs/ --out reports/unlearn      every run directory under runs/
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``unmemorize`` sub-commands."""
    parser = sub.add_parser(
        "report",
        help="write an HTML + Markdown report (tables and plots) of run directories",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="demo, sweep, restor, train or unlearn output directory (or a folder of them)",
    )
    parser.add_argument(
        "--out", help="report directory (default: the first DIR); created if missing"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report and print where it is and each section's main table."""
    from ..report.build import build_report

    dirs = [Path(d) for d in args.dirs]
    out = Path(args.out) if args.out else dirs[0]
    paths = build_report(dirs, out, progress=not args.no_progress)
    print(paths.summary)
    print()
    print(f"report: {paths.html}")
    print(
        f"        {paths.markdown} ({len(paths.figures)} figures in {paths.html.parent / 'figures'})"
    )
    return 0
