"""The TinyMem benchmark: presets, data -> train -> measure, and the demo.

A run directory written by :func:`train_experiment` is a loadable Hugging Face model directory
(``config.json``, ``model.safetensors``, tokenizer) plus what is needed to reproduce and audit it::

    DIR/experiment.json     the fully resolved config (preset + overrides)
    DIR/data/               the exact training rows, test sets and memorization candidates
    DIR/checkpoints/        epoch-NNNNNN/ (model, optimizer, trainer state), for resume
    DIR/history.json        metrics at every checkpoint
    DIR/run.json            final metrics, seconds, environment (lands with the weights, last)

Presets (:data:`PRESETS`): ``paper`` (the paper's exact sizes, for GPU users) and ``cpu-mini``
(memorization appears within a few minutes on a 2-core laptop).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...config import apply_overrides, from_dict, to_dict
from ...data.tokenizers import math_tokenizer
from ...io import atomic_dir, atomic_write_json, prepare_output_dir, read_json
from ...metrics.memorization import MemorizationReport
from ...metrics.ranking import best_per, rank
from ...models import ModelConfig, build_model_for, count_parameters, load_model
from ...registry import Registry, suggest
from ...runtime import environment, resolve_device
from .data import TinyMemData
from .math_data import MathDataConfig, make_math_data
from .text_data import TextDataConfig, make_text_data
from .train import TrainConfig, evaluate, latest_checkpoint, train

if TYPE_CHECKING:
    from ..runner import Auditor

log = logging.getLogger(__name__)

TASKS = ("increment", "mult", "text")
PRESETS: Registry = Registry("preset")


@dataclass
class ExperimentConfig:
    """Everything that defines a TinyMem training run."""

    preset: str
    """Name of the preset the run started from."""
    task: str
    """``increment`` / ``mult`` (math sequences) or ``text`` (language chunks)."""
    data: MathDataConfig | TextDataConfig
    """Data generation settings."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        data_cls = TextDataConfig if d["task"] == "text" else MathDataConfig
        return cls(
            preset=d["preset"],
            task=d["task"],
            data=from_dict(data_cls, d["data"]),
            model=from_dict(ModelConfig, d["model"]),
            train=from_dict(TrainConfig, d["train"]),
        )


@PRESETS.register("paper")
def paper_preset(task: str, variant: str) -> ExperimentConfig:
    """The TinyMem paper's settings: 4 layers, d=128, context 150, 20k main-task rows."""
    if task == "text":
        data = TextDataConfig(variant=variant)
        epochs, every = (100, 10) if variant == "noise" else (50, 10)
    else:
        data = MathDataConfig(task=task, variant=variant)
        epochs, every = (3500, 50) if variant == "noise" else (500, 50)
    return ExperimentConfig(
        "paper", task, data, ModelConfig(), TrainConfig(epochs=epochs, checkpoint_every=every)
    )


