"""``unmemorize reproduce tinymem``: the TinyMem paper's experiment grid at cpu-mini scale.

Sakarvadia et al. 2024 (arXiv 2410.02159) study memorization mitigation along three axes: the task
(math: increment and multiply sequences; language: text), how memorization is planted (noise:
random corruption of some training sequences; backdoor: a trigger followed by a fixed response)
and how often a memorized sequence is seen (duplication groups 1, 10, 100 times per epoch). Each
*cell* of that grid here is one cpu-mini base model per seed with every method of the ``demo``
space run on it (:func:`~.seeds.run_tinymem_seeds`: configurations chosen on validation rows,
reported with 95% intervals over seeds).

Beside each cell the report states the paper's qualitative finding for it and whether it holds
here, judged from the intervals (:func:`findings`):

* math cells: "BalancedSubnet is the best unlearning method" (the paper's Figure 3: among the
  localization methods, neuron- and weight-level, BalancedSubnet removes the most memorization at
  the smallest cost). It *holds* when BalancedSubnet has the best mean score among the unlearning
  methods and its paired score difference to every other one excludes 0; it is *within noise
  against* the methods whose paired interval includes 0 when it is best by mean only; else it
  *does not hold*.
* language noise cell: "memorization rises with duplication" (the paper's Figure 2): the base
  models' memorized share per duplication group, mean over seeds; it holds when the mean rises
  from each group to the next more duplicated one.

Resumable: each cell is a directory of :func:`~.seeds.run_tinymem_seeds` with ``resume=True``, so
a rerun reuses every finished seed of the same configuration (and resumes an interrupted training).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a task and a variant (and, for text, the duplication groups)."""

    name: str
    task: str
    variant: str
    finding: str
    overrides: tuple[str, ...] = ()


#: The paper's experiment axes at cpu-mini scale, in the order the report shows them.
CELLS: tuple[Cell, ...] = (
    Cell("increment-noise", "increment", "noise", "balanced_subnet_best"),
    Cell("increment-backdoor", "increment", "backdoor", "balanced_subnet_best"),
    Cell("mult-noise", "mult", "noise", "balanced_subnet_best"),
    Cell("mult-backdoor", "mult", "backdoor", "balanced_subnet_best"),
    Cell("text-noise", "text", "noise", "duplication_trend"),
    Cell("text-backdoor", "text", "backdoor", "balanced_subnet_best"),
)

#: The families the paper calls unlearning (localize-then-edit) methods.
UNLEARNING_FAMILIES = ("neuron", "weight")

FINDINGS = {
    "balanced_subnet_best": "BalancedSubnet is the best unlearning (neuron/weight) method",
    "duplication_trend": "memorization rises with duplication (1x < 10x < 100x)",
}


def get_cells(names: str | Sequence[str] | None) -> list[Cell]:
    """The cells named (comma-separated or a list; default: all), in grid order."""
    from ..seeds import select_cells

    return select_cells(CELLS, names, "tinymem")


