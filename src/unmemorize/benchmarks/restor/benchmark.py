"""RESTOR behind the benchmark seam (Rezaei et al. 2024, arXiv 2411.00204).

RESTOR corrupts a model with wrong facts about some target people, unlearns the corruption, and
asks whether the clean model's knowledge comes back (:mod:`.pipeline`). Registered here so reports
reach RESTOR's section through :func:`unmemorize.benchmarks.get_benchmark` like any benchmark's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import BENCHMARKS, Benchmark

if TYPE_CHECKING:
    from ...render.model import Section


@BENCHMARKS.register
class RestorBenchmark(Benchmark):
    """RESTOR: restorative unlearning of injected wrong facts."""

    name = "restor"
    paper = (
        "Rezaei et al. 2024, RESTOR: Knowledge Recovery in Machine Unlearning (arXiv 2411.00204)"
    )
    summary = (
        "corrupt a model with wrong facts, unlearn the corruption, measure whether the clean "
        "model's answers come back"
    )

    def report_section(
        self, index: int, title: str, record: Mapping[str, Any], *, path: Path | None = None
    ) -> Section:
        """A RESTOR summary: clean vs corrupted vs each method, accuracy and log-prob figures."""
        from .report import restor_section

        return restor_section(index, title, record)


__all__ = ["RestorBenchmark"]
