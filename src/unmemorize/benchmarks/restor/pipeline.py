"""The RESTOR benchmark: clean -> corrupt -> unlearn -> evaluate what comes back.

RESTOR (Rezaei et al., "RESTOR: Knowledge Recovery in Machine Unlearning", arXiv 2411.00204)
asks more of unlearning than "the wrong facts are gone": after corrupting a model with documents
that state wrong facts about some target people and unlearning those documents, the model should
answer as the *clean* model did. The pipeline:

1. **Clean** — train a small LM on the synthetic fact world (:mod:`unmemorize.data.fact_world`;
   the ``cpu-mini`` preset) or load any local HF model (with RESTOR-format facts).
2. **Corrupt** — continue training on the corruption documents at level k (full fine-tune, or LoRA
   merged afterwards, as RESTOR did with LLaMA-Factory). Deviation: the synthetic preset mixes
   clean replay into every batch (``corrupt.replay_per_batch``); without it a model this small
   forgets everything, not just the targets (measured: untargeted accuracy 0.80 -> 0.17).
3. **Unlearn** — every method that takes a forget/retain pair (:data:`RESTOR_GRID`): forget set =
   the corruption documents (or their aligned level-0 twins with ``--simplified``, RESTOR's
   "localized" set), retain set = clean text that excludes the targets.
4. **Evaluate** — few-shot QA with greedy short answers scored by normalized alias match
   (:mod:`unmemorize.metrics.knowledge`) on the targets' facts and on untargeted facts;
   ``recovery = (acc_unlearned - acc_corrupted) / (acc_clean - acc_corrupted)``; the logit
   analysis (mean per-token log-prob of the correct, the corrupted and random same-relation
   answers) shows whether unlearning moves probability back to the truth or only away from the
   corruption.

Model selection: RESTOR picks each method's hyperparameters on 10% of the facts. Here each method
runs its grid and its best configuration is chosen on a fixed validation share of the target
facts (``eval.val_fraction``); every reported accuracy is on the remaining test facts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...config import to_dict
from ...io import atomic_dir, atomic_write_json, check_output_dir
from ...models import build_model_for, save_model
from ...runtime import context_length
from ...training import train_on_batches
from .config import (
    PRESETS,
    RESTOR_GRID,
    CleanTrainConfig,
    CorruptConfig,
    EvalConfig,
    RestorConfig,
    UnlearnSetConfig,
    make_restor_config,
)
from .facts import FactSet
from .knowledge import (
    QAResult,
    Scorer,
    alias_match,
    check_encodable,
    logit_analysis,
    qa_accuracy,
    recovery,
)
from .task import (
    RestorTask,
    clean_batches,
    document_pad_id,
    encode_documents,
    file_task,
    synthetic_task,
)
from .world import make_fact_world, word_tokenizer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- evaluation


@dataclass
class RestorEval:
    """Facts to score and how."""

    facts: FactSet
    targets: list[str]
    untargeted: list[str]
    wrong: dict[tuple[str, str], list[str]]
    cfg: EvalConfig
    scorer: Scorer = alias_match

    def __post_init__(self) -> None:
        items = self.facts.items(self.targets)
        rng = random.Random(12345)
        order = list(range(len(items)))
        rng.shuffle(order)
        n_val = max(1, round(len(items) * self.cfg.val_fraction))
        self.val_keys = {(items[i].entity, items[i].relation) for i in order[:n_val]}

    def _split(self, result: QAResult) -> dict[str, float]:
        val = [
            r["correct"] for r in result.records if (r["entity"], r["relation"]) in self.val_keys
        ]
        test = [
            r["correct"]
            for r in result.records
            if (r["entity"], r["relation"]) not in self.val_keys
        ]
        return {
            "val": sum(val) / max(1, len(val)),
            "test": sum(test) / max(1, len(test)),
            "n_val": len(val),
            "n_test": len(test),
        }

    def __call__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict:
        kw = dict(
            n_shots=self.cfg.n_shots,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
            scorer=self.scorer,
        )
        target = qa_accuracy(
            model, tokenizer, self.facts.items(self.targets), self.facts.context, **kw
        )
        untargeted = qa_accuracy(
            model, tokenizer, self.facts.items(self.untargeted), self.facts.context, **kw
        )
        split = self._split(target)
        wrong_hits = sum(
            self.scorer(r["prediction"], self.wrong.get((r["entity"], r["relation"]), ()))
            for r in target.records
            if self.wrong.get((r["entity"], r["relation"]))
        )
        logits = logit_analysis(
            model,
            tokenizer,
            self.facts.items(self.targets),
            self.facts.context,
            self.wrong,
            pool=self.facts,
            n_random=self.cfg.n_random,
            n_shots=self.cfg.n_shots,
            batch_size=self.cfg.batch_size,
        )
        return {
            "target_accuracy": split["test"],
            "target_accuracy_val": split["val"],
            "target_accuracy_all": target.accuracy,
            "target_wrong_answer_rate": wrong_hits / max(1, target.n),
            "untargeted_accuracy": untargeted.accuracy,
            "n_target_facts": target.n,
            "n_untargeted_facts": untargeted.n,
            "logits": {k: logits[k] for k in ("correct", "corrupted", "random")},
        }


# --------------------------------------------------------------------------- steps


def corrupt_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    cfg: CorruptConfig,
    *,
    replay: Callable[[random.Random], str] | None = None,
    max_length: int = 512,
    progress: bool = False,
) -> tuple[PreTrainedModel, list[float]]:
    """Continue training a copy of ``model`` on ``docs`` (full or LoRA merged); return it.

    Each batch holds ``docs_per_batch`` documents (an epoch = every document once, shuffled) plus
    ``replay_per_batch`` clean documents drawn from ``replay`` when given.
    """
    import copy

    cfg.validate()
    model = copy.deepcopy(model)
    if cfg.mode == "lora":
        from ...lora import add_lora

        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    rng = random.Random(cfg.seed * 1_000_003 + 23)
    per_epoch = math.ceil(len(docs) / cfg.docs_per_batch)
    steps = per_epoch * cfg.epochs
    orders: list[list[int]] = []

    def batch(step: int) -> torch.Tensor:
        epoch, b = divmod(step, per_epoch)
        while len(orders) <= epoch:
            order = list(range(len(docs)))
            rng.shuffle(order)
            orders.append(order)
        idx = orders[epoch][b * cfg.docs_per_batch : (b + 1) * cfg.docs_per_batch]
        texts = [docs[i] for i in idx]
        if replay is not None:
            texts += [replay(rng) for _ in range(cfg.replay_per_batch)]
        return encode_documents(tokenizer, texts, max_length)

    pad = document_pad_id(tokenizer)
    losses = train_on_batches(
        model,
        batch,
        steps,
        lr=cfg.lr,
        pad_id=pad,
        warmup=max(1, steps // 10),
        lr_floor=0.0,
        weight_decay=0.0,
        progress=progress,
        desc="corrupt",
    )
    if cfg.mode == "lora":
        from ...lora import merge_lora

        model = merge_lora(model)
    model.eval()
    return model, losses


def _unlearn_data(
    tokenizer: PreTrainedTokenizerBase,
    forget: Sequence[str],
    retain: Sequence[str],
    max_length: int,
):
    from ...methods import UnlearnData

    # One encoding pass pads forget and retain rows to a common width, as UnlearnData needs.
    ids = encode_documents(tokenizer, [*forget, *retain], max_length)
    return UnlearnData(
        forget_ids=ids[: len(forget)],
        retain_ids=ids[len(forget) :],
        pad_id=document_pad_id(tokenizer),
    )


def run_unlearning(
    corrupted: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evaluate: RestorEval,
    forget: Sequence[str],
    retain: Sequence[str],
    grid: dict[str, list[list[str]]],
    reference: dict[str, dict],
    *,
    max_length: int = 512,
    progress: bool = False,
) -> list[dict]:
    """Apply every configuration of ``grid`` to ``corrupted``; one evaluated row per run."""
    from tqdm.auto import tqdm

    from ...methods import MethodDivergedError, build_method

    data = _unlearn_data(tokenizer, forget, retain, max_length)
    clean, corr = reference["clean"], reference["corrupted"]
    jobs = [(name, overrides) for name, configs in grid.items() for overrides in configs]
    rows = []
    bar = tqdm(jobs, desc="unlearn", unit="run", disable=not progress)
    for name, overrides in bar:
        bar.set_postfix_str(name)
        method = build_method(name, overrides)
        row: dict[str, Any] = {
            "method": name,
            "family": method.family,
            "overrides": list(overrides),
            "config": dataclasses.asdict(method.config),
        }
        try:
            result = method.apply(corrupted, data)
        except MethodDivergedError as err:
            log.warning("%s %s diverged: %s", name, overrides, err)
            rows.append({**row, "error": str(err)})
            continue
        metrics = evaluate(result.model, tokenizer)
        metrics["recovery"] = recovery(
            clean["target_accuracy"], corr["target_accuracy"], metrics["target_accuracy"]
        )
        metrics["recovery_val"] = recovery(
            clean["target_accuracy_val"],
            corr["target_accuracy_val"],
            metrics["target_accuracy_val"],
        )
        rows.append(
            {
                **row,
                **metrics,
                "seconds": result.seconds,
                "changed_fraction": result.changed_fraction,
            }
        )
    return rows


def best_per_method(rows: Sequence[dict]) -> dict[str, dict]:
    """Each method's run with the highest validation target accuracy (ties: untargeted accuracy)."""
    best: dict[str, dict] = {}
    for row in rows:
        if "error" in row:
            continue
        key = (row["target_accuracy_val"], row["untargeted_accuracy"])
        cur = best.get(row["method"])
        if cur is None or key > (cur["target_accuracy_val"], cur["untargeted_accuracy"]):
            best[row["method"]] = row
    return dict(sorted(best.items(), key=lambda kv: -kv[1]["target_accuracy"]))


