"""``unmemorize mine``: scan a token corpus for the sequences a model reproduces verbatim."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import WINDOWS, add_runtime_args, add_window_args, resolve_window

DESCRIPTION = """\
Find the k-extractable sequences of a corpus: windows of P + K tokens whose first P tokens make
greedy decoding reproduce the next K exactly (TinyMem built its Pythia forget set this way, with
P = K = 32). The corpus is cut into windows --stride tokens apart (default P + K: no overlap),
scanned in batches with early rejection, and the memorized windows are filtered: a suffix with
fewer than --min-unique distinct tokens is degenerate and dropped, and a window whose token
n-grams overlap an earlier kept one with Jaccard >= --dedup-jaccard is a near-duplicate and
dropped (counted in the kept one's "copies"). The rest is written to --out as jsonl, one
{"input_ids", "score", "copies", "source"} per line, ready for `unmemorize measure --sequences`
and `unmemorize unlearn --forget`. score = mean log-prob of the K suffix tokens (at most 0;
closer to 0 = reproduced more confidently).

corpus formats (by file name):
  .jsonl  one document per line: {"input_ids": [...]} or {"text": "..."} (model's tokenizer)
  .parquet, .arrow or a datasets directory (save_to_disk): a table with an input_ids or text
          column, streamed (needs pip install "unmemorize[datasets]")
  --column NAME reads the text or token ids of a jsonl key / table column of another name
  .npy    numpy token ids, memory-mapped: 1-D = one token stream, 2-D = one document per row
  .bin    raw token ids, memory-mapped, with --dtype-ids uint16|int32 (Pythia's Pile: uint16)
"""

EXAMPLES = """\
examples:
  unmemorize mine --model pythia-160m --corpus pile_slice.bin --dtype-ids uint16 \\
      --out forget.jsonl --device cuda --dtype bfloat16 --batch-size 1024
  unmemorize mine --model runs/mult --corpus docs.jsonl --prefix-len 16 --suffix-len 16 \\
      --stride 8 --out forget.jsonl
  unmemorize unlearn --model pythia-160m --forget forget.jsonl --retain clean.jsonl \\
      --method balanced_subnet --out runs/pythia-bs
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``unmemorize mine`` to the sub-commands."""
    parser = sub.add_parser(
        "mine",
        help="find the memorized (k-extractable) sequences of a token corpus -> forget set",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local Hugging Face model directory")
    parser.add_argument(
        "--corpus",
        required=True,
        help="token corpus: .jsonl, .parquet, .arrow, a datasets directory, .npy or .bin",
    )
    parser.add_argument(
        "--column",
        help="jsonl key / table column holding the text or token ids (default: input_ids, text)",
    )
    parser.add_argument("--out", required=True, help="forget set to write (jsonl)")
    add_window_args(parser, "32")
    parser.add_argument(
        "--stride", type=int, help="tokens between window starts (default: P + K, no overlap)"
    )
    parser.add_argument(
        "--min-unique",
        type=int,
        help="drop suffixes with fewer distinct tokens (default: K // 2, 16 for K = 32; 0: off)",
    )
    parser.add_argument(
        "--dedup-jaccard",
        type=float,
        default=0.8,
        help="n-gram Jaccard that makes a near-duplicate (default: %(default)s)",
    )
    parser.add_argument(
        "--ngram", type=int, default=3, help="n of the compared n-grams (default: %(default)s)"
    )
    parser.add_argument("--no-dedup", action="store_true", help="keep near-duplicates")
    parser.add_argument(
        "--dtype-ids", choices=["uint16", "int32"], help="id type of a raw .bin corpus"
    )
    parser.add_argument(
        "--max-windows", type=int, help="stop after this many windows (default: all)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=512, help="windows per forward pass (default: 512)"
    )
    parser.add_argument(
        "--check-every",
        default="8",
        help="early rejection: check the suffix in chunks of N tokens, or 'none' for one full "
        "pass (default: %(default)s; verdicts are identical)",
    )
    add_runtime_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=cmd_mine)


def _check_every(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--check-every must be a positive integer or 'none', not {value!r}")
    return n


def cmd_mine(args: argparse.Namespace) -> int:
    from ..io import check_output_file
    from ..mining import mine
    from ..models import load_model
    from ..runtime import resolve_device, resolve_dtype

    check_every = _check_every(args.check_every)
    p, k = resolve_window(args.window, args.prefix_len, args.suffix_len)
    p, k = 32 if p is None else p, 32 if k is None else k
    device = resolve_device(args.device)
    out, corpus = Path(args.out), Path(args.corpus)
    check_output_file(out)  # a directory, a path under a file, or no write permission
    if out.exists() and corpus.exists() and out.resolve() == corpus.resolve():
        raise ValueError("--out must differ from --corpus: the corpus is never modified")
    model, tokenizer = load_model(args.model, dtype=resolve_dtype(args.dtype), device=device)
    result = mine(
        model,
        corpus,
        p,
        k,
        stride=args.stride,
        min_unique_suffix_tokens=args.min_unique,
        dedup_jaccard=None if args.no_dedup else args.dedup_jaccard,
        ngram=args.ngram,
        batch_size=args.batch_size,
        check_every=check_every,
        tokenizer=tokenizer,
        dtype_ids=args.dtype_ids,
        max_windows=args.max_windows,
        progress=not args.no_progress,
        column=args.column,
    )
    result.write_jsonl(out)
    c = result.counts()
    print(f"mined {corpus} in {c['seconds']:.1f} s: windows of {p} + {k} tokens")
    for label, key in (
        ("scanned", "scanned"),
        ("memorized", "memorized"),
        ("dropped degenerate", "dropped_degenerate"),
        ("dropped duplicates", "dropped_duplicates"),
        ("kept", "kept"),
    ):
        print(f"  {label:<20}{c[key]:>10}")
    if result.n_kept:
        print(f"forget set: {out}  (mean score {float(result.score.mean()):.3f})")
        named = [name for name, lengths in WINDOWS.items() if lengths == (p, k)]
        if (p, k) == (32, 32):
            window = ""
        else:
            window = f" --window {named[0]}" if named else f" --prefix-len {p} --suffix-len {k}"
        print(f"next: unmemorize unlearn --model {args.model} --forget {out}{window} --method ...")
    else:
        print(f"forget set: {out} is empty: the model reproduces none of the scanned windows")
    return 0
