"""``unmemorize measure``: which sequences a model reproduces verbatim (:mod:`unmemorize.measure`)."""

from __future__ import annotations

import argparse

from ..runtime import DEVICE_MAPS, add_runtime_args, add_window_args, resolve_window


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``measure`` to the ``unmemorize`` sub-commands."""
    me = sub.add_parser(
        "measure",
        help="measure which sequences a model reproduces verbatim",
        description="A sequence is memorized when greedy decoding from its first P tokens "
        "reproduces the next K tokens exactly (computed in one teacher-forced pass). Without "
        "--sequences, a model trained by `unmemorize train` is measured on its own memorization "
        "candidates (noised sequences whose noise falls inside the scored window).",
    )
    me.add_argument("--model", required=True, help="local Hugging Face model directory")
    me.add_argument(
        "--sequences",
        help='jsonl: {"input_ids": [...]}, {"text": ...} or '
        '{"prefix_ids": [...], "target_ids": [...]} per line; or a .parquet/.arrow file or a '
        "datasets directory with such columns",
    )
    me.add_argument(
        "--column",
        help="the jsonl key / table column holding each sequence's text or token ids",
    )
    add_window_args(me, "the run's, or 32")
    me.add_argument("--json", help="write the report (with per-sequence verdicts) to this file")
    me.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="sequences per forward pass (halved automatically on out-of-memory)",
    )
    add_runtime_args(me)
    me.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="shard one model's layers over every GPU, then the CPU (accelerate; for a model "
        "larger than one GPU; replaces --device)",
    )
    me.add_argument(
        "--generate",
        action="store_true",
        help="also run real greedy generation: checks the verdicts and adds the "
        "token-level score (fraction of the K tokens reproduced)",
    )
    me.set_defaults(handler=cmd_measure)


def cmd_measure(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..measure import measure

    prefix_len, suffix_len = resolve_window(args.window, args.prefix_len, args.suffix_len)
    measured = measure(
        args.model,
        sequences=args.sequences,
        prefix_len=prefix_len,
        suffix_len=suffix_len,
        batch_size=args.batch_size,
        generate=args.generate,
        report_path=args.json,
        column=args.column,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
    )
    if not is_main_process():
        return 0  # rank 0 prints and writes
    result = measured.report
    print(f"measured {measured.source} in {result['seconds']:.2f} s")
    print(f"  {'sequences counted':<22}{result['n_candidates']:>8}")
    print(f"  {'memorized':<22}{result['n_memorized']:>8}")
    print(f"  {'memorized fraction':<22}{result['memorized_fraction']:>8.1%}")
    for copies, frac in result["per_group"].items():
        if len(result["per_group"]) > 1:
            print(f"  {'  trained ' + copies + 'x':<22}{frac:>8.1%}")
    if args.generate:
        print(f"  {'greedy generate agrees':<22}{'yes' if result['generate_agrees'] else 'NO':>8}")
        print(f"  {'mean token score':<22}{result['mean_token_score']:>8.3f}")
    if args.json:
        print(f"report: {args.json}")
    return 0
