"""Error bars: 95% confidence intervals across seeds, within a seed, and for paired comparisons.

Three intervals, each for one question a results table must answer:

* **across seeds** (:func:`t_interval`): the seed is the unit of replication (data, init and order
  all change with it), so the mean over N seeds gets Student's t interval
  ``mean ± t_{0.975, N-1} · sd / sqrt(N)``; with N = 1 there is no interval (the bounds are None).
* **within a seed** (:func:`bootstrap_proportion`): a share of rows (memorized sequences, answered
  facts) varies with which rows happened to be drawn; the percentile bootstrap over rows of a 0/1
  outcome resamples ``Binomial(n, k/n) / n``, so the counts suffice (no per-row verdicts needed).
* **paired** (:func:`paired_difference`): two methods run on the same N base models differ per seed
  by ``d_s = a_s - b_s``; the t interval of the mean difference is much tighter than comparing the
  two marginal intervals, and "A beats B" is a claim only when it excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (standard tables).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30 degrees of freedom, then the Cornish-Fisher expansion
    ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)`` (within 1e-4 above 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _finite(values: Sequence[Any]) -> list[float]:
    return [
        float(v)
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def t_interval(values: Sequence[Any]) -> dict[str, Any]:
    """Mean and 95% t interval of per-seed values (non-finite or missing values are left out).

    Returns:
        ``{"mean", "ci95_low", "ci95_high", "n_seeds", "sd"}``; the bounds and ``sd`` are None with
        fewer than two finite values, ``mean`` is None with none.
    """
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return {"mean": None, "ci95_low": None, "ci95_high": None, "n_seeds": 0, "sd": None}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "ci95_low": None, "ci95_high": None, "n_seeds": 1, "sd": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n_seeds": n, "sd": sd}


def bootstrap_proportion(
    k: int, n: int, *, n_resamples: int = 4000, seed: int = 0
) -> dict[str, float | int | None]:
    """Percentile-bootstrap 95% interval of a share ``k / n`` of 0/1 rows.

    Resampling n rows with replacement from k ones and n - k zeros draws ``Binomial(n, k/n)`` ones,
    so this is the row bootstrap computed from the counts.

    Returns:
        ``{"value", "boot95_low", "boot95_high", "n_rows"}`` (None bounds when ``n`` is 0).
    """
    import numpy as np

    if n <= 0:
        return {"value": None, "boot95_low": None, "boot95_high": None, "n_rows": 0}
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n], got k={k}, n={n}")
    draws = np.random.default_rng(seed).binomial(n, k / n, size=n_resamples) / n
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"value": k / n, "boot95_low": float(low), "boot95_high": float(high), "n_rows": n}


def paired_difference(a: Sequence[Any], b: Sequence[Any]) -> dict[str, Any]:
    """Mean and 95% t interval of ``a_s - b_s`` over the seeds where both are finite.

    Returns:
        ``{"mean_difference", "ci95_low", "ci95_high", "n_seeds", "excludes_zero"}``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need one per seed each, got {len(a)} and {len(b)}")
    diffs = [
        float(x) - float(y) for x, y in zip(a, b, strict=True) if _finite([x]) and _finite([y])
    ]
    ci = t_interval(diffs)
    low, high = ci["ci95_low"], ci["ci95_high"]
    return {
        "mean_difference": ci["mean"],
        "ci95_low": low,
        "ci95_high": high,
        "n_seeds": ci["n_seeds"],
        "excludes_zero": low is not None and (low > 0 or high < 0),
    }


def aggregate_seeds(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    shares: Sequence[str] = (),
) -> dict[str, dict]:
    """``{key: t_interval(...) + {"values": per-seed values}}`` for each numeric ``key`` of the
    per-seed ``rows`` (one mapping per seed; a seed without the key contributes None).

    The interval of a key named in ``shares`` (or starting with one of them and ``/``: a share of
    rows such as ``accuracy/increment``) is clipped to [0, 1], the range of a share: with few
    seeds the symmetric t interval otherwise reaches past it.
    """
    out: dict[str, dict] = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if not _finite(values):
            continue
        ci = t_interval(values)
        if ci["ci95_low"] is not None and (key in shares or key.split("/", 1)[0] in shares):
            ci["ci95_low"] = max(0.0, ci["ci95_low"])
            ci["ci95_high"] = min(1.0, ci["ci95_high"])
        out[key] = {**ci, "values": values}
    return out


__all__ = [
    "aggregate_seeds",
    "bootstrap_proportion",
    "paired_difference",
    "t_interval",
    "t_quantile_975",
]
