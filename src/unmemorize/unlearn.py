"""Unlearn memorized sequences from a model directory: load -> find forget set -> apply -> measure.

The library behind ``unmemorize unlearn``; the apply -> evaluate step is the one runner's
(:func:`unmemorize.benchmarks.runner.run_method`). Two sources of sequences:

* a model trained by ``unmemorize train`` (a TinyMem run): the forget set is found automatically
  (the candidates the model memorizes now), the retain set is the clean training rows, and the
  run's own test sets measure utility;
* any local causal LM with ``forget`` (and usually ``retain``) sequence files: the forget set is
  the file's sequences that the model memorizes now; utility is measured on ``eval`` rows
  (default: the retain rows, recorded as such).

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
) -> UnlearnSetup:
    """Load ``model_dir`` and build the forget/retain sets and the evaluator.

    ``check_model`` is called on the loaded model before any measurement (e.g. to reject an
    architecture the method cannot edit before minutes of work). ``forget``, ``retain`` and
    ``eval_file`` are jsonl files or tables (Parquet, Arrow, ``datasets`` directories) read by
    :func:`~unmemorize.data.sequences.read_sequences`; ``column`` names the key/column holding
    their text or token ids (default ``prefix_ids`` + ``target_ids``, ``input_ids`` or ``text``).

    Raises:
        NothingToUnlearnError: the model memorizes none of the forget candidates.
        ValueError / FileNotFoundError / ModelDirError: bad inputs, with how to fix them.
    """
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
        baseline = evaluate_tinymem(model, run_data, batch_size=batch_size)
        if baseline["n_memorized"] == 0:
            raise NothingToUnlearnError(
                f"nothing is memorized: 0 of {baseline['n_candidates']} candidate sequences "
                f"({baseline['memorized_fraction']:.1%}); nothing to unlearn"
            )
        data, _ = tinymem_unlearn_data(model, run_data, batch_size=batch_size)
        if retain is not None:
            data = dataclasses.replace(
                data, retain_ids=_read(retain, model, tokenizer, data, column)
            )
        return UnlearnSetup(
            model,
            tokenizer,
            data,
            lambda m: evaluate_tinymem(m, run_data, batch_size=batch_size),
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
    eval_ids = (
        read_sequences(eval_file, tokenizer, vocab, p, k, column) if eval_file else retain_ids
    )
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
        "utility_on": str(eval_file or retain or "nothing"),
        "prefix_len": p,
        "suffix_len": k,
    }
    return UnlearnSetup(model, tokenizer, data, evaluate, baseline, source)


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
    command: dict | None = None,
) -> dict:
    """Apply a method to the model in ``model_dir`` and write the edited model to ``out``.

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
    m = method if isinstance(method, Method) else build_method(method, list(overrides))
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

    row, result = run_method(m, setup.model, setup.data, evaluate, progress=progress)
    if result is None:  # the method diverged: nothing is written
        raise MethodDivergedError(row["error"])
    record = {
        "kind": "unlearn",
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
        command=f"unmemorize unlearn --config {out / 'run.json'} --out NEW_DIR",
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


__all__ = ["UnlearnSetup", "describe_methods", "prepare", "unlearn"]
