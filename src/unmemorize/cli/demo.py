"""``unmemorize demo``: train a cpu-mini TinyMem model, then unlearn its memorization with every method."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import add_runtime_args, resolve_device
from .common import (
    add_audit_flag,
    add_run_options,
    add_seeds_arg,
    add_settings_arg,
    audit_requested,
    auditor_factory,
    format_method_table,
    resumes_seeds,
)
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
    demo.add_argument(
        "--task",
        choices=("increment", "text"),
        default="increment",
        help="increment: the arithmetic demo (scored with accuracy); text: the language variant "
        "on the bundled corpus (scored with perplexity) (default: %(default)s)",
    )
    add_settings_arg(demo)
    add_seeds_arg(demo)
    add_audit_flag(
        demo,
        "the unedited model and every method's best run (OUT/audit/<method>/audit.json; the "
        "table gains 'returns after relearning' and 'MIA AUC'; relearning at lr 1e-4 only); "
        "with --seeds, each seed's chosen runs on its test rows, with intervals over the seeds "
        "(a finished seed is audited without running its grid again)",
        "1e-4",
    )
    # TinyMem trains a fresh model in float32 (its results are float32 results): --device only
    add_runtime_args(demo, dtype=False)
    add_config_option(demo)
    add_run_options(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..benchmarks.tinymem.experiment import run_demo

    device = resolve_device(args.device)
    audit_requested(args)
    make_auditor = auditor_factory(args)
    methods = None
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m != "none")
    if args.seeds is not None:
        return _demo_seeds(args, methods, device, make_auditor)
    auditor = None if make_auditor is None else make_auditor(Path(args.out))
    print(f"unmemorize demo: training a cpu-mini TinyMem model into {args.out}/ ...")
    summary = run_demo(
        args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        overrides=tuple(args.overrides),
        methods=methods,
        device=device,
        settings=args.settings,
        task=args.task,
        audit=auditor,
        command=getattr(args, "record", None),
    )
    b = summary["baseline"]
    text = args.task == "text"
    print()
    if text:
        print("TinyMem cpu-mini, language variant: GPT-2 trained on text chunks, some noised")
    else:
        print("TinyMem cpu-mini: 4-layer GPT-2 trained on 1,100 '+7' sequences, 100 of them noised")
    if args.settings != "default":
        print(f"  settings         {args.settings} (the original code's configuration)")
    print(
        f"  memorized        {b['memorized_fraction']:7.1%}  ({b['n_memorized']} of "
        f"{b['n_candidates']} noised sequences reproduced verbatim from their clean prefix)"
    )
    pad = "padding included" if args.settings == "paper" else "padding excluded"
    print(f"  test accuracy    {b['accuracy']:7.1%}  (teacher-forced next token, {pad})")
    print(f"  test perplexity  {b['perplexity']:7.3f}")
    if summary["methods"]:
        print()
        print(format_method_table(summary["methods"].values(), b))
        if text:
            print("score: relative change in % memorized plus relative change in perplexity")
        else:
            print("score: relative change in % memorized minus mean relative change in accuracy")
        print("(the TinyMem paper's selection rule; lower is better, -1 is perfect)")
        if "audit" in summary:
            lrs = ", ".join(f"{lr:g}" for lr in auditor.config.relearn_lrs)
            print(
                "returns after relearning: share of the originally memorized rows memorized again "
                f"after {auditor.config.relearn_steps} AdamW steps (lr {lrs}) on half the forget "
                "set (other half measured) or on clean retain rows, the worse of the two"
            )
            print(
                "MIA AUC: Min-K% membership inference, forget rows vs fresh noised twins never "
                "trained on (0.5 = as if never seen, 1 = clearly trained on)"
            )
            a = summary["audit"]
            print(
                f"  audit time       {a['seconds']:6.0f} s  ({a['n_audited']} models audited, "
                f"{a['seconds'] / max(1, a['n_audited']):.1f} s each)   cards: "
                f"unmemorize report {args.out}"
            )
    elif "methods_skipped" in summary:
        print(f"  no unlearning: {summary['methods_skipped']}")
    print(f"  time             {summary['seconds']:6.0f} s")
    print(f"summary: {Path(args.out) / 'summary.json'}   model: {summary['model_dir']}")
    return 0


def _demo_seeds(args: argparse.Namespace, methods, device, make_auditor) -> int:
    from ..benchmarks.tinymem.seeds import format_seeds_table, run_tinymem_seeds

    print(
        f"unmemorize demo: {args.seeds} seeds, a cpu-mini TinyMem model each, into {args.out}/ "
        "(each method's configuration chosen on validation rows, reported on test rows) ..."
    )
    summary = run_tinymem_seeds(
        args.out,
        list(range(args.seeds)),
        task=args.task,
        overrides=tuple(args.overrides),
        methods=methods,
        settings=args.settings,
        device=device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        resume=resumes_seeds(args),
        command=getattr(args, "record", None),
        audit=make_auditor,
    )
    print()
    print(format_seeds_table(summary))
    if "audit" in summary:
        a = summary["audit"]
        print(
            f"  audit time       {a['seconds']:6.0f} s  (each method's chosen configuration "
            "applied again and audited on the test rows of every seed)"
        )
    print(f"  time             {summary['seconds']:6.0f} s")
    print(f"summary: {Path(args.out) / 'summary.json'}   report: unmemorize report {args.out}")
    return 0
