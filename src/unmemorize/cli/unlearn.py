"""``unmemorize unlearn``: remove memorized sequences from a model with one mitigation method."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..runtime import (
    add_runtime_args,
    add_window_args,
    resolve_device,
    resolve_dtype,
    resolve_window,
)
from .common import (
    add_audit_flag,
    add_settings_arg,
    add_track_args,
    audit_config_from_args,
    audit_line,
    audit_requested,
    tracked,
)
from .replay import add_config_option


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``unlearn`` to the ``unmemorize`` sub-commands."""
    un = sub.add_parser(
        "unlearn",
        help="remove memorized sequences from a model with a mitigation method",
        description="Apply an unlearning / fine-tuning / dampening method to a model and write "
        "the edited model to --out with run.json (config, metrics before and after, score, "
        "seconds). The input model is never modified. For a model trained by `unmemorize "
        "train`, the memorized sequences are found automatically; otherwise pass --forget "
        "(sequences to forget; only those the model currently reproduces are used) and --retain "
        "(clean sequences whose behaviour must be kept).",
        epilog="methods and their options: `unmemorize ls methods`\n"
        "example: unmemorize unlearn --model runs/demo --method balanced_subnet --out runs/bs "
        "ratio=0.1 epochs=40",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    un.add_argument("--model", required=True, help="local Hugging Face model directory")
    un.add_argument("--method", required=True, help="method name (`unmemorize ls methods`)")
    un.add_argument("--out", required=True, help="output directory for the edited model")
    un.add_argument(
        "--forget",
        help="sequences to forget: jsonl (same format as measure), .parquet, .arrow or a "
        "datasets directory",
    )
    un.add_argument("--retain", help="clean sequences to keep (retain set), same formats")
    un.add_argument(
        "--eval",
        dest="eval_file",
        help="held-out sequences for accuracy/perplexity (default: a held-out 10%% of "
        "--retain, never trained on), same formats",
    )
    un.add_argument(
        "--column",
        help="the jsonl key / table column holding the text or token ids of those files",
    )
    add_window_args(un, "32; for --forget files")
    add_settings_arg(un)
    un.add_argument("--batch-size", type=int, default=512, help="sequences per metric pass")
    un.add_argument(
        "--holdout",
        help="with --audit and --forget: jsonl of non-member sequences never trained on (MIA)",
    )
    add_audit_flag(un, "the edited model into OUT/audit.json", "1e-4,3e-4,1e-3")
    add_runtime_args(un)
    add_track_args(un)
    add_config_option(un)
    un.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    un.add_argument("--no-progress", action="store_true", help="hide progress bars")
    un.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="method options, e.g. ratio=0.05 epochs=20 (`unmemorize ls methods`)",
    )
    un.set_defaults(handler=cmd_unlearn)


def cmd_unlearn(args: argparse.Namespace) -> int:
    from ..unlearn import unlearn

    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    prefix_len, suffix_len = resolve_window(args.window, args.prefix_len, args.suffix_len)
    audit_requested(args)
    if args.holdout is not None and not args.audit:
        raise UserError("--holdout is read by the audit; add --audit")
    if args.holdout is not None and args.forget is None:
        raise UserError("--holdout goes with --forget; a TinyMem run supplies its own non-members")
    config = audit_config_from_args(args, prefix="audit-") if args.audit else None
    track_config = {
        "model": args.model,
        "method": args.method,
        "overrides": " ".join(args.overrides),
    }
    with tracked(args, "unlearn", args.out, config=track_config):
        record = unlearn(
            args.model,
            args.method,
            args.out,
            overrides=args.overrides,
            forget=args.forget,
            retain=args.retain,
            eval_file=args.eval_file,
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            column=args.column,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            batch_size=args.batch_size,
            dtype=resolve_dtype(args.dtype),
            device=resolve_device(args.device),
            settings=args.settings,
            command=getattr(args, "record", None),
        )
    from ..distributed import is_main_process

    if not is_main_process():
        return 0  # under `accelerate launch`, rank 0 prints and writes
    before, after = record["before"], record["after"]
    res = record["result"]
    print(
        f"{record['method']}: forgot {record['data']['n_forget']} memorized sequences "
        f"(retain set {record['data']['n_retain']}) in {res['seconds']:.1f} s -> {args.out}"
    )
    print(f"  {'':<20}{'before':>10}{'after':>10}")
    print(
        f"  {'memorized':<20}{before['memorized_fraction']:>10.1%}{after['memorized_fraction']:>10.1%}"
        f"   ({before['n_memorized']} -> {after['n_memorized']} of {after['n_candidates']})"
    )
    for key in ("accuracy", "perplexity"):
        if key in before:
            fmt = ".1%" if key == "accuracy" else ".3f"
            print(f"  {key:<20}{before[key]:>10{fmt}}{after[key]:>10{fmt}}")
    print(f"  changed {res['changed_fraction']:.2%} of {res['changed_unit']}", end="")
    print("" if record["score"] is None else f"   score {record['score']:+.3f} (lower is better)")
    if config is not None:
        _audit(args, config)
    return 0


def _audit(args: argparse.Namespace, config) -> None:
    """Audit the edited model in OUT (its run.json names the original and the forget rows)."""
    from ..audit.pipeline import audit_summary, load_audit, run_audit

    inputs = load_audit(
        args.out,
        holdout=args.holdout,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
    )
    report, notes = run_audit(inputs, config, args.out, progress=not args.no_progress)
    for note in notes:
        print(f"  {note}")
    print(f"  audit: {audit_line(audit_summary(report.to_dict()))}")
    print(f"  audit: {args.out}/audit.json   card: unmemorize report {args.out}")
