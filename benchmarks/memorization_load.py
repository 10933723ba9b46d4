"""Load: a memorization measurement over 100k sequences on cpu-mini runs in bounded memory.

Peak resident memory (RSS) of a memorization measurement is reported at several sequence counts
(default 2k and 20k; ``--sizes 10000 100000`` for the 100k figure): if it stays flat, the measurement streams; if it grows with N, something
holds all sequences (or a per-sequence structure) in memory.

* model: the cpu-mini shape (GPT-2, 4 layers, d_model 64, context 64, the 14-token math
  vocabulary) with random weights, saved as a model directory;
* sequences: N windows of P + K = 32 + 32 random tokens; one in ``--reproduced-every`` (default
  100) is replaced by one of 64 rows whose suffix is the model's own greedy continuation, so the
  measurement finds real "memorized" rows and the KV-cache path of the early-exit check runs;
  written once as a raw uint16 ``.bin`` token stream and as jsonl ``{"input_ids": [...]}`` lines
  into a temporary directory;
* paths, each run in a fresh Python process per N, so that its peak RSS is its own:

  - ``stream``: :func:`unmemorize.mining.mine` over the memory-mapped ``.bin`` (no degenerate or
    duplicate filter: every window gets a verdict; one batch of windows is in memory at a time);
  - ``measure``: ``unmemorize measure --model DIR --sequences seqs.jsonl --prefix-len 32
    --suffix-len 32`` (the command a user runs on a sequence file).

Memory is the process's ``ru_maxrss`` (peak RSS, from ``resource.getrusage``): ``base`` after
imports, loading the model and one 64-row warm-up measurement, ``peak`` at the end,
``growth = peak - base``. The last lines are
``peak_rss_mb_<path>_<N>: X`` and ``growth_mb_<path>_<N>: Y`` for every path and N.

Usage::

    python benchmarks/memorization_load.py                         # 2k and 20k, both paths
    python benchmarks/memorization_load.py --sizes 10000 100000    # the 100k figure
    python benchmarks/memorization_load.py --sizes 10000 100000 --paths stream
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = ("stream", "measure")
P, K = 32, 32
PLANTED = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for the model, the sequences and the paths.",
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[2_000, 20_000],
        metavar="N",
        help="sequence counts measured (default: 2000 20000, a few minutes on a busy 2-core "
        "CPU; issue 7's figure: --sizes 10000 100000)",
    )
    ap.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        help="measurement paths (default: both)",
    )
    ap.add_argument(
        "--reproduced-every",
        type=int,
        default=100,
        help="one row in this many is a planted reproduced row (default: %(default)s)",
    )
    ap.add_argument("--batch-size", type=int, default=512, help="sequences per forward pass")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the sequences")
    ap.add_argument("--worker", nargs=3, metavar=("PATH", "N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.sizes) < 1 or args.reproduced_every < 1 or args.batch_size < 1:
        ap.error("--sizes, --reproduced-every and --batch-size must be positive")
    return args


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------- the data


def prepare(args: argparse.Namespace, tmp: Path) -> str:
    """Write the model directory and the sequence files of every size; a one-line summary."""
    import torch

    from unmemorize.benchmarks.tinymem.experiment import make_experiment, new_model
    from unmemorize.data.tokenizers import math_tokenizer
    from unmemorize.models import save_model

    exp = make_experiment("cpu-mini", "increment", "noise")
    exp.train.seed = args.seed
    tokenizer = math_tokenizer()
    model = new_model(exp, tokenizer).eval()
    save_model(model, tokenizer, tmp / "model")
    vocab = model.get_input_embeddings().weight.shape[0]

    rng = np.random.default_rng(args.seed)
    planted = torch.from_numpy(rng.integers(vocab, size=(PLANTED, P + K)))
    with torch.inference_mode():
        out = model.generate(
            input_ids=planted[:, :P],
            attention_mask=torch.ones(PLANTED, P, dtype=torch.long),
            max_new_tokens=K,
            min_new_tokens=None,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id,
        )
    planted = out[:, : P + K].numpy().astype(np.uint16)

    n_max = max(args.sizes)
    seqs = rng.integers(vocab, size=(n_max, P + K), dtype=np.uint16)
    where = np.arange(0, n_max, args.reproduced_every)
    seqs[where] = planted[np.arange(len(where)) % PLANTED]
    for n in sorted(set(args.sizes)):
        seqs[:n].tofile(tmp / f"seqs-{n}.bin")
        with (tmp / f"seqs-{n}.jsonl").open("w") as f:
            for lo in range(0, n, 10_000):
                block = seqs[lo : min(n, lo + 10_000)].tolist()
                f.write("".join(json.dumps({"input_ids": r}) + "\n" for r in block))
    return (
        f"cpu-mini shape (GPT-2, {exp.model.n_layers} layers, d_model {exp.model.d_model}, vocab "
        f"{vocab}), random weights; sequences of {P} + {K} random tokens, one in "
        f"{args.reproduced_every} a planted greedy continuation"
    )


# ----------------------------------------------------------------------------- one measurement


def worker(path: str, n: int, tmp: Path, batch_size: int) -> dict:
    """Measure ``n`` sequences by ``path`` in this process; the figures as a dict."""
    import torch

    from unmemorize import cli
    from unmemorize.metrics.memorization import memorized
    from unmemorize.mining import mine
    from unmemorize.models import load_model

    logging_quiet()
    model, _ = load_model(tmp / "model")
    # one small measurement first: torch's kernels and thread pools are set up on the first
    # forward pass, which is not what grows with N
    warm = torch.from_numpy(np.fromfile(tmp / f"seqs-{n}.bin", dtype=np.uint16, count=64 * (P + K)))
    warm = warm.long().view(-1, P + K)
    memorized(model, warm, warm, P, K, batch_size=batch_size)
    base = max_rss_mb()
    t0 = time.perf_counter()
    if path == "stream":
        res = mine(
            model,
            tmp / f"seqs-{n}.bin",
            P,
            K,
            min_unique_suffix_tokens=0,
            dedup_jaccard=None,
            batch_size=batch_size,
            dtype_ids="uint16",
        )
        scanned, memorized = res.n_scanned, res.n_memorized
    else:
        del model  # the command loads its own
        out = io.StringIO()
        argv = [
            "measure",
            "--model",
            str(tmp / "model"),
            "--sequences",
            str(tmp / f"seqs-{n}.jsonl"),
        ]
        argv += ["--prefix-len", str(P), "--suffix-len", str(K), "--batch-size", str(batch_size)]
        with contextlib.redirect_stdout(out):
            rc = cli.main(argv)
        text = out.getvalue()
        if rc != 0:
            raise RuntimeError(f"measure failed ({rc}): {text}")
        scanned = int(re.search(r"sequences counted\s+(\d+)", text).group(1))
        memorized = int(re.search(r"\n\s+memorized\s+(\d+)", text).group(1))
    seconds = time.perf_counter() - t0
    peak = max_rss_mb()
    return {
        "path": path,
        "n": n,
        "scanned": scanned,
        "memorized": memorized,
        "seconds": seconds,
        "base_mb": base,
        "peak_mb": peak,
        "growth_mb": peak - base,
    }


def logging_quiet() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_worker(path: str, n: int, tmp: Path, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh Python process and return its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, str(n), str(tmp)]
    cmd += ["--batch-size", str(args.batch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {path} {n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        path, n, tmp = args.worker
        print(json.dumps(worker(path, int(n), Path(tmp), args.batch_size)))
        return 0

    t_start = time.perf_counter()
    logging_quiet()
    with tempfile.TemporaryDirectory(prefix="memload-") as tmp_name:
        tmp = Path(tmp_name)
        desc = prepare(args, tmp)
        n_max = max(args.sizes)
        print(f"model: {desc}")
        print(
            f"files: {n_max} sequences = {(tmp / f'seqs-{n_max}.bin').stat().st_size / 2**20:.1f} "
            f"MiB .bin, {(tmp / f'seqs-{n_max}.jsonl').stat().st_size / 2**20:.1f} MiB jsonl; "
            f"batch {args.batch_size}; one fresh process per measurement",
            flush=True,
        )
        rows = []
        for path in args.paths:
            for n in sorted(set(args.sizes)):
                r = run_worker(path, n, tmp, args)
                rows.append(r)
                print(
                    f"  {path:<8} N={n:<8} {r['seconds']:8.1f} s  peak RSS {r['peak_mb']:7.1f} MiB"
                    f"  (growth {r['growth_mb']:6.1f} MiB)",
                    flush=True,
                )

    print()
    print(
        f"{'path':<9}{'N':>8}{'memorized':>11}{'seconds':>9}{'seq/s':>8}{'base MiB':>10}"
        f"{'peak MiB':>10}{'growth MiB':>12}"
    )
    errors = []
    for r in rows:
        print(
            f"{r['path']:<9}{r['n']:>8}{r['memorized']:>11}{r['seconds']:>9.1f}"
            f"{r['n'] / r['seconds']:>8.0f}{r['base_mb']:>10.1f}{r['peak_mb']:>10.1f}"
            f"{r['growth_mb']:>12.1f}"
        )
        if r["scanned"] != r["n"]:
            errors.append(f"{r['path']} N={r['n']}: {r['scanned']} sequences measured")
    for path in args.paths:
        mine_rows = [r for r in rows if r["path"] == path]
        lo, hi = mine_rows[0], mine_rows[-1]
        if hi["n"] > lo["n"]:
            per = (hi["growth_mb"] - lo["growth_mb"]) / (hi["n"] - lo["n"]) * 2**20
            print(
                f"{path}: growth {lo['growth_mb']:.1f} MiB at N={lo['n']} -> {hi['growth_mb']:.1f} "
                f"MiB at N={hi['n']} ({per:.0f} bytes per extra sequence)"
            )
    print("growth = peak RSS - peak RSS after imports, model load and a 64-row warm-up (ru_maxrss)")
    print(f"total time: {time.perf_counter() - t_start:.0f} s")
    if errors:
        print("ERROR: " + "; ".join(errors), file=sys.stderr)
        return 1
    for r in rows:
        print(f"peak_rss_mb_{r['path']}_{r['n']}: {r['peak_mb']:.1f}")
        print(f"growth_mb_{r['path']}_{r['n']}: {r['growth_mb']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
