"""The TinyMem training loop: AdamW, regularizers, periodic evaluation, crash-safe checkpoints.

Loss (per batch of B sequences, pad targets excluded)::

    ℓ_b  = mean_t CE(model(x_b)_t, x_b,t+1)          per-sequence loss
    L    = reduce(ℓ) + penalty(model)                reduce = mean unless loss truncation;
                                                     penalty = spectral norm term if enabled

Checkpoints are written every ``checkpoint_every`` epochs to ``checkpoints/epoch-NNNNNN`` (model
weights as safetensors, optimizer and regularizer state as tensor-only files, trainer state as
JSON), each directory written atomically, so the newest directory is always complete. Training
resumes from it bit-identically: the epoch's shuffling is derived from (seed, epoch).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ... import tracking
from ...io import atomic_dir, atomic_write_json, read_json
from ...metrics import MemorizationReport, evaluate_utility, measure_memorization
from ...metrics.losses import sequence_losses
from ...runtime import compiled
from ...training import TrainingDivergedError
from .data import TinyMemData

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: the TinyMem paper's)."""

    epochs: int = 3500
    """Passes over the training set (duplicated rows count once per copy)."""
    batch_size: int = 128
    """Sequences per step."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    lr_schedule: str = "constant"
    """``constant`` (the paper) or ``cosine`` (decay to lr/10 over the run)."""
    checkpoint_every: int = 50
    """Evaluate and checkpoint every this many epochs (and after the last)."""
    keep_checkpoints: int = 0
    """Keep only the newest N checkpoints; 0 keeps all."""
    regularizer: str | None = None
    """``spectral_norm``, ``loss_truncation``, ``example_tied_dropout`` or None."""
    regularizer_options: dict = field(default_factory=dict)
    """Options of the regularizer (e.g. {"strength": 0.01})."""
    eval_batch_size: int = 512
    """Sequences per evaluation forward pass."""
    seed: int = 0
    """Seeds the model initialisation and the per-epoch shuffling."""

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs, batch_size and checkpoint_every must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            from ...registry import suggest

            raise suggest(self.lr_schedule, ["constant", "cosine"], "lr_schedule")
        if self.regularizer:
            from ...regularizers import build_regularizer

            build_regularizer(self.regularizer, **self.regularizer_options)  # name and options


def evaluate(
    model: PreTrainedModel,
    data: TinyMemData,
    batch_size: int = 512,
    *,
    forget_index: torch.Tensor | None = None,
    report: MemorizationReport | None = None,
    utility_batch_size: int | None = None,
    legacy_accuracy: bool = False,
) -> dict:
    """TinyMem's evaluation of a model: memorization of the candidates, utility on the test sets.

    The one TinyMem evaluation, for training checkpoints, ``unlearn`` and every edited model of the
    demo and sweeps (:meth:`~unmemorize.benchmarks.tinymem.benchmark.TinyMemBenchmark.evaluate`).
    With ``forget_index`` the memorization part judges an edit: instead of the per-group breakdown
    it counts how many of the rows the unedited model memorized still are.

    Args:
        batch_size: sequences per forward pass.
        forget_index: indices into ``data.memorization`` of the rows the unedited model memorized.
        report: the model's memorization report when already measured (else it is measured).
        utility_batch_size: sequences per forward pass of the utility part (default
            ``batch_size``; edits are measured with 256, as they always were, so their numbers
            stay bit-identical).
        legacy_accuracy: pad-included accuracy and perplexity, as the original code
            (:func:`unmemorize.metrics.utility.accuracy_and_perplexity`; ``--settings paper``).

    Returns:
        ``{"memorized_fraction", "n_memorized", "n_candidates", "memorized_per_group" |
        ("n_still_memorized", "still_memorized_fraction"), "accuracy[/<set>]",
        "perplexity[/<set>]"}``.
    """
    was_training = model.training
    model.eval()
    try:
        if report is None:
            report = measure_memorization(model, data.memorization, batch_size=batch_size)
        out: dict = {
            "memorized_fraction": report.memorized_fraction,
            "n_memorized": report.n_memorized,
            "n_candidates": report.n_candidates,
        }
        if forget_index is None:
            out["memorized_per_group"] = report.per_group()
        else:
            still = int(report.memorized[forget_index].sum())
            out["n_still_memorized"] = still
            out["still_memorized_fraction"] = (
                still / len(forget_index) if len(forget_index) else 0.0
            )
        out.update(
            evaluate_utility(
                model,
                data.test_sets,
                data.pad_id,
                batch_size=utility_batch_size or batch_size,
                legacy=legacy_accuracy,
            )
        )
    finally:
        model.train(was_training)
    return out


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch-"))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint directory under ``out``, or None."""
    dirs = _checkpoint_dirs(Path(out))
    return dirs[-1] if dirs else None


@dataclass
class TrainResult:
    model: PreTrainedModel
    history: list[dict]
    seconds: float
    resumed_from_epoch: int


