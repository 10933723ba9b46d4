"""Utility on standard benchmarks: lm-evaluation-harness tasks on an edited and an original model.

TinyMem and RESTOR judge utility by token accuracy, perplexity and few-shot QA on their own data;
practitioners judge a model by lm-evaluation-harness (Gao et al., EleutherAI) tasks. This module
runs harness tasks on the edited model and, when given, on the original one, and reports each
metric's change (``edited - original``, with the task's ``higher_is_better``).

The harness is an optional extra (``pip install "unmemorize[lmeval]"``). Models are loaded by
:func:`unmemorize.models.load_model` (local directories only, safetensors only, no remote code)
and handed to the harness as objects, so the harness never fetches or unpickles anything itself.
A task is a harness task name (fetches its data set from the hub, so it needs network) or a task
YAML under ``include_path`` whose data set is a local file (``dataset_path: json`` with
``dataset_kwargs: {data_files: {test: FILE}}``), which runs offline.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

INSTALL = 'pip install "unmemorize[lmeval]"'


def check_harness() -> None:
    """Raise a one-line :class:`UserError` naming the pip command when lm_eval is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"unmemorize eval needs lm-evaluation-harness (lm_eval): {INSTALL}")


def _task_manager(tasks: Sequence[str], include_path: str | Path | None):
    """A TaskManager that knows ``tasks``; the built-in index (thousands of YAML files, seconds to
    scan) is read only when a task is not among ``include_path``'s own."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise FileNotFoundError(f"--include-path {include_path}: no such directory")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        from ..registry import suggest

        raise suggest(
            unknown[0], manager.all_tasks, "lm-eval task", "(`lm_eval ls tasks` lists them)"
        )
    return manager


def harness_scores(
    model_dir: str | Path,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Run harness ``tasks`` on the model in ``model_dir``.

    Returns:
        ``{task: {metric: {"value": float, "higher_is_better": bool | None}}}``; the metric
        names drop the harness' ``,none`` filter suffix (other filters keep theirs) and standard
        errors are left out.
    """
    check_harness()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from ..models import load_model

    manager = _task_manager(tasks, include_path)
    model, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=False,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for task, metrics in out["results"].items():
        higher = out.get("higher_is_better", {}).get(task, {})
        row: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            label = name if filt in ("", "none") else f"{name},{filt}"
            row[label] = {"value": float(value), "higher_is_better": higher.get(name)}
        scores[task] = row
    return scores


def compare_harness(
    edited: str | Path,
    tasks: Sequence[str],
    *,
    original: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Harness ``tasks`` on ``edited`` (and ``original``): each metric's values and change.

    Returns:
        ``{"tasks", "edited", "original", "results": {task: {metric: {"edited", "original",
        "change", "higher_is_better"}}}}``; ``original``/``change`` are None without an original.
    """
    if not tasks:
        raise UserError("--tasks needs at least one task name, e.g. --tasks hellaswag,arc_easy")
    after = harness_scores(edited, tasks, **options)
    before = harness_scores(original, tasks, **options) if original is not None else {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for task, metrics in after.items():
        results[task] = {}
        for metric, entry in metrics.items():
            old = before.get(task, {}).get(metric, {}).get("value")
            new = entry["value"]
            change = None if old is None else new - old
            results[task][metric] = {
                "edited": new,
                "original": old,
                "change": change if change is None or math.isfinite(change) else None,
                "higher_is_better": entry["higher_is_better"],
            }
    return {
        "kind": "eval",
        "tasks": list(tasks),
        "edited": str(edited),
        "original": None if original is None else str(original),
        "results": results,
    }


def format_harness_table(report: dict[str, Any]) -> str:
    """One line per (task, metric): edited, original and change, with the better direction."""
    header = f"{'task':<24}{'metric':<16}{'edited':>10}{'original':>10}{'change':>10}"
    lines = [header, "-" * len(header)]
    for task, metrics in report["results"].items():
        for metric, e in metrics.items():
            orig = "" if e["original"] is None else f"{e['original']:.4f}"
            change = "" if e["change"] is None else f"{e['change']:+.4f}"
            arrow = {True: " (higher better)", False: " (lower better)"}.get(
                e["higher_is_better"], ""
            )
            lines.append(f"{task:<24}{metric:<16}{e['edited']:>10.4f}{orig:>10}{change:>10}{arrow}")
    return "\n".join(lines)


__all__ = ["check_harness", "compare_harness", "format_harness_table", "harness_scores"]