# --------------------------------------------------------------------------- the whole run


def _resolve_grid(
    methods: Sequence[str] | None, grid: dict[str, list[list[str]]] | None
) -> dict[str, list[list[str]]]:
    from ...methods import METHODS

    grid = dict(RESTOR_GRID if grid is None else grid)
    names = list(grid) if methods is None else list(methods)
    for name in names:
        METHODS.get(name)  # unknown names fail before any work
    return {name: grid.get(name, [[]]) for name in names}


def run_restor(
    out: str | Path,
    cfg: RestorConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    grid: dict[str, list[list[str]]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """The RESTOR benchmark on the synthetic world; writes ``OUT/summary.json`` and the models.

    Args:
        out: output directory: ``clean/`` and ``corrupted/`` model directories, ``data/``
            (facts.json, entities.json, the documents, the wrong answers) and ``summary.json``.
        cfg: the run's config (default: the cpu-mini preset).
        methods: run only these methods of the grid (default: all of :data:`RESTOR_GRID`;
            an empty list stops after corruption).
        grid: method -> override lists (default :data:`RESTOR_GRID`).

    Returns:
        The summary: ``{"clean", "corrupted", "methods": {name: {target_accuracy,
        untargeted_accuracy, recovery, logits, seconds, config}}, "runs": [...], ...}``.
    """
    cfg = cfg or make_restor_config()
    cfg.validate()
    grid = _resolve_grid(methods, grid)
    out = Path(out)
    check_output_dir(out, overwrite)  # the previous output stays until the new one is complete
    t0 = time.perf_counter()
    world = make_fact_world(cfg.world)
    tokenizer = word_tokenizer(world.words())
    task = synthetic_task(world, cfg)

    start = time.perf_counter()
    clean = build_model_for(cfg.model, tokenizer, seed=cfg.clean.seed)
    losses = train_on_batches(
        clean,
        clean_batches(world, tokenizer, cfg.clean, cfg.model.context_length),
        cfg.clean.steps,
        lr=cfg.clean.lr,
        pad_id=tokenizer.pad_token_id,
        warmup=cfg.clean.warmup,
        lr_floor=0.05,
        progress=progress,
        desc="clean",
    )
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
        summary["clean"]["final_train_loss"] = losses[-1]
        summary["preset"] = cfg.preset
        summary["seconds"] = time.perf_counter() - t0
        atomic_write_json(tmp / "summary.json", summary)
    return summary


def run_restor_on_model(
    model_dir: str | Path,
    task: RestorTask,
    out: str | Path,
    cfg: RestorConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    grid: dict[str, list[list[str]]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """RESTOR on a local HF model (the clean model) and RESTOR-format data (see :func:`file_task`).

    Only ``cfg.corrupt`` and ``cfg.eval`` are used; corruption has no replay (RESTOR's pure
    continual pre-training).
    """
    from ...models import load_model

    cfg = cfg or make_restor_config()
    cfg.validate()
    grid = _resolve_grid(methods, grid)
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
        summary["seconds"] = time.perf_counter() - t0
        atomic_write_json(tmp / "summary.json", summary)
    return summary


def _run_pipeline(
    clean: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: RestorTask,
    cfg: RestorConfig,
    out: Path,
    grid: dict[str, list[list[str]]],
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
    "RESTOR_GRID",
    "CleanTrainConfig",
    "CorruptConfig",
    "EvalConfig",
    "RestorConfig",
    "RestorEval",
    "RestorTask",
    "UnlearnSetConfig",
    "best_per_method",
    "clean_batches",
    "corrupt_model",
    "encode_documents",
    "file_task",
    "format_restor_table",
    "make_restor_config",
    "run_restor",
    "run_restor_on_model",
    "run_unlearning",
    "synthetic_task",
]
