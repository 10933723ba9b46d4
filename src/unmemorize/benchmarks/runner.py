"""The one apply -> evaluate -> row loop, used by ``demo``, ``restor``, every sweep trial and ``unlearn``.

A *row* is one method configuration applied to one prepared model::

    {"method", "family", "overrides", "config",             # what ran
     <every metric the evaluator returned>,                 # how the edited model does
     "seconds", "changed_fraction", "changed_unit",         # what the method did
     "score"}                                               # the benchmark's score (lower better)

A method that diverges (NaN/inf loss or weights) gives a row with ``"error"`` (and a NaN score)
instead of metrics; nothing else stops the loop.

With an active tracking run (:mod:`unmemorize.tracking`), each run's per-step training losses
(``UnlearnResult.losses``) are logged as ``<label>/loss`` after ``apply`` (methods never log
themselves) and the row's numbers as ``<label>/<metric>``, ``label`` naming the method and its
options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import tracking

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..methods import Method, UnlearnData, UnlearnResult

log = logging.getLogger(__name__)

Evaluator = Callable[["PreTrainedModel"], dict[str, Any]]
"""model -> metrics of that model."""
Scorer = Callable[[Mapping[str, Any]], "float | None"]
"""metrics of an edited model -> its score (lower is better)."""

#: A job: a method name and its options (``key=value`` strings or a ``{key: value}`` dict).
Job = tuple[str, "Sequence[str] | Mapping[str, Any]"]


def overrides_list(options: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """``key=value`` strings of a job's options, as recorded in every row."""
    if isinstance(options, Mapping):
        from ..config import format_overrides

        return format_overrides(options)
    return list(options)


def run_method(
    method: Method,
    model: PreTrainedModel,
    data: UnlearnData,
    evaluate: Evaluator,
    *,
    score: Scorer | None = None,
    options: Sequence[str] | Mapping[str, Any] = (),
    progress: bool = False,
) -> tuple[dict[str, Any], UnlearnResult | None]:
    """Apply ``method`` to ``model`` and evaluate the edit; return ``(row, result)``.

    ``result`` (the edited model and the method's log) is None when the method diverged; the
    row then carries ``"error"`` and a NaN ``"score"``.
    """
    from ..methods import MethodDivergedError

    row: dict[str, Any] = {
        "method": method.name,
        "family": method.family,
        "overrides": overrides_list(options),
        "config": dataclasses.asdict(method.config),
    }
    try:
        result = method.apply(model, data, progress=progress)
    except MethodDivergedError as err:
        log.warning("%s %s diverged: %s", method.name, row["overrides"], err)
        return {**row, "error": str(err), "score": math.nan}, None
    metrics = evaluate(result.model)
    row.update(metrics)
    row.update(
        {
            "seconds": result.seconds,
            "changed_fraction": result.changed_fraction,
            "changed_unit": result.changed_unit,
        }
    )
    if score is not None:
        value = score(metrics)
        row["score"] = math.nan if value is None else value
    if tracking.active():
        label = tracking.run_label(method.name, row["overrides"])
        tracking.log_curve(f"{label}/loss", result.losses)
        tracking.log_scalars(
            {k: v for k, v in row.items() if k != "config"}, step=len(result.losses), prefix=label
        )
    return row, result


def run_jobs(
    jobs: Iterable[Job],
    model: PreTrainedModel,
    data: UnlearnData,
    evaluate: Evaluator,
    *,
    score: Scorer | None = None,
    progress: bool = True,
    desc: str = "methods",
) -> list[dict[str, Any]]:
    """:func:`run_method` for every ``(method name, options)`` job; one row each, in job order.

    Methods are built (and their options checked) before the first one runs, so a typo fails
    before any work.
    """
    from tqdm.auto import tqdm

    from ..methods import build_method

    built = [(build_method(name, options), options) for name, options in jobs]
    rows: list[dict[str, Any]] = []
    bar = tqdm(built, desc=desc, unit="run", disable=not progress)
    for method, options in bar:
        bar.set_postfix_str(method.name)
        row, _result = run_method(method, model, data, evaluate, score=score, options=options)
        rows.append(row)
    return rows


def grid_jobs(space: Mapping[str, Any], methods: Sequence[str] | None = None) -> list[Job]:
    """The jobs of a grid over ``space`` (``{method: spec}``, :mod:`unmemorize.benchmarks.spaces`).

    ``methods`` restricts and orders the methods; a method the space does not name runs once,
    with its defaults.
    """
    from .spaces import grid_points

    names = list(space) if methods is None else list(methods)
    return [(name, point) for name in names for point in grid_points(space.get(name, {}))]


__all__ = ["Evaluator", "Job", "Scorer", "grid_jobs", "overrides_list", "run_jobs", "run_method"]
