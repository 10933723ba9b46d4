"""The RESTOR benchmark: clean -> corrupt -> unlearn -> evaluate what comes back.

RESTOR (Rezaei et al., "RESTOR: Knowledge Recovery in Machine Unlearning", arXiv 2411.00204)
asks more of unlearning than "the wrong facts are gone": after corrupting a model with documents
that state wrong facts about some target people and unlearning those documents, the model should
answer as the *clean* model did. The pipeline:

1. **Clean** — train a small LM on the synthetic fact world (:mod:`.world`; the ``cpu-mini``
   preset) or load any local HF model (with RESTOR-format facts).
2. **Corrupt** — continue training on the corruption documents at level k (:mod:`.corrupt`: full
   fine-tune, or LoRA merged afterwards, as RESTOR did with LLaMA-Factory). Deviation: the
   synthetic preset mixes clean replay into every batch (``corrupt.replay_per_batch``); without it
   a model this small forgets everything, not just the targets (measured: untargeted accuracy
   0.80 -> 0.17).
3. **Unlearn** — every method of the benchmark's search space (:mod:`.spaces`, ``default``) that
   takes a forget/retain pair, through the one runner (:mod:`unmemorize.benchmarks.runner`):
   forget set = the corruption documents (or their aligned level-0 twins with ``--simplified``,
   RESTOR's "localized" set), retain set = clean text that excludes the targets.
4. **Evaluate** — few-shot QA with greedy short answers scored by normalized alias match on the
   targets' facts and on untargeted facts (:mod:`.evaluate`);
   ``recovery = (acc_unlearned - acc_corrupted) / (acc_clean - acc_corrupted)``; the logit
   analysis (mean per-token log-prob of the correct, the corrupted and random same-relation
   answers) shows whether unlearning moves probability back to the truth or only away from the
   corruption.

Model selection: RESTOR picks each method's hyperparameters on 10% of the facts. Here each method
runs its grid and its best configuration is chosen on a fixed validation share of the target
facts (``eval.val_fraction``; :attr:`RestorBenchmark.selection`); every reported accuracy is on
the remaining test facts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ... import tracking
from ...config import to_dict
from ...io import atomic_dir, atomic_write_json, check_output_dir, read_json
from ...model_card import write_model_card
from ...models import build_model_for, save_model
from ...runtime import context_length
from ...training import train_on_batches
from .. import Prepared
from .benchmark import RestorBenchmark
from .config import (
    PRESETS,
    CleanTrainConfig,
    CorruptConfig,
    EvalConfig,
    RestorConfig,
    UnlearnSetConfig,
    make_restor_config,
)
from .corrupt import corrupt_model
from .evaluate import RestorEval, RestorState
from .knowledge import check_encodable
from .task import (
    RestorTask,
    clean_batches,
    encode_documents,
    file_task,
    synthetic_task,
    unlearn_data,
)
from .world import make_fact_world, word_tokenizer

log = logging.getLogger(__name__)

#: Method -> its configurations, each a list of ``key=value`` strings or a dict of options.
Grid = Mapping[str, Sequence["Sequence[str] | Mapping[str, Any]"]]

# --------------------------------------------------------------------------- unlearning


def run_unlearning(
    corrupted: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evaluate: RestorEval,
    forget: Sequence[str],
    retain: Sequence[str],
    grid: Grid,
    reference: dict[str, dict],
    *,
    max_length: int = 512,
    progress: bool = False,
) -> list[dict]:
    """Apply every configuration of ``grid`` to ``corrupted``; one evaluated row per run.

    The rows are :mod:`unmemorize.benchmarks.runner` rows, in grid order: method, family,
    overrides, config, :meth:`RestorBenchmark.evaluate`'s metrics (with ``recovery`` and
    ``recovery_val`` against ``reference["clean"]`` and ``reference["corrupted"]``), seconds,
    changed_fraction, changed_unit and the score (:meth:`RestorBenchmark.score`).
    """
    from ..runner import run_jobs

    benchmark = RestorBenchmark()
    prepared = Prepared(
        model=corrupted,
        data=unlearn_data(tokenizer, forget, retain, max_length),
        baseline=reference["corrupted"],
        state=RestorState(evaluate, tokenizer, clean=reference["clean"]),
    )
    jobs = [(name, options) for name, configs in grid.items() for options in configs]
    return run_jobs(
        jobs,
        corrupted,
        prepared.data,
        lambda model: benchmark.evaluate(model, prepared),
        score=lambda metrics: benchmark.score(prepared.baseline, metrics),
        progress=progress,
        desc="unlearn",
    )


def best_per_method(rows: Sequence[dict]) -> dict[str, dict]:
    """Each method's best run by :attr:`RestorBenchmark.selection` (validation target accuracy;
    ties: untargeted accuracy), the methods ordered by test target accuracy, best first."""
    best = RestorBenchmark().best_per_method(list(rows))
    return dict(sorted(best.items(), key=lambda kv: -kv[1]["target_accuracy"]))


# --------------------------------------------------------------------------- the whole run


def resolve_grid(
    methods: Sequence[str] | None, space: Mapping[str, Any] | None, settings: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Method -> its configurations: the points of ``space`` (default: the benchmark's default
    space, or the one ``settings`` name), for ``methods`` (default: every method of the space) in
    that order, over the ``settings``' method defaults."""
    from ...methods import METHODS
    from ..runner import grid_jobs

    chosen = RestorBenchmark.get_settings(settings)
    if space is None:
        space = RestorBenchmark.space(chosen.space_name(RestorBenchmark.default_space))
    names = list(dict.fromkeys(space if methods is None else methods))
    for name in names:
        METHODS.get(name)  # unknown names fail before any work
    grid: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, point in grid_jobs(space, names, chosen):
        grid[name].append(point)
    return grid


