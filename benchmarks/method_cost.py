"""Wall time and peak memory of every registered unlearning method, one process per method.

For each method of :data:`unmemorize.methods.METHODS` (``unmemorize ls methods``) and each model,
a fresh process loads the model and the unlearning sets, records its resident memory, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``), runs ``method.apply`` with small settings and
reads the peak back (``VmHWM``; ``ru_maxrss`` where ``clear_refs`` is unavailable). Processes fork
from one ``forkserver`` that has imported torch, transformers and unmemorize, so the imports are
paid once and every method starts from the same clean interpreter.

Models:

* ``cpu-mini``: the TinyMem cpu-mini model (4-layer GPT-2, d=64), trained here in a child
  process for ``--mini-epochs`` epochs with the project's pipeline
  (:func:`unmemorize.benchmarks.tinymem.train_experiment`), or reused from ``--cpu-mini-dir``.
  The forget set is what it memorizes (``tinymem_unlearn_data``), or, when a short training
  memorized nothing, its noised candidates; the retain set is capped at ``--retain-rows`` clean
  training rows.
* ``pythia-70m`` (``--pythia``): a random-weight GPT-NeoX with Pythia's real shape
  (:func:`unmemorize.benchmarks.shapes.random_pythia`). Random weights memorize nothing, so the
  forget set is ``--forget-rows`` random token rows fed directly through ``UnlearnData``, the
  retain set ``--retain-rows`` more, each ``--seq-len`` tokens.

Columns: ``seconds`` = wall time of ``apply`` (private copy + method + finiteness check);
``peak`` = peak RSS of the process during ``apply``; ``peak-model`` = peak minus the model's own
parameter and buffer bytes; ``extra`` = peak minus the RSS just before ``apply`` (what the method
allocates: its private copy of the model, gradients, scores, masks, optimizer state,
activations); ``extra/model`` = ``extra`` in model sizes (1.0 = one more copy of the model).

Every method runs with small settings (``SMALL``; fewer epochs, steps, rows) so the whole default
run takes a few minutes on two busy cores: the figures compare methods' costs, not their
published settings. ``zero_out`` on the Pythia shape is skipped by default (n_layers x F = 12,288
single-neuron ablations, each with a 50k-vocabulary head; the paper did not run it on Pythia
either); ``--methods zero_out`` forces it.

Usage::

    python benchmarks/method_cost.py                         # both models, every method (~4 min)
    python benchmarks/method_cost.py --models pythia-70m --methods durable,durable_agg,ssd
    python benchmarks/method_cost.py --pythia 160m --dtype bfloat16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

#: Small per-method settings (``key=value`` overrides) used on every model.
SMALL: dict[str, list[str]] = {
    "zero_out": ["max_rows=2"],
    "activations": [],
    "slimming": ["epochs=2"],
    "hard_concrete": ["epochs=2"],
    "integrated_gradients": ["ig_steps=2", "max_rows=2"],
    "greedy": ["ratio=1e-5", "weights_per_step=32"],
    "durable": [],
    "durable_agg": [],
    "second_order": ["num_grads=8", "block_size=8", "batch_size=4"],
    "subnet": ["epochs=2"],
    "balanced_subnet": ["epochs=1", "batch_size=32"],
    "finetune_clean": ["epochs=1", "batch_size=32"],
    "finetune_extra": ["epochs=1", "batch_size=32"],
    "finetune_both": ["epochs=1", "batch_size=32"],
    "ssd": ["batch_size=4"],
    "ga": ["epochs=1", "max_steps=2"],
    "grad_diff": ["epochs=1", "max_steps=2"],
    "kl": ["epochs=1", "max_steps=2"],
    "npo": ["epochs=1", "max_steps=2"],
    "simnpo": ["epochs=1", "max_steps=2"],
    "task_vector": ["epochs=1", "max_steps=2"],
}

#: Extra settings on the cpu-mini model (its MLPs are 100x smaller: greedy needs a larger ratio
#: to zero any weight at all).
SMALL_MINI: dict[str, list[str]] = {"greedy": ["ratio=1e-3", "weights_per_step=32"]}

#: Skipped on the Pythia shape unless named in --methods (see the module docstring).
SKIP_LARGE = {"zero_out"}

PRELOAD = ["torch", "transformers", "unmemorize.methods", "unmemorize.benchmarks.shapes"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for the models, the columns and the settings.",
    )
    ap.add_argument(
        "--models",
        default="cpu-mini,pythia",
        help="comma-separated: cpu-mini, pythia (default: %(default)s)",
    )
    ap.add_argument(
        "--methods", default="all", help="comma-separated method names or 'all' (default: all)"
    )
    ap.add_argument(
        "--pythia", default="70m", help="Pythia shape of the large model (default: 70m)"
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype of the Pythia-shape model (default: %(default)s)",
    )
    ap.add_argument("--forget-rows", type=int, default=4, help="Pythia forget rows (default: 4)")
    ap.add_argument(
        "--retain-rows", type=int, default=64, help="retain rows, both models (default: 64)"
    )
    ap.add_argument("--seq-len", type=int, default=32, help="Pythia row length (default: 32)")
    ap.add_argument("--cpu-mini-dir", help="reuse this trained cpu-mini run instead of training")
    ap.add_argument(
        "--mini-epochs", type=int, default=10, help="cpu-mini training epochs (default: 10)"
    )
    ap.add_argument(
        "--mini-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra cpu-mini experiment override (repeatable), e.g. model.n_layers=2",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in ("cpu-mini", "pythia"):
            ap.error(f"unknown model {m!r}; use cpu-mini and/or pythia")
    return args


# --------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------- child processes


def _prepare_mini(
    out: str, epochs: int, overrides: list[str], retain_rows: int, threads: int
) -> str:
    """Train (or reuse) a cpu-mini run and save its unlearning sets; runs in a child process."""
    import torch

    from unmemorize.benchmarks.tinymem.experiment import load_run, make_experiment, train_experiment
    from unmemorize.benchmarks.tinymem.unlearn_data import artifact_rows, tinymem_unlearn_data
    from unmemorize.methods import NothingToUnlearnError, UnlearnData

    torch.set_num_threads(threads)
    run_dir = Path(out)
    if not (run_dir / "run.json").is_file():
        exp = make_experiment(
            "cpu-mini", "increment", "noise", [f"train.epochs={epochs}", *overrides]
        )
        run = train_experiment(exp, run_dir, progress=False)
        model, data = run.model, run.data
    else:
        model, _, data = load_run(run_dir)
        if data is None:
            raise ValueError(f"{run_dir} is not an `unmemorize train` run (no data/ inside)")
    try:
        unlearn, _ = tinymem_unlearn_data(model, data)
        source = "memorized"
    except NothingToUnlearnError:
        mem = data.memorization
        unlearn = UnlearnData(
            forget_ids=mem.target_ids,
            retain_ids=data.train_ids[~artifact_rows(data)],
            pad_id=data.pad_id,
            forget_prefix_len=mem.prefix_len,
            forget_clean_ids=mem.prompt_ids,
        )
        source = "noised candidates (nothing memorized yet)"
    sets = {
        "forget_ids": unlearn.forget_ids,
        "retain_ids": unlearn.retain_ids[:retain_rows],
        "forget_prefix_len": unlearn.forget_prefix_len,
        "forget_clean_ids": unlearn.forget_clean_ids,
        "pad_id": torch.tensor(-1 if unlearn.pad_id is None else unlearn.pad_id),
    }
    torch.save(sets, run_dir / "unlearn_sets.pt")
    return f"{len(unlearn.forget_ids)} forget rows ({source}), {len(sets['retain_ids'])} retain"


def _load_mini(run_dir: str):
    import torch

    from unmemorize.methods import UnlearnData
    from unmemorize.models import load_model

    model, _ = load_model(run_dir)
    sets = torch.load(Path(run_dir) / "unlearn_sets.pt", weights_only=True)
    pad = int(sets.pop("pad_id"))
    return model, UnlearnData(**sets, pad_id=None if pad < 0 else pad)


def _load_pythia(size: str, dtype: str, forget: int, retain: int, seq_len: int):
    import torch

    from unmemorize.benchmarks.shapes import random_pythia

    model = random_pythia(size, dtype=getattr(torch, dtype))
    return model, pythia_data(model.config.vocab_size, forget, retain, seq_len)


def pythia_data(vocab: int, forget: int, retain: int, seq_len: int):
    """Random forget/retain rows over ``vocab`` (forget rows' clean twins differ in the 2nd half)."""
    import torch

    from unmemorize.methods import UnlearnData

    g = torch.Generator().manual_seed(0)
    forget_ids = torch.randint(2, vocab, (forget, seq_len), generator=g)
    clean = forget_ids.clone()
    clean[:, seq_len // 2 :] = torch.randint(
        2, vocab, (forget, seq_len - seq_len // 2), generator=g
    )
    data = UnlearnData(
        forget_ids=forget_ids,
        retain_ids=torch.randint(2, vocab, (retain, seq_len), generator=g),
        pad_id=None,
        forget_prefix_len=torch.full((forget,), seq_len // 2),
        forget_clean_ids=clean,
    )
    return data


def measure_method(job: dict) -> dict:
    """Load the model, run one method, return its wall time and memory (in a fresh process)."""
    import logging

    import torch

    from unmemorize.methods import MethodDivergedError, build_method

    logging.disable(logging.WARNING)
    torch.set_num_threads(job["threads"])
    if job["model"] == "cpu-mini":
        model, data = _load_mini(job["run_dir"])
    else:
        model, data = _load_pythia(
            job["pythia"], job["dtype"], job["forget_rows"], job["retain_rows"], job["seq_len"]
        )
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    method = build_method(job["method"], job["overrides"])
    before_kib = _status_kib("VmRSS") or 0
    reset = _reset_peak()
    start = time.perf_counter()
    error = None
    try:
        result = method.apply(model, data)
        changed = f"{result.changed_fraction:.3g} {result.changed_unit}"
    except (MethodDivergedError, ValueError, MemoryError) as err:
        error = str(err).splitlines()[0]
        changed = "-"
    seconds = time.perf_counter() - start
    peak_kib = _peak_kib()
    mib = 1024.0
    return {
        "method": job["method"],
        "family": method.family,
        "seconds": seconds,
        "peak_mib": peak_kib / mib,
        "model_mib": model_bytes / 2**20,
        "before_mib": before_kib / mib,
        "extra_mib": (peak_kib - before_kib) / mib if reset else float("nan"),
        "changed": changed,
        "error": error,
    }


# --------------------------------------------------------------------------- parent


def _table(title: str, rows: list[dict]) -> str:
    header = (
        f"{'method':<22}{'family':<11}{'seconds':>9}{'peak MiB':>10}{'peak-model':>11}"
        f"{'extra MiB':>11}{'extra/model':>12}  changed"
    )
    lines = [title, header, "-" * len(header)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['method']:<22}{r['family']:<11}  error: {r['error']}")
            continue
        lines.append(
            f"{r['method']:<22}{r['family']:<11}{r['seconds']:>9.2f}{r['peak_mib']:>10.0f}"
            f"{r['peak_mib'] - r['model_mib']:>11.0f}{r['extra_mib']:>11.0f}"
            f"{r['extra_mib'] / r['model_mib']:>12.2f}  {r['changed']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; print one table per model; return every row (for tests)."""
    args = parse_args(argv)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)

    # Imported here, after the forkserver is configured; the parent only lists names.
    from unmemorize.methods import METHODS

    names = list(METHODS.names()) if args.methods == "all" else args.methods.split(",")
    for name in names:
        METHODS.get(name)  # unknown names fail here, with a suggestion

    def run(fn, *fn_args):
        # One task per process: peak RSS is per method, and nothing leaks between methods.
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=ctx, max_tasks_per_child=1
        ) as pool:
            return pool.submit(fn, *fn_args).result()

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="method_cost_") as tmp:
        run_dir = args.cpu_mini_dir
        for model in args.models:
            if model == "cpu-mini":
                if run_dir is None:
                    run_dir = str(Path(tmp) / "cpu-mini")
                start = time.perf_counter()
                what = run(
                    _prepare_mini,
                    run_dir,
                    args.mini_epochs,
                    args.mini_override,
                    args.retain_rows,
                    args.threads,
                )
                title = (
                    f"cpu-mini TinyMem model ({what}; prepared in "
                    f"{time.perf_counter() - start:.0f} s)"
                )
                methods = names
            else:
                title = (
                    f"random Pythia-{args.pythia} shape, {args.dtype} ({args.forget_rows} forget "
                    f"rows, {args.retain_rows} retain, {args.seq_len} tokens)"
                )
                forced = args.methods != "all"
                methods = [n for n in names if forced or n not in SKIP_LARGE]
            model_rows = []
            for name in methods:
                overrides = SMALL.get(name, [])
                if model == "cpu-mini":
                    overrides = SMALL_MINI.get(name, overrides)
                job = {
                    "model": model,
                    "method": name,
                    "overrides": overrides,
                    "run_dir": run_dir,
                    "pythia": args.pythia,
                    "dtype": args.dtype,
                    "forget_rows": args.forget_rows,
                    "retain_rows": args.retain_rows,
                    "seq_len": args.seq_len,
                    "threads": args.threads,
                }
                row = run(measure_method, job)
                row["model"] = model
                model_rows.append(row)
                print(
                    f"  {model} {name}: {row['seconds']:.1f} s, peak {row['peak_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            print(_table(title, model_rows), flush=True)
            if model_rows:
                print(f"model size: {model_rows[0]['model_mib']:.1f} MiB\n", flush=True)
            rows.extend(model_rows)
    return rows


if __name__ == "__main__":
    main()