def train(
    model: PreTrainedModel,
    data: TinyMemData,
    cfg: TrainConfig,
    out: str | Path,
    *,
    progress: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data``, checkpointing under ``out``; resume if checkpoints exist.

    Args:
        model: the freshly built model (its weights are replaced when resuming).
        data: training rows, test sets and memorization candidates.
        cfg: optimisation settings.
        out: the run directory; checkpoints go to ``out/checkpoints``.
        progress: show a progress bar (loss, memorization, accuracy).
        on_checkpoint: called with each evaluation record.

    With an active tracking run (:mod:`unmemorize.tracking`), every epoch's mean loss is logged as
    ``train/loss`` and every evaluation record's metrics as ``train/<metric>``, at the epoch.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    cfg.validate()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
    )
    regularizer = None
    if cfg.regularizer:
        from ...regularizers import build_regularizer

        regularizer = build_regularizer(cfg.regularizer, **cfg.regularizer_options)
        regularizer.attach(model)

    history: list[dict] = []
    start_epoch = 0
    last = latest_checkpoint(out)
    if last is not None:
        start_epoch, history = _load_checkpoint(last, model, optimizer, regularizer)
        log.info("resuming from %s (epoch %d)", last, start_epoch)

    steps_per_epoch = math.ceil(int(data.train_copies.sum()) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    def lr_at(step: int) -> float:
        if cfg.lr_schedule == "constant":
            return cfg.lr
        frac = step / max(1, total_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.epochs, initial=start_epoch, desc="train", unit="epoch", dynamic_ncols=True
        )
    t0 = time.perf_counter()
    seconds_before = history[-1]["seconds"] if history else 0.0
    step = start_epoch * steps_per_epoch
    train_ids = data.train_ids
    device = next(model.parameters()).device
    forward = compiled(model)  # the model itself unless --compile
    try:
        for epoch in range(start_epoch, cfg.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = data.epoch_indices(gen)
            loss_sum, n_batches = 0.0, 0
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b : b + cfg.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                if regularizer is not None:
                    regularizer.set_batch(idx)
                per_seq = sequence_losses(forward, train_ids[idx].to(device), data.pad_id)
                loss = None if regularizer is None else regularizer.reduce(per_seq)
                if loss is None:
                    loss = per_seq.mean()
                if regularizer is not None:
                    pen = regularizer.penalty(model)
                    if pen is not None:
                        loss = loss + pen
                if not torch.isfinite(loss):
                    good = latest_checkpoint(out)
                    where = (
                        f"epoch {good.name.split('-')[1].lstrip('0') or 0} in {good}"
                        if good
                        else "none yet"
                    )
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} at epoch {epoch + 1}; training stopped "
                        f"(last good checkpoint: {where}); lower train.lr or add a regularizer with a smaller strength"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach())
                n_batches += 1
                step += 1
            done = epoch + 1
            tracking.log_scalars({"loss": loss_sum / max(1, n_batches)}, done, prefix="train")
            if done % cfg.checkpoint_every == 0 or done == cfg.epochs:
                record = {"epoch": done, "step": step, "train_loss": loss_sum / max(1, n_batches)}
                record.update(evaluate(model, data, cfg.eval_batch_size))
                record["seconds"] = seconds_before + time.perf_counter() - t0
                history.append(record)
                tracking.log_scalars(
                    {k: v for k, v in record.items() if k not in ("epoch", "step")},
                    done,
                    prefix="train",
                )
                _save_checkpoint(
                    out, done, model, optimizer, regularizer, history, cfg.keep_checkpoints
                )
                if on_checkpoint is not None:
                    on_checkpoint(record)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{record['train_loss']:.3f}",
                        mem=f"{record['memorized_fraction']:.1%}",
                        acc=f"{record['accuracy']:.1%}",
                    )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if regularizer is not None:
        regularizer.finalize(model)
        regularizer.detach()
    model.eval()
    seconds = seconds_before + time.perf_counter() - t0
    return TrainResult(model, history, seconds, start_epoch)


def _save_checkpoint(out, epoch, model, optimizer, regularizer, history, keep) -> None:
    path = out / "checkpoints" / f"epoch-{epoch:06d}"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if regularizer is not None:
            torch.save(regularizer.state_dict(), tmp / "regularizer.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"epoch": epoch, "history": history}, indent=2)
        )
    atomic_write_json(out / "history.json", history)
    if keep > 0:
        for old in _checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, model, optimizer, regularizer) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (e.g. GPT-2's lm_head) are stored once; anything else missing is an error.
    missing = [
        k
        for k in missing
        if k not in getattr(model, "all_tied_weights_keys", {}) and "lm_head" not in k
    ]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use --overwrite to start afresh"
        )
    model.tie_weights()
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if regularizer is not None and (path / "regularizer.pt").is_file():
        regularizer.load_state_dict(torch.load(path / "regularizer.pt", weights_only=True))
    trainer_state = read_json(path / "trainer_state.json")
    return int(trainer_state["epoch"]), list(trainer_state["history"])