def run_restor(
    out: str | Path,
    cfg: RestorConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    grid: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    settings: str | None = None,
    command: dict | None = None,
    reuse_clean: str | Path | None = None,
) -> dict:
    """The RESTOR benchmark on the synthetic world; writes ``OUT/summary.json`` and the models.

    Args:
        out: output directory: ``clean/`` and ``corrupted/`` model directories, ``data/``
            (facts.json, entities.json, the documents, the wrong answers) and ``summary.json``.
        cfg: the run's config (default: the cpu-mini preset).
        methods: run only these methods (default: every method of ``grid``; an empty list
            stops after corruption); a method ``grid`` does not name runs with its defaults.
        grid: the search space, ``{method: options}`` in the one format of
            :mod:`unmemorize.benchmarks.spaces` (default: :class:`RestorBenchmark`'s ``default``).
        settings: ``default`` or ``paper`` (:mod:`unmemorize.benchmarks.restor.settings`): the
            method defaults under every point, recorded in the summary. Its config switches are
            ``cfg``'s (:func:`make_restor_config` with the same ``settings``).
        reuse_clean: a previous ``run_restor`` output whose world, model and clean-training
            configuration equal ``cfg``'s: its clean model is loaded instead of trained again
            (the same weights: training is deterministic and nothing downstream draws from the
            global RNG), e.g. the other corruption levels of one seed.

    Returns:
        The summary: ``{"clean", "corrupted", "methods": {name: {target_accuracy,
        untargeted_accuracy, recovery, logits, seconds, config}}, "runs": [...], ...}``.
    """
    cfg = cfg or make_restor_config(settings=settings)
    cfg.validate()
    grid = resolve_grid(methods, grid, settings)
    out = Path(out)
    check_output_dir(out, overwrite)  # the previous output stays until the new one is complete
    t0 = time.perf_counter()
    world = make_fact_world(cfg.world)
    tokenizer = word_tokenizer(world.words())
    task = synthetic_task(world, cfg)

    start = time.perf_counter()
    if reuse_clean is not None:
        clean, final_loss = _load_clean(Path(reuse_clean), cfg)
    else:
        clean = build_model_for(cfg.model, tokenizer, seed=cfg.clean.seed)
        final_loss = train_on_batches(
            clean,
            clean_batches(world, tokenizer, cfg.clean, cfg.model.context_length),
            cfg.clean.steps,
            lr=cfg.clean.lr,
            pad_id=tokenizer.pad_token_id,
            warmup=cfg.clean.warmup,
            lr_floor=0.05,
            progress=progress,
            desc="clean",
        )[-1]
    clean_seconds = time.perf_counter() - start
    with atomic_dir(out) as tmp:  # OUT appears complete (summary.json included) or not at all
        save_model(clean, tokenizer, tmp / "clean")
        summary = _run_pipeline(
            clean,
            tokenizer,
            task,
            cfg,
            tmp,
            grid,
            progress=progress,
            max_length=cfg.model.context_length,
        )
        summary["timings"]["clean_train"] = clean_seconds
        summary["clean"]["final_train_loss"] = final_loss
        if reuse_clean is not None:
            summary["clean_reused_from"] = str(reuse_clean)
        summary["preset"] = cfg.preset
        summary["settings"] = RestorBenchmark.get_settings(settings).name
        summary["seconds"] = time.perf_counter() - t0
        if command is not None:  # how the command line called it: --config replays it
            summary["command"] = command
        write_model_card(
            tmp / "clean",
            title=f"RESTOR {cfg.preset} clean model",
            summary="The clean model of a RESTOR run (Rezaei et al., arXiv 2411.00204): a small "
            "LM trained from scratch on a synthetic world of fictional people; its knowledge is "
            "what restorative unlearning should bring back after corruption.",
            kind="restor-clean",
            config=to_dict(cfg.clean),
            after=summary["clean"],
            tags=["restor"],
        )
        atomic_write_json(tmp / "summary.json", summary)
    return summary


