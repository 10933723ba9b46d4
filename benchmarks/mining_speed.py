"""Speed of ``unmemorize mine``: early rejection vs. the plain one-pass memorization check.

Mining scans every window of a corpus, and nearly all of them are not memorized. The early-exit
path of :func:`unmemorize.metrics.memorization.memorized` (``check_every=N``) checks the suffix
N tokens at a time and drops a window at its first wrong chunk, so most windows cost a forward
pass over P + N - 1 tokens with logits at N positions instead of P + K - 1 tokens with logits at
K positions. This script times :func:`unmemorize.mining.mine` both ways on the same model and
corpus and checks that the forget sets are identical (ids, scores, copies, sources, counts).

The model really memorized its share of the corpus (a random model fails every window in the
first chunk, which would flatter early rejection), and the rest of the corpus is partly
predictable, so that some non-memorized windows survive a chunk or two as they do in real text:

* corpus: ``--n-windows`` windows of P + K = 64 tokens from a Markov chain over ``--vocab`` ids
  in which each token is followed by its fixed successor with probability ``--predictability``
  (else a uniform token); a ``--memorized-fraction`` of the windows (default 1%) are replaced by
  random windows (distinct tokens, so no degenerate filter applies);
* model: GPT-2, ``--layers`` x ``--d-model``, context 64, trained in-process for ``--steps`` steps
  of :func:`unmemorize.train.train_on_batches` on batches that are half planted windows and half
  fresh chain samples (it learns the chain and memorizes the planted windows); its greedy
  next-token accuracy on fresh chain text is printed;
* the corpus is written as a raw uint16 ``.bin`` and mined memory-mapped, as a Pile slice would be.

Each timing is the best of ``--repeats`` full ``mine`` calls after a warm-up, under one torch
thread count. The last line is ``speedup_early_exit_vs_one_pass: X`` (one-pass seconds /
early-exit seconds). Exit status 1 if the forget sets differ.

Usage::

    python benchmarks/mining_speed.py                      # train (~3.5 min busy 2-core CPU), time
    python benchmarks/mining_speed.py --threads 1          # steadier on a busy machine
    python benchmarks/mining_speed.py --sweep              # also time check_every 2, 4, 16
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unmemorize.mining import MiningResult, mine
from unmemorize.models import ModelConfig, build_model
from unmemorize.training import train_on_batches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for the corpus, the model and what is timed.",
    )
    ap.add_argument("--n-windows", type=int, default=4096, help="windows scanned (default: 4096)")
    ap.add_argument(
        "--memorized-fraction",
        type=float,
        default=0.01,
        help="share of the windows planted and trained until memorized (default: %(default)s)",
    )
    ap.add_argument("--vocab", type=int, default=1024, help="vocabulary size (default: 1024)")
    ap.add_argument(
        "--predictability",
        type=float,
        default=0.5,
        help="probability that a chain token is its predecessor's fixed successor "
        "(default: %(default)s)",
    )
    ap.add_argument("--layers", type=int, default=4, help="GPT-2 blocks (default: 4)")
    ap.add_argument("--d-model", type=int, default=64, help="residual width (default: 64)")
    ap.add_argument(
        "--steps",
        type=int,
        default=300,
        help="training steps (default: %(default)s; all planted windows were memorized with it)",
    )
    ap.add_argument("--prefix-len", type=int, default=32, help="P (default: 32)")
    ap.add_argument("--suffix-len", type=int, default=32, help="K (default: 32)")
    ap.add_argument("--batch-size", type=int, default=512, help="windows per forward pass")
    ap.add_argument(
        "--check-every", type=int, default=8, help="early-exit chunk length (default: 8)"
    )
    ap.add_argument("--repeats", type=int, default=2, help="timings per path; best taken")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus and the model")
    ap.add_argument("--sweep", action="store_true", help="also time check_every 2, 4 and 16")
    args = ap.parse_args(argv)
    if min(args.n_windows, args.steps, args.repeats, args.batch_size, args.vocab) < 1:
        ap.error("--n-windows, --steps, --repeats, --batch-size and --vocab must be positive")
    if not 0 < args.memorized_fraction < 1 or not 0 <= args.predictability <= 1:
        ap.error("--memorized-fraction must lie in (0, 1) and --predictability in [0, 1]")
    if args.vocab > 65535:
        ap.error("--vocab must fit uint16 (the .bin corpus)")
    return args


def markov_windows(
    n: int, length: int, successor: np.ndarray, q: float, rng: np.random.Generator
) -> np.ndarray:
    """[n, length] chain samples: each token is its predecessor's successor with probability q."""
    v = len(successor)
    x = np.empty((n, length), dtype=np.int64)
    x[:, 0] = rng.integers(v, size=n)
    for t in range(1, length):
        follow = rng.random(n) < q
        x[:, t] = np.where(follow, successor[x[:, t - 1]], rng.integers(v, size=n))
    return x


def build_corpus(args: argparse.Namespace, rng: np.random.Generator):
    """``(windows [N, W], planted [M, W], successor [V])``; planted rows are in ``windows``."""
    w = args.prefix_len + args.suffix_len
    successor = rng.permutation(args.vocab)
    windows = markov_windows(args.n_windows, w, successor, args.predictability, rng)
    n_planted = max(1, round(args.n_windows * args.memorized_fraction))
    planted = np.stack([rng.choice(args.vocab, w, replace=False) for _ in range(n_planted)])
    where = rng.choice(args.n_windows, n_planted, replace=False)
    windows[where] = planted
    return windows, planted, successor


