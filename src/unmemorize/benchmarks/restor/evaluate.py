"""How RESTOR judges a model: few-shot QA on the target and untargeted facts, plus logit analysis.

RESTOR (Rezaei et al., arXiv 2411.00204) scores greedy short answers by normalized alias match
(:mod:`.knowledge`) on the facts the corruption targeted and on facts it left alone; a fixed
validation share of the target facts (``eval.val_fraction``) picks each method's configuration,
the rest are the reported test facts. The logit analysis (mean per-token log-prob of the correct,
the corrupted and random same-relation answers) shows whether unlearning moves probability back
to the truth or only away from the corruption.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EvalConfig
from .facts import FactSet
from .knowledge import QAResult, Scorer, alias_match, logit_analysis, qa_accuracy


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


@dataclass
class RestorState:
    """RESTOR's private evaluation state (:attr:`unmemorize.benchmarks.Prepared.state`).

    Attributes:
        evaluator: the facts to score and how.
        tokenizer: the tokenizer of the model being judged.
        clean: the clean model's metrics, the "fully restored" end of
            ``recovery = (acc - acc_corrupted) / (acc_clean - acc_corrupted)`` (the corrupted
            end is the prepared model's baseline).
    """

    evaluator: RestorEval
    tokenizer: PreTrainedTokenizerBase
    clean: dict[str, Any]


__all__ = ["RestorEval", "RestorState"]