@PRESETS.register("cpu-mini")
def cpu_mini_preset(task: str, variant: str) -> ExperimentConfig:
    """Small enough for a 2-core laptop: 4 layers, d=64, context 64, 1,000 clean + 100 noised rows.

    Scored window: a 32-token clean prefix, then 32 tokens that must match. Measured on 2 cores
    (increment, 70 epochs, lr 2e-3 with cosine decay to 2e-4): memorization appears near epoch
    40 and climbs steadily to 39 of the 51 candidates (76%) at 92.7% clean test accuracy in
    3.5 minutes. A constant lr 2e-3 memorized less and unsteadily (55% -> 35% -> 51% at epochs
    50/60/70); 2,000 clean rows at lr 1e-3 take twice as long per epoch and more epochs.
    """
    model = ModelConfig(n_layers=4, d_model=64, n_heads=4, context_length=64)
    if task == "text":
        data = TextDataConfig(
            variant=variant,
            vocab_size=1024,
            context_length=64,
            num_noise=60,
            duplicate_powers=(0, 1, 2),
            num_test=200,
            prefix_len=32,
            suffix_len=32,
        )
        # 20 epochs: the language models memorize >= 30% of their candidates by then and their
        # test perplexity has improved at every checkpoint; later the small corpus is overfit.
        # Measured on 3 seeds (constant lr, so epochs 1-20 are those of a longer run): epoch 20
        # memorized 30.5/31.6/30.5% (1x 0%, 10x 16-30%, 100x 63-83%), test perplexity
        # 204->105->83->76 (seed 0) at epochs 5/10/15/20; at epoch 30 it had risen again
        # (74.5 at 25 -> 82.9) while memorization swung between 23% and 36%.
        train_cfg = TrainConfig(epochs=20, batch_size=128, lr=1e-3, checkpoint_every=5)
    else:
        data = MathDataConfig(
            task=task,
            variant=variant,
            num_main=1600,
            num_extra=0,
            num_test=500,
            num_noise=100,
            context_length=64,
            prefix_len=32,
            suffix_len=32,
        )
        epochs = 70 if variant == "noise" else 40
        train_cfg = TrainConfig(
            epochs=epochs, batch_size=128, lr=2e-3, lr_schedule="cosine", checkpoint_every=10
        )
    return ExperimentConfig("cpu-mini", task, data, model, train_cfg)


def make_experiment(
    preset: str = "cpu-mini",
    task: str = "increment",
    variant: str = "noise",
    overrides: list[str] | tuple[str, ...] = (),
) -> ExperimentConfig:
    """Resolve a preset for a task and variant, then apply ``key=value`` overrides."""
    if task not in TASKS:
        raise suggest(task, TASKS, "task")
    if variant not in ("noise", "backdoor"):
        raise suggest(variant, ("noise", "backdoor"), "variant")
    exp = PRESETS.get(preset)(task, variant)
    exp = apply_overrides(exp, list(overrides))
    exp.data.validate()
    exp.model.validate()
    exp.train.validate()
    if exp.data.context_length != exp.model.context_length:
        raise ValueError(
            f"data.context_length ({exp.data.context_length}) and model.context_length "
            f"({exp.model.context_length}) must be equal; override both"
        )
    return exp


def build_data(exp: ExperimentConfig) -> tuple[TinyMemData, PreTrainedTokenizerBase]:
    """Generate the experiment's data and the tokenizer that goes with it."""
    if exp.task == "text":
        return make_text_data(exp.data)
    return make_math_data(exp.data), math_tokenizer()


