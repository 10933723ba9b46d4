"""The GPU path in one command: memorization pass, mining, methods and training on Pythia shapes.

    python benchmarks/gpu_check.py --out gpu-check          # one GPU, within ~8 minutes
    python benchmarks/gpu_check.py --out DIR --tiny         # tiny shapes (default without a GPU)

On one GPU, in bf16, on random-weight Pythia models (:mod:`unmemorize.benchmarks.shapes`):

1. the memorization pass (:func:`~unmemorize.metrics.memorization.memorized`) against greedy
   ``generate`` with KV cache and against one plain forward pass over the same tokens (the floor),
   on the 410m and 1.4b shapes, with identical verdicts required;
2. ``mine`` throughput (tokens/s) against the forward-only throughput of the same model;
3. BalancedSubnet, NPO (full and LoRA rank 8) and durable: wall time and peak memory on the 1.4b
   shape (``benchmarks/method_cost.py``'s loader and runner);
4. training tokens/s and MFU against the measured bf16 matmul peak
   (``benchmarks/training_speed.py``).

It writes ``DIR/gpu_check.md`` (the Markdown table that ``benchmarks/RESULTS.md`` includes),
``DIR/gpu_check.json`` and prints the table. Without CUDA (or with ``--tiny``) every step runs on
tiny shapes on the CPU in well under a minute, so CI keeps the script working.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

import method_cost  # noqa: E402
import training_speed  # noqa: E402
from memorization_speed import best_time, pythia_sequences  # noqa: E402

from unmemorize.benchmarks.shapes import random_pythia  # noqa: E402
from unmemorize.methods import build_method  # noqa: E402
from unmemorize.metrics.memorization import generate_memorized, memorized  # noqa: E402
from unmemorize.mining import mine  # noqa: E402

#: Tiny stand-ins for the CPU run: (layers, d_model, heads) in place of the Pythia sizes.
TINY = {"410m": (2, 64, 4), "1.4b": (2, 96, 4)}

#: Method runs of step 3 (options that keep each under a minute on an H100 at the 1.4b shape).
METHODS = [
    ("balanced_subnet", {"epochs": 2}),  # tiny: see TINY_OPTIONS
    ("npo", {"max_steps": 10}),
    ("npo", {"max_steps": 10, "lora_rank": 8}),
    ("durable", {}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="directory for gpu_check.md and gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (default without CUDA)")
    ap.add_argument("--device", help="default: cuda when available, else cpu")
    ap.add_argument("--sizes", default="410m,1.4b", help="Pythia shapes of step 1")
    ap.add_argument("--rows", type=int, help="memorization candidates (default 512; tiny 32)")
    return ap.parse_args(argv)


def build(size: str, tiny: bool, device: torch.device) -> torch.nn.Module:
    """Random-weight Pythia-``size`` in bf16 on ``device`` (tiny: a 2-layer stand-in, float32)."""
    if not tiny:
        return random_pythia(size, dtype=torch.bfloat16, device=device)
    from transformers import GPTNeoXForCausalLM

    from unmemorize.benchmarks.shapes import pythia_config

    layers, d, heads = TINY[size]
    cfg = pythia_config("70m", context_length=128)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads = layers, d, heads
    cfg.intermediate_size, cfg.vocab_size = 4 * d, 512
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(cfg).to(device).eval()


def sync(device: torch.device) -> None:
    training_speed.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return method_cost._peak_kib() / 1024  # process peak RSS (CPU)


def memorization_rows(args, tiny, device) -> list[dict]:
    """Step 1: one-pass check vs cached generate vs one plain forward pass, per shape."""
    n = args.rows or (16 if tiny else 512)
    return [memorization_row(size, n, tiny, device) for size in args.sizes.split(",")]


def memorization_row(size: str, n: int, tiny: bool, device: torch.device) -> dict:
    p = k = 32
    bs = 16 if tiny else 128
    model = build(size, tiny, device)
    prompt, target, _, _ = pythia_sequences(model, n, p, k, 0.5, seed=0)

    def one():
        out = memorized(model, prompt, target, p, k, batch_size=bs)
        sync(device)
        return out

    def gen():
        out = generate_memorized(model, prompt, target, p, k, batch_size=bs)[0]
        sync(device)
        return out

    def floor():
        with torch.inference_mode():
            for i in range(0, n, bs):
                model(input_ids=target[i : i + bs, : p + k - 1].to(device))
        sync(device)

    one(), gen(), floor()  # warm-up
    t_one, v_one = best_time(one, 2)
    t_gen, v_gen = best_time(gen, 2)
    t_floor, _ = best_time(floor, 2)
    return {
        "step": "memorization",
        "shape": f"pythia-{size}" + (" (tiny)" if tiny else ""),
        "rows": n,
        "one_pass_s": t_one,
        "cached_generate_s": t_gen,
        "forward_floor_s": t_floor,
        "speedup_vs_generate": t_gen / t_one,
        "over_floor": t_one / t_floor,
        "identical_verdicts": bool(torch.equal(v_one, v_gen)),
        "memorized": int(v_one.sum()),
    }


def mining_row(tiny, device) -> dict:
    """Step 2: mine's tokens/s vs the forward-only tokens/s of the same windows."""
    size = "410m"
    model = build(size, tiny, device)
    p = k = 32
    n_tokens = 1_024 if tiny else 262_144
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, n_tokens)
    bs = 32 if tiny else 256
    mine(model, ids[: 4 * (p + k)], p, k, stride=p + k, batch_size=bs)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    result = mine(model, ids, p, k, stride=p + k, batch_size=bs)
    sync(device)
    t_mine = time.perf_counter() - t0
    windows = torch.as_tensor(ids[: (n_tokens // (p + k)) * (p + k)]).view(-1, p + k)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(windows), bs):
            model(input_ids=windows[i : i + bs].to(device))
    sync(device)
    t_fwd = time.perf_counter() - t0
    tokens = result.n_scanned * (p + k)
    return {
        "step": "mining",
        "shape": f"pythia-{size}" + (" (tiny)" if tiny else ""),
        "windows": result.n_scanned,
        "mine_tokens_per_s": tokens / t_mine,
        "forward_tokens_per_s": windows.numel() / t_fwd,
        "mine_over_forward": (tokens / t_mine) / (windows.numel() / t_fwd),
    }


def method_rows(tiny, device) -> list[dict]:
    """Step 3: wall time and peak memory of the methods on the 1.4b shape."""
    rows = []
    for name, options in METHODS:
        model = build("1.4b", tiny, device)
        forget, retain, seq_len = (4, 4, 32) if tiny else (64, 64, 128)
        data = method_cost.pythia_data(model.config.vocab_size, forget, retain, seq_len)
        if "npo" in name:
            options = {**options, "batch_size": 8}
        if tiny:  # a smoke run: the fewest steps that still run every part
            options = {**options, **({"max_steps": 2} if "npo" in name else {})}
            options = {**options, **({"epochs": 1} if name == "balanced_subnet" else {})}
        method = build_method(name, options)
        sync(device)
        peak_reset(device)
        t0 = time.perf_counter()
        error = None
        try:
            method.apply(model, data)
        except (ValueError, MemoryError, RuntimeError) as err:  # report, keep going
            error = str(err).splitlines()[0]
        sync(device)
        label = name + (" (LoRA r=8)" if options.get("lora_rank") else "")  # noqa: E501
        rows.append(
            {
                "step": "method",
                "shape": "pythia-1.4b" + (" (tiny)" if tiny else ""),
                "method": label,
                "seconds": time.perf_counter() - t0,
                "peak_mib": peak_mib(device),
                "error": error,
            }
        )
        del model
    return rows


def training_row(tiny, device) -> dict:
    """Step 4: training tokens/s and MFU against the measured matmul peak."""
    dtype = torch.float32 if tiny else torch.bfloat16
    model = build("410m", tiny, device).train()
    if not tiny:
        model = model.to(dtype)
    b, t = (4, 32) if tiny else (16, 512)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (b, t), generator=g)
    steps = 2 if tiny else 20
    seconds, cpu, _ = training_speed.timed_training(model, lambda s: batch, 2, steps, None, device)
    peak = training_speed.matmul_peak(256 if tiny else 8192, 3, dtype, device)
    rep = training_speed.report("410m", model, b * t * steps, seconds, cpu, t, peak)
    return {
        "step": "training",
        "shape": "pythia-410m" + (" (tiny)" if tiny else ""),
        "tokens_per_s": rep["tokens_per_s"],
        "mfu": rep["mfu"],
        "matmul_peak_tflops": peak / 1e12,
    }


def markdown(rows: list[dict], device: str) -> str:
    out = [f"GPU check on {device} (`python benchmarks/gpu_check.py`)", ""]
    out += ["| step | shape | what | value |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r["step"] == "memorization":
            what = (
                f"one pass {r['one_pass_s']:.3f} s, cached generate {r['cached_generate_s']:.3f} s, "
                f"forward floor {r['forward_floor_s']:.3f} s ({r['rows']} rows, 32 → 32)"
            )
            value = (
                f"{r['speedup_vs_generate']:.1f}× vs generate, {r['over_floor']:.2f}× the floor, "
                f"verdicts identical: {r['identical_verdicts']}"
            )
        elif r["step"] == "mining":
            what = f"mine {r['mine_tokens_per_s']:,.0f} tok/s vs forward {r['forward_tokens_per_s']:,.0f} tok/s"
            value = f"{r['mine_over_forward']:.2f}× forward-only"
        elif r["step"] == "method":
            what = r["method"]
            value = r["error"] or f"{r['seconds']:.1f} s, peak {r['peak_mib']:,.0f} MiB"
        else:
            what = (
                f"{r['tokens_per_s']:,.0f} tok/s, matmul peak {r['matmul_peak_tflops']:.1f} TFLOP/s"
            )
            value = f"MFU {r['mfu']:.1%}"
        out.append(f"| {r['step']} | {r['shape']} | {what} | {value} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny or device.type != "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    start = time.perf_counter()
    rows = memorization_rows(args, tiny, device)
    rows.append(mining_row(tiny, device))
    rows += method_rows(tiny, device)
    rows.append(training_row(tiny, device))
    table = markdown(rows, name + (" (tiny shapes)" if tiny else ""))
    (out / "gpu_check.md").write_text(table)
    record = {"device": name, "tiny": tiny, "seconds": time.perf_counter() - start, "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    print(table)
    print(f"total {record['seconds']:.0f} s -> {out / 'gpu_check.md'}")
    return rows


if __name__ == "__main__":
    main()
