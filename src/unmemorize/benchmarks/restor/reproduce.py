"""``unmemorize reproduce restor``: RESTOR's corruption levels over seeds, gradient and localization
methods side by side.

Rezaei et al. 2024 (arXiv 2411.00204) corrupt a model with documents that state wrong facts about
target people, mixed with k unrelated true facts per wrong one (level k), unlearn the documents,
and ask whether the clean answers come back (``recovery``). Their headline: most methods forget the
wrong facts without restoring the right ones, while NPO-style preference losses restore a large
share. RESTOR tried only gradient methods; TinyMem's localization methods (BalancedSubnet,
Durable, Subnet, Zero-out) and SSD's dampening run here on the same documents, which asks a
question neither paper asked: does editing a few units restore knowledge?

Cells: levels 0, 1, 2 on the whole documents, level 1 on the wrong-fact sentences only (RESTOR's
simplified, localized forget set), and level 1 under a shallower corruption (``level-1-shallow``:
how much knowledge is left to restore depends on how deep the corruption went). Each cell is
:func:`~.seeds.run_restor_seeds` with
``resume=True`` (finished seeds are reused). The findings checked per cell (:func:`findings`):

* "the best method recovers >= 0.5 of the corruption's damage": the best mean recovery, with its
  95% interval above 0, at <= 5 points of untargeted accuracy lost by the unlearning (corrupted
  model's untargeted accuracy minus the unlearned one's);
* "NPO restores more than GA": the paired difference of recovery, NPO - GA, over the seeds.

Both are *not measurable* when the corruption took less than :data:`MIN_DAMAGE` of target
accuracy (recovery divides by that damage), and the first when the best mean recovery exceeds
:data:`MAX_RECOVERY` (the models end above the clean ones: a general gain, not restoration).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: RESTOR's gradient methods, SSD, and the localization methods RESTOR did not try. Zero-out
#: scores its neurons on 32 of the forget documents (the RESTOR settings' ``max_rows``): on all
#: 480 it took 1,560 s of a 2,160 s seed on 2 CPU cores and recovered -0.02.
METHODS: tuple[str, ...] = (
    "ga",
    "grad_diff",
    "kl",
    "npo",
    "simnpo",
    "task_vector",
    "ssd",
    "balanced_subnet",
    "durable",
    "zero_out",
    "subnet",
)
#: The untargeted accuracy a method may lose (points) and still count as restoring.
MAX_UNTARGETED_LOSS = 0.05
RECOVERY_TARGET = 0.5
#: Recovery is a ratio over the corruption's damage (clean minus corrupted target accuracy, mean
#: over seeds); below this damage it is ill-conditioned: the paper settings' LoRA corruption
#: takes 8-14 points here, and a few answers then move recovery by whole units.
MIN_DAMAGE = 0.15
#: A mean recovery above this means the unlearned models end well above the clean ones: a
#: general gain (the retain term training the QA format; untargeted accuracy rises too), not the
#: clean answers coming back (measured under the paper settings: 1.6-2.2).
MAX_RECOVERY = 1.25


@dataclass(frozen=True)
class Cell:
    name: str
    level: int
    simplified: bool = False
    overrides: tuple[str, ...] = ()
    """Config overrides of the cell (before the command's own)."""
    note: str = ""
    """What the cell changes, for the report."""


CELLS: tuple[Cell, ...] = (
    Cell("level-0", 0),
    Cell("level-1", 1),
    Cell("level-2", 2),
    Cell("level-1-simplified", 1, simplified=True),
    Cell(
        "level-1-shallow",
        1,
        overrides=("corrupt.lr=1e-4",),
        note="level 1 with a shallower corruption (lr 1e-4 instead of 3e-4): the default "
        "corruption takes 47-62 points of target accuracy at level 1 here, RESTOR's 4-21 points on "
        "Llama-3-8B; whether the knowledge is still there to restore depends on that depth",
    ),
)


def get_cells(names: str | Sequence[str] | None) -> list[Cell]:
    """The cells named (comma-separated or a list; default: all), in order."""
    from ..seeds import select_cells

    return select_cells(CELLS, names, "restor")


def findings(summary: Mapping[str, Any]) -> dict[str, Any]:
    """RESTOR's targets checked against one cell's multi-seed summary."""
    from ...metrics.intervals import paired_difference

    methods = summary.get("methods", {})
    base = summary.get("baseline", {})
    clean = (base.get("clean_target_accuracy") or {}).get("mean")
    corrupted = (base.get("corrupted_target_accuracy") or {}).get("mean")
    damage = None if clean is None or corrupted is None else clean - corrupted
    ill_conditioned = damage is not None and damage < MIN_DAMAGE
    eligible = [
        (name, m)
        for name, m in methods.items()
        if (m.get("recovery") or {}).get("mean") is not None
        and ((m.get("untargeted_loss") or {}).get("mean") or 0.0) <= MAX_UNTARGETED_LOSS
    ]
    out: dict[str, Any] = {}
    if eligible:
        name, m = max(eligible, key=lambda item: item[1]["recovery"]["mean"])
        rec = m["recovery"]
        low = rec.get("ci95_low")
        holds = rec["mean"] >= RECOVERY_TARGET and low is not None and low > 0
        if ill_conditioned:
            verdict = (
                f"not measurable (the corruption took only {100 * damage:.0f} points of target "
                "accuracy: recovery is ill-conditioned)"
            )
        elif rec["mean"] > MAX_RECOVERY:
            verdict = (
                "not measurable (the unlearned models end above the clean ones: a general gain, "
                "not restoration)"
            )
        else:
            verdict = "holds" if holds else "does not hold"
        out["best_recovery"] = {
            "method": name,
            "recovery": rec,
            "untargeted_loss": m.get("untargeted_loss"),
            "verdict": verdict,
        }
    else:
        out["best_recovery"] = {"verdict": "does not hold", "method": None}
    out["damage"] = damage
    seeds = summary.get("per_seed", [])
    pair = paired_difference(
        [e["methods"].get("npo", {}).get("recovery") for e in seeds],
        [e["methods"].get("ga", {}).get("recovery") for e in seeds],
    )
    if pair["mean_difference"] is None:
        verdict = "not measured"
    elif ill_conditioned:
        verdict = "not measurable (too little damage)"
    elif pair["excludes_zero"]:
        verdict = "holds" if pair["mean_difference"] > 0 else "reversed (GA restores more)"
    else:
        verdict = "within noise"
    out["npo_vs_ga"] = {**pair, "verdict": verdict}
    return out


def reproduce_restor(
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
    """Every chosen cell over ``seeds`` worlds into ``out/<cell>/``; ``out/summary.json`` and
    ``out/REPORT.md`` put the cells side by side."""
    from .config import make_restor_config
    from .seeds import run_restor_seeds

    out = Path(out)
    chosen = get_cells(cells)
    names = list(methods or METHODS)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for cell in chosen:
        start = time.perf_counter()
        cfg = make_restor_config(
            preset,
            [*cell.overrides, *overrides],
            level=cell.level,
            simplified=cell.simplified,
            settings=settings,
        )
        summary = run_restor_seeds(
            out / cell.name,
            list(range(seeds)),
            cfg,
            methods=names,
            settings=settings,
            progress=progress,
            resume=True,
            label=cell.name,
            # one clean model per seed: every level of a seed starts from the same world
            clean_from=[out / c.name for c in CELLS if c.name != cell.name],
        )
        results[cell.name] = {
            "level": cell.level,
            "simplified": cell.simplified,
            "overrides": list(cell.overrides),
            "note": cell.note,
            "seconds": time.perf_counter() - start,
            # the cell's compute: every seed's own time, also when this invocation reused it
            "compute_seconds": sum(e.get("seconds") or 0.0 for e in summary["per_seed"]),
            "n_seeds_used": summary["n_seeds"],
            "baseline": summary["baseline"],
            "methods": {
                n: {k: m.get(k) for k in ("recovery", "untargeted_loss", "target_accuracy")}
                for n, m in summary["methods"].items()
            },
            "check": findings(summary),
        }
    from ..seeds import write_study

    return write_study(
        out,
        "restor",
        "Rezaei et al. 2024, arXiv 2411.00204",
        results,
        format_reproduce_report,
        seconds=time.perf_counter() - t0,
        command=command,
        n_seeds=seeds,
        preset=preset,
        overrides=list(overrides),
        settings=settings or "default",
    )


def format_reproduce_report(record: Mapping[str, Any]) -> str:
    """Per cell and method: recovery and untargeted loss (mean [95% CI]); the findings checked."""
    from ..seeds import interval_text

    def signed(x: float) -> str:
        return f"{x:+.2f}"

    def pts(x: float) -> str:
        return f"{100 * x:+.1f}"

    cells = record["cells"]
    names: list[str] = []
    for cell in cells.values():
        names += [n for n in cell["methods"] if n not in names]
    lines = [
        "# RESTOR reproduction (synthetic world, cpu-mini scale)",
        "",
        f"{record['paper']}; {record['n_seeds']} seeds (worlds) per cell, settings "
        f"{record['settings']}; configuration chosen on validation target facts; mean [95% CI] "
        "over seeds. Compute per cell (the sum of its seeds' times, also where this invocation "
        "reused finished seeds): "
        + ", ".join(f"{n} {c.get('compute_seconds', 0) / 60:.0f} min" for n, c in cells.items())
        + ".",
        "",
        "Recovery (1 = the clean answers are back, 0 = as corrupted); in brackets the change of "
        "untargeted accuracy from the corrupted model (points; the unlearning's collateral "
        "damage).",
        "",
        "| method | " + " | ".join(cells) + " |",
        "|:---|" + "---:|" * len(cells),
    ]
    for name in names:
        cols = []
        for cell in cells.values():
            m = cell["methods"].get(name)
            if not m:
                cols.append("–")
                continue
            loss = (m.get("untargeted_loss") or {}).get("mean")
            cols.append(
                f"{interval_text(m.get('recovery'), signed)}"
                + ("" if loss is None else f" ({pts(-loss)})")
            )
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    lines += ["", "| cell | best recovery at <= 5 points untargeted loss | NPO - GA recovery |",
              "|:---|:---|:---|"]  # fmt: skip
    for cell_name, cell in cells.items():
        best = cell["check"]["best_recovery"]
        pair = cell["check"]["npo_vs_ga"]
        best_text = (
            f"{best['method']} {interval_text(best['recovery'], signed)}: "
            f"**{best['verdict']}** (target >= {RECOVERY_TARGET}, CI above 0)"
            if best.get("method")
            else "**does not hold**: no method within the untargeted-loss budget"
        )
        pair_text = (
            "–"
            if pair["mean_difference"] is None
            else f"{pair['mean_difference']:+.2f}"
            + (
                f" [{pair['ci95_low']:+.2f}, {pair['ci95_high']:+.2f}]"
                if pair["ci95_low"] is not None
                else ""
            )
            + f": **{pair['verdict']}**"
        )
        lines.append(f"| {cell_name} | {best_text} | {pair_text} |")
    notes = [f"- `{n}`: {c['note']}" for n, c in cells.items() if c.get("note")]
    if notes:
        lines += ["", *notes]
    lines += ["", "Per cell: `unmemorize report OUT/<cell>`.", ""]
    return "\n".join(lines)


__all__ = [
    "CELLS",
    "METHODS",
    "findings",
    "format_reproduce_report",
    "get_cells",
    "reproduce_restor",
]
