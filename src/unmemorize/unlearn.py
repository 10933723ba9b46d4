"""Unlearn memorized sequences from a model directory: load -> find forget set -> apply -> measure.

The library behind ``unmemorize unlearn``; the apply -> evaluate step is the one runner's
(:func:`unmemorize.benchmarks.runner.run_method`). Two sources of sequences:

* a model trained by ``unmemorize train`` (a TinyMem run): the forget set is found automatically
  (the candidates the model memorizes now), the retain set is the clean training rows, and the
  run's own test sets measure utility;
* any local causal LM with ``forget`` (and usually ``retain``) sequence files: the forget set is
  the file's sequences that the model memorizes now; utility is measured on ``eval`` rows
  (default: a held-out share of the retain file, ``eval_share``, never trained on: measuring on
  the retain rows themselves would favour the methods that train on them; recorded in
  ``run.json`` as ``data.utility_rows``).

The output directory is a loadable model directory plus ``run.json`` (method, config, before and
after metrics, score, seconds, environment); for TinyMem runs the ``data/`` folder is copied too,
so ``unmemorize measure --model OUT`` works on the edited model. It is written atomically and only
after the method succeeded: a diverged method writes nothing. Under ``accelerate launch`` every
process runs (the gradient methods data-parallel, :mod:`unmemorize.methods.trainer`) and rank 0
alone writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import tracking
from .benchmarks.runner import run_method
from .benchmarks.tinymem.data import TinyMemData
from .benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from .data.sequences import read_sequences
from .distributed import is_main_process
from .io import check_output_dir
from .methods import (
    METHODS,
    Method,
    MethodDivergedError,
    NothingToUnlearnError,
    UnlearnData,
    build_method,
)
from .metrics.memorization import memorized_sharded
from .metrics.ranking import selection_score
from .metrics.utility import accuracy_and_perplexity
from .mlp import MLPAdapter
from .model_card import CARD_NAME, model_card
from .models import save_model
from .runtime import check_window

logger = logging.getLogger(__name__)

#: Share of a ``--retain`` file held out to measure utility when no ``--eval`` file is given.
EVAL_SHARE = 0.1

Evaluator = Callable[[PreTrainedModel], dict]


@dataclass
class UnlearnSetup:
    """A loaded model with its unlearning data and the way to measure it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: UnlearnData
    evaluate: Evaluator
    baseline: dict
    source: dict
    tinymem: TinyMemData | None = None


