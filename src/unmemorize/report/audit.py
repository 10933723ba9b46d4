"""The removal card: what an audit (``audit.json``, :mod:`unmemorize.audit`) found, as tables.

One card per audited model: what returns under relearning, quantization and sampling, and how
well membership inference still tells the forget rows from non-members. A demo or sweep run with
``--audit`` gets one table with a line per method. Generic: it reads only ``audit.json`` and the
per-run audit summaries (:func:`unmemorize.audit.pipeline.audit_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..render.model import Section, Table, num, pct

HOW_TO_READ = (
    "How to read the removal card: 'memorized' is today's test (greedy decoding from the clean "
    "prefix reproduces the suffix). A removal holds when the attacks find nothing either: "
    "'returns after relearning' should be 0% (a large share means the rows were hidden and come "
    "back after a few fine-tuning steps), the quantized models should memorize no more than the "
    "edited one, 'discoverable by sampling' should stay near 0%, and each MIA AUC should be near "
    "0.5 (a model that never saw the rows); near 1 the rows still look trained on. PrivLeak near "
    "0 = as private as the reference model, > 0 leaks, < 0 over-unlearned."
)


def _get(audit: Mapping[str, Any], section: str, key: str) -> Any:
    part = audit.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def removal_tables(audit: Mapping[str, Any]) -> list[Table]:
    """The card of one ``audit.json``: extraction, attacks, membership inference (checks that
    did not run are left out)."""
    tables = []
    rows = []
    if isinstance(audit.get("exact"), Mapping):
        rows.append(["memorized (greedy, exact)", pct(_get(audit, "exact", "memorized_fraction"))])
        if _get(audit, "exact", "original_memorized_fraction") is not None:
            rows.append(
                [
                    "memorized by the original model",
                    pct(_get(audit, "exact", "original_memorized_fraction")),
                ]
            )
    if isinstance(audit.get("partial"), Mapping):
        rows.append(
            ["suffix tokens reproduced (teacher-forced)",
             pct(_get(audit, "partial", "token_match_fraction"))]
        )  # fmt: skip
        rows.append(
            ["extraction strength (mean)", num(_get(audit, "partial", "extraction_strength"))]
        )
    if isinstance(audit.get("sampled"), Mapping):
        n = _get(audit, "sampled", "n")
        rows.append(
            [
                f"discoverable by sampling (n={n})",
                pct(_get(audit, "sampled", "discoverable_fraction")),
            ]
        )
        rows.append(
            ["P(one sample reproduces), mean", num(_get(audit, "sampled", "p_extract_mean"), 4)]
        )
    if rows:
        tables.append(
            Table("Removal card: extraction (% of forget rows)", ["figure", "value"], rows)
        )
    attack_rows = []
    relearn = audit.get("relearn")
    if isinstance(relearn, Mapping):
        config = relearn.get("config") or {}
        lrs = ",".join(f"{lr:g}" for lr in config.get("lrs", []))
        steps = config.get("steps")
        worst = relearn.get("worst_lr") or {}
        for attack, label in (("forget_half", "relearning on half the forget set (other half)"),
                              ("benign", "relearning on benign retain rows")):  # fmt: skip
            value = relearn.get(f"{attack}_returned_fraction")
            note = relearn.get(f"skipped_{attack}") or (
                f"{steps} steps, worst lr {worst.get(attack):g} of {lrs}"
                if worst.get(attack) is not None
                else ""
            )
            attack_rows.append([label, pct(value), note])
    quant = audit.get("quantization")
    if isinstance(quant, Mapping):
        for dtype, value in quant.items():
            if dtype != "seconds":
                attack_rows.append(
                    [
                        f"{dtype} quantization (memorized)",
                        pct(value),
                        "RTN, per channel" if dtype.startswith("int") else "round to format",
                    ]
                )
    if attack_rows:
        tables.append(
            Table(
                "Removal card: attacks (% of the originally memorized rows that return; "
                "quantization: % memorized)",
                ["attack", "%", "setting"],
                attack_rows,
                text_columns=frozenset({0, 2}),
            )
        )
    mia = audit.get("mia")
    if isinstance(mia, Mapping):
        auc = mia.get("auc") or {}
        ref = mia.get("reference_auc") or {}
        leak = mia.get("privleak_per_attack") or {}
        mia_rows = [
            [name, num(value), num(ref.get(name)), num(leak.get(name))]
            for name, value in auc.items()
        ]
        tables.append(
            Table(
                f"Removal card: membership inference ({mia.get('n_members')} forget rows vs "
                f"{mia.get('n_nonmembers')} non-members; ROC AUC, 0.5 = chance)",
                ["attack", "AUC", "reference AUC", "PrivLeak"],
                mia_rows,
            )
        )
    utility = audit.get("utility")
    if isinstance(utility, Mapping) and "skipped" not in utility:
        util_rows = [
            [k, num(v, 4)]
            for k, v in utility.items()
            if k not in ("rows", "seconds") and isinstance(v, (int, float))
        ]
        if util_rows:
            tables.append(
                Table(f"Utility ({utility.get('rows')} rows)", ["metric", "value"], util_rows)
            )
    return tables


def removal_section_parts(audit: Mapping[str, Any]) -> tuple[list[Table], list[str]]:
    """Tables and notes to append to a run's section when its directory holds an audit.json."""
    return removal_tables(audit), [HOW_TO_READ]


def methods_removal_table(
    methods: Mapping[str, Mapping[str, Any]], baseline: Mapping | None
) -> Table | None:
    """One line per method of a demo or sweep run with ``--audit`` (None without audits)."""
    audited = {
        name: row["audit"] for name, row in methods.items() if isinstance(row.get("audit"), Mapping)
    }
    if not audited:
        return None
    columns = [
        "method",
        "memorized",
        "returns after relearning",
        "forget half",
        "benign",
        "after quantization (max)",
        "discoverable by sampling",
        "MIA AUC (Min-K%)",
    ]

    def cells(name: str, s: Mapping[str, Any]) -> list[str]:
        return [
            name,
            pct(s.get("memorized_fraction")),
            pct(s.get("returned_fraction")),
            pct(s.get("forget_half_returned_fraction")),
            pct(s.get("benign_returned_fraction")),
            pct(s.get("quantization_max")),
            pct(s.get("discoverable_fraction")),
            num(s.get("min_k_auc")),
        ]

    rows, refs = [], frozenset()
    before = (baseline or {}).get("audit")
    if isinstance(before, Mapping):
        rows.append(cells("(before)", before))
        refs = frozenset({0})
    rows += [cells(name, s) for name, s in audited.items()]
    lrs = next((s.get("relearn_lrs") for s in audited.values() if s.get("relearn_lrs")), None)
    note = (
        "Removal card per method (each method's best run), in %. 'returns after relearning' is "
        "the worst of the two relearning attacks"
        + (f" (lr {', '.join(f'{x:g}' for x in lrs)})" if lrs else "")
        + ". "
        + HOW_TO_READ
    )
    return Table("Removal card per method (audit)", columns, rows, reference_rows=refs, note=note)


def add_removal_card(
    section: Section, record: Mapping[str, Any], audit: Mapping[str, Any] | None
) -> Section:
    """Append the removal card(s) to ``section``: the directory's own ``audit.json`` and, for a
    demo or sweep run with ``--audit``, the per-method table."""
    if audit is not None:
        tables, notes = removal_section_parts(audit)
        section.tables.extend(tables)
        section.notes.extend(notes)
    methods = record.get("methods")
    if isinstance(methods, Mapping):
        table = methods_removal_table(methods, record.get("baseline"))
        if table is not None:
            section.tables.append(table)
    return section
