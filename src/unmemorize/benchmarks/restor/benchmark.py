"""RESTOR behind the benchmark seam: its metrics, selection rule, spaces, evaluation and report.

RESTOR (Rezaei et al., "RESTOR: Knowledge Recovery in Machine Unlearning", arXiv 2411.00204)
judges unlearning by whether the clean model's knowledge comes back after the corruption is
unlearned, not only whether the wrong facts are gone:
``recovery = (acc_unlearned - acc_corrupted) / (acc_clean - acc_corrupted)``. The pipeline that
builds the clean and corrupted models is :mod:`unmemorize.benchmarks.restor.pipeline`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import BENCHMARKS, Benchmark, Metric, Prepared
from .knowledge import recovery
from .settings import SETTINGS
from .spaces import DEFAULT_SPACE, SPACES

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ...render.model import Section


@BENCHMARKS.register
class RestorBenchmark(Benchmark):
    """Corrupt a model with wrong facts, unlearn the corruption, measure what comes back."""

    name = "restor"
    paper = "Rezaei et al., RESTOR: Knowledge Recovery in Machine Unlearning, arXiv 2411.00204"
    summary = (
        "corrupt a model with wrong facts about target people, unlearn the corruption and "
        "measure whether the clean model's answers come back"
    )
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("target_accuracy", "target accuracy", True, "pct",
               "few-shot QA accuracy on the target people's test facts"),
        Metric("untargeted_accuracy", "untargeted accuracy", True, "pct",
               "few-shot QA accuracy on facts the corruption did not touch (collateral damage)"),
        Metric("target_accuracy_val", "target accuracy (val)", True, "pct",
               "QA accuracy on the validation share of the target facts (picks configurations)"),
        Metric("target_wrong_answer_rate", "wrong answer", False, "pct",
               "share of target answers that are the planted corrupted answer"),
        Metric("recovery", "recovery", True, "num",
               "(acc - acc_corrupted) / (acc_clean - acc_corrupted) on the target test facts; "
               "1 = clean knowledge fully back, NaN when the corruption changed nothing"),
        Metric("recovery_val", "recovery (val)", True, "num",
               "recovery on the validation target facts"),
        Metric("logits.correct", "logp correct", True, "num",
               "mean per-token log-prob (nats) of the correct answer (row['logits']['correct'])"),
        Metric("logits.corrupted", "logp corrupted", False, "num",
               "mean per-token log-prob (nats) of the planted corrupted answer"),
        Metric("logits.random", "logp random", None, "num",
               "mean per-token log-prob (nats) of random answers of the same relation"),
        Metric("seconds", "seconds", None, "secs", "wall time of the method"),
    )  # fmt: skip
    #: RESTOR picks hyperparameters on held-out facts: the best validation target accuracy ...
    selection = "target_accuracy_val"
    #: ... and, among equal ones, the best untargeted accuracy (the first run wins a full tie).
    tie_break: ClassVar[str] = "untargeted_accuracy"
    spaces = SPACES
    settings = SETTINGS
    default_space = DEFAULT_SPACE

    # -- preparing ----------------------------------------------------------------------------

    def load(self, model_dir: str, *, device: str = "cpu", settings: str | None = None) -> Prepared:
        """The corrupted model of a RESTOR output directory, ready to unlearn again.

        ``settings`` change only method defaults and the corruption (already done): unused here.

        ``model_dir`` is the ``OUT`` of ``unmemorize restor``: the model is ``OUT/corrupted``,
        the facts and documents come from ``OUT/data`` and the clean and corrupted reference
        metrics (recovery's two ends) from ``OUT/summary.json``, so nothing is re-trained or
        re-scored.

        Raises:
            ValueError: ``model_dir`` is not a complete RESTOR output directory.
        """
        from ...config import from_dict
        from ...io import read_json
        from ...models import load_model
        from ...runtime import context_length
        from .config import EvalConfig
        from .evaluate import RestorEval, RestorState
        from .task import RestorTask, unlearn_data

        out = Path(model_dir)
        missing = [p for p in ("summary.json", "corrupted", "data") if not (out / p).exists()]
        if missing:
            raise ValueError(
                f"{out} is not a RESTOR output directory (no {', '.join(missing)}); pass the "
                "--out directory of `unmemorize restor`"
            )
        summary = read_json(out / "summary.json")
        if not {"clean", "corrupted", "config"} <= set(summary):
            raise ValueError(
                f"{out / 'summary.json'} is not a RESTOR summary (no clean/corrupted/config); "
                "pass the --out directory of `unmemorize restor`"
            )
        task = RestorTask.read(out / "data")
        model, tokenizer = load_model(out / "corrupted", device=device)
        # the run's encoding length: the synthetic preset's context, else the model's (<= 1024)
        if "model_dir" in summary:
            max_length = min(context_length(model) or 1024, 1024)
        else:
            max_length = int(summary["config"]["model"]["context_length"])
        evaluator = RestorEval(
            task.facts,
            task.targets,
            task.untargeted,
            task.wrong,
            from_dict(EvalConfig, summary["config"]["eval"]),
        )
        return Prepared(
            model=model,
            data=unlearn_data(tokenizer, task.forget_docs, task.retain_docs, max_length),
            baseline=summary["corrupted"],
            state=RestorState(evaluator, tokenizer, clean=summary["clean"]),
            info={"level": summary.get("level"), "simplified": summary.get("simplified")},
        )

    # -- judging ------------------------------------------------------------------------------

    def evaluate(self, model: PreTrainedModel, prepared: Prepared) -> dict[str, Any]:
        """QA accuracy, wrong-answer share and logit analysis of ``model``, plus its recovery.

        ``prepared.baseline`` is the corrupted model's metrics and ``prepared.state`` a
        :class:`~.evaluate.RestorState`; recovery is measured on the test and the validation
        target facts.
        """
        state = prepared.state
        clean, corrupted = state.clean, prepared.baseline
        metrics = state.evaluator(model, state.tokenizer)
        metrics["recovery"] = recovery(
            clean["target_accuracy"], corrupted["target_accuracy"], metrics["target_accuracy"]
        )
        metrics["recovery_val"] = recovery(
            clean["target_accuracy_val"],
            corrupted["target_accuracy_val"],
            metrics["target_accuracy_val"],
        )
        return metrics

    def score(self, baseline: Mapping[str, Any], metrics: Mapping[str, Any]) -> float | None:
        """``-recovery_val``: -1 when the clean answers are fully back on the validation facts.

        Lower is better, like every benchmark's score; None when recovery is undefined (the
        corruption did not change validation accuracy). The score is what a sweep optimizes;
        the run a summary reports per method is picked by :attr:`selection` (validation target
        accuracy, ties by :attr:`tie_break`), never by the score.
        """
        value = metrics.get("recovery_val")
        if value is None or not math.isfinite(value):
            return None
        return -value

    def best_per_method(self, rows: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """Each method's best row by :attr:`selection`, ties by :attr:`tie_break`; failed rows
        are skipped. Methods come in the order their best rows were first seen."""
        select, tie = self.metric(self.selection), self.metric(self.tie_break)
        best: dict[str, Mapping[str, Any]] = {}
        for row in rows:
            if "error" in row:
                continue
            cur = best.get(row["method"])
            if (
                cur is None
                or select.better(row[select.name], cur[select.name])
                or (
                    row[select.name] == cur[select.name]
                    and tie.better(row[tie.name], cur[tie.name])
                )
            ):
                best[row["method"]] = row
        return best

    # -- presenting ---------------------------------------------------------------------------

    def report_section(
        self, index: int, title: str, record: Mapping[str, Any], *, path: Path | None = None
    ) -> Section:
        """Clean vs corrupted vs each method's best run: tables and accuracy / log-prob figures
        (a ``--seeds`` summary: every cell a mean and 95% interval, error-bar figures)."""
        if record.get("kind") == "seeds":
            from ..seeds import seeds_section

            return seeds_section(
                index,
                title,
                record,
                [
                    ("recovery", "recovery", "signed"),
                    ("target_accuracy", "target", "pct"),
                    ("untargeted_accuracy", "untargeted", "pct"),
                    ("target_wrong_answer_rate", "wrong answer", "pct"),
                ],
                baseline_rows=[
                    (
                        "clean",
                        {
                            "target_accuracy": "clean_target_accuracy",
                            "untargeted_accuracy": "clean_untargeted_accuracy",
                        },
                    ),
                    (
                        "corrupted",
                        {
                            "target_accuracy": "corrupted_target_accuracy",
                            "untargeted_accuracy": "corrupted_untargeted_accuracy",
                            "target_wrong_answer_rate": "corrupted_wrong_answer_rate",
                        },
                    ),
                ],  # fmt: skip
                figure_metrics=[
                    ("recovery", "recovery (1 = clean answers back)"),
                    ("untargeted_accuracy", "untargeted accuracy"),
                ],
            )
        from .report import restor_section

        return restor_section(index, title, record)


__all__ = ["RestorBenchmark"]