def train_memorizer(args, planted, successor, rng) -> tuple[torch.nn.Module, float, float]:
    """A GPT-2 trained on half planted windows, half fresh chain text; (model, seconds, acc)."""
    w = planted.shape[1]
    model = build_model(
        ModelConfig(arch="gpt2", n_layers=args.layers, d_model=args.d_model, context_length=w),
        vocab_size=args.vocab,
        bos_id=0,
        eos_id=0,
        pad_id=0,
        seed=args.seed,
    ).to(args.device)
    planted_t = torch.from_numpy(planted)
    gen = torch.Generator().manual_seed(args.seed)

    def batches(step: int) -> torch.Tensor:
        mem = planted_t[torch.randint(len(planted_t), (32,), generator=gen)]
        fresh = torch.from_numpy(markov_windows(32, w, successor, args.predictability, rng))
        return torch.cat([mem, fresh])  # [64, W]

    t0 = time.perf_counter()
    train_on_batches(model, batches, args.steps, lr=3e-3, pad_id=None, warmup=30)
    seconds = time.perf_counter() - t0
    model.eval()
    test = torch.from_numpy(markov_windows(256, w, successor, args.predictability, rng))
    test = test.to(args.device)
    with torch.inference_mode():
        pred = model(input_ids=test[:, :-1]).logits.argmax(-1)  # [256, W - 1]
    accuracy = float((pred == test[:, 1:]).float().mean())
    return model, seconds, accuracy


def same_result(a: MiningResult, b: MiningResult) -> list[str]:
    """What differs between two forget sets (empty when identical)."""
    diffs = []
    if not torch.equal(a.input_ids, b.input_ids):
        diffs.append("input_ids")
    if not torch.equal(a.score, b.score):
        diffs.append("score")
    if not torch.equal(a.copies, b.copies) or a.source != b.source:
        diffs.append("copies/source")
    ca = {k: v for k, v in a.counts().items() if k != "seconds"}
    cb = {k: v for k, v in b.counts().items() if k != "seconds"}
    if ca != cb:
        diffs.append(f"counts {ca} vs {cb}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()
    p, k = args.prefix_len, args.suffix_len

    windows, planted, successor = build_corpus(args, rng)
    print(
        f"training GPT-2 ({args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, "
        f"context {p + k}) for {args.steps} steps ...",
        flush=True,
    )
    model, train_s, accuracy = train_memorizer(args, planted, successor, rng)
    print(
        f"model: trained in {train_s:.0f} s; greedy next-token accuracy on fresh chain text "
        f"{accuracy:.3f} (chain predictability {args.predictability})"
    )

    results: dict[str, tuple[float, MiningResult]] = {}
    with tempfile.TemporaryDirectory(prefix="minespeed-") as tmp:
        corpus = Path(tmp) / "corpus.bin"
        windows.astype(np.uint16).reshape(-1).tofile(corpus)
        print(
            f"corpus: {args.n_windows} windows of {p} + {k} tokens ({corpus.stat().st_size} "
            f"bytes, uint16 .bin, memory-mapped), {len(planted)} planted "
            f"({args.memorized_fraction:.1%})"
        )
        print(
            f"timing: best of {args.repeats} full mine() calls after a warm-up, batch "
            f"{args.batch_size}, {torch.get_num_threads()} torch threads, device {args.device}",
            flush=True,
        )

        def run(check_every: int | None) -> MiningResult:
            return mine(
                model,
                corpus,
                p,
                k,
                batch_size=args.batch_size,
                check_every=check_every,
                dtype_ids="uint16",
            )

        paths = [None, args.check_every]
        if args.sweep:
            paths += [ce for ce in (2, 4, 16) if ce != args.check_every and ce < k]
        for ce in paths:
            mine(model, corpus, p, k, check_every=ce, dtype_ids="uint16", max_windows=256)
            best, res = float("inf"), None
            for _ in range(args.repeats):
                res = run(ce)
                best = min(best, res.seconds)
            results[str(ce)] = (best, res)

    one_s, one = results["None"]
    early_s, early = results[str(args.check_every)]
    found = len({tuple(r) for r in planted.tolist()} & {tuple(r) for r in one.input_ids.tolist()})
    c = one.counts()
    print(
        f"mined: {c['scanned']} scanned, {c['memorized']} memorized, {c['dropped_degenerate']} "
        f"degenerate, {c['dropped_duplicates']} duplicates, {c['kept']} kept; "
        f"{found}/{len(planted)} planted windows found"
    )
    print()
    print(f"{'path':<36}{'seconds':>10}{'windows/s':>12}{'x one-pass':>12}")
    errors = []
    for key, (sec, res) in results.items():
        label = (
            "one pass (check_every=None)" if key == "None" else f"early exit (check_every={key})"
        )
        print(f"{label:<36}{sec:>10.3f}{args.n_windows / sec:>12.0f}{one_s / sec:>11.2f}x")
        diffs = same_result(res, one)
        if diffs:
            errors.append(f"{label}: {', '.join(diffs)} differ from the one-pass result")
    print(f"total time: {time.perf_counter() - t_start:.0f} s")
    if errors:
        print("ERROR: forget sets differ:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("forget sets identical across paths")
    print(f"speedup_early_exit_vs_one_pass: {one_s / early_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
