"""The benchmark seam: every benchmark is one package behind :class:`Benchmark` and :data:`BENCHMARKS`.

A benchmark knows how to

* **prepare** a model to unlearn from (:meth:`Benchmark.load` reads a model directory the
  benchmark wrote; the benchmark's own pipeline builds one from a preset): the model, the generic
  :class:`~unmemorize.methods.UnlearnData` (forget / retain rows) and the benchmark's private
  evaluation state, bundled as :class:`Prepared`;
* **evaluate** any model into named metrics (:meth:`Benchmark.evaluate`), each declared once as a
  :class:`Metric` (name, label, direction, format) in :attr:`Benchmark.metrics`;
* **score** a run against the unedited model (:meth:`Benchmark.score`; lower is better) and name
  the metric that picks each method's best run (:attr:`Benchmark.selection`);
* own its **search spaces** (:attr:`Benchmark.spaces`, one format, see
  :mod:`unmemorize.benchmarks.spaces`), its presets and its **report section**
  (:meth:`Benchmark.report_section`);
* name the rows an **audit** reads (:meth:`Benchmark.audit_sets`: forget rows, non-members,
  retain and eval rows);
* build the **base model** a sweep unlearns from (:meth:`Benchmark.prepare_base`) and name the
  trade-off its Pareto fronts show (:meth:`Benchmark.tradeoff`).

The one apply -> evaluate -> row loop that every command uses is :mod:`unmemorize.benchmarks.runner`.

A new benchmark is one package plus its registration::

    @BENCHMARKS.register
    class MyBenchmark(Benchmark):
        name = "mine"
        ...
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..registry import Registry
from .settings import DEFAULT as DEFAULT_SETTINGS
from .settings import Settings, get_settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..methods import UnlearnData
    from ..render.model import Section


@dataclass(frozen=True)
class Metric:
    """One metric a benchmark reports, declared once where the benchmark defines it.

    Attributes:
        name: the key in a metrics dict (``"memorized_fraction"``, ``"accuracy/increment"``).
        label: a short human label for tables and axes.
        higher_is_better: the metric's direction (None: neither, e.g. a count or seconds).
        format: how to print it: ``"pct"`` (a fraction shown as %), ``"num"``, ``"int"``,
            ``"secs"``.
        help: one line on what it measures.
    """

    name: str
    label: str
    higher_is_better: bool | None
    format: str = "num"
    help: str = ""

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` in this metric's direction."""
        if self.higher_is_better is None:
            raise ValueError(f"metric {self.name!r} has no direction")
        return a > b if self.higher_is_better else a < b


#: The score every benchmark's rows carry: lower is better (the TinyMem paper's rule, -1 perfect).
SCORE = Metric("score", "score", False, "num", "the benchmark's selection score (lower is better)")


