"""Training throughput (tokens/s) and model FLOP utilization (MFU) against the measured matmul peak.

1. **Peak.** The machine's matmul peak is measured, not looked up: the best of ``--gemm-repeats``
   timings of one n x n @ n x n matrix product (``--gemm-size``, default 2048; 2 n^3 FLOPs) in the
   training dtype, after a warm-up, with torch's default thread count (or ``--threads``).
2. **Training.** Models are trained for a few steps with the project's training loop,
   :func:`unmemorize.train.train_on_batches` (the loop RESTOR and the mining benchmark use:
   ``sequence_losses`` then AdamW, float32 master weights for bf16/fp16); no second loop:
   step times are read from the loop's own ``batches(step)`` callback, which it calls at the start
   of every step. The first ``--warmup-steps`` steps are not timed.

   * ``cpu-mini``: the TinyMem cpu-mini model (GPT-2, 4 layers, d_model 64, context 64) on its
     own training rows (increment task, noise variant), batch 128 as its preset;
   * ``pythia-SIZE`` (``--pythia 70m`` by default; any of
     :data:`unmemorize.benchmarks.shapes.PYTHIA_SHAPES`): a random-weight GPT-NeoX with that Pythia
     model's real shape, on random token batches of ``--pythia-batch`` x ``--pythia-seq-len``.

3. **Figures.** tokens/s counts every position fed to the model (B x (T - 1) per step: the loss
   predicts token t + 1 from tokens <= t; TinyMem's pad positions are computed and counted too).
   ``MFU = 6 * N * tokens/s / peak``, where N counts the weights used in matrix multiplications
   (every linear layer and the output head; not the input embedding lookup, norms or biases:
   :func:`unmemorize.benchmarks.shapes.matmul_parameters`); 6 = 2 FLOPs per multiply-add x
   (forward + backward = 3 forward). Attention score/value FLOPs are NOT counted in ``mfu``;
   ``mfu_with_attention`` adds them as PaLM does (Chowdhery et al. 2022, appendix B):
   ``6 N + 12 * layers * d_model * T`` per token, T the sequence length.

The last lines are ``matmul_peak_gflops: X`` and ``tokens_per_s_<model>: Y`` / ``mfu_<model>: Z``
for every model.

Usage::

    python benchmarks/training_speed.py                        # peak, cpu-mini, Pythia-70m shape
    python benchmarks/training_speed.py --threads 1            # steadier on a busy machine
    python benchmarks/training_speed.py --device cuda --dtype bfloat16 --skip-cpu-mini \\
        --pythia 1.4b 2.8b --pythia-batch 8 --pythia-seq-len 2048 --gemm-size 8192
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import torch

from unmemorize.benchmarks.shapes import PYTHIA_SHAPES, matmul_parameters, random_pythia
from unmemorize.benchmarks.tinymem.experiment import build_data, make_experiment, new_model
from unmemorize.runtime import add_runtime_args, resolve_device, resolve_dtype
from unmemorize.training import train_on_batches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is timed and how MFU is computed.",
    )
    ap.add_argument(
        "--gemm-size", type=int, default=2048, help="n of the peak GEMM (default: 2048)"
    )
    ap.add_argument("--gemm-repeats", type=int, default=5, help="GEMM timings; best taken")
    ap.add_argument(
        "--warmup-steps", type=int, default=1, help="untimed first steps per model (default: 1)"
    )
    ap.add_argument(
        "--mini-steps", type=int, default=8, help="timed cpu-mini steps (default: %(default)s)"
    )
    ap.add_argument("--skip-cpu-mini", action="store_true", help="do not train cpu-mini")
    ap.add_argument(
        "--pythia",
        nargs="*",
        default=["70m"],
        metavar="SIZE",
        help=f"Pythia shapes to train ({', '.join(PYTHIA_SHAPES)}; default: 70m; "
        "none: --pythia alone)",
    )
    ap.add_argument(
        "--pythia-steps", type=int, default=2, help="timed steps per Pythia shape (default: 2)"
    )
    ap.add_argument("--pythia-batch", type=int, default=4, help="sequences per step (default: 4)")
    ap.add_argument(
        "--pythia-seq-len", type=int, default=128, help="tokens per sequence (default: 128)"
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the models and batches")
    add_runtime_args(ap, "the trained models and of the peak GEMM")
    args = ap.parse_args(argv)
    bad = [s for s in args.pythia if s not in PYTHIA_SHAPES]
    if bad:
        ap.error(f"unknown Pythia size {bad[0]!r}; use one of {', '.join(PYTHIA_SHAPES)}")
    if min(args.gemm_size, args.gemm_repeats, args.mini_steps, args.pythia_steps) < 1:
        ap.error("--gemm-size, --gemm-repeats, --mini-steps and --pythia-steps must be positive")
    if min(args.pythia_batch, args.pythia_seq_len - 1, args.warmup_steps + 1) < 1:
        ap.error(
            "--pythia-batch must be positive, --pythia-seq-len at least 2, --warmup-steps >= 0"
        )
    if args.pythia_seq_len > 2048:
        ap.error("--pythia-seq-len must fit Pythia's 2048-token context")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int, repeats: int, dtype: torch.dtype, device: torch.device) -> float:
    """Best FLOP/s of an n x n @ n x n product (2 n^3 FLOPs) over ``repeats`` after a warm-up."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def timed_training(
    model: torch.nn.Module,
    batch: Callable[[int], torch.Tensor],
    warmup: int,
    steps: int,
    pad_id: int | None,
    device: torch.device,
) -> tuple[float, float, float]:
    """Wall and process-CPU seconds of the ``steps`` steps after ``warmup`` untimed ones, and
    the last loss.

    The loop is :func:`train_on_batches`; the clock starts when it asks for batch ``warmup``.
    """
    start: list[float] = []

    def batches(step: int) -> torch.Tensor:
        if step == warmup:
            synchronize(device)
            start.extend((time.perf_counter(), time.process_time()))
        return batch(step)

    losses = train_on_batches(model, batches, warmup + steps, lr=1e-4, pad_id=pad_id)
    synchronize(device)
    return time.perf_counter() - start[0], time.process_time() - start[1], losses[-1]


