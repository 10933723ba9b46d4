"""The report's figures: small matplotlib functions that take plain numbers and return PNG bytes.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas (never pyplot,
so no global figure state and no GUI backend is touched) under one shared style: about 7 x 4.5
inches at 110 dpi, a grid, labelled axes with units, a title, the legend outside the data.
matplotlib is imported inside the functions so that ``import unmemorize`` stays fast and works
without it. The PNGs carry no timestamp: the same numbers give the same bytes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

FIGSIZE = (7.0, 4.5)
DPI = 110

_STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "figure.titlesize": 11,
    "font.size": 9.5,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}

#: Markers cycled with the 10 tab10 colours so that up to 70 methods stay distinguishable.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@contextlib.contextmanager
def _figure(figsize: tuple[float, float] = FIGSIZE) -> Iterator[Any]:
    """A fresh constrained-layout Figure on an Agg canvas, under the report style."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes; the Software entry is dropped so bytes depend on the data only."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def method_style(index: int) -> tuple[Any, str]:
    """The colour and marker of the ``index``-th method (the same in every figure)."""
    import matplotlib

    return matplotlib.colormaps["tab10"](index % 10), _MARKERS[(index // 10) % len(_MARKERS)]


def pareto_png(
    series: Mapping[str, Sequence[tuple[float, float, bool]]],
    base: tuple[float, float] | None,
    *,
    x_label: str,
    y_label: str,
    title: str,
    y_higher_is_better: bool = True,
) -> bytes:
    """Scatter of every run, one colour per method, its Pareto-front points highlighted.

    A dashed step line traces the best trade-off over all methods together. When the unedited
    model lies far right of every run (unlearning removed most memorization), the x axis is
    broken so the runs are not squeezed into a corner: the star gets its own narrow panel at the
    same scale.

    Args:
        series: method -> ``(x, y, on_front)`` for each of its runs, already in plot units.
        base: ``(x, y)`` of the unedited model, drawn as a star (None: not drawn).
        x_label, y_label, title: axis labels (with units) and the title.
        y_higher_is_better: the direction of y (accuracy: True; perplexity: False).
    """
    from matplotlib.lines import Line2D

    from ..metrics.ranking import pareto_front

    points = [(x, y) for pts in series.values() for x, y, _ in pts]
    n = len(series) + 3
    with _figure((FIGSIZE[0] + 2.2, max(FIGSIZE[1], 0.19 * n + 0.9))) as fig:
        lo = min((x for x, _ in points), default=0.0)
        hi = max((x for x, _ in points), default=1.0)
        pad = 0.05 * (hi - lo) + 1.0
        broken = base is not None and base[0] > 2 * hi + 10
        if broken:
            ax, ax_base = fig.subplots(1, 2, sharey=True, width_ratios=[6, 1])
            fig.get_layout_engine().set(wspace=0.0)
        else:
            ax, ax_base = fig.subplots(), None
        handles = []
        for i, (method, pts) in enumerate(series.items()):
            color, marker = method_style(i)
            rest = [(x, y) for x, y, front in pts if not front]
            front = [(x, y) for x, y, front in pts if front]
            if rest:
                ax.scatter(*zip(*rest, strict=True), s=22, color=color, marker=marker, alpha=0.35)
            if front:
                ax.scatter(*zip(*front, strict=True), s=48, color=color, marker=marker,
                           edgecolors="black", linewidths=0.8, zorder=3)  # fmt: skip
            handles.append(Line2D([], [], color=color, marker=marker, linestyle="", label=method))
        handles.append(Line2D([], [], color="0.6", marker="o", markeredgecolor="black",
                              linestyle="", label="on its method's Pareto front"))  # fmt: skip
        overall = pareto_front(
            [{"x": x, "y": y} for x, y in points], "x", "y", y_higher_is_better=y_higher_is_better
        )
        if len(overall) > 1:
            ax.plot([p["x"] for p in overall], [p["y"] for p in overall], drawstyle="steps-post",
                    color="black", linestyle="--", linewidth=0.9, zorder=2)  # fmt: skip
            handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.9,
                                  label="best trade-off, all methods"))  # fmt: skip
        if base is not None:
            star_ax = ax_base if broken else ax
            star_ax.scatter([base[0]], [base[1]], s=200, marker="*", color="gold",
                            edgecolors="black", zorder=4)  # fmt: skip
            handles.append(Line2D([], [], color="gold", marker="*", markersize=12,
                                  markeredgecolor="black", linestyle="",
                                  label="before unlearning"))  # fmt: skip
        if broken:
            ax.set_xlim(lo - pad, hi + pad)
            half = (hi - lo + 2 * pad) / 12  # the narrow panel keeps the main panel's scale
            ax_base.set_xlim(base[0] - half, base[0] + half)
            ax_base.spines["left"].set_visible(False)
            ax_base.tick_params(left=False, labelleft=False)
            cut = {"marker": [(-1, -2), (1, 2)], "markersize": 10, "linestyle": "none",
                   "color": "black", "clip_on": False}  # fmt: skip
            ax.plot([1], [0], transform=ax.transAxes, **cut)
            ax_base.plot([0], [0], transform=ax_base.transAxes, **cut)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        fig.suptitle(title)
        fig.legend(handles=handles, loc="outside right upper", title="method", title_fontsize=9)
        return _png(fig)


