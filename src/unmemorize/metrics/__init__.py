"""Metrics: memorization (exact-match extraction), utility (accuracy, perplexity), knowledge (QA)."""

from .knowledge import (
    QAResult,
    Scorer,
    alias_match,
    answer_logprob,
    check_encodable,
    few_shot_prompt,
    generate_answers,
    logit_analysis,
    normalize_answer,
    qa_accuracy,
    random_candidates,
    recovery,
)
from .memorization import (
    MemorizationReport,
    generate_memorized,
    measure_memorization,
    memorized,
    memorized_sharded,
)
from .utility import accuracy_and_perplexity, evaluate_utility

__all__ = [
    "MemorizationReport",
    "QAResult",
    "Scorer",
    "alias_match",
    "answer_logprob",
    "check_encodable",
    "few_shot_prompt",
    "generate_answers",
    "logit_analysis",
    "normalize_answer",
    "qa_accuracy",
    "random_candidates",
    "recovery",
    "accuracy_and_perplexity",
    "evaluate_utility",
    "generate_memorized",
    "measure_memorization",
    "memorized",
    "memorized_sharded",
]
