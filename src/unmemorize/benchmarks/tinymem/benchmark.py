"""TinyMem behind the benchmark seam: prepare a run's model, evaluate edits, score, spaces, report.

Sakarvadia et al. 2024, "Mitigating Memorization in Language Models" (arXiv 2410.02159): tiny GPT
models trained on arithmetic sequences (or text) memorize the noised or backdoored ones verbatim;
a method should remove that memorization and keep the model's accuracy (perplexity on text). Each
method's best run is chosen by the paper's score (:func:`unmemorize.metrics.ranking.selection_score`,
lower is better, -1 perfect).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import BENCHMARKS, Benchmark, Metric, Prepared
from .settings import SETTINGS
from .spaces import SPACES

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ...render.model import Section
    from .data import TinyMemData


def unlearn_data_options(
    switches: Mapping[str, Any], run_dir: str | Path | None = None
) -> dict[str, Any]:
    """The options of :func:`~.unlearn_data.tinymem_unlearn_data` that settings' ``switches`` pick.

    ``retain`` and ``noise_twins`` as the switches say (defaults ``"clean"``, ``"memorized"``);
    ``optimizer_state``: with the ``finetune_optimizer`` switch ``"resumed"`` (the original
    recipe, ``--settings paper``) the AdamW state of ``run_dir``'s final checkpoint, when it keeps
    one; otherwise None (fine-tuning starts a fresh AdamW).
    """
    state = None
    if switches.get("finetune_optimizer", "fresh") == "resumed" and run_dir is not None:
        from .experiment import training_optimizer_state

        state = training_optimizer_state(run_dir)
    return {
        "retain": switches.get("retain", "clean"),
        "noise_twins": switches.get("noise_twins", "memorized"),
        "optimizer_state": state,
    }


@dataclass
class TinyMemState:
    """What judging an edit of a TinyMem model needs beyond the model.

    Attributes:
        data: the run's data (memorization candidates, test sets).
        forget_index: indices into ``data.memorization`` of the rows the unedited model memorized.
        legacy_accuracy: pad-included accuracy (the settings' switch).
        tokenizer: the run's tokenizer when known (text runs need it to draw audit holdout rows).
    """

    data: TinyMemData
    forget_index: torch.Tensor
    legacy_accuracy: bool = False
    tokenizer: Any = None


@BENCHMARKS.register
class TinyMemBenchmark(Benchmark):
    """TinyMem: remove memorized noise/backdoor sequences from a tiny model, keep its accuracy."""

    name = "tinymem"
    paper = "Sakarvadia et al. 2024, Mitigating Memorization in Language Models (arXiv 2410.02159)"
    summary = (
        "tiny GPT models memorize noised arithmetic (or text) sequences; remove the memorization, "
        "keep test accuracy (perplexity on text)"
    )
    metrics = (
        Metric("memorized_fraction", "memorized", False, "pct",
               "share of the memorization candidates reproduced verbatim"),
        Metric("n_memorized", "memorized (#)", False, "int",
               "memorization candidates reproduced verbatim"),
        Metric("n_candidates", "candidates (#)", None, "int",
               "memorization candidates (noised rows whose noise is in the scored window)"),
        Metric("n_still_memorized", "still memorized (#)", False, "int",
               "rows memorized before unlearning that still are"),
        Metric("still_memorized_fraction", "still memorized", False, "pct",
               "share of the rows memorized before unlearning that still are"),
        Metric("accuracy", "accuracy", True, "pct",
               "next-token accuracy on the clean test sets (accuracy/<set>: one set)"),
        Metric("perplexity", "perplexity", False, "num",
               "perplexity on the clean test sets (perplexity/<set>: one set)"),
        Metric("seconds", "seconds", None, "secs", "wall time of the method"),
        Metric("changed_fraction", "changed", None, "pct",
               "share of the method's unit (weights or neurons) it changed"),
    )  # fmt: skip
    selection = "score"
    spaces = SPACES
    default_space = "demo"
    settings = SETTINGS

    # -- preparing ----------------------------------------------------------------------------

    def prepare(
        self,
        model: PreTrainedModel,
        data: TinyMemData,
        settings: str | None = None,
        tokenizer: Any = None,
        *,
        run_dir: str | Path | None = None,
    ) -> Prepared:
        """The unlearning sets and baseline of ``model`` on its run's ``data``.

        ``settings`` (``default`` / ``paper``) picks the retain set, the fine-tuning twins, the
        accuracy form and whether fine-tuning resumes the training optimizer
        (:mod:`unmemorize.benchmarks.tinymem.settings`), which is read from ``run_dir`` (the
        run directory ``model`` was trained in; without it fine-tuning starts afresh).

        Raises:
            NothingToUnlearnError: when the model memorizes none of the candidates.
        """
        from .experiment import evaluate_edit
        from .unlearn_data import tinymem_unlearn_data

        switches = self.get_settings(settings).switches
        legacy = bool(switches.get("legacy_accuracy", False))
        unlearn_data, report = tinymem_unlearn_data(
            model, data, **unlearn_data_options(switches, run_dir)
        )
        forget_index = report.memorized_indices()
        baseline = evaluate_edit(model, data, forget_index, report, legacy_accuracy=legacy)
        return Prepared(
            model, unlearn_data, baseline, TinyMemState(data, forget_index, legacy, tokenizer)
        )

    def load(self, model_dir: str, *, device: str = "cpu", settings: str | None = None) -> Prepared:
        """A TinyMem run directory (``unmemorize train`` / ``demo``) ready for unlearning."""
        from .experiment import load_run

        model, tokenizer, data = load_run(model_dir)
        if data is None:
            raise ValueError(f"{model_dir} has no TinyMem data/ directory")
        model.to(device)
        return self.prepare(model, data, settings, tokenizer, run_dir=model_dir)

    def check_base(self, base: Mapping[str, Any]) -> None:
        from .experiment import make_experiment

        model = base.get("model")
        if model is None:
            make_experiment(base["preset"], base["task"], base["variant"], list(base["overrides"]))
        elif not (Path(model) / "data" / "data.safetensors").is_file():
            raise ValueError(
                f"--model {model}: not a TinyMem run directory (it needs the data/ written by "
                "`unmemorize train` or `unmemorize demo`); train one or leave --model out"
            )

    def prepare_base(self, base: Mapping[str, Any], out: Path, *, progress: bool = True) -> Path:
        """Train the preset's model into ``out`` (a TinyMem run directory), or resume it there."""
        import logging

        from .experiment import is_finished_run, make_experiment, train_experiment

        if not is_finished_run(out):
            exp = make_experiment(
                base["preset"], base["task"], base["variant"], list(base["overrides"])
            )
            logging.getLogger(__name__).info("training the base model into %s", out)
            train_experiment(exp, out, progress=progress)
        return out

    # -- judging ------------------------------------------------------------------------------

    def evaluate(self, model: PreTrainedModel, prepared: Prepared) -> dict[str, Any]:
        """Memorization and utility of an edit, and how many originally memorized rows remain."""
        from .experiment import evaluate_edit

        state: TinyMemState = prepared.state
        return evaluate_edit(
            model, state.data, state.forget_index, legacy_accuracy=state.legacy_accuracy
        )

    def split(self, prepared: Prepared, *, seed: int = 0) -> tuple[Prepared, Prepared]:
        """Validation and test halves of the memorization candidates and of every test set.

        The candidates are split within two strata (memorized by the unedited model or not), so
        each half holds half of the rows the methods must remove (±1); each test set is split at
        random. Drawn from ``seed``; the halves are disjoint and together hold every row.
        """
        import dataclasses

        import torch

        from .experiment import evaluate_edit

        state: TinyMemState = prepared.state
        data = state.data
        gen = torch.Generator().manual_seed(10_007 * seed + 17)
        n = len(data.memorization)
        memorized = torch.zeros(n, dtype=torch.bool)
        memorized[state.forget_index] = True
        val_mask = torch.zeros(n, dtype=torch.bool)
        for stratum in (memorized, ~memorized):
            rows = stratum.nonzero().flatten()
            rows = rows[torch.randperm(len(rows), generator=gen)]
            val_mask[rows[: len(rows) // 2]] = True
        test_masks = {}
        for name, ids in data.test_sets.items():
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[torch.randperm(len(ids), generator=gen)[: len(ids) // 2]] = True
            test_masks[name] = mask

        def half(take_val: bool, label: str) -> Prepared:
            keep = val_mask if take_val else ~val_mask
            index = keep.nonzero().flatten()
            sub = dataclasses.replace(
                data,
                memorization=data.memorization.subset(index),
                test_sets={
                    k: v[test_masks[k] if take_val else ~test_masks[k]]
                    for k, v in data.test_sets.items()
                },
            )
            forget = memorized[index].nonzero().flatten()  # positions inside the half
            sub_state = TinyMemState(sub, forget, state.legacy_accuracy, state.tokenizer)
            baseline = evaluate_edit(
                prepared.model, sub, forget, legacy_accuracy=state.legacy_accuracy
            )
            info = {
                "split": label,
                "seed": seed,
                "n_candidates": len(index),
                "n_forget": len(forget),
            }
            return Prepared(prepared.model, prepared.data, baseline, sub_state, info)

        return half(True, "validation"), half(False, "test")

    def score(self, baseline: Mapping[str, Any], metrics: Mapping[str, Any]) -> float | None:
        """The paper's selection score (relative change in memorization and utility)."""
        from ...metrics.ranking import selection_score

        return selection_score(baseline, metrics)

    @classmethod
    def tradeoff(cls, experiment: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """Memorized share against accuracy (math tasks) or perplexity (text)."""
        text = bool(experiment) and experiment.get("task") == "text"
        return "memorized_fraction", "perplexity" if text else "accuracy"

    def audit_sets(self, prepared: Prepared) -> dict[str, Any]:
        """Every memorization candidate, fresh noised twins as non-members, the clean training
        rows and the test sets (:func:`~.audit_sets.tinymem_audit_sets`)."""
        from .audit_sets import tinymem_audit_sets

        state: TinyMemState = prepared.state
        return tinymem_audit_sets(state.data, tokenizer=state.tokenizer)

    # -- presenting ---------------------------------------------------------------------------

    def report_section(
        self, index: int, title: str, record: Mapping[str, Any], *, path: Path | None = None
    ) -> Section:
        """A demo or sweep summary (with the base model's training curves when ``path`` has them)."""
        if record.get("kind") == "seeds":
            from ..seeds import seeds_section

            utility = self.tradeoff(record.get("experiment"))[1]
            u_fmt = "num" if utility == "perplexity" else "pct"
            audited = "audit" in record  # demo/sweep --seeds --audit
            audit_columns = [
                ("audit/returned_fraction", "returns after relearning", "pct"),
                ("audit/min_k_auc", "MIA AUC (Min-K%)", "num"),
            ]
            section = seeds_section(
                index,
                title,
                record,
                [
                    ("score", "score", "num"),
                    ("still_memorized_fraction", "still memorized", "pct"),
                    ("memorized_fraction", "memorized", "pct"),
                    (utility, utility, u_fmt),
                    *(audit_columns if audited else []),
                    ("seconds", "seconds", "num"),
                ],
                baseline_rows=[
                    (
                        "(unedited)",
                        {
                            "memorized_fraction": "memorized_fraction",
                            utility: utility,
                            **({"audit/min_k_auc": "audit/min_k_auc"} if audited else {}),
                        },
                    ),
                ],  # fmt: skip
                figure_metrics=[
                    ("score", "selection score (lower is better)"),
                    ("still_memorized_fraction", "share still memorized"),
                    *(
                        [("audit/returned_fraction", "share returned after relearning")]
                        if audited
                        else []
                    ),
                ],
            )
            if audited:
                section.notes.append(f"audit: {record['audit'].get('note', '')}")
            return section
        from .report import tinymem_section, training_history

        kind = "sweep" if record.get("kind") == "sweep" else "demo"
        history = training_history(path, record) if path is not None else None
        return tinymem_section(index, title, kind, record, history)


__all__ = ["TinyMemBenchmark", "TinyMemState"]