def training_png(
    epochs: Sequence[float],
    memorized_pct: Sequence[float],
    utility: Sequence[float],
    *,
    utility_label: str,
    title: str,
) -> bytes:
    """Two panels over training epochs: memorization (top) and test utility (bottom)."""
    with _figure() as fig:
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.plot(epochs, memorized_pct, marker="o", markersize=3.5, color="tab:red")
        top.set_ylabel("memorized\n(% of candidates)")
        top.set_ylim(bottom=min(0.0, *memorized_pct) - 2, top=max(memorized_pct) * 1.08 + 2)
        bottom.plot(epochs, utility, marker="o", markersize=3.5, color="tab:blue")
        bottom.set_ylabel(utility_label)
        bottom.set_xlabel("epoch")
        fig.suptitle(title)
        return _png(fig)


def _seconds_text(s: float) -> str:
    if s < 0.01:
        return "<0.01 s"
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def seconds_png(names: Sequence[str], seconds: Sequence[float], *, title: str) -> bytes:
    """Horizontal bars of wall time per method (longest on top; log scale over wide ranges)."""
    order = sorted(range(len(names)), key=lambda i: seconds[i])
    names = [names[i] for i in order]
    values = [max(float(seconds[i]), 0.0) for i in order]
    positive = [v for v in values if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 30
    # bars of zero length do not exist on a log axis: draw them at a floor and label the truth
    floor = min(positive) / 2 if log else 0.0
    height = max(2.4, 0.26 * len(names) + 1.2)  # bars keep one thickness whatever their count
    with _figure((FIGSIZE[0], height)) as fig:
        ax = fig.subplots()
        drawn = [max(v, floor) for v in values]
        ax.barh(range(len(names)), drawn, color="tab:blue", alpha=0.8, height=0.7)
        ax.set_yticks(range(len(names)), names)
        ax.grid(axis="y", visible=False)
        for i, (v, d) in enumerate(zip(values, drawn, strict=True)):
            ax.text(d, i, " " + _seconds_text(v), va="center", fontsize=8)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(left=floor / 1.5, right=max(drawn) * 3)
            ax.set_xlabel("wall time (seconds, log scale)")
        else:
            ax.set_xlim(left=0, right=(max(drawn) if drawn else 1.0) * 1.2 or 1.0)
            ax.set_xlabel("wall time (seconds)")
        ax.set_title(title)
        return _png(fig)


def grouped_bars_png(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    y_label: str,
    title: str,
    reference: tuple[str, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> bytes:
    """Grouped vertical bars: one group per model, one bar per series (e.g. QA set).

    Args:
        groups: group names on the x axis (models).
        series: series name -> one value per group (NaN: no bar).
        reference: ``(label, y)`` of a dashed horizontal reference line.
        ylim: fixed y range.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    colors = ("tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:purple")
    # wide enough for every group's bars, but never a banner
    with _figure((min(max(FIGSIZE[0], 0.3 * len(groups) * n + 2.5), 10.0), FIGSIZE[1])) as fig:
        ax = fig.subplots()
        for j, (name, values) in enumerate(series.items()):
            xs = [i + (j - (n - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, values, width=width * 0.95, label=name, color=colors[j % len(colors)])
        if reference is not None:
            ax.axhline(reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.grid(axis="x", visible=False)
        ax.axhline(0, color="black", linewidth=0.6)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(y_label)
        ax.set_title(title)
        fig.legend(loc="outside right upper")
        return _png(fig)


def intervals_png(
    names: Sequence[str],
    means: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    *,
    x_label: str,
    title: str,
    values: Sequence[Sequence[float | None]] | None = None,
    reference: tuple[str, float] | None = None,
) -> bytes:
    """One row per method: the mean (a marker), its 95% interval (error bar) and, when given, the
    per-seed ``values`` (small dots); the first name on top.

    A row without an interval (one seed) shows the mean alone; a row without a mean is left empty.
    """
    height = max(2.4, 0.32 * len(names) + 1.3)
    with _figure((FIGSIZE[0], height)) as fig:
        ax = fig.subplots()
        ys = list(range(len(names)))[::-1]
        for i, y in enumerate(ys):
            if means[i] is None:
                continue
            color, marker = method_style(i)
            if lows[i] is not None and highs[i] is not None:
                err = [[means[i] - lows[i]], [highs[i] - means[i]]]
                ax.errorbar(
                    [means[i]], [y], xerr=err, fmt=marker, color=color, capsize=4, markersize=6
                )
            else:
                ax.plot([means[i]], [y], marker, color=color, markersize=6)
            if values is not None:
                seen = [v for v in values[i] if v is not None]
                ax.plot(seen, [y] * len(seen), ".", color="black", alpha=0.45, markersize=4)
        if reference is not None:
            ax.axvline(reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
            fig.legend(loc="outside right upper")
        ax.set_yticks(ys, names)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(x_label)
        ax.set_title(title)
        return _png(fig)


__all__ = [
    "DPI",
    "FIGSIZE",
    "grouped_bars_png",
    "intervals_png",
    "method_style",
    "pareto_png",
    "seconds_png",
    "training_png",
]