def prepare(
    model_dir: str | Path,
    *,
    forget: str | Path | None = None,
    retain: str | Path | None = None,
    eval_file: str | Path | None = None,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    column: str | None = None,
    batch_size: int = 512,
    check_model: Callable[[PreTrainedModel], object] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    eval_share: float = EVAL_SHARE,
    settings: str | None = None,
) -> UnlearnSetup:
    """Load ``model_dir`` and build the forget/retain sets and the evaluator.

    Without ``eval_file``, ``eval_share`` of the ``retain`` file's rows (drawn with a fixed seed)
    are held out of the retain set and measure utility instead. ``settings`` (TinyMem's
    ``default`` / ``paper``) pick a TinyMem run's retain set, fine-tuning twins and accuracy form.

    ``check_model`` is called on the loaded model before any measurement (e.g. to reject an
    architecture the method cannot edit before minutes of work). ``forget``, ``retain`` and
    ``eval_file`` are jsonl files or tables (Parquet, Arrow, ``datasets`` directories) read by
    :func:`~unmemorize.data.sequences.read_sequences`; ``column`` names the key/column holding
    their text or token ids (default ``prefix_ids`` + ``target_ids``, ``input_ids`` or ``text``).

    Raises:
        NothingToUnlearnError: the model memorizes none of the forget candidates.
        ValueError / FileNotFoundError / ModelDirError: bad inputs, with how to fix them.
    """
    from .benchmarks.tinymem.benchmark import TinyMemBenchmark, unlearn_data_options
    from .benchmarks.tinymem.experiment import load_run
    from .benchmarks.tinymem.train import evaluate as evaluate_tinymem

    model, tokenizer, run_data = load_run(model_dir, dtype=dtype, device=device)
    model.eval()
    if check_model is not None:
        check_model(model)
    if forget is None:
        if run_data is None:
            raise ValueError(
                f"{model_dir} was not trained by `unmemorize train`, so its memorized sequences "
                "are unknown; pass --forget FILE (and --retain FILE)"
            )
        if prefix_len is not None or suffix_len is not None:
            raise ValueError(
                "--prefix-len/--suffix-len apply to --forget; a run uses its own window"
            )
        if column is not None and retain is None:
            raise ValueError("--column applies to --forget/--retain/--eval files; pass one")
        switches = TinyMemBenchmark.get_settings(settings).switches
        legacy = bool(switches.get("legacy_accuracy", False))
        baseline = evaluate_tinymem(model, run_data, batch_size=batch_size, legacy_accuracy=legacy)
        if baseline["n_memorized"] == 0:
            raise NothingToUnlearnError(
                f"nothing is memorized: 0 of {baseline['n_candidates']} candidate sequences "
                f"({baseline['memorized_fraction']:.1%}); nothing to unlearn"
            )
        data, _ = tinymem_unlearn_data(
            model,
            run_data,
            batch_size=batch_size,
            **unlearn_data_options(switches, model_dir),
        )
        if retain is not None:
            data = dataclasses.replace(
                data, retain_ids=_read(retain, model, tokenizer, data, column)
            )
        return UnlearnSetup(
            model,
            tokenizer,
            data,
            lambda m: evaluate_tinymem(m, run_data, batch_size=batch_size, legacy_accuracy=legacy),
            baseline,
            {"forget": "memorized candidates of the run", "retain": str(retain or "clean rows")},
            run_data,
        )

    p = prefix_len if prefix_len is not None else 32
    k = suffix_len if suffix_len is not None else 32
    check_window(model, p, k)
    vocab = model.get_input_embeddings().weight.shape[0]
    candidates = read_sequences(forget, tokenizer, vocab, p, k, column)
    retain_ids = (
        read_sequences(retain, tokenizer, vocab, p, k, column)
        if retain is not None
        else torch.empty(0, p + k, dtype=torch.long)
    )
    if eval_file:
        eval_ids = read_sequences(eval_file, tokenizer, vocab, p, k, column)
        utility_rows = str(eval_file)
    elif len(retain_ids):
        retain_ids, eval_ids = hold_out(retain_ids, eval_share)
        utility_rows = f"held-out {eval_share:.0%} of --retain ({len(eval_ids)} rows)"
    else:
        eval_ids, utility_rows = retain_ids, "nothing"
    pad_id = None  # rows read from files are cut to P + K tokens: no padding

    def memorized_rows(m: PreTrainedModel) -> torch.Tensor:
        return memorized_sharded(m, candidates, candidates, p, k, batch_size=batch_size)

    def evaluate(m: PreTrainedModel, verdict: torch.Tensor | None = None) -> dict:
        if verdict is None:
            verdict = memorized_rows(m)
        out = {
            "memorized_fraction": float(verdict.float().mean()),
            "n_memorized": int(verdict.sum()),
            "n_candidates": len(candidates),
        }
        if len(eval_ids):
            acc, ppl = accuracy_and_perplexity(m, eval_ids, pad_id, batch_size=batch_size)
            out.update({"accuracy": acc, "perplexity": ppl})
        return out

    verdict = memorized_rows(model)
    baseline = evaluate(model, verdict)
    if not bool(verdict.any()):
        raise NothingToUnlearnError(
            f"nothing is memorized: 0 of the {len(candidates)} sequences in {forget} are "
            f"reproduced from their first {p} tokens ({k} must match); nothing to unlearn"
        )
    data = UnlearnData(
        forget_ids=candidates[verdict],
        retain_ids=retain_ids,
        pad_id=pad_id,
        forget_prefix_len=torch.full((int(verdict.sum()),), p),
    )
    source = {
        "forget": str(forget),
        "retain": None if retain is None else str(retain),
        "utility_rows": utility_rows,
        "prefix_len": p,
        "suffix_len": k,
    }
    return UnlearnSetup(model, tokenizer, data, evaluate, baseline, source)