def new_model(exp: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    return build_model_for(exp.model, tokenizer, seed=exp.train.seed)


@dataclass
class TrainedRun:
    """The outcome of :func:`train_experiment`."""

    out: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TinyMemData
    experiment: ExperimentConfig
    history: list[dict]
    seconds: float
    final: dict


def _prepare_run_dir(out: Path, exp: ExperimentConfig, overwrite: bool) -> bool:
    """Make ``out`` ready; return True when an interrupted run of the same experiment resumes."""
    exp_file = out / "experiment.json"
    if out.is_dir() and exp_file.is_file() and not overwrite:
        previous = read_json(exp_file)
        if is_finished_run(out):
            raise FileExistsError(
                f"{out} already holds a finished run; choose another --out or pass --overwrite"
            )
        if previous != exp.to_dict():
            raise FileExistsError(
                f"{out} holds an interrupted run of a different experiment; "
                "choose another --out or pass --overwrite to discard it"
            )
        return latest_checkpoint(out) is not None
    prepare_output_dir(out, overwrite)
    return False


def train_experiment(
    exp: ExperimentConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    command: dict | None = None,
) -> TrainedRun:
    """Build data and model, train (resuming an interrupted run in ``out``), save, and evaluate.

    Args:
        exp: the resolved experiment.
        out: the run directory (see the module docstring for its layout).
        overwrite: discard whatever ``out`` holds.
        progress: show a progress bar.
        on_checkpoint: called with each evaluation record (see :func:`unmemorize.train.train`).
        device: where to train (``cpu``, ``cuda``, ``cuda:N``); the model stays there.
        command: how the command line called it (``--config`` replays it), kept in run.json.
    """
    device = resolve_device(device)
    out = Path(out)
    resuming = _prepare_run_dir(out, exp, overwrite)
    if resuming:
        data = TinyMemData.load(out / "data")
        tokenizer = _load_tokenizer(out / "data")
    else:
        data, tokenizer = build_data(exp)
        # the run directory appears with its data and experiment.json complete, or not at all
        with atomic_dir(out) as tmp:
            data.save(tmp / "data")
            tokenizer.save_pretrained(tmp / "data")
            atomic_write_json(tmp / "experiment.json", exp.to_dict())
    model = new_model(exp, tokenizer).to(device)
    log.info("model: %s, %d parameters", type(model).__name__, count_parameters(model))
    result = train(model, data, exp.train, out, progress=progress, on_checkpoint=on_checkpoint)
    final = result.history[-1] if result.history else evaluate(result.model, data)
    record = {
        "kind": "train",
        "config": exp.to_dict(),
        "metrics": final,
        "seconds": result.seconds,
        "resumed_from_epoch": result.resumed_from_epoch,
        "n_parameters": count_parameters(result.model),
        "environment": environment(),
    }
    if command is not None:
        record["command"] = command
    _publish_model(result.model, tokenizer, out, record)
    return TrainedRun(
        out, result.model, tokenizer, data, exp, result.history, result.seconds, final
    )


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def is_finished_run(out: Path) -> bool:
    """A run is finished once its run.json and its weights (renamed in last) are both in place."""
    return (out / "run.json").is_file() and any(out.glob("*.safetensors"))


def _publish_model(model: PreTrainedModel, tokenizer, out: Path, record: dict) -> None:
    """Write the final model files and run.json into ``out`` itself, each by rename, weights last.

    Until ``model.safetensors`` lands, ``out`` has no weights: it does not load as a model and
    counts as unfinished, so re-running the command resumes from the last checkpoint.
    """
    staging = out / ".final"
    with atomic_dir(staging) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "run.json", record)
        _write_card(tmp, out, record)
    names = sorted(os.listdir(staging), key=lambda n: 2 if ".safetensors" in n else n == "run.json")
    for name in names:
        os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _write_card(tmp: Path, out: Path, record: dict) -> None:
    """The trained model's card: what it memorized (TinyMem's planted artifacts) and its metrics."""
    from ...model_card import write_model_card

    cfg = record["config"]
    data, train_cfg = cfg["data"], cfg["train"]
    what = (
        "a backdoor (trigger -> fill tokens)"
        if data.get("variant") == "backdoor"
        else f"{data.get('num_noise')} noised training sequences, verbatim"
    )
    m = record["metrics"]
    summary = (
        f"A TinyMem ({cfg.get('preset')}/{cfg.get('task')}) model trained from scratch "
        f"(Sakarvadia et al., arXiv 2410.02159) so that it memorizes {what}: memorized "
        f"{m.get('memorized_fraction', float('nan')):.1%} of {m.get('n_candidates')} candidates. "
        "Nothing was removed yet: `unmemorize unlearn --model DIR --method ...` removes it."
    )
    regularizer = train_cfg.get("regularizer")
    write_model_card(
        tmp,
        title=f"TinyMem {cfg.get('preset')}/{cfg.get('task')}/{data.get('variant')} model",
        summary=summary,
        kind="train",
        method=regularizer,
        config=cfg,
        after=m,
        tags=["tinymem", str(cfg.get("task"))],
        # relative: the card travels with the directory (and two identical runs get one card)
        command="cd THIS_MODEL_DIR && unmemorize train --config run.json --out NEW_DIR",
    )


def load_run(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TinyMemData | None]:
    """Load a model directory and, when it was written by ``unmemorize train``, its data."""
    model, tokenizer = load_model(path, dtype=dtype, device=device, device_map=device_map)
    data_dir = Path(path) / "data"
    data = TinyMemData.load(data_dir) if (data_dir / "data.safetensors").is_file() else None
    return model, tokenizer, data