def clean_matches(run_dir: str | Path, cfg: RestorConfig) -> bool:
    """True when ``run_dir`` holds a finished ``run_restor`` output whose clean model was built
    from the same world, model and clean-training configuration as ``cfg``'s."""
    summary_file = Path(run_dir) / "summary.json"
    if not summary_file.is_file() or not (Path(run_dir) / "clean").is_dir():
        return False
    import json

    recorded = read_json(summary_file).get("config", {})
    wanted = json.loads(json.dumps(to_dict(cfg)))  # as written: tuples become lists
    return all(recorded.get(k) == wanted[k] for k in ("world", "model", "clean"))


def _load_clean(run_dir: Path, cfg: RestorConfig) -> tuple[PreTrainedModel, float]:
    """The clean model of a previous run and its final training loss (see ``reuse_clean``)."""
    from ...models import load_model

    if not clean_matches(run_dir, cfg):
        raise ValueError(
            f"{run_dir} holds no clean model of this world, model and clean config; "
            "train it (leave reuse_clean out)"
        )
    model, _ = load_model(run_dir / "clean")
    return model, read_json(run_dir / "summary.json")["clean"]["final_train_loss"]


def recorded_grid(summary: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    """Method -> the overrides of each configuration a finished run ran (its ``runs``, in order),
    the form :func:`grid_overrides` gives a grid, so the two compare."""
    grid: dict[str, list[list[str]]] = {}
    for row in summary.get("runs", []):
        grid.setdefault(row["method"], []).append(list(row["overrides"]))
    return grid


def grid_overrides(grid: Grid) -> dict[str, list[list[str]]]:
    """Method -> the overrides of each of its configurations in ``grid``, as runs record them."""
    from ..runner import overrides_list

    return {name: [overrides_list(p) for p in points] for name, points in grid.items()}


def extend_restor(
    run_dir: str | Path,
    cfg: RestorConfig,
    grid: Grid,
    *,
    progress: bool = True,
) -> dict:
    """Run ``grid``'s methods on the corrupted model of a finished synthetic :func:`run_restor`
    output and merge them into its ``summary.json`` (their earlier runs, if any, replaced).

    Adding a method to a study (or changing one method's grid) then costs that method's runs
    only, not a new clean model, corruption and every other method. The result equals a run of
    the merged grid from scratch: the corrupted weights are stored exactly (float32
    safetensors), the world and its evaluation are rebuilt from ``cfg`` (which must be the one
    the run recorded), and each method seeds itself (the ``run_restor`` + ``extend_restor`` test
    compares the rows).
    """
    import json

    from ...models import load_model

    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    summary = read_json(summary_file)
    if summary.get("config") != json.loads(json.dumps(to_dict(cfg))):
        raise ValueError(
            f"{run_dir} was run with another RESTOR configuration; run it again (run_restor) "
            "instead of extending it"
        )
    start = time.perf_counter()
    task = synthetic_task(make_fact_world(cfg.world), cfg)
    corrupted, tokenizer = load_model(run_dir / "corrupted")
    evaluate = RestorEval(task.facts, task.targets, task.untargeted, task.wrong, cfg.eval)
    runs = run_unlearning(
        corrupted,
        tokenizer,
        evaluate,
        task.forget_docs,
        task.retain_docs,
        grid,
        {"clean": summary["clean"], "corrupted": summary["corrupted"]},
        max_length=cfg.model.context_length,
        progress=progress,
    )
    summary["runs"] = [r for r in summary["runs"] if r["method"] not in grid] + runs
    summary["methods"] = {
        name: _method_entry(row) for name, row in best_per_method(summary["runs"]).items()
    }
    seconds = time.perf_counter() - start
    summary["timings"]["unlearn"] = summary["timings"].get("unlearn", 0.0) + seconds
    summary["seconds"] = summary.get("seconds", 0.0) + seconds
    summary.setdefault("extended_with", []).append(sorted(grid))
    atomic_write_json(summary_file, summary)
    return summary


def run_restor_on_model(
    model_dir: str | Path,
    task: RestorTask,
    out: str | Path,
    cfg: RestorConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    grid: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    settings: str | None = None,
    command: dict | None = None,
) -> dict:
    """RESTOR on a local HF model (the clean model) and RESTOR-format data (see :func:`file_task`).

    Only ``cfg.corrupt`` and ``cfg.eval`` are used; corruption has no replay (RESTOR's pure
    continual pre-training).
    """
    from ...models import load_model

    cfg = cfg or make_restor_config(settings=settings)
    cfg.validate()
    grid = resolve_grid(methods, grid, settings)
    clean, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    check_encodable(tokenizer, [f.question for f in task.facts.items(task.targets)], "questions")
    out = Path(out)
    check_output_dir(out, overwrite)  # the previous output stays until the new one is complete
    t0 = time.perf_counter()
    # the model's context (n_positions for GPT-2, max_position_embeddings for the rest), at most 1024
    max_length = min(context_length(clean) or 1024, 1024)
    with atomic_dir(out) as tmp:  # OUT appears complete (summary.json included) or not at all
        summary = _run_pipeline(
            clean,
            tokenizer,
            task,
            cfg,
            tmp,
            grid,
            progress=progress,
            max_length=max_length,
        )
        summary["model_dir"] = str(model_dir)
        summary["settings"] = RestorBenchmark.get_settings(settings).name
        summary["seconds"] = time.perf_counter() - t0
        if command is not None:  # how the command line called it: --config replays it
            summary["command"] = command
        atomic_write_json(tmp / "summary.json", summary)
    return summary


def _run_pipeline(
    clean: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: RestorTask,
    cfg: RestorConfig,
    out: Path,
    grid: Grid,
    *,
    progress: bool,
    max_length: int,
) -> dict:
    """Steps 2-4 from a clean model: evaluate, corrupt, evaluate, unlearn every grid entry."""
    check_encodable(tokenizer, task.corruption_docs + task.retain_docs, "documents")
    task.write(out / "data")
    evaluate = RestorEval(task.facts, task.targets, task.untargeted, task.wrong, cfg.eval)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    clean_metrics = evaluate(clean, tokenizer)
    timings["evaluate"] = time.perf_counter() - start
    tracking.log_scalars(clean_metrics, 0, prefix="clean")
    log.info(
        "clean: target %.3f untargeted %.3f",
        clean_metrics["target_accuracy"],
        clean_metrics["untargeted_accuracy"],
    )
    start = time.perf_counter()
    corrupted, corrupt_losses = corrupt_model(
        clean,
        tokenizer,
        task.corruption_docs,
        cfg.corrupt,
        replay=task.replay,
        max_length=max_length,
        progress=progress,
    )
    timings["corrupt"] = time.perf_counter() - start
    save_model(corrupted, tokenizer, out / "corrupted")
    corrupted_metrics = evaluate(corrupted, tokenizer)
    corrupted_metrics["final_train_loss"] = corrupt_losses[-1]
    tracking.log_scalars(corrupted_metrics, len(corrupt_losses), prefix="corrupted")
    # inside the caller's atomic OUT: the card lands with the weights or not at all
    write_model_card(
        out / "corrupted",
        title=f"RESTOR corrupted model (level {cfg.unlearn.level})",
        summary=f"The clean model after continued training ({cfg.corrupt.mode}) on "
        f"{len(task.corruption_docs)} documents that state wrong facts about "
        f"{len(task.targets)} target people (RESTOR, Rezaei et al., arXiv 2411.00204). Nothing "
        "was removed: this is the model that the RESTOR methods unlearn; the metrics compare "
        "it with the clean model.",
        kind="restor-corrupted",
        # a loaded clean model names its directory; a synthetic one lies beside: OUT/clean
        base_model=str(getattr(clean, "name_or_path", "") or "") or "../clean",
        method=f"corrupt-{cfg.corrupt.mode}",
        config=to_dict(cfg.corrupt),
        before=clean_metrics,
        after=corrupted_metrics,
        tags=["restor"],
    )
    reference = {"clean": clean_metrics, "corrupted": corrupted_metrics}
    start = time.perf_counter()
    runs = run_unlearning(
        corrupted,
        tokenizer,
        evaluate,
        task.forget_docs,
        task.retain_docs,
        grid,
        reference,
        max_length=max_length,
        progress=progress,
    )
    timings["unlearn"] = time.perf_counter() - start
    best = best_per_method(runs)
    from ...runtime import environment

    return {
        "config": to_dict(cfg),
        "level": cfg.unlearn.level,
        "simplified": cfg.unlearn.simplified,
        "n_targets": len(task.targets),
        "n_corruption_docs": len(task.corruption_docs),
        "n_forget_docs": len(task.forget_docs),
        "n_retain_docs": len(task.retain_docs),
        "clean": clean_metrics,
        "corrupted": corrupted_metrics,
        "methods": {name: _method_entry(row) for name, row in best.items()},
        "runs": runs,
        "timings": timings,
        "environment": environment(),
    }


def _method_entry(row: dict) -> dict:
    keys = (
        "target_accuracy",
        "untargeted_accuracy",
        "recovery",
        "logits",
        "seconds",
        "config",
        "overrides",
        "target_wrong_answer_rate",
        "target_accuracy_val",
        "changed_fraction",
    )
    return {k: row[k] for k in keys if k in row}


def format_restor_table(summary: dict) -> str:
    """The summary as a fixed-width table: accuracy, recovery and the logit analysis per model."""
    head = (
        f"{'model':<14} {'target':>7} {'untgt':>7} {'wrong':>7} {'recov':>7} "
        f"{'lp_corr':>8} {'lp_wrong':>8} {'lp_rand':>8} {'s':>6}  config"
    )
    lines = [head, "-" * len(head)]

    def line(name: str, m: dict, recov: float | None, seconds: float | None, config: str) -> str:
        lg = m.get("logits", {})

        def num(x: float | None, w: int, p: int = 2) -> str:
            return (
                f"{x:>{w}.{p}f}"
                if isinstance(x, (int, float)) and not math.isnan(x)
                else f"{'-':>{w}}"
            )

        return (
            f"{name:<14} {m['target_accuracy']:>7.1%} {m['untargeted_accuracy']:>7.1%} "
            f"{m.get('target_wrong_answer_rate', 0.0):>7.1%} {num(recov, 7)} "
            f"{num(lg.get('correct'), 8)} {num(lg.get('corrupted'), 8)} {num(lg.get('random'), 8)} "
            f"{num(seconds, 6, 1)}  {config}"
        )

    lines.append(line("clean", summary["clean"], None, None, ""))
    lines.append(line("corrupted", summary["corrupted"], 0.0, None, f"level {summary['level']}"))
    for name, m in summary["methods"].items():
        lines.append(
            line(name, m, m.get("recovery"), m.get("seconds"), " ".join(m.get("overrides", [])))
        )
    return "\n".join(lines)


__all__ = [
    "PRESETS",
    "CleanTrainConfig",
    "CorruptConfig",
    "EvalConfig",
    "RestorBenchmark",
    "RestorConfig",
    "RestorEval",
    "RestorTask",
    "UnlearnSetConfig",
    "best_per_method",
    "clean_batches",
    "corrupt_model",
    "encode_documents",
    "extend_restor",
    "file_task",
    "format_restor_table",
    "grid_overrides",
    "make_restor_config",
    "recorded_grid",
    "resolve_grid",
    "run_restor",
    "run_restor_on_model",
    "run_unlearning",
    "synthetic_task",
]