def hold_out(rows: torch.Tensor, share: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``rows`` [R, T] into ``(kept, held_out)``: ``share`` of them (at least one) held out.

    Drawn with a fixed ``seed``; both parts keep the file order. A kept row identical to a held-out
    row (a duplicate line) is dropped too, so utility is never measured on a trained row.

    Raises:
        ValueError: fewer than two rows, or ``share`` outside (0, 1).
    """
    if not 0 < share < 1:
        raise ValueError(f"eval_share must lie strictly between 0 and 1, got {share}")
    if len(rows) < 2:
        raise ValueError(
            f"--retain holds {len(rows)} row(s): too few to hold out rows that measure utility; "
            "pass --eval FILE (held-out sequences) or a longer --retain file"
        )
    n_out = min(len(rows) - 1, max(1, round(share * len(rows))))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(len(rows), dtype=torch.bool)
    held[perm[:n_out]] = True
    held_rows = {row.numpy().tobytes() for row in rows[held]}
    keep = torch.tensor(
        [
            not h and row.numpy().tobytes() not in held_rows
            for h, row in zip(held, rows, strict=True)
        ],
        dtype=torch.bool,
    )
    return rows[keep], rows[held]


def _read(path, model, tokenizer, data: UnlearnData, column: str | None) -> torch.Tensor:
    """Retain rows from a file, cut to the run's row length (a TinyMem run's context)."""
    t = data.forget_ids.shape[1]
    vocab = model.get_input_embeddings().weight.shape[0]
    half = t // 2
    return read_sequences(path, tokenizer, vocab, half, t - half, column)


def unlearn(
    model_dir: str | Path,
    method: str | Method,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    forget: str | Path | None = None,
    retain: str | Path | None = None,
    eval_file: str | Path | None = None,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    column: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 512,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    settings: str | None = None,
    command: dict | None = None,
) -> dict:
    """Apply a method to the model in ``model_dir`` and write the edited model to ``out``.

    ``settings`` (TinyMem's ``default`` / ``paper``, :mod:`unmemorize.benchmarks.tinymem.settings`)
    put the method defaults under ``overrides`` and, for a TinyMem run, pick its retain set and
    accuracy form; recorded in ``run.json``.

    ``out`` also gets a ``README.md`` model card (:mod:`unmemorize.model_card`) and ``run.json``,
    which keeps ``command`` (how the command line called it; ``--config`` replays it).

    Returns:
        The ``run.json`` record: method, config, data sizes, ``before``/``after`` metrics, the
        selection ``score`` (lower is better), the method's own summary and seconds.
    """
    from .runtime import environment

    t0 = time.perf_counter()
    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise ValueError("--out must differ from --model: the input model is never modified")
    check_output_dir(out, overwrite)
    from .benchmarks.tinymem.benchmark import TinyMemBenchmark
    from .config import format_overrides

    chosen = TinyMemBenchmark.get_settings(settings)
    if isinstance(method, Method):
        m = method
    else:
        defaults = format_overrides(chosen.methods.get(method, {}))
        m = build_method(method, [*defaults, *overrides])
    setup = prepare(
        model_dir,
        forget=forget,
        retain=retain,
        eval_file=eval_file,
        prefix_len=prefix_len,
        suffix_len=suffix_len,
        column=column,
        batch_size=batch_size,
        check_model=MLPAdapter if m.family in ("neuron", "weight") else None,
        dtype=dtype,
        device=device,
        settings=chosen.name,
    )
    logger.info(
        "unlearning %d forget rows (retain %d) with %s",
        setup.data.n_forget,
        setup.data.n_retain,
        m.name,
    )
    after: dict = {}

    def evaluate(edited: PreTrainedModel) -> dict:
        after.update(setup.evaluate(edited))
        return after

    tracking.log_scalars(setup.baseline, 0, prefix="before")
    row, result = run_method(m, setup.model, setup.data, evaluate, progress=progress)
    if result is None:  # the method diverged: nothing is written
        raise MethodDivergedError(row["error"])
    record = {
        "kind": "unlearn",
        "settings": chosen.name,
        "method": m.name,
        "family": m.family,
        "config": dataclasses.asdict(m.config),
        "model": str(model_dir),
        "data": {
            **setup.source,
            "n_forget": setup.data.n_forget,
            "n_retain": setup.data.n_retain,
            "n_retain_overlap_removed": setup.data.n_retain_overlap_removed,
        },
        "sources": _sources(model_dir, forget, retain, eval_file, setup.source),
        "before": setup.baseline,
        "after": after,
        "score": _score(setup.baseline, after),
        "result": result.summary(),
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    if command is not None:
        record["command"] = command
    if not is_main_process():
        return record  # under `accelerate launch` every process holds the result; rank 0 writes
    extra_dirs = {}
    if setup.tinymem is not None and (Path(model_dir) / "data").is_dir():
        extra_dirs["data"] = Path(model_dir) / "data"
    save_model(
        result.model,
        setup.tokenizer,
        out,
        extra_files={
            "run.json": json.dumps(record, indent=2, default=_jsonable),
            CARD_NAME: _card(record, out),
        },
        extra_dirs=extra_dirs,
    )
    return record


def _sources(model_dir, forget, retain, eval_file, source: dict) -> dict:
    """Absolute paths of the model and files an edit came from, so that ``unmemorize audit``
    finds its original model and forget rows from any working directory."""

    def resolved(path):
        return None if path is None else str(Path(path).resolve())

    return {
        "model": resolved(model_dir),
        "forget": resolved(forget),
        "retain": resolved(retain),
        "eval": resolved(eval_file),
        "prefix_len": source.get("prefix_len"),
        "suffix_len": source.get("suffix_len"),
    }


def _card(record: dict, out: Path) -> str:
    """The edited model's card: what was removed, by which method, the metrics before/after."""
    data, before, after = record["data"], record["before"], record["after"]
    summary = (
        f"`{record['model']}` after unlearning with `{record['method']}` "
        f"({record['family']} family): {data['n_forget']} memorized sequences removed "
        f"(forget set: {data['forget']}; retain set: {data.get('retain') or 'none'}, "
        f"{data['n_retain']} rows). Memorized: {before['memorized_fraction']:.1%} before, "
        f"{after['memorized_fraction']:.1%} after"
        + ("." if record["score"] is None else f"; selection score {record['score']:+.3f}.")
    )
    return model_card(
        title=f"{Path(record['model']).name or record['model']} unlearned with {record['method']}",
        summary=summary,
        kind="unlearn",
        base_model=record["model"],
        method=record["method"],
        config=record["config"],
        before=before,
        after=after,
        tags=[record["family"]],
        # relative: the card travels with the directory (and two identical runs get one card)
        command="cd THIS_MODEL_DIR && unmemorize unlearn --config run.json --out NEW_DIR",
    )


def _score(before: dict, after: dict) -> float | None:
    """The selection score, or None when no utility was measured (no retain/eval rows)."""
    if "perplexity" not in before and not any(k.startswith("accuracy/") for k in before):
        return None
    return selection_score(before, after)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def describe_methods() -> list[dict]:
    """Every registered method's name, family, paper, summary and config fields."""
    return [METHODS.get(name).describe() for name in METHODS.names()]


__all__ = ["EVAL_SHARE", "UnlearnSetup", "describe_methods", "hold_out", "prepare", "unlearn"]