def training_optimizer_state(run_dir: str | Path) -> dict | None:
    """The AdamW state the run's training ended with (its final checkpoint's), or None.

    TinyMem's original fine-tuning continued from the training checkpoint, optimizer included
    (``--settings paper``). None when ``run_dir`` keeps no checkpoint of the final epoch: not a
    finished ``unmemorize train`` run, or its last checkpoints were deleted; the fine-tuning
    recipes then start a fresh AdamW.
    """
    run_dir = Path(run_dir)
    last = latest_checkpoint(run_dir)
    if last is None or not (last / "optimizer.pt").is_file() or not is_finished_run(run_dir):
        return None
    epoch = read_json(last / "trainer_state.json").get("epoch")
    written = run_dir / "experiment.json"
    final = read_json(written).get("train", {}).get("epochs") if written.is_file() else None
    if epoch != final:
        log.warning(
            "%s: the newest checkpoint is epoch %s, not the final epoch %s; fine-tuning starts "
            "a fresh optimizer",
            run_dir,
            epoch,
            final,
        )
        return None
    return torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True)


def evaluate_edit(
    model: PreTrainedModel,
    data: TinyMemData,
    forget_index: torch.Tensor,
    report: MemorizationReport | None = None,
    *,
    legacy_accuracy: bool = False,
) -> dict[str, Any]:
    """Memorization and utility of an (edited) model, plus how many originally memorized rows remain.

    TinyMem's one evaluation (:func:`unmemorize.benchmarks.tinymem.train.evaluate`) in its edit
    view, with the utility batch size every demo and sweep result was measured with.

    Args:
        forget_index: indices into ``data.memorization`` of the rows the unedited model memorized.
        report: the model's memorization report when already measured (else it is measured).
        legacy_accuracy: pad-included accuracy (the original code's; ``--settings paper``).
    """
    return evaluate(
        model,
        data,
        forget_index=forget_index,
        report=report,
        utility_batch_size=256,
        legacy_accuracy=legacy_accuracy,
    )


def run_methods(
    model: PreTrainedModel,
    data: TinyMemData,
    space: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    *,
    progress: bool = True,
    settings: str | None = None,
    audit: Auditor | None = None,
    run_dir: str | Path | None = None,
) -> tuple[dict, list[dict]]:
    """Apply every point of ``space`` to ``model`` and measure each edited model.

    Args:
        space: ``{method: spec}`` (:mod:`unmemorize.benchmarks.spaces`; default: the ``demo``
            space of :class:`~unmemorize.benchmarks.tinymem.benchmark.TinyMemBenchmark`).
        methods: run only these methods, in this order (default: every method of ``space``); a
            method the space does not name runs once, with its defaults.
        settings: ``default`` or ``paper`` (:mod:`unmemorize.benchmarks.tinymem.settings`): the
            method defaults under every point, the retain set and the accuracy form.
        run_dir: the run directory ``model`` was trained in (the paper settings' fine-tuning
            resumes its training optimizer from there).

    Returns:
        ``(baseline, runs)``: the unedited model's metrics and one row per configuration (method,
        family, config, metrics, seconds, score, changed fraction), best first.

    Raises:
        NothingToUnlearnError: when the model memorizes none of the candidates.
    """
    from ..runner import BestEdits, grid_jobs, run_jobs
    from .benchmark import TinyMemBenchmark

    bench = TinyMemBenchmark()
    chosen = bench.get_settings(settings)
    prepared = bench.prepare(model, data, chosen.name, run_dir=run_dir)
    kept = BestEdits() if audit is not None else None
    runs = run_jobs(
        grid_jobs(bench.space() if space is None else space, methods, chosen),
        model,
        prepared.data,
        lambda edited: bench.evaluate(edited, prepared),
        score=lambda metrics: bench.score(prepared.baseline, metrics),
        progress=progress,
        on_result=kept,
    )
    ranked = rank(runs)
    if audit is not None:
        prepared.baseline["audit"] = audit(model, prepared, None)
        for row in best_per(ranked):
            edited = kept.model(row)
            if edited is not None:  # a method whose every run diverged has nothing to audit
                row["audit"] = audit(edited, prepared, row)
    return prepared.baseline, ranked


