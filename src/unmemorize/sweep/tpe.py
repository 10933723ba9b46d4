"""Bayesian search (TPE, through Optuna) over a method's search space.

Optuna's Tree-structured Parzen Estimator (Bergstra et al. 2011) proposes each method's next
configuration from the scores of the finished ones. The results store stays the single source of
truth: each study lives in memory and is primed, on every (re)start, with the trials the store
already holds, so a resumed sweep continues where the TPE left off, and a configuration TPE
proposes twice is answered from the store instead of being run again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..benchmarks.spaces import is_range, option_values, space_size, trial_key
from .store import TrialRecord

if TYPE_CHECKING:
    from .run import SweepSpec

DEFAULT_TPE_TRIALS = 10
"""Trials per method when ``--trials`` is not given."""


class TpeProposer:
    """Optuna TPE per method, primed with the trials already in the store."""

    def __init__(self, spec: SweepSpec, records: list[TrialRecord]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.budget = spec.trials or DEFAULT_TPE_TRIALS
        self.dists = {m: _distributions(spec.space[m]) for m in spec.methods}
        self.sizes = {m: space_size(spec.space[m]) for m in spec.methods}
        self.studies = {}
        for i, method in enumerate(spec.methods):
            sampler = optuna.samplers.TPESampler(
                seed=spec.seed + i, n_startup_trials=max(1, min(10, self.budget // 3))
            )
            self.studies[method] = optuna.create_study(direction="minimize", sampler=sampler)
        self.known: dict[str, TrialRecord] = {r.key: r for r in records}
        for r in records:
            if r.status == "complete":
                self._add_finished(r.method, r.params, r.score)
        self.open_trials: dict[str, Any] = {}
        self.exhausted: set[str] = set()

    def _add_finished(self, method: str, params: dict, score: float | None) -> None:
        if not self.dists[method]:
            return
        ok = score is not None and math.isfinite(score)
        self.studies[method].add_trial(
            self.optuna.trial.create_trial(
                params=params,
                distributions=self.dists[method],
                value=score if ok else None,
                state=self.optuna.trial.TrialState.COMPLETE
                if ok
                else self.optuna.trial.TrialState.FAIL,
            )
        )

    def propose(self, method: str, used: int) -> dict | None:
        """New params for ``method`` (None when its budget or space is spent)."""
        if used >= self.budget or method in self.exhausted:
            return None
        dists = self.dists[method]
        if not dists:  # nothing to search: the default config is the only point
            return {} if trial_key(method, {}) not in self.known else None
        study = self.studies[method]
        size = self.sizes[method]
        for _ in range(50):
            if size is not None and len(self._keys_of(method)) >= size:
                break
            trial = study.ask(dists)
            params = {k: _plain(v) for k, v in trial.params.items()}
            key = trial_key(method, params)
            record = self.known.get(key)
            if record is None:
                self.open_trials[key] = trial
                self.known[key] = TrialRecord(key, method, params, "running", 0, *[None] * 5)
                return params
            # a repeat: tell TPE the stored result (or that it is under way) and ask again
            ok = record.status == "complete" and record.score is not None
            state = self.optuna.trial.TrialState
            study.tell(
                trial, record.score if ok else None, state=state.COMPLETE if ok else state.PRUNED
            )
        self.exhausted.add(method)
        return None

    def _keys_of(self, method: str) -> list[str]:
        return [k for k, r in self.known.items() if r.method == method]

    def tell(self, method: str, key: str, params: dict, score: float | None) -> None:
        trial = self.open_trials.pop(key, None)
        if key in self.known:
            self.known[key].status = "complete" if score is not None else "failed"
            self.known[key].score = score
        if not self.dists[method]:
            return
        ok = score is not None and math.isfinite(score)
        state = self.optuna.trial.TrialState
        if trial is None:  # a requeued trial from an earlier run: add it as finished
            self._add_finished(method, params, score)
        else:
            self.studies[method].tell(
                trial, score if ok else None, state=state.COMPLETE if ok else state.FAIL
            )


def _distributions(options: dict[str, Any]) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, values in sorted(options.items()):
        if is_range(values):
            if values.get("int"):
                out[key] = IntDistribution(
                    int(values["low"]), int(values["high"]), log=bool(values.get("log"))
                )
            else:
                out[key] = FloatDistribution(
                    float(values["low"]), float(values["high"]), log=bool(values.get("log"))
                )
        else:
            out[key] = CategoricalDistribution(option_values(values))
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (from Optuna) -> Python scalars, so params hash and serialize stably."""
    return value.item() if hasattr(value, "item") else value
