"""Speed of the memorization metric: one-pass teacher-forced check vs. greedy ``generate``.

TinyMem counts a sequence as memorized when greedy decoding from its clean p-token prefix
reproduces the trained k-token suffix exactly. Three ways to get that verdict are timed on the
same model, sequences and thread count:

(a) ``memorized(...)`` -- one teacher-forced pass, logits only at scored positions, suffix checked
    in chunks of ``check_every`` tokens with a KV cache, rows dropped at their first wrong chunk
    (the library default); also shown with ``check_every=None`` (one plain pass, no early
    rejection) so the gain of early rejection is visible;
(b) ``generate_memorized(..., use_cache=True)`` -- HF ``generate``, greedy, KV cache;
(c) ``generate_memorized(..., use_cache=False)`` -- the original TinyMem code's path. It is slow,
    so it is timed on the first ``--uncached-subset`` sequences and scaled per sequence.

All three must give identical verdicts (on the rows each one saw); the script exits non-zero if
not. Each timing is the best of ``--repeats`` runs after a warm-up, under ``torch.inference_mode``.

The model is realistic, not random weights (a random model fails every sequence in the first
chunk, which flatters early rejection): by default a cpu-mini TinyMem model (GPT-2, 4 layers,
d_model 64, context 64, 14-token math vocabulary) is trained in-process for ``--epochs`` epochs
into a temporary directory; ``--model DIR`` instead loads a run written by ``unmemorize train`` or
``unmemorize demo`` (e.g. ``unmemorize-demo/model``).

Sequences (``--n-sequences``, default 2048, prefix p = 32, suffix k = 32): the run's memorization
candidates (noised training rows, prompted by their clean twins), plus noised versions of other
main-task training rows, regenerated with the data module's own noise
(:func:`unmemorize.data.math.add_number_noise`): a ``--reproduced-fraction`` of them with the noise
outside the scored window (a model that learned the task reproduces them), the rest with at least
one perturbed number inside it (the model was never trained on them: not memorized). The rows are
shuffled so every batch holds a realistic mix.

**Pythia shapes** (``--pythia 70m`` / ``160m`` / ...): instead of cpu-mini, a GPT-NeoX model with
the real shape of that Pythia model (vocabulary 50304, rotary on a quarter of each head, context
2048; :mod:`unmemorize.benchmarks.shapes`) and *random* weights. Random weights reproduce nothing,
so the early-exit metric would drop every row at its first chunk -- unfairly fast. The sequences
are therefore random prefixes of which a ``--reproduced-fraction`` get the model's own greedy
continuation as target (these survive every chunk, as memorized rows do), the rest a random
suffix; and both the full one-pass check (``check_every=None``, the fair comparison: it does the
same work whatever the verdicts) and the early-exit variant are reported against ``generate``.
Defaults shrink to fit a CPU (32 sequences, 1 repeat, uncached generate on 2 rows).

The last lines of output are ``speedup_vs_uncached_generate: Y``, ``speedup_vs_cached_generate: X``
(per-sequence time of that path / the early-exit one-pass metric) and
``speedup_full_one_pass_vs_cached_generate: Z`` (cached generate / ``check_every=None``).

Usage::

    python benchmarks/memorization_speed.py                 # train 40 epochs, then time
    python benchmarks/memorization_speed.py --model unmemorize-demo/model
    python benchmarks/memorization_speed.py --threads 1     # steadier on a busy machine
    python benchmarks/memorization_speed.py --sweep         # also time check_every / batch sizes
    python benchmarks/memorization_speed.py --pythia 70m                  # 32 -> 32
    python benchmarks/memorization_speed.py --pythia 70m --suffix-len 40  # 32 -> 40
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unmemorize.benchmarks.shapes import PYTHIA_SHAPES, random_pythia
from unmemorize.benchmarks.tinymem.data import TinyMemData
from unmemorize.benchmarks.tinymem.experiment import load_run, make_experiment, train_experiment
from unmemorize.benchmarks.tinymem.math_data import (
    add_number_noise,
    encode_rows,
    number_strings,
    task_numbers,
)
from unmemorize.metrics.memorization import generate_memorized, memorized
from unmemorize.runtime import DTYPES, resolve_dtype


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is timed and how the sequences are built.",
    )
    ap.add_argument(
        "--model",
        metavar="DIR",
        help="a run directory written by `unmemorize train`/`demo` (its data/ must exist); "
        "default: train a cpu-mini model in-process",
    )
    ap.add_argument(
        "--pythia",
        metavar="SIZE",
        choices=list(PYTHIA_SHAPES),
        help="time a random-weight model with the real shape of Pythia-SIZE instead "
        f"({', '.join(PYTHIA_SHAPES)}; see the module docstring)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="epochs of the in-process cpu-mini training (default: %(default)s: about 2 minutes "
        "on an idle 2-core CPU, clean-task token accuracy about 0.92; memorization of the noised "
        "candidates starts near epoch 35, so 40 epochs give real memorized rows to time)",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="extra config overrides for the in-process training, e.g. train.lr=0.002",
    )
    ap.add_argument(
        "--n-sequences",
        type=int,
        default=None,
        help="sequences timed (default: 2048; 32 with --pythia)",
    )
    ap.add_argument(
        "--prefix-len", type=int, default=32, help="prompt length p (default: %(default)s)"
    )
    ap.add_argument(
        "--suffix-len", type=int, default=32, help="suffix length k (default: %(default)s)"
    )
    ap.add_argument(
        "--reproduced-fraction",
        type=float,
        default=0.1,
        help="share of the added rows whose scored window is left clean; with --pythia, share "
        "of the rows whose target is the model's own greedy continuation (default: %(default)s)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="rows per forward pass of the one-pass metric (default: %(default)s)",
    )
    ap.add_argument(
        "--generate-batch-size",
        type=int,
        default=1024,
        help="rows per generate call with KV cache (default: %(default)s, its fastest on a 2-core "
        "CPU: 512 was ~20%% slower, 2048 no faster)",
    )
    ap.add_argument(
        "--uncached-batch-size",
        type=int,
        default=256,
        help="rows per generate call without cache (default: %(default)s; 128-512 measured alike)",
    )
    ap.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="check_every of the one-pass metric (default: the library default)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timings per method; best taken (default: 3; 1 with --pythia)",
    )
    ap.add_argument(
        "--uncached-subset",
        type=int,
        default=None,
        help="uncached generate is timed on the first N sequences and scaled (default: 512; 2 "
        "with --pythia)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    ap.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    ap.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights dtype (default: float32; bfloat16 on a GPU: near-tied logits may then "
        "flip single greedy verdicts between the paths, which the script reports)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the added noise and the shuffle")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="also time the one-pass metric over check_every and batch sizes (verdicts checked)",
    )
    args = ap.parse_args(argv)
    if args.model and args.pythia:
        ap.error("--model and --pythia exclude each other")
    small = args.pythia is not None
    for name, default, pythia_default in (
        ("n_sequences", 2048, 32),
        ("repeats", 3, 1),
        ("uncached_subset", 512, 2),
    ):
        if getattr(args, name) is None:
            setattr(args, name, pythia_default if small else default)
    if args.uncached_subset < 1:
        ap.error("--uncached-subset must be positive")
    if args.n_sequences < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("--n-sequences, --batch-size and --repeats must be positive")
    if not 0 <= args.reproduced_fraction <= 1:
        ap.error("--reproduced-fraction must lie in [0, 1]")
    return args


# --------------------------------------------------------------------------------------- model


def get_model(args: argparse.Namespace) -> tuple[torch.nn.Module, TinyMemData, str]:
    """The model under test, its TinyMem data and a one-line description."""
    if args.model:
        model, _, data = load_run(args.model)
        if data is None:
            sys.exit(f"error: {args.model} has no data/ (not written by `unmemorize train`/`demo`)")
        return model, data, f"loaded from {args.model}"
    overrides = [
        f"train.epochs={args.epochs}",
        f"train.checkpoint_every={args.epochs}",  # evaluate once, at the end
        "train.keep_checkpoints=1",
        *args.overrides,
    ]
    exp = make_experiment("cpu-mini", "increment", "noise", overrides)
    print(
        f"training cpu-mini (GPT-2, {exp.model.n_layers} layers, d_model {exp.model.d_model}, "
        f"context {exp.model.context_length}) for {exp.train.epochs} epochs ...",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="memspeed-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_experiment(exp, Path(tmp) / "run", progress=False)
    f = run.final
    desc = (
        f"trained in-process: {exp.train.epochs} epochs in {run.seconds:.0f} s, clean-task token "
        f"accuracy {f['accuracy']:.3f}, {f['n_memorized']}/{f['n_candidates']} candidates memorized"
    )
    return run.model, run.data, desc


def pythia_sequences(
    model: torch.nn.Module, n: int, p: int, k: int, reproduced_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Random prefixes; a share of rows targets the model's greedy continuation (reproduced)."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(vocab, (n, p + k), generator=gen)
    target = prompt.clone()
    n_rep = int(round(n * reproduced_fraction))
    is_rep = torch.zeros(n, dtype=torch.bool)
    is_rep[torch.randperm(n, generator=gen)[:n_rep]] = True
    if n_rep:
        device = next(model.parameters()).device
        rows = prompt[is_rep, :p].to(device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=rows,
                attention_mask=torch.ones_like(rows),
                max_new_tokens=k,
                min_new_tokens=None,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=model.config.pad_token_id,
            )
        target[is_rep, p : p + k] = out[:, p : p + k].cpu()
    desc = (
        f"{n} random sequences: {n_rep} targeting the model's own greedy continuation "
        f"(reproduced), {n - n_rep} a random suffix"
    )
    return prompt, target, is_rep, desc


# ------------------------------------------------------------------------------------ sequences


def build_sequences(
    data: TinyMemData, n: int, p: int, k: int, reproduced_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``(prompt_ids, target_ids, is_candidate, description)``, [n, T] / [n] bool, shuffled."""
    info = data.info
    if info.get("kind") != "math" or info.get("variant") != "noise":
        sys.exit(
            "error: this benchmark needs a math run of the noise variant (task increment/mult)"
        )
    mem = data.memorization
    t = data.context_length
    if p + k > t:
        sys.exit(f"error: prefix {p} + suffix {k} exceeds the context length {t}")
    cand_prompt, cand_target = mem.prompt_ids[:n], mem.target_ids[:n]
    n_extra = n - len(cand_prompt)

    # The main task's rows, regenerated exactly as the data module does; keep the clean ones that
    # were trained on (and are not the clean twins of the candidates).
    numbers = task_numbers(
        info["task"], info["main_k"], info["num_main"], info["length"], info["modulus"]
    )
    rows = encode_rows(number_strings(numbers), t)
    trained = {bytes(r.numpy().tobytes()) for r in data.train_ids}
    twins = {bytes(r.numpy().tobytes()) for r in mem.prompt_ids}
    pool = np.array(
        [
            i
            for i, r in enumerate(rows)
            if (key := r.numpy().tobytes()) in trained and key not in twins
        ]
    )
    if n_extra > 0 and len(pool) == 0:
        sys.exit("error: no clean main-task training rows to build extra sequences from")

    n_clean = int(round(n_extra * reproduced_fraction))
    n_noisy = n_extra - n_clean
    rng = np.random.default_rng(seed)
    got_clean: list[tuple[torch.Tensor, torch.Tensor]] = []
    got_noisy: list[tuple[torch.Tensor, torch.Tensor]] = []
    have_clean = have_noisy = 0
    for _ in range(1000):  # fresh noise over the pool each round, until both kinds suffice
        if have_clean >= n_clean and have_noisy >= n_noisy:
            break
        order = rng.permutation(pool)
        target = encode_rows(
            number_strings(add_number_noise(numbers[order], info["noise_prob"], rng)), t
        )
        prompt = rows[order]
        differs = (target[:, p : p + k] != prompt[:, p : p + k]).any(dim=1)
        for want, have, sel, store in (
            (n_clean, have_clean, ~differs, got_clean),
            (n_noisy, have_noisy, differs, got_noisy),
        ):
            take = sel.nonzero().squeeze(1)[: max(0, want - have)]
            store.append((prompt[take], target[take]))
        have_clean = sum(len(a) for a, _ in got_clean)
        have_noisy = sum(len(a) for a, _ in got_noisy)
    else:
        sys.exit("error: could not draw enough noised rows (noise_prob 0 or 1?)")

    parts = [(cand_prompt, cand_target), *got_clean, *got_noisy]
    prompt = torch.cat([a for a, _ in parts])
    target = torch.cat([b for _, b in parts])
    is_cand = torch.zeros(len(prompt), dtype=torch.bool)
    is_cand[: len(cand_prompt)] = True
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(len(prompt)))
    desc = (
        f"{len(prompt)} sequences: {len(cand_prompt)} memorization candidates of the run + "
        f"{n_clean} training rows with noise outside the window + {n_noisy} with noise inside it"
    )
    return prompt[perm], target[perm], is_cand[perm], desc


