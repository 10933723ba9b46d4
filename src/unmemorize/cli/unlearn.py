"""``unmemorize unlearn``: remove memorized sequences from a model with one mitigation method."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..runtime import add_runtime_args, resolve_device, resolve_dtype
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
        help="held-out sequences for accuracy/perplexity (default: the retain set), same formats",
    )
    un.add_argument(
        "--column",
        help="the jsonl key / table column holding the text or token ids of those files",
    )
    un.add_argument("--prefix-len", type=int, help="P for --forget files (default 32)")
    un.add_argument("--suffix-len", type=int, help="K for --forget files (default 32)")
    un.add_argument("--batch-size", type=int, default=512, help="sequences per metric pass")
    add_runtime_args(un)
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
    record = unlearn(
        args.model,
        args.method,
        args.out,
        overrides=args.overrides,
        forget=args.forget,
        retain=args.retain,
        eval_file=args.eval_file,
        prefix_len=args.prefix_len,
        suffix_len=args.suffix_len,
        column=args.column,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        batch_size=args.batch_size,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
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
    return 0