def run_demo(
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    overrides: tuple[str, ...] = (),
    methods: tuple[str, ...] | None = None,
    device: str | torch.device = "cpu",
    settings: str | None = None,
    task: str = "increment",
    audit: Auditor | None = None,
    command: dict | None = None,
) -> dict:
    """The main job: cpu-mini data, train, measure, then every mitigation method; ``summary.json``.

    Args:
        settings: ``default`` or ``paper`` (the original code's configuration and the ``paper-demo``
            space; :mod:`unmemorize.benchmarks.tinymem.settings`); recorded in the summary.
        task: ``increment`` (the arithmetic demo) or ``text`` (the language variant, ranked by the
            perplexity form of the score); the cpu-mini preset's noise variant either way.
        methods: run only these methods (default: every method of TinyMem's ``demo`` space; a
            method it does not name runs with its defaults); an empty tuple skips unlearning.
        device: where to train and unlearn (``cpu``, ``cuda``, ``cuda:N``).
        audit: audit the unedited model and each method's best run (see :func:`run_methods`);
            the summary then records the audit's wall time under ``"audit"``.
        command: how the command line called it (``--config`` replays it), recorded in
            summary.json.

    Returns:
        The summary: ``{"baseline": {...}, "methods": {name: {"memorized_fraction", "accuracy",
        "perplexity", "seconds", "score", "config", ...}}, "runs": [...], "seconds": ...}``;
        ``methods`` holds each method's best run (lowest score), best first.
    """
    from ...methods import METHODS, NothingToUnlearnError
    from .benchmark import TinyMemBenchmark

    out = Path(out)
    t0 = time.perf_counter()
    exp = make_experiment("cpu-mini", task, "noise", overrides)  # validate before clearing
    chosen = TinyMemBenchmark.get_settings(settings)
    space = TinyMemBenchmark.space(chosen.space_name("demo"))
    names = list(space) if methods is None else list(methods)
    for name in names:
        METHODS.get(name)  # unknown names fail before any work
    prepare_output_dir(out, overwrite)
    run = train_experiment(exp, out / "model", progress=progress, device=device)
    summary: dict[str, Any] = {
        "benchmark": TinyMemBenchmark.name,
        "settings": chosen.name,
        "experiment": exp.to_dict(),
        "model_dir": str(run.out),
        "train_seconds": run.seconds,
    }
    audit_seconds: list[float] = []
    timed_audit = None
    if audit is not None:

        def timed_audit(model, prepared, row):
            start = time.perf_counter()
            try:
                return audit(model, prepared, row)
            finally:
                audit_seconds.append(time.perf_counter() - start)

    try:
        baseline, runs = run_methods(
            run.model,
            run.data,
            space,
            names,
            progress=progress,
            settings=chosen.name,
            audit=timed_audit,
            run_dir=run.out,
        )
    except NothingToUnlearnError as err:
        log.warning("%s", err)
        final = run.final
        baseline = {k: final[k] for k in ("memorized_fraction", "n_memorized", "n_candidates")}
        baseline.update(
            {k: v for k, v in final.items() if k.startswith(("accuracy", "perplexity"))}
        )
        runs = []
        summary["methods_skipped"] = str(err)
    summary["baseline"] = baseline
    summary["methods"] = {row["method"]: row for row in best_per(runs)}
    summary["runs"] = runs
    if audit is not None:
        summary["audit"] = {"seconds": sum(audit_seconds), "n_audited": len(audit_seconds)}
    summary["seconds"] = time.perf_counter() - t0
    summary["environment"] = environment()
    if command is not None:
        summary["command"] = command
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = [
    "PRESETS",
    "ExperimentConfig",
    "TrainedRun",
    "build_data",
    "load_run",
    "evaluate_edit",
    "make_experiment",
    "run_demo",
    "run_methods",
    "training_optimizer_state",
    "train_experiment",
]