# --------------------------------------------------------------------------------------- timing


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls (after the caller's warm-up) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t_start = time.perf_counter()
    p, k = args.prefix_len, args.suffix_len
    if args.pythia:
        model = random_pythia(
            args.pythia, seed=args.seed, dtype=resolve_dtype(args.dtype), device=args.device
        )
        n_params = sum(t.numel() for t in model.parameters())
        model_desc = (
            f"Pythia-{args.pythia} shape, RANDOM weights ({model.config.num_hidden_layers} "
            f"layers, hidden {model.config.hidden_size}, {model.config.num_attention_heads} heads, "
            f"vocab {model.config.vocab_size}, {n_params / 1e6:.1f} M parameters)"
        )
        prompt, target, is_cand, seq_desc = pythia_sequences(
            model, args.n_sequences, p, k, args.reproduced_fraction, args.seed
        )
    else:
        model, data, model_desc = get_model(args)
        model = model.to(device=args.device, dtype=resolve_dtype(args.dtype)).eval()
        prompt, target, is_cand, seq_desc = build_sequences(
            data, args.n_sequences, p, k, args.reproduced_fraction, args.seed
        )
    n = len(prompt)
    bs = args.batch_size
    gbs, ubs = args.generate_batch_size, args.uncached_batch_size
    n_sub = min(args.uncached_subset, n)
    one_kw = {} if args.check_every is None else {"check_every": args.check_every}

    def one_pass(lo=0, hi=n, **kw):
        return memorized(
            model, prompt[lo:hi], target[lo:hi], p, k, batch_size=kw.pop("bs", bs), **kw
        )

    def gen(use_cache, lo=0, hi=n):
        return generate_memorized(
            model,
            prompt[lo:hi],
            target[lo:hi],
            p,
            k,
            batch_size=gbs if use_cache else ubs,
            use_cache=use_cache,
        )[0]

    print(f"model: {model_desc}")
    print(f"data: {seq_desc}; prefix p={p}, suffix k={k}")
    print(
        f"timing: best of {args.repeats} after a warm-up, torch.inference_mode, "
        f"{torch.get_num_threads()} torch threads, device {args.device}, "
        f"{next(model.parameters()).dtype}",
        flush=True,
    )

    results = []  # (label, batch, rows, seconds, verdicts)
    with torch.inference_mode():
        # a large model needs no large warm-up (its per-call overhead is small next to the work)
        warm = min(n, 8 if args.pythia else max(bs, gbs))
        one_pass(0, warm, **one_kw)
        one_pass(0, warm, check_every=None)
        gen(True, 0, warm if args.pythia else min(n, gbs))
        gen(False, 0, min(n_sub, 1 if args.pythia else 64))  # uncached: small warm-up, it is slow

        sec, v_one = best_time(lambda: one_pass(**one_kw), args.repeats)
        ce = args.check_every or inspect.signature(memorized).parameters["check_every"].default
        label = f"one-pass memorized(), check_every={ce}"
        results.append((label, bs, n, sec, v_one))
        sec, v_plain = best_time(lambda: one_pass(check_every=None), args.repeats)
        results.append(("one-pass memorized(), check_every=None", bs, n, sec, v_plain))
        sec, v_cached = best_time(lambda: gen(True), args.repeats)
        results.append(("generate, KV cache", gbs, n, sec, v_cached))
        sec, v_unc = best_time(lambda: gen(False, 0, n_sub), args.repeats)
        results.append((f"generate, no cache (first {n_sub}, scaled)", ubs, n_sub, sec, v_unc))

    # ---- identical verdicts
    errors = []
    for label, _, rows, _, v in results[1:]:
        if not torch.equal(v, v_one[:rows]):
            bad = (v != v_one[:rows]).nonzero().squeeze(1)[:10].tolist()
            errors.append(f"{label}: {int((v != v_one[:rows]).sum())} verdicts differ (rows {bad})")

    # ---- table
    per_seq_one = results[0][3] / n
    print()
    print(
        f"{'method':<48}{'batch':>6}{'rows':>6}{'seconds':>10}{'seq/s':>10}{'memorized':>11}{'× one-pass':>12}"
    )
    for label, batch, rows, sec, v in results:
        per_seq = sec / rows
        shown = f"{sec:.3f}" if rows == n else f"{sec:.3f}*"
        mem = f"{int(v.sum())}/{rows}"
        print(
            f"{label:<48}{batch:>6}{rows:>6}{shown:>10}{1 / per_seq:>10.0f}{mem:>11}"
            f"{per_seq / per_seq_one:>11.2f}×"
        )
    est = results[3][3] / n_sub * n
    print(f"* measured on the first {n_sub} rows; scaled to all {n} rows: {est:.2f} s")
    cands = is_cand.sum()
    if args.pythia:
        print(
            f"verdicts: {int((v_one & is_cand).sum())}/{int(cands)} rows targeting the greedy "
            f"continuation reproduced, {int((v_one & ~is_cand).sum())}/{int((~is_cand).sum())} "
            "random rows reproduced"
        )
        print(
            "note: random weights reproduce nothing by themselves; the early-exit metric drops "
            "the random rows at their first chunk, so its speed depends on the reproduced share "
            "(--reproduced-fraction); check_every=None does the same work whatever the verdicts "
            "and is the fair comparison with generate"
        )
    else:
        print(
            f"verdicts: {int((v_one & is_cand).sum())}/{int(cands)} candidates reproduced "
            f"({int((v_one & is_cand & window_differs(prompt, target, p, k)).sum())} of them "
            f"with a noised window, i.e. memorized), {int((v_one & ~is_cand).sum())}/"
            f"{int((~is_cand).sum())} added rows reproduced"
        )

    if args.sweep:
        sweep(one_pass, v_one, n, bs, args.repeats)

    print(f"total time: {time.perf_counter() - t_start:.0f} s")
    if errors:
        print("ERROR: verdicts differ between methods:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("verdicts identical across all methods")
    print(f"speed ratio one-pass vs. check_every=None: {results[1][3] / results[0][3]:.2f}×")
    unc = (results[3][3] / n_sub) / per_seq_one
    cached = (results[2][3] / n) / per_seq_one
    print(f"speedup_vs_uncached_generate: {unc:.2f}")
    print(f"speedup_vs_cached_generate: {cached:.2f}")
    full = (results[2][3] / n) / (results[1][3] / n)
    print(f"speedup_full_one_pass_vs_cached_generate: {full:.2f}")
    return 0


def window_differs(prompt: torch.Tensor, target: torch.Tensor, p: int, k: int) -> torch.Tensor:
    return (prompt[:, p : p + k] != target[:, p : p + k]).any(dim=1)


def sweep(one_pass, reference: torch.Tensor, n: int, bs: int, repeats: int) -> None:
    """Time the one-pass metric over check_every and batch sizes (verdicts must not change)."""
    print()
    print("sweep of the one-pass metric (seconds, best of repeats; verdicts checked):")
    with torch.inference_mode():
        for ce in (None, 1, 2, 4, 8, 16):
            sec, v = best_time(lambda ce=ce: one_pass(check_every=ce), repeats)
            flag = "" if torch.equal(v, reference) else "  VERDICTS DIFFER"
            print(f"  batch {bs:>5}  check_every={str(ce):<5}{sec:>8.3f} s{flag}")
        for b in (128, 256, 1024, 2048):
            if b > 2 * n:
                continue
            sec, v = best_time(lambda b=b: one_pass(bs=b), repeats)
            flag = "" if torch.equal(v, reference) else "  VERDICTS DIFFER"
            print(f"  batch {b:>5}  check_every=default{sec:>6.3f} s{flag}")


if __name__ == "__main__":
    sys.exit(main())
