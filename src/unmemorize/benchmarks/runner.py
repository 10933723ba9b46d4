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
    from .settings import Settings

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
    on_result: Callable[[dict[str, Any], UnlearnResult], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_method` for every ``(method name, options)`` job; one row each, in job order.

    Methods are built (and their options checked) before the first one runs, so a typo fails
    before any work. ``on_result(row, result)`` sees every edit that did not diverge (e.g. to
    keep the best edited model of each method for an audit); the loop keeps none.
    """
    from tqdm.auto import tqdm

    from ..methods import build_method

    built = [(build_method(name, options), options) for name, options in jobs]
    rows: list[dict[str, Any]] = []
    bar = tqdm(built, desc=desc, unit="run", disable=not progress)
    for method, options in bar:
        bar.set_postfix_str(method.name)
        row, result = run_method(method, model, data, evaluate, score=score, options=options)
        rows.append(row)
        if on_result is not None and result is not None:
            on_result(row, result)
    return rows


Auditor = Callable[["PreTrainedModel", Any, "Mapping[str, Any] | None"], dict[str, Any]]
"""``(model, prepared, row) -> audit summary``: audits an edited model (``row`` is its run row;
None for the unedited model). Built above the benchmarks (:mod:`unmemorize.audit`) and handed
down, so that benchmarks never import the audit."""


class BestEdits:
    """An ``on_result`` for :func:`run_jobs` that keeps the best edited model of each method.

    "Best" is :func:`unmemorize.metrics.ranking.best_per`'s rule on the rows' ``score`` (lower
    first, NaN last, the first on ties), so :meth:`model` of a row ``best_per`` picks is that
    row's edited model. Only one model per method is held at a time.
    """

    def __init__(self) -> None:
        self._best: dict[str, tuple[Mapping[str, Any], PreTrainedModel]] = {}

    @staticmethod
    def _key(row: Mapping[str, Any]) -> tuple[bool, float]:
        value = row.get("score", math.nan)
        bad = value is None or math.isnan(value)
        return bad, 0.0 if bad else value

    def __call__(self, row: Mapping[str, Any], result: UnlearnResult) -> None:
        held = self._best.get(row["method"])
        if held is None or self._key(row) < self._key(held[0]):
            self._best[row["method"]] = (row, result.model)

    def model(self, row: Mapping[str, Any]) -> PreTrainedModel | None:
        """The edited model of ``row`` when it is the kept best of its method, else None."""
        held = self._best.get(row["method"])
        return held[1] if held is not None and held[0] is row else None


def grid_jobs(
    space: Mapping[str, Any],
    methods: Sequence[str] | None = None,
    settings: Settings | None = None,
) -> list[Job]:
    """The jobs of a grid over ``space`` (``{method: spec}``, :mod:`unmemorize.benchmarks.spaces`).

    ``methods`` restricts and orders the methods; a method the space does not name runs once,
    with its defaults. ``settings`` (:mod:`unmemorize.benchmarks.settings`) put their method
    defaults under every point: the one place a benchmark's ``--settings`` reach the methods.
    """
    from .spaces import grid_points

    names = list(space) if methods is None else list(methods)
    jobs: list[Job] = []
    for name in names:
        for point in grid_points(space.get(name, {})):
            jobs.append((name, point if settings is None else settings.method_options(name, point)))
    return jobs


__all__ = [
    "Auditor",
    "BestEdits",
    "Evaluator",
    "Job",
    "Scorer",
    "grid_jobs",
    "overrides_list",
    "run_jobs",
    "run_method",
]