def findings(cell: Cell, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's finding for ``cell`` checked against its multi-seed ``summary``."""
    from ...methods import METHODS
    from ...metrics.intervals import paired_difference, t_interval

    out: dict[str, Any] = {"finding": FINDINGS[cell.finding]}
    if cell.finding == "duplication_trend":
        groups: dict[str, list[float]] = {}
        for entry in summary.get("per_seed", []):
            for copies, share in (
                entry.get("base_metrics", {}).get("memorized_per_group") or {}
            ).items():
                groups.setdefault(copies, []).append(share)
        order = sorted(groups, key=int)
        per_group = {g: t_interval(groups[g]) for g in order}
        means = [per_group[g]["mean"] for g in order]
        rising = len(means) > 1 and all(a < b for a, b in zip(means, means[1:], strict=False))
        out.update(
            {
                "per_group": per_group,
                "verdict": "holds" if rising else "does not hold",
                "detail": ", ".join(
                    f"{g}x {per_group[g]['mean']:.0%}"
                    for g in order
                    if per_group[g]["mean"] is not None
                ),
            }
        )
        return out
    methods = summary.get("methods", {})
    unlearning = [
        n
        for n in methods
        if n in METHODS.names()
        and METHODS.get(n).family in UNLEARNING_FAMILIES
        and methods[n].get("score", {}).get("mean") is not None
    ]
    if "balanced_subnet" not in unlearning or len(unlearning) < 2:
        out.update(
            {
                "verdict": "not measured",
                "detail": "needs balanced_subnet and another unlearning method with results",
            }
        )
        return out
    best = unlearning[0]
    seeds = summary.get("per_seed", [])

    def scores(name: str) -> list:
        return [e["methods"].get(name, {}).get("score") for e in seeds]

    # BalancedSubnet against every other unlearning method, paired over the same base models
    pairs = {
        other: paired_difference(scores("balanced_subnet"), scores(other))
        for other in unlearning
        if other != "balanced_subnet"
    }
    clear = [o for o, p in pairs.items() if p["excludes_zero"] and p["mean_difference"] < 0]
    noisy = [o for o in pairs if o not in clear]
    if best != "balanced_subnet":
        verdict = "does not hold"
    elif not noisy:
        verdict = "holds"
    else:
        verdict = (
            f"within noise against {', '.join(noisy)} (best by mean; paired CI excludes 0 against "
            f"{len(clear)} of {len(pairs)})"
        )
    other = unlearning[1] if best == "balanced_subnet" else best
    out.update(
        {
            "best_unlearning": best,
            "compared_with": other,
            "paired_score_difference": pairs.get(other),
            "paired": pairs,
            "verdict": verdict,
            "detail": (
                f"best unlearning method by mean score: {best}; balanced_subnet - {other}: "
                f"{_ci(pairs[other])}"
            ),
        }
    )
    return out


def _ci(pair: Mapping[str, Any]) -> str:
    if pair.get("mean_difference") is None:
        return "no common seed"
    if pair.get("ci95_low") is None:
        return f"{pair['mean_difference']:+.3f} (one seed)"
    return f"{pair['mean_difference']:+.3f} [{pair['ci95_low']:+.3f}, {pair['ci95_high']:+.3f}]"


def reproduce_tinymem(
    out: str | Path,
    *,
    seeds: int = 3,
    cells: str | Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    preset: str = "cpu-mini",
    overrides: Sequence[str] = (),
    settings: str | None = None,
    progress: bool = True,
    command: dict | None = None,
) -> dict[str, Any]:
    """Run every chosen cell over ``seeds`` seeds into ``out/<cell>/`` and write the side-by-side
    ``out/summary.json`` and ``out/REPORT.md``; finished seeds are reused.

    ``overrides`` (``key=value``) apply to every cell's base model, after the cell's own.
    """
    from .seeds import run_tinymem_seeds

    out = Path(out)
    chosen = get_cells(cells)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for cell in chosen:
        start = time.perf_counter()
        summary = run_tinymem_seeds(
            out / cell.name,
            list(range(seeds)),
            preset=preset,
            task=cell.task,
            variant=cell.variant,
            overrides=[*cell.overrides, *overrides],
            methods=methods,
            settings=settings,
            progress=progress,
            resume=True,
            label=cell.name,
        )
        results[cell.name] = {
            "task": cell.task,
            "variant": cell.variant,
            "seconds": time.perf_counter() - start,
            # the cell's compute: every seed's own time, also when this invocation reused it
            "compute_seconds": sum(e.get("seconds") or 0.0 for e in summary["per_seed"]),
            "n_seeds_used": summary["n_seeds"],
            "baseline": summary["baseline"],
            "top": _top(summary),
            "check": findings(cell, summary),
        }
    from ..seeds import write_study

    return write_study(
        out,
        "tinymem",
        "Sakarvadia et al. 2024, arXiv 2410.02159",
        results,
        format_reproduce_report,
        seconds=time.perf_counter() - t0,
        command=command,
        n_seeds=seeds,
        preset=preset,
        overrides=list(overrides),
        settings=settings or "default",
    )


def _top(summary: Mapping[str, Any], n: int = 3) -> list[dict[str, Any]]:
    return [
        {"method": name, "score": m.get("score"), "still": m.get("still_memorized_fraction")}
        for name, m in list(summary.get("methods", {}).items())[:n]
    ]


def format_reproduce_report(record: Mapping[str, Any]) -> str:
    """The cells side by side (Markdown): base memorization, the top methods, the paper's finding."""
    from ..seeds import interval_text

    def pct(x: float) -> str:
        return f"{x:.0%}"

    def num(x: float) -> str:
        return f"{x:.2f}"

    lines = [
        "# TinyMem reproduction (cpu-mini scale)",
        "",
        f"{record['paper']}; {record['n_seeds']} seeds per cell, settings {record['settings']}; "
        "each method's configuration chosen on validation rows, reported on disjoint test rows; "
        "mean [95% CI] over seeds (seeds where the base model memorized nothing are left out: "
        "'seeds used'). Compute per cell: the sum of its seeds' times (training included), "
        "also where this invocation reused finished seeds.",
        "",
        "| cell | seeds used | compute | memorized before | top methods by mean score (score; "
        "still memorized) | paper's finding | here |",
        "|:---|---:|---:|---:|:---|:---|:---|",
    ]
    for name, cell in record["cells"].items():
        top = "<br>".join(
            f"{t['method']} {interval_text(t['score'], num)}; {interval_text(t['still'], pct)}"
            for t in cell["top"]
        )
        check = cell["check"]
        lines.append(
            f"| {name} | {cell.get('n_seeds_used', '?')} of {record['n_seeds']} | "
            f"{cell.get('compute_seconds', 0) / 60:.0f} min | "
            f"{interval_text(cell['baseline'].get('memorized_fraction'), pct)} | "
            f"{top} | {check['finding']} | **{check['verdict']}**: {check.get('detail', '')} |"
        )
    lines += [
        "",
        "Per cell: `unmemorize report OUT/<cell>` (every method with intervals, paired "
        "comparisons, error-bar figures).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["CELLS", "Cell", "findings", "format_reproduce_report", "get_cells", "reproduce_tinymem"]
