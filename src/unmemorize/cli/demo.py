"""``unmemorize demo``: train a cpu-mini TinyMem model, then unlearn its memorization with every method."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import add_runtime_args, resolve_device
from .common import add_run_options, format_method_table
from .replay import add_config_option


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``unmemorize`` sub-commands."""
    demo = sub.add_parser(
        "demo",
        help="train a cpu-mini TinyMem model, then remove its memorization with every method",
        description="The main job on the built-in benchmark: build cpu-mini arithmetic data with "
        "100 noised sequences, train a 4-layer GPT-2 until it memorizes them, measure the "
        "memorized fraction, accuracy and perplexity, then apply every mitigation method (a small "
        "grid each) and print a table ranked by the TinyMem paper's score. Writes "
        "OUT/summary.json and OUT/model/ (about 6 minutes on 2 CPU cores).",
    )
    demo.add_argument(
        "--out", default="unmemorize-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument(
        "--methods",
        help="comma-separated methods to run after training (default: all; 'none' skips them)",
    )
    # TinyMem trains a fresh model in float32 (its results are float32 results): --device only
    add_runtime_args(demo, dtype=False)
    add_config_option(demo)
    add_run_options(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..benchmarks.tinymem.experiment import run_demo

    device = resolve_device(args.device)
    methods = None
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m != "none")
    print(f"unmemorize demo: training a cpu-mini TinyMem model into {args.out}/ ...")
    summary = run_demo(
        args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        overrides=tuple(args.overrides),
        methods=methods,
        device=device,
        command=getattr(args, "record", None),
    )
    b = summary["baseline"]
    print()
    print("TinyMem cpu-mini: 4-layer GPT-2 trained on 1,100 '+7' sequences, 100 of them noised")
    print(
        f"  memorized        {b['memorized_fraction']:7.1%}  ({b['n_memorized']} of "
        f"{b['n_candidates']} noised sequences reproduced verbatim from their clean prefix)"
    )
    print(f"  test accuracy    {b['accuracy']:7.1%}  (teacher-forced next token, padding excluded)")
    print(f"  test perplexity  {b['perplexity']:7.3f}")
    if summary["methods"]:
        print()
        print(format_method_table(summary["methods"].values(), b))
        print("score: relative change in % memorized minus mean relative change in accuracy")
        print("(the TinyMem paper's selection rule; lower is better, -1 is perfect)")
    elif "methods_skipped" in summary:
        print(f"  no unlearning: {summary['methods_skipped']}")
    print(f"  time             {summary['seconds']:6.0f} s")
    print(f"summary: {Path(args.out) / 'summary.json'}   model: {summary['model_dir']}")
    return 0
