"""``unmemorize eval``: lm-evaluation-harness tasks on an edited model and its original."""

from __future__ import annotations

import argparse

from ..runtime import add_runtime_args, resolve_device, resolve_dtype

EPILOG = """\
examples (standard tasks fetch their data sets from the Hugging Face hub: run where it is reachable,
with HF_HUB_OFFLINE=0):
  unmemorize eval --model runs/bs --original runs/demo --tasks hellaswag,arc_easy --out runs/bs-eval
  unmemorize eval --model runs/bs --tasks lambada_openai --limit 200 --out runs/bs-lambada
offline, with a task YAML over a local file (dataset_path: json, dataset_kwargs.data_files):
  unmemorize eval --model runs/bs --original runs/demo --include-path my_tasks --tasks my_task --out E
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the ``unmemorize`` sub-commands."""
    ev = sub.add_parser(
        "eval",
        help="lm-evaluation-harness tasks on an edited model and its original (optional extra)",
        description="Run lm-evaluation-harness tasks on the edited model (and on --original) and "
        "report each metric and its change; writes OUT/eval.json. Needs the optional extra: "
        'pip install "unmemorize[lmeval]".',
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--model", required=True, help="the edited model directory")
    ev.add_argument("--original", help="the model before the edit (reports the change)")
    ev.add_argument("--tasks", required=True, help="comma-separated harness task names")
    ev.add_argument("--out", required=True, help="output directory for eval.json")
    ev.add_argument("--include-path", help="directory of extra task YAML files")
    ev.add_argument("--limit", type=int, help="at most this many examples per task")
    ev.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    ev.add_argument("--batch-size", type=int, default=8, help="harness batch size (default 8)")
    add_runtime_args(ev)
    ev.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ev.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..audit.harness import check_harness, compare_harness, format_harness_table
    from ..errors import UserError
    from ..io import atomic_write_json, check_output_dir

    check_harness()  # before any work: a missing extra is one line naming the pip command
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size and --limit must be positive")
    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = compare_harness(
        args.model,
        tasks,
        original=args.original,
        include_path=args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", report)
    print(format_harness_table(report))
    print(f"eval: {out / 'eval.json'}")
    return 0
