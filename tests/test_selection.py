"""The TinyMem paper's selection score (lower is better)."""

from __future__ import annotations

import math

import pytest

from unmemorize.metrics.ranking import (
    NO_CHANGE_PENALTY,
    best_per,
    pareto_front,
    rank,
    selection_score,
)


def test_accuracy_form_matches_the_papers_stored_row() -> None:
    # toy_loc_avg.csv row 1: perc_mem_diff -0.25, mean acc diff -0.00113 -> score -0.24887
    base = {"memorized_fraction": 0.4, "accuracy/a": 1.0, "accuracy/b": 1.0}
    edited = {"memorized_fraction": 0.3, "accuracy/a": 1 - 0.00113, "accuracy/b": 1 - 0.00113}
    assert selection_score(base, edited) == pytest.approx(-0.25 + 0.00113)


def test_accuracy_form_averages_relative_changes_per_test_set() -> None:
    base = {"memorized_fraction": 0.5, "accuracy/a": 0.8, "accuracy/b": 0.5, "perplexity": 2.0}
    edited = {"memorized_fraction": 0.0, "accuracy/a": 0.4, "accuracy/b": 0.5, "perplexity": 9.0}
    # mem -1; accuracy changes -0.5 and 0 -> mean -0.25; perplexity ignored in accuracy form
    assert selection_score(base, edited) == pytest.approx(-1 + 0.25)


def test_perplexity_form_and_no_change_penalty() -> None:
    base = {"memorized_fraction": 0.5, "perplexity": 20.0}
    edited = {"memorized_fraction": 0.05, "perplexity": 22.0}
    assert selection_score(base, edited) == pytest.approx(-0.9 + 0.1)
    same = {"memorized_fraction": 0.5, "perplexity": 20.0}
    assert selection_score(base, same) == pytest.approx(NO_CHANGE_PENALTY)
    forced = selection_score(
        {**base, "accuracy/x": 0.5}, {**edited, "accuracy/x": 0.5}, utility="perplexity"
    )
    assert forced == pytest.approx(-0.8)


def test_auto_scores_a_text_run_by_perplexity() -> None:
    # a TinyMem language run's metrics (evaluate_utility on its one "text" test set) carry
    # accuracy/text; the paper scores language models by perplexity, so a run that removes all
    # memorization while perplexity rises tenfold at unchanged accuracy must not score -1
    base = {
        "memorized_fraction": 0.5,
        "accuracy/text": 0.4,
        "perplexity/text": 10.0,
        "accuracy": 0.4,
        "perplexity": 10.0,
    }
    edited = {**base, "memorized_fraction": 0.0, "perplexity/text": 100.0, "perplexity": 100.0}
    assert selection_score(base, edited) == pytest.approx(-1 + 9)
    assert selection_score(base, edited, utility="accuracy") == pytest.approx(-1.0)
    # math runs (one accuracy per task) keep the accuracy form
    math_base = {**base, "accuracy/+-2": 0.8, "accuracy/*-2": 0.5}
    del math_base["accuracy/text"]
    math_edited = {**math_base, "memorized_fraction": 0.0, "accuracy/+-2": 0.4}
    assert selection_score(math_base, math_edited) == pytest.approx(-1 + 0.25)


def test_nothing_memorized_gives_nan_and_bad_input_raises() -> None:
    assert math.isnan(
        selection_score(
            {"memorized_fraction": 0.0, "perplexity": 1.0},
            {"memorized_fraction": 0.0, "perplexity": 1.0},
        )
    )
    with pytest.raises(ValueError, match="utility"):
        selection_score({"memorized_fraction": 1.0}, {}, utility="loss")
    with pytest.raises(ValueError, match="accuracy/a"):
        selection_score({"memorized_fraction": 1.0, "accuracy/a": 1.0}, {"memorized_fraction": 0.0})


def test_rank_and_best_per_method() -> None:
    rows = [
        {"method": "a", "score": 0.1},
        {"method": "b", "score": math.nan},
        {"method": "a", "score": -0.5},
        {"method": "c", "score": -0.2},
    ]
    assert [r["score"] for r in rank(rows)][:3] == [-0.5, -0.2, 0.1]
    best = best_per(rows)
    assert [(r["method"], r["score"]) for r in best][:2] == [("a", -0.5), ("c", -0.2)]
    assert best[-1]["method"] == "b"


def _row(name: str, mem: float, acc: float, **extra) -> dict:
    return {"name": name, "memorized_fraction": mem, "accuracy": acc, **extra}


def test_pareto_front_keeps_only_undominated_rows() -> None:
    rows = [
        _row("a", 0.0, 0.80),  # lowest memorization
        _row("b", 0.1, 0.90),  # better accuracy at higher memorization
        _row("c", 0.1, 0.85),  # dominated by b (same x, worse y)
        _row("d", 0.2, 0.88),  # dominated by b (worse on both)
        _row("e", 0.5, 0.95),  # best accuracy
        _row("f", 0.0, 0.70),  # dominated by a
        _row("g", 0.1, 0.90),  # exact duplicate of b: kept
    ]
    front = pareto_front(rows, "memorized_fraction", "accuracy", y_higher_is_better=True)
    assert [r["name"] for r in front] == ["a", "b", "g", "e"]
    assert front[0] is rows[0]  # the same objects, not copies


def test_pareto_front_lower_is_better_and_failed_rows() -> None:
    rows = [
        {"name": "a", "memorized_fraction": 0.0, "perplexity": 3.0},
        {"name": "b", "memorized_fraction": 0.2, "perplexity": 2.0},
        {"name": "c", "memorized_fraction": 0.3, "perplexity": 2.5},  # dominated by b
        {"name": "d", "memorized_fraction": 0.0, "perplexity": math.nan},  # failed metric
        {"name": "e", "method": "x", "error": "diverged", "score": math.nan},  # no metrics
        {"name": "f", "memorized_fraction": 0.0, "perplexity": 1.0, "error": "diverged"},
    ]
    front = pareto_front(rows, "memorized_fraction", "perplexity", y_higher_is_better=False)
    assert [r["name"] for r in front] == ["a", "b"]
    # read as "higher is better", a (lowest x, highest y) dominates every other row
    flipped = pareto_front(rows, "memorized_fraction", "perplexity", y_higher_is_better=True)
    assert [r["name"] for r in flipped] == ["a"]
    assert pareto_front([], "memorized_fraction", "accuracy") == []
