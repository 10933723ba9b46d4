"""What ``--compile`` (torch.compile) buys: the memorization pass, training steps, a gradient method.

One run measures each workload without and with compilation on the same random-weight GPT-NeoX
model and prints the speed ratio (plain seconds / compiled seconds, > 1 = compiled is faster),
both for the steady state (after a warm-up call that pays the compilation) and for the first
call (compilation included), and checks that the results are identical: the same memorized set
and the same training losses to float tolerance.

    python benchmarks/compile_speed.py                    # CPU, a 2-layer d=128 model, ~2 minutes
    python benchmarks/compile_speed.py --device cuda --layers 24 --d-model 1024   # Pythia-410m-ish

The switch measured is the one the CLI's ``--compile`` turns on
(:func:`unmemorize.runtime.compiling`); nothing here is a second code path.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from unmemorize.methods import UnlearnData, build_method
from unmemorize.metrics.memorization import memorized
from unmemorize.runtime import compiling
from unmemorize.training import train_on_batches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--rows", type=int, default=256, help="memorization candidates")
    ap.add_argument("--prefix-len", type=int, default=32)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed training / method steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many steady-state runs")
    ap.add_argument("--device", default="cpu")
    return ap.parse_args(argv)


def make_model(args, device) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    heads = max(1, args.d_model // 64)
    config = GPTNeoXConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        intermediate_size=4 * args.d_model,
        max_position_embeddings=args.prefix_len + args.suffix_len,
        initializer_range=0.2,  # peaked logits: greedy continuations are stable
    )
    return GPTNeoXForCausalLM(config).to(device).eval()


def candidates(model, args, device) -> torch.Tensor:
    """[rows, P + K]: even rows are the model's own greedy continuation (memorized), odd random."""
    g = torch.Generator().manual_seed(1)
    p, k = args.prefix_len, args.suffix_len
    ids = torch.randint(0, args.vocab, (args.rows, p + k), generator=g)
    with torch.no_grad():
        cont = model.generate(
            ids[0::2, :p].to(device), max_new_tokens=k, min_new_tokens=k, do_sample=False,
            pad_token_id=0,
        )  # fmt: skip
    ids[0::2] = cont.cpu()
    return ids


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call's seconds, best steady-state seconds, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def workloads(args, device):
    base = make_model(args, device)
    ids = candidates(base, args, device)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    p, k = args.prefix_len, args.suffix_len

    def memorization():
        return memorized(base, ids, ids, p, k, batch_size=args.batch_size)

    batch = ids[: args.batch_size]

    def training():
        base.load_state_dict(state)
        out = train_on_batches(base, lambda s: batch, args.steps, lr=1e-4, pad_id=None)
        base.load_state_dict(state)
        base.eval()
        return out

    forget = ids[0 : 2 * args.batch_size : 2]
    data = UnlearnData(forget_ids=forget, retain_ids=ids[1 : 2 * args.batch_size : 2])
    npo = build_method("npo", {"max_steps": args.steps, "batch_size": args.batch_size // 2})

    def method():
        return npo.apply(base, data).losses  # apply never mutates ``base``

    return {"memorization pass": memorization, "training steps": training, "npo steps": method}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return len(a) == len(b) and all(
        abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(a, b, strict=True)
    )


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    rows = []
    results = {}
    for compile_ in (False, True):
        with compiling(compile_):
            for name, fn in workloads(args, device).items():
                try:
                    first, best, out = timed(fn, args.repeats)
                except Exception as err:  # noqa: BLE001 (e.g. no C++ compiler: report it)
                    print(f"{name}: torch.compile failed: {type(err).__name__}: {err}")
                    raise
                results[name, compile_] = (first, best, out)
                print(
                    f"{name} compile={compile_}: first {first:.2f} s, best {best:.3f} s", flush=True
                )
    print(
        f"torch {torch.__version__} on {args.device}, GPT-NeoX {args.layers}x{args.d_model}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'workload':<20}{'plain s':>9}{'compiled s':>11}{'ratio':>7}{'1st plain':>10}"
          f"{'1st comp':>10}  identical")  # fmt: skip
    for name in ("memorization pass", "training steps", "npo steps"):
        f0, b0, o0 = results[name, False]
        f1, b1, o1 = results[name, True]
        row = {
            "workload": name,
            "plain_s": b0,
            "compiled_s": b1,
            "ratio": b0 / b1,
            "first_plain_s": f0,
            "first_compiled_s": f1,
            "identical": same(o0, o1),
        }
        if name == "memorization pass":
            row["memorized"] = int(o0.sum())
        rows.append(row)
        print(
            f"{name:<20}{b0:>9.3f}{b1:>11.3f}{b0 / b1:>7.2f}{f0:>10.2f}{f1:>10.2f}  "
            f"{row['identical']}"
            + (f" ({row['memorized']} memorized)" if "memorized" in row else "")
        )
    return rows


if __name__ == "__main__":
    main()
