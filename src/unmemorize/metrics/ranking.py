"""The TinyMem paper's rule for choosing the best run of a method (lower score is better).

Sakarvadia et al. 2024 (arXiv 2410.02159) rank unlearning runs by one number that rewards removing
memorization and penalizes hurting the model, all as changes *relative to the unedited model*:

* perplexity form (language models, Pythia)::

      score = (mem - mem_base) / mem_base + (ppl - ppl_base) / ppl_base      (+100 if mem == mem_base)

* accuracy form (TinyMem math; reconstructed from the stored ``score`` column)::

      score = (mem - mem_base) / mem_base - mean_i (acc_i - acc_i_base) / acc_i_base   (+100 ...)

  where i runs over the math test sets (one per task).

With ``utility="auto"`` the form follows the paper: accuracy for math runs (their metrics hold one
``accuracy/<task>`` per test set), perplexity for language runs. A TinyMem language run also
reports ``accuracy/text`` (next-token accuracy on its one test set, :data:`TEXT_SET`), so the
presence of per-set accuracies alone does not make a run a math run: a text run scored by accuracy
would score -1 (perfect) with its perplexity ten times higher.

The +100 penalty keeps runs that did not change memorization at all out of first place. A perfect
run scores -1 (all memorization removed, utility unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

NO_CHANGE_PENALTY = 100.0

#: The name of a language run's test set (TinyMem's text variant): its accuracy does not select
#: the accuracy form.
TEXT_SET = "text"


def selection_score(
    baseline: Mapping[str, float],
    edited: Mapping[str, float],
    *,
    utility: str = "auto",
) -> float:
    """Score one run against the unedited model (lower is better).

    Args:
        baseline: metrics of the unedited model: ``memorized_fraction`` and either
            ``accuracy/<set>`` entries (accuracy form) or ``perplexity`` (perplexity form).
        edited: the same metrics after the method.
        utility: ``"accuracy"``, ``"perplexity"`` or ``"auto"`` (accuracy when the metrics hold
            per-set accuracies of sets other than :data:`TEXT_SET`, as TinyMem math runs do;
            else perplexity, as for language runs and sequence files).

    Returns:
        The score; NaN when the baseline memorizes nothing (there is nothing to compare against).

    Raises:
        ValueError: for an unknown ``utility`` or missing metrics.
    """
    if utility not in ("auto", "accuracy", "perplexity"):
        raise ValueError(f"utility must be 'auto', 'accuracy' or 'perplexity', got {utility!r}")
    mem_base = float(baseline["memorized_fraction"])
    if mem_base == 0:
        return math.nan
    mem_diff = (float(edited["memorized_fraction"]) - mem_base) / mem_base
    acc_keys = sorted(k for k in baseline if k.startswith("accuracy/"))
    if utility == "auto":
        math_sets = [k for k in acc_keys if k != f"accuracy/{TEXT_SET}"]
        utility = "accuracy" if math_sets else "perplexity"
    if utility == "accuracy":
        if not acc_keys:
            acc_keys = ["accuracy"]
        missing = [k for k in acc_keys if k not in edited]
        if missing:
            raise ValueError(f"edited metrics lack {missing[0]!r}")
        changes = [(float(edited[k]) - float(baseline[k])) / float(baseline[k]) for k in acc_keys]
        score = mem_diff - sum(changes) / len(changes)
    else:
        ppl_base = float(baseline["perplexity"])
        score = mem_diff + (float(edited["perplexity"]) - ppl_base) / ppl_base
    if mem_diff == 0:
        score += NO_CHANGE_PENALTY
    return score


def rank(
    rows: Iterable[Mapping], key: str = "score", *, higher_is_better: bool = False
) -> list[Mapping]:
    """Rows sorted best first by ``key`` (lower first unless ``higher_is_better``; NaN or missing
    last; ties keep their order)."""

    def order(row: Mapping) -> tuple[bool, float]:
        value = row.get(key, math.nan)
        bad = value is None or math.isnan(value)
        return bad, 0.0 if bad else (-value if higher_is_better else value)

    return sorted(rows, key=order)


def best_per(
    rows: Iterable[Mapping],
    group: str = "method",
    key: str = "score",
    *,
    higher_is_better: bool = False,
) -> list[Mapping]:
    """The best row of each ``group`` value (the first on ties), ranked best first."""
    best: dict = {}
    for row in rank(rows, key, higher_is_better=higher_is_better):
        best.setdefault(row[group], row)
    return list(best.values())


def pareto_front(
    rows: Iterable[Mapping],
    x_key: str = "memorized_fraction",
    y_key: str = "accuracy",
    y_higher_is_better: bool = True,
) -> list[Mapping]:
    """The rows no other row beats on both axes: lower ``x_key`` and better ``y_key``.

    ``x`` is what unlearning drives down (memorization); ``y`` is the utility it must keep
    (accuracy: higher is better; perplexity: lower is better). A row is on the front unless some
    other row is at least as good on both axes and strictly better on one, so exact duplicates of
    a front point are all kept. Rows with an ``"error"``, a missing value or a non-finite value
    (failed runs) are never on the front.

    Args:
        rows: run rows (dicts), e.g. a demo's or a sweep's ``runs``.
        x_key: the key to minimize.
        y_key: the key to maximize (``y_higher_is_better``) or minimize.
        y_higher_is_better: the direction of ``y_key``.

    Returns:
        The front's rows (the same objects), by increasing ``x`` (ties: best ``y`` first).
    """
    sign = 1.0 if y_higher_is_better else -1.0
    points = []
    for row in rows:
        if "error" in row:
            continue
        x, y = row.get(x_key), row.get(y_key)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            continue
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        points.append((float(x), sign * float(y), row))
    # best x first, then best y: every row that could dominate a row comes before it
    points.sort(key=lambda p: (p[0], -p[1]))
    front: list[Mapping] = []
    best_y, best_x = -math.inf, math.inf  # best y so far and the smallest x that reached it
    for x, y, row in points:
        if y > best_y:
            best_y, best_x = y, x
            front.append(row)
        elif y == best_y and x == best_x:  # an exact duplicate of a front point
            front.append(row)
    return front


__all__ = ["NO_CHANGE_PENALTY", "TEXT_SET", "best_per", "pareto_front", "rank", "selection_score"]
