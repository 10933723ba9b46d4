"""``unmemorize audit``: prove (or disprove) a removal with relearning, quantization, sampling
and membership-inference attacks."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import add_runtime_args, resolve_device, resolve_dtype
from .common import add_audit_options, audit_config_from_args, audit_line

EPILOG = """\
where the rows come from:
  a TinyMem run (`unmemorize train`/`demo`) or an `unlearn` output of one: its own sets
      (every memorization candidate; non-members: fresh noised twins never trained on;
      benign relearning data: the clean training rows; utility: the test sets)
  an `unlearn` output made from files: the files and window its run.json records
  any model: --forget F --holdout H --retain R [--eval E] [--prefix-len P --suffix-len K]

the original model (what counts as "returned"): --original, else the model an unlearn output
was edited from, else the audited model itself for a training run.
--reference DIR: a model that never saw the forget rows (MUSE's retrained model) for PrivLeak;
  for TinyMem, train one on the same data without noise:
  unmemorize train --preset cpu-mini --out runs/ref data.num_noise=0

examples:
  unmemorize audit --model runs/bs --out runs/bs-audit
  unmemorize audit --model unmemorize-demo/model --out audits/before --checks exact,sampled,mia
  unmemorize audit --model edited/ --original base/ --forget f.jsonl --holdout h.jsonl \\
      --retain r.jsonl --out audits/e --relearn-lrs 1e-4
checks, their papers and how to read them: `unmemorize ls checks`
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``unmemorize`` sub-commands."""
    p = sub.add_parser(
        "audit",
        help="attack an edited model: does the forgotten data come back?",
        description="Run the audit's checks on a model: exact and partial extraction, sampled "
        "extraction, relearning attacks (fine-tune on half the forget set or on benign rows), "
        "quantization (bfloat16 .. int4), membership inference (LOSS, zlib, Min-K%%, "
        "Min-K%%++) and utility. Writes OUT/audit.json and OUT/audit_rows.jsonl; "
        "`unmemorize report OUT` shows the removal card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="the (edited) model directory to audit")
    p.add_argument("--out", required=True, help="directory for audit.json and audit_rows.jsonl")
    p.add_argument("--original", help="the model before the edit (decides what 'returned' means)")
    p.add_argument("--reference", help="a model that never saw the forget rows (PrivLeak)")
    p.add_argument("--forget", help="jsonl of sequences that must be gone")
    p.add_argument("--holdout", help="jsonl of non-member sequences never trained on (MIA)")
    p.add_argument("--retain", help="jsonl of benign sequences (relearning attack, utility)")
    p.add_argument("--eval", dest="eval_file", help="jsonl of sequences for utility")
    p.add_argument("--prefix-len", type=int, help="P for --forget files (default 32)")
    p.add_argument("--suffix-len", type=int, help="K for --forget files (default 32)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the forget split and batches")
    add_audit_options(p, lrs="1e-4,3e-4,1e-3")
    add_runtime_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing audit in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=cmd_audit)


def check_audit_out(out: Path, model_dir: Path, overwrite: bool) -> None:
    """--out may be the audited directory itself (audit.json lands beside run.json) or any
    directory without an audit; an existing audit is replaced only with --overwrite."""
    from ..audit import AUDIT_JSON
    from ..io import check_output_dir, check_writable

    if out.resolve() == model_dir.resolve() or (out.is_dir() and (out / AUDIT_JSON).is_file()):
        check_writable(out)
        if (out / AUDIT_JSON).is_file() and not overwrite:
            raise FileExistsError(
                f"{out / AUDIT_JSON} exists; choose another --out or pass --overwrite"
            )
        return
    check_output_dir(out, overwrite)


def cmd_audit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..audit.pipeline import audit_summary, load_audit, run_audit
    from ..errors import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    config = replace(audit_config_from_args(args), batch_size=args.batch_size, seed=args.seed)
    out, model_dir = Path(args.out), Path(args.model)
    check_audit_out(out, model_dir, args.overwrite)
    inputs = load_audit(
        model_dir,
        original=args.original,
        reference=args.reference,
        forget=args.forget,
        holdout=args.holdout,
        retain=args.retain,
        eval_file=args.eval_file,
        prefix_len=args.prefix_len,
        suffix_len=args.suffix_len,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
    )
    print(f"unmemorize audit: {inputs.sets.n_forget} forget rows of {model_dir} -> {out}/")
    report, notes = run_audit(inputs, config, out, progress=not args.no_progress)
    for note in notes:
        print(f"  {note}")
    print_card(report.to_dict())
    print(f"  {audit_line(audit_summary(report.to_dict()))}")
    print(f"audit: {out / 'audit.json'}   card: unmemorize report {out}")
    return 0


def print_card(audit: dict) -> None:
    """The removal card as text (the report's tables)."""
    from ..render.model import format_text_table
    from ..report.audit import removal_tables

    for table in removal_tables(audit):
        print(f"\n{table.title}")
        print(format_text_table(table))