@dataclass
class Prepared:
    """A model ready for unlearning and what its benchmark needs to judge an edit of it.

    Attributes:
        model: the model to unlearn from (never modified by a method).
        data: the forget / retain rows every method receives.
        baseline: the unedited model's metrics (:meth:`Benchmark.evaluate` of ``model``).
        state: the benchmark's private evaluation state (e.g. TinyMem's data and the indices of
            the originally memorized rows; RESTOR's evaluation sets and reference scores).
    """

    model: PreTrainedModel
    data: UnlearnData
    baseline: dict[str, Any]
    state: Any = None
    info: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """Base class of a benchmark; subclasses fill the class attributes and the four methods.

    Class attributes:
        name: the registry name (``unmemorize sweep --benchmark NAME``).
        paper: the paper the benchmark comes from.
        summary: one line for ``unmemorize ls benchmarks``.
        metrics: every metric :meth:`evaluate` returns that a table or plot shows.
        selection: the name of the metric that picks each method's best run (declared in
            :attr:`metrics`, or :data:`SCORE`).
        spaces: named search spaces, ``{space: {method: options}}`` in the one format of
            :mod:`unmemorize.benchmarks.spaces`; the space named :attr:`default_space` is the
            benchmark's default grid (a method without an entry runs with its defaults).
        default_space: the space runs and sweeps use unless told otherwise.
        settings: ``{name: Settings}`` (:mod:`unmemorize.benchmarks.settings`): ``default`` and,
            where the benchmark has one, ``paper`` (the original code's configuration), selected
            by ``--settings``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    selection: ClassVar[str] = "score"
    spaces: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    default_space: ClassVar[str] = ""
    settings: ClassVar[Mapping[str, Settings]] = {"default": DEFAULT_SETTINGS}

    # -- preparing ----------------------------------------------------------------------------

    def load(self, model_dir: str, *, device: str = "cpu", settings: str | None = None) -> Prepared:
        """Prepare the model in ``model_dir`` (written by this benchmark) for unlearning.

        ``settings`` names one of :attr:`settings` (None: ``default``); a benchmark whose
        settings have no preparation switches ignores it.
        """
        raise NotImplementedError(f"benchmark {self.name!r} cannot load a model directory")

    def check_base(self, base: Mapping[str, Any]) -> None:
        """Refuse bad settings of a sweep's base model before any work (default: accept all).

        ``base`` holds the sweep's ``preset``, ``task``, ``variant``, ``overrides`` (``key=value``
        strings) and ``model`` (an existing model directory, resolved, or None).

        Raises:
            ValueError: a setting this benchmark cannot build, or a ``model`` it cannot load.
        """

    def prepare_base(self, base: Mapping[str, Any], out: Path, *, progress: bool = True) -> Path:
        """Build the base model of a sweep (``base`` as in :meth:`check_base`, without ``model``)
        into the directory ``out``, resuming an interrupted build there; return ``out``.
        """
        raise NotImplementedError(
            f"benchmark {self.name!r} cannot build a base model; pass an existing one (--model DIR)"
        )

    # -- judging ------------------------------------------------------------------------------

    def evaluate(self, model: PreTrainedModel, prepared: Prepared) -> dict[str, Any]:
        """The metrics of ``model`` (an edit of ``prepared.model``, or the model itself)."""
        raise NotImplementedError

    def score(self, baseline: Mapping[str, Any], metrics: Mapping[str, Any]) -> float | None:
        """The run's score against the unedited model (lower is better); None when undefined."""
        return None

    def split(self, prepared: Prepared, *, seed: int = 0) -> tuple[Prepared, Prepared] | None:
        """Two disjoint halves of the rows that judge an edit: ``(validation, test)``.

        Multi-seed runs (:mod:`unmemorize.benchmarks.seeds`) choose each method's configuration
        by its score on the validation half and report the test half, so the reported numbers
        are not the maximum of many noisy draws on the same rows. Both halves share
        ``prepared.model`` and ``prepared.data`` (what the methods train on is unchanged) and
        carry their own baseline. None (the default): the benchmark's score already selects on
        held-out rows (RESTOR's ``recovery_val``), so no split is needed.
        """
        return None

    def audit_sets(self, prepared: Prepared) -> dict[str, Any]:
        """The rows an audit of an edit of ``prepared.model`` reads (:mod:`unmemorize.audit`).

        Returns:
            The fields of :class:`unmemorize.audit.AuditSets` (``forget_ids``, ``prefix_len``,
            ``suffix_len`` and, where the benchmark has them, ``prompt_ids``, ``holdout_ids``
            (non-members never trained on), ``retain_ids``, ``eval_ids``, ``pad_id``): plain
            tensors, so that benchmarks stay below the audit layer.
        """
        raise NotImplementedError(f"benchmark {self.name!r} cannot be audited yet")

    # -- presenting ---------------------------------------------------------------------------

    def report_section(
        self, index: int, title: str, record: Mapping[str, Any], *, path: Path | None = None
    ) -> Section:
        """The report section of a ``summary.json`` this benchmark (or a sweep of it) wrote.

        ``path`` is the directory the summary was read from, for files next to it (e.g. the base
        model's training history); None when the record comes from elsewhere.
        """
        raise NotImplementedError(f"benchmark {self.name!r} has no report section")

    # -- declared facts -----------------------------------------------------------------------

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The declaration of metric ``name`` (per-set metrics match their prefix, ``accuracy/``)."""
        for metric in (*cls.metrics, SCORE):
            if metric.name == name:
                return metric
        prefix = name.split("/", 1)[0]
        for metric in cls.metrics:
            if metric.name == prefix:
                return metric
        from ..registry import suggest

        raise suggest(name, [m.name for m in cls.metrics], f"metric of benchmark {cls.name!r}")

    @classmethod
    def space(cls, name: str | None = None) -> Mapping[str, Any]:
        """The named search space (default: :attr:`default_space`)."""
        from ..registry import suggest

        key = name or cls.default_space
        if key not in cls.spaces:
            raise suggest(
                key, list(cls.spaces), "search space", f"(spaces of benchmark {cls.name!r})"
            )
        return cls.spaces[key]

    @classmethod
    def get_settings(cls, name: str | None = None) -> Settings:
        """The named settings (None: ``default``)."""
        return get_settings(cls.settings, name, cls.name)

    @classmethod
    def tradeoff(cls, experiment: Mapping[str, Any] | None = None) -> tuple[str, str] | None:
        """``(forget metric, utility metric)``: the axes of the Pareto fronts of sweeps and reports.

        A run is on its method's front when no other run has a lower forget metric and a better
        utility metric (directions from :attr:`metrics`). ``experiment`` describes the base model
        (its ``experiment.json``, when the benchmark writes one). None: no Pareto front.
        """
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, paper, summary, metrics and spaces (for ``unmemorize ls benchmarks``)."""
        return {
            "name": cls.name,
            "paper": cls.paper,
            "summary": cls.summary,
            "selection": cls.selection,
            "metrics": [m.__dict__ for m in cls.metrics],
            "spaces": sorted(cls.spaces),
            "settings": sorted(cls.settings),
        }


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")

#: Modules whose import registers the built-in benchmarks (imported on first lookup, so that
#: ``import unmemorize.benchmarks`` stays light).
BUILTIN_MODULES: tuple[str, ...] = (
    "unmemorize.benchmarks.tinymem.benchmark",
    "unmemorize.benchmarks.restor.benchmark",
)


def load_builtin() -> None:
    """Import the built-in benchmark packages (they register themselves)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get_benchmark(name: str) -> Benchmark:
    """An instance of the registered benchmark ``name`` (with a "did you mean" error)."""
    load_builtin()
    return BENCHMARKS.get(name)()


def benchmark_names() -> list[str]:
    load_builtin()
    return BENCHMARKS.names()


__all__ = [
    "BENCHMARKS",
    "SCORE",
    "Benchmark",
    "Metric",
    "Prepared",
    "benchmark_names",
    "get_benchmark",
    "load_builtin",
]