def report(
    name: str,
    model: torch.nn.Module,
    tokens: int,
    seconds: float,
    cpu_seconds: float,
    seq_len: int,
    peak: float,
) -> dict:
    """Throughput and MFU of one model (``seq_len`` = T, positions per sequence fed)."""
    n = matmul_parameters(model)
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    tps = tokens / seconds
    flops_token = 6 * n
    flops_token_attn = 6 * n + 12 * layers * d * seq_len
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "matmul_params": n,
        "tokens": tokens,
        "seconds": seconds,
        "cpu_per_wall": cpu_seconds / seconds,
        "tokens_per_s": tps,
        "achieved_gflops": flops_token * tps / 1e9,
        "mfu": flops_token * tps / peak,
        "mfu_with_attention": flops_token_attn * tps / peak,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype) or torch.float32
    except ValueError as err:
        sys.exit(f"error: {err}")
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    peak = matmul_peak(args.gemm_size, args.gemm_repeats, dtype, device)
    dname = str(dtype).removeprefix("torch.")
    print(
        f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({args.gemm_size}^3 {dname} GEMM, best of "
        f"{args.gemm_repeats}, {torch.get_num_threads()} torch threads, device {device})",
        flush=True,
    )

    rows = []
    if not args.skip_cpu_mini:
        exp = make_experiment("cpu-mini", "increment", "noise")
        data, tokenizer = build_data(exp)
        model = new_model(exp, tokenizer).to(device=device, dtype=dtype)
        ids = data.train_ids
        bs = exp.train.batch_size
        gen = torch.Generator().manual_seed(args.seed)

        def mini_batch(step: int) -> torch.Tensor:
            return ids[torch.randint(len(ids), (bs,), generator=gen)]

        seconds, cpu, loss = timed_training(
            model, mini_batch, args.warmup_steps, args.mini_steps, data.pad_id, device
        )
        t = ids.shape[1] - 1
        rows.append(report("cpu-mini", model, bs * t * args.mini_steps, seconds, cpu, t, peak))
        print(
            f"cpu-mini: GPT-2 {exp.model.n_layers} layers, d_model {exp.model.d_model}, batch "
            f"{bs} x {t} positions, {args.mini_steps} timed steps, last loss {loss:.3f}",
            flush=True,
        )
        del model

    for size in args.pythia:
        model = random_pythia(size, seed=args.seed, dtype=dtype, device=device)
        b, t = args.pythia_batch, args.pythia_seq_len
        vocab = model.config.vocab_size
        gen = torch.Generator().manual_seed(args.seed)

        def pythia_batch(step: int, b=b, t=t, vocab=vocab, gen=gen) -> torch.Tensor:
            return torch.randint(vocab, (b, t), generator=gen)

        seconds, cpu, loss = timed_training(
            model, pythia_batch, args.warmup_steps, args.pythia_steps, None, device
        )
        tokens = b * (t - 1) * args.pythia_steps
        rows.append(report(f"pythia-{size}", model, tokens, seconds, cpu, t - 1, peak))
        print(
            f"pythia-{size}: random-weight GPT-NeoX, batch {b} x {t - 1} positions, "
            f"{args.pythia_steps} timed steps, last loss {loss:.3f}",
            flush=True,
        )
        del model

    print()
    print(
        f"{'model':<16}{'params':>10}{'N matmul':>10}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}"
        f"{'GFLOP/s':>9}{'MFU':>8}{'MFU+attn':>10}{'cpu/wall':>10}"
    )
    for r in rows:
        print(
            f"{r['name']:<16}{r['params'] / 1e6:>9.2f}M{r['matmul_params'] / 1e6:>9.2f}M"
            f"{r['tokens']:>9}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.0f}"
            f"{r['achieved_gflops']:>9.1f}{r['mfu']:>8.1%}{r['mfu_with_attention']:>10.1%}"
            f"{r['cpu_per_wall']:>10.2f}"
        )
    print(
        "MFU = 6 * N * tokens/s / matmul peak (N: weights in matmuls incl. the output head, not "
        "the input embedding); attention FLOPs excluded (MFU+attn: PaLM's + 12*layers*d*T)"
    )
    print(
        "cpu/wall: process CPU seconds per wall second while timed (on a CPU, below the thread "
        "count means the cores were shared with other work)"
    )
    print(f"total time: {time.perf_counter() - t_start:.0f} s")
    print(f"matmul_peak_gflops: {peak / 1e9:.3f}")
    for r in rows:
        print(f"tokens_per_s_{r['name']}: {r['tokens_per_s']:.0f}")
        print(f"mfu_{r['name']}: {r['mfu']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
