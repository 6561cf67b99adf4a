"""The report's figures, drawn with matplotlib's object API (no pyplot global state).

``FIGURES`` (an ``ablate.registry.Registry``) holds each kind of figure by name with the rule
that chooses it for a sweep (``FigureKind``): the layouts of SimCLR's (Chen et al., 2020)
Figures 5 (``augmentation_matrix``), 8 (``projection_head``) and 9 (``batch_size_epochs``),
``temperature``, a generic plot of the keys no other figure covers (``by``) and every trial's
learning curve (``learning_curves``). A user's own figure is named ``module.path:factory``:
either a ``FigureKind`` or a function ``(results: SweepResults, metric: str) ->
matplotlib.figure.Figure | None`` drawn once per report (None: nothing to draw). Each figure is
written as ``<name>.png`` and ``<name>.svg``; ``draw_confidence_figures`` adds the forest plot
of every configuration against the best and the importance of each key.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ablate.registry import Entry, Registry, raised
from ablate.report.augmentation import AugmentationMatrix, augmentation_matrix
from ablate.report.confidence import (
    CONFIGURATION,
    Confidence,
    importance_terms,
    interaction_contrasts,
)
from ablate.report.table import (
    Row,
    SweepResults,
    comparable,
    configuration_keys,
    configuration_label,
    group_stats,
    is_finite,
    seed_group_stats,
    sorted_configs,
    sorted_values,
)
from ablate.stats import ALPHA, CONFIDENCE, GroupStats, KeyImportance, key_importance
from ablate.vocabulary import DEFAULT_RANKING_METRIC, OPS_KEY, format_value


def _spread(s: GroupStats | None) -> float:
    """An error bar's half-length: the sample std, 0 for no group or a single replicate."""
    return s.std if s is not None and s.std is not None else 0.0


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; Figure.savefig needs no pyplot global state. The
    bounding box is the drawn content (``bbox_inches="tight"``), so long axis labels, legends
    outside the axes and footnotes are not cut off."""
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", pad_inches=0.15)
    fig.savefig(paths[1], bbox_inches="tight", pad_inches=0.15)
    return paths


def _footnote(fig: Figure, text: str) -> None:
    """What the figure's means and error bars are taken over, under the axes."""
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color="0.25", wrap=True)


def _over_text(averaged: Sequence[str], interacting: Sequence[str] = ()) -> str:
    """``mean ± sample std over seeds; averaged over model.head (no interaction found)``."""
    text = "Each value: mean over seeds; error bars: ± sample std over seeds (none with one seed)"
    if averaged:
        flagged = [f"{k} (interacts: see its interaction figure)" for k in interacting]
        quiet = [k for k in averaged if k not in interacting]
        parts = flagged + ([f"{', '.join(quiet)} (no interaction found)"] if quiet else [])
        text += "; each seed's value averaged over " + "; ".join(parts)
    return text + "."


#: Most lines an interaction split draws; a key with more values is averaged over instead.
MAX_SPLIT = 6


def _split(
    rows: Sequence[Row], key: str, varying_keys: Sequence[str], metric: str
) -> tuple[str | None, list[str], list[str]]:
    """``(key to draw one line per value of, keys averaged over, averaged keys that interact
    with key)`` for a figure of ``key``: another configuration key that interacts with it
    (two-way ANOVA p < ``stats.ALPHA``, or untested with one seed) is drawn as lines (the one
    with the largest interaction share, up to ``MAX_SPLIT`` values), not averaged over."""
    others = [k for k in configuration_keys(varying_keys, rows) if k != key]
    used = [r for r in comparable(rows) if is_finite(r.get(metric))]
    if not others or not used or key not in configuration_keys(varying_keys, rows):
        return None, others, []
    imp = key_importance(used, [key, *others], metric)
    interacting = {}
    for (a, b), term in imp.interactions.items():
        if key in (a, b) and (term.p is None or term.p < ALPHA):
            interacting[b if a == key else a] = term.share
    small = [k for k in interacting if len({format_value(r.get(k)) for r in used}) <= MAX_SPLIT]
    split = max(small, key=lambda k: interacting[k]) if small else None
    averaged = [k for k in others if k != split]
    return split, averaged, [k for k in averaged if k in interacting]


def plot_augmentation_matrix(matrix: AugmentationMatrix, stem: Path, metric: str) -> list[Path]:
    """Figure 5 heatmap, annotated, the row means as a separate last column; a pair the sweep
    did not run is hatched grey and says so, and the footnote says what each ± is over."""
    n = len(matrix.ops)
    data = np.concatenate([matrix.mean, matrix.row_mean[:, None]], axis=1)
    fig = Figure(figsize=(1.1 * (n + 1) + 2.0, 0.9 * n + 1.8))
    ax = fig.add_subplot()
    ax.set_facecolor("0.85")
    image = ax.imshow(np.ma.masked_invalid(data), cmap="Greens", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    finite = data[np.isfinite(data)]
    mid = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i, j in product(range(n), range(n + 1)):
        if not np.isfinite(data[i, j]):
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.6", lw=0
                )
            )
            ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.3")
            continue
        text = f"{data[i, j]:.3f}"
        if j < n and matrix.count[i, j] > 1:
            text += f"\n±{matrix.std[i, j]:.3f}"
        color = "white" if data[i, j] > mid else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.axvline(n - 0.5, color="black", linewidth=2)
    ax.set_xticks(range(n + 1), [*matrix.ops, "Average"], rotation=30, ha="right")
    ax.set_yticks(range(n), matrix.ops)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    ax.set_title("Augmentation pairs (diagonal: single op)")
    seeds = int(matrix.count.max()) if matrix.count.size else 0
    note = (
        f"Each cell: mean over seeds (up to {seeds}); ± : sample std over seeds"
        if seeds > 1
        else "Each cell: one seed (no ±)"
    )
    if matrix.averaged:
        note += f"; each seed's value averaged over {', '.join(matrix.averaged)}"
    _footnote(fig, note + ". Hatched: pair not run. Average: mean of the row's cells.")
    return _save(fig, stem)


def _grouped_bars(
    ax: Any,
    groups: Sequence[Any],
    series: Sequence[Any],
    stats: Callable[[Any, Any], GroupStats | None],
    series_label: Callable[[Any], str],
) -> None:
    """Bars per ``series`` within each x group, with std error bars."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, item in enumerate(series):
        values = [stats(group, item) for group in groups]
        heights = [s.mean if s else np.nan for s in values]
        errors = [_spread(s) for s in values]
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, heights, width, yerr=errors, capsize=3, label=series_label(item))
    ax.set_xticks(x, [str(g) for g in groups])
    ax.legend(fontsize=8)


def _bar_ylim(ax: Any, rows: Sequence[Row], metric: str) -> None:
    values = [r[metric] for r in comparable(rows) if r.get(metric) is not None]
    values = [v for v in values if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        pad = max((high - low) * 0.5, 0.01)
        ax.set_ylim(max(0.0, low - pad), high + pad)


def plot_head_bars(
    rows: Sequence[Row], varying_keys: Sequence[str], stem: Path, metric: str
) -> list[Path]:
    """Figure 8: head type grouped by projection output dimension."""
    dim_key = "model.out_dim" if "model.out_dim" in varying_keys else None
    split, averaged, interacting = _split(rows, "model.head", varying_keys, metric)
    if dim_key is None and split is not None:
        dim_key = split
    averaged = [k for k in averaged if k != dim_key]
    stats = seed_group_stats(rows, ["model.head", dim_key or "model.head"], metric)
    heads = [h for h in ("linear", "nonlinear", "none") if any(k[0] == h for k in stats)]
    heads += sorted({k[0] for k in stats} - set(heads), key=str)
    dims = sorted_values(k[1] for k in stats) if dim_key else ["all"]
    fig = Figure(figsize=(max(5.0, 1.2 * len(dims) + 3), 4))
    ax = fig.add_subplot()
    _grouped_bars(
        ax,
        dims,
        heads,
        lambda dim, head: stats.get((head, dim if dim_key else head)),
        lambda head: str(head),
    )
    names = {"model.out_dim": "projection output dimensionality"}
    ax.set_xlabel(names.get(dim_key, dim_key) if dim_key else "")
    ax.set_ylabel(metric)
    ax.set_title("Projection head")
    _bar_ylim(ax, rows, metric)
    _footnote(fig, _over_text(averaged, interacting))
    return _save(fig, stem)


def plot_batch_epochs(
    rows: Sequence[Row], varying_keys: Sequence[str], stem: Path, metric: str
) -> list[Path]:
    """Figure 9: batch sizes grouped by training epochs."""
    epochs_key = "train.epochs" if "train.epochs" in varying_keys else "epochs_planned"
    stats = seed_group_stats(rows, [epochs_key, "train.batch_size"], metric)
    _, averaged, interacting = _split(rows, "train.batch_size", varying_keys, metric)
    averaged = [k for k in averaged if k != epochs_key]
    budgets = sorted_values(k[0] for k in stats)
    sizes = sorted_values(k[1] for k in stats)
    fig = Figure(figsize=(max(5.0, 1.3 * len(budgets) + 3), 4))
    ax = fig.add_subplot()
    _grouped_bars(ax, budgets, sizes, lambda e, b: stats.get((e, b)), lambda b: f"bs={b}")
    ax.set_xlabel("training epochs")
    ax.set_ylabel(metric)
    ax.set_title("Batch size x training epochs")
    _bar_ylim(ax, rows, metric)
    _footnote(fig, _over_text(averaged, [k for k in interacting if k in averaged]))
    return _save(fig, stem)


def _line(
    ax: Any,
    rows: Sequence[Row],
    key: str,
    metric: str,
    label: str | None = None,
    split: str | None = None,
) -> None:
    """``metric`` against ``key``: mean ± std over seeds, one line per value of ``split``."""
    stats = seed_group_stats(rows, [key, split or key], metric)
    xs = sorted_values(k[0] for k in stats)
    series = sorted_values(k[1] for k in stats) if split else [None]
    numeric = _numeric(xs)
    for value in series:
        points = [(x, stats.get((x, value if split else x))) for x in xs]
        points = [(x, st) for x, st in points if st is not None]
        ax.errorbar(
            [x if numeric else xs.index(x) for x, _ in points],
            [st.mean for _, st in points],
            yerr=[_spread(st) for _, st in points],
            marker="o",
            capsize=3,
            label=format_value(value) if split else label,
        )
    positive = [x for x in xs if numeric and x > 0]
    if numeric and len(positive) == len(xs) and xs and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), [format_value(x) for x in xs], rotation=30, ha="right")
    if split:
        ax.legend(fontsize=8, title=split, title_fontsize=8)
    ax.set_xlabel(key)


def plot_temperature(
    rows: Sequence[Row], stem: Path, metric: str, varying_keys: Sequence[str] = ()
) -> list[Path]:
    """The temperature of NT-Xent against the ranking metric (and the contrastive accuracy),
    one line per value of a key that interacts with it (``_split``), averaged over the rest
    (the footnote says which)."""
    keys = list(varying_keys) or ["loss.temperature"]
    split, averaged, interacting = _split(rows, "loss.temperature", keys, metric)
    has_contrastive = any(r.get("train/contrastive_top1") is not None for r in comparable(rows))
    fig = Figure(figsize=(9 if has_contrastive else 5, 4))
    axes = fig.subplots(1, 2 if has_contrastive else 1, squeeze=False)[0]
    _line(axes[0], rows, "loss.temperature", metric, split=split)
    axes[0].set_ylabel(metric)
    axes[0].set_title("Temperature" + (f" by {split}" if split else ""))
    if has_contrastive:
        _line(axes[1], rows, "loss.temperature", "train/contrastive_top1", split=split)
        axes[1].set_ylabel("train/contrastive_top1")
        axes[1].set_title("Contrastive accuracy")
    _footnote(fig, _over_text(averaged, interacting))
    return _save(fig, stem)


def _numeric(values: Iterable[Any]) -> bool:
    values = list(values)
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def plot_generic(
    rows: Sequence[Row],
    keys: Sequence[str],
    stem: Path,
    metric: str,
    varying_keys: Sequence[str] = (),
) -> list[Path]:
    """Any one varying key (line if numeric, else bars; one line per value of a key that
    interacts with it, ``_split``) or two (heatmap when both have 3+ values, else grouped
    bars); mean ± std over seeds, each seed's value averaged over the other ``varying_keys``
    (the footnote says which)."""
    varying = list(varying_keys) or list(keys)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if len(keys) == 1:
        (key,) = keys
        split, averaged, interacting = _split(rows, key, varying, metric)
        stats = seed_group_stats(rows, [key], metric)
        xs = sorted_values(k[0] for k in stats)
        if _numeric(xs) or split:
            _line(ax, rows, key, metric, split=split)
        else:
            ax.bar(
                range(len(xs)),
                [stats[(x,)].mean for x in xs],
                yerr=[_spread(stats[(x,)]) for x in xs],
                capsize=3,
            )
            ax.set_xticks(range(len(xs)), [format_value(x) for x in xs], rotation=30, ha="right")
            ax.set_xlabel(key)
            _bar_ylim(ax, rows, metric)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {key}" + (f" and {split}" if split else ""))
        _footnote(fig, _over_text(averaged, interacting))
        return _save(fig, stem)
    first, second = keys
    stats = seed_group_stats(rows, [first, second], metric)
    xs = sorted_values(k[0] for k in stats)
    ys = sorted_values(k[1] for k in stats)
    averaged = [k for k in configuration_keys(varying, rows) if k not in keys]
    if len(xs) >= 3 and len(ys) >= 3:
        grid = np.full((len(xs), len(ys)), np.nan)
        for (x, y), st in stats.items():
            grid[xs.index(x), ys.index(y)] = st.mean
        ax.set_facecolor("0.85")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=metric)
        for i, j in product(range(len(xs)), range(len(ys))):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7)
            else:
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.3")
        ax.set_yticks(range(len(xs)), [format_value(x) for x in xs])
        ax.set_xticks(range(len(ys)), [format_value(y) for y in ys], rotation=30, ha="right")
        ax.set_ylabel(first)
        ax.set_xlabel(second)
        note = "Cells: mean over seeds; grey: not run"
        if averaged:
            note += f"; each seed's value averaged over {', '.join(averaged)}"
        _footnote(fig, note + ".")
    else:
        groups, series, swap = (xs, ys, False) if len(xs) >= len(ys) else (ys, xs, True)
        _grouped_bars(
            ax,
            groups,
            series,
            lambda g, s: stats.get((s, g) if swap else (g, s)),
            lambda s: f"{second if not swap else first}={format_value(s)}",
        )
        ax.set_xlabel(first if not swap else second)
        ax.set_ylabel(metric)
        _bar_ylim(ax, rows, metric)
        _footnote(fig, _over_text(averaged))
    ax.set_title(f"{metric} by {first} x {second}")
    return _save(fig, stem)


def plot_interaction(
    rows: Sequence[Row],
    keys: tuple[str, str],
    stem: Path,
    metric: str,
    varying_keys: Sequence[str] = (),
) -> list[Path]:
    """The interaction plot of two crossed keys: ``metric`` against the first (the one with
    more values; numeric on a numeric axis), one line per value of the second, mean ± std over
    seeds. Parallel lines: no interaction; crossing or diverging lines: the effect of one key
    depends on the other. The title gives the interaction's test: the difference of
    differences paired by seed for a 2 x 2 pair, else the two-way ANOVA F-test
    (``stats.key_importance``); none with one seed."""
    a, b = keys
    varying = list(varying_keys) or list(keys)
    used = [r for r in comparable(rows) if is_finite(r.get(metric))]
    config = configuration_keys(varying, used)
    levels = {k: len({format_value(r.get(k)) for r in used}) for k in keys}
    x, line = (a, b) if levels[a] >= levels[b] else (b, a)
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    _line(ax, rows, x, metric, split=line)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    test = "not tested (one seed per configuration)"
    contrast = interaction_contrasts(used, [a, b], metric).get((a, b))
    term = key_importance(used, config or list(keys), metric).interactions.get((a, b))
    if contrast is not None and contrast.comparison.testable:
        c = contrast.comparison
        test = (
            f"difference of differences {c.diff:+.4f} "
            f"[{CONFIDENCE:.0%} CI {c.ci_low:+.4f}, {c.ci_high:+.4f}], p {c.p:.3g} "
            f"(paired by seed, {c.n} seeds)"
        )
    elif term is not None and term.p is not None:
        test = f"two-way ANOVA F({term.df}, {term.df_resid}) = {term.f:.2f}, p {term.p:.3g}"
    ax.set_title(f"Interaction of {x} and {line}\n{test}", fontsize=9)
    averaged = [k for k in config if k not in keys]
    _footnote(
        fig,
        _over_text(averaged) + " Parallel lines: no interaction; crossing or diverging lines: "
        f"the effect of {x} depends on {line}.",
    )
    return _save(fig, stem)


#: Line style and end marker of a trial's curve by its outcome (the colour is its
#: configuration's): completed solid, stopped early dashed with an x where it stopped.
_CURVE_STYLE = {
    "completed": {"linestyle": "-", "marker": None},
    "stopped": {"linestyle": "--", "marker": "x"},
    "diverged": {"linestyle": ":", "marker": "v"},
    "failed": {"linestyle": ":", "marker": "s"},
    "interrupted": {"linestyle": "-.", "marker": "|"},
    "running": {"linestyle": (0, (1, 1)), "marker": ">"},
}


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours: the tab10 / tab20 palettes, evenly spaced viridis beyond 20."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def learning_curves_figure(
    rows: Sequence[Row],
    histories: dict[str, list[tuple[int, float]]],
    varying_keys: Sequence[str],
    metric: str,
) -> Figure:
    """The early-stopping picture: ``metric`` against epoch for every trial, a point at each
    epoch in ``histories`` (the measured ones: ``tracking.load_results`` leaves out the values
    a trial carried between evaluations).

    One colour per configuration (``configuration_keys`` of ``varying_keys``; its replicates
    share it), named in the legend as the report's tables name it (``configuration_label``);
    line style by outcome (``_CURVE_STYLE``: completed solid, stopped early dashed and marked x
    where it stopped), explained in a second legend.
    """
    keys = configuration_keys(varying_keys, rows)
    configs = sorted_configs(rows, keys)
    colours = dict(zip(configs, _colours(len(configs)), strict=True))
    # Room for the legend beside the axes, so that tight_layout does not squeeze the axes.
    longest = max((len(configuration_label(c, keys)) for c in configs), default=0)
    columns = 1 if len(configs) <= 18 else 2
    fig = Figure(figsize=(7 + (columns * (0.05 * longest + 0.8) if keys else 0), 4.5))
    ax = fig.add_subplot()
    statuses: set[str] = set()
    drawn: list[tuple[Any, ...]] = []
    for row in rows:
        points = histories.get(row["run_id"]) or []
        if not points:
            continue
        config = tuple(row.get(k) for k in keys)
        style = _CURVE_STYLE.get(row["status"], _CURVE_STYLE["running"])
        epochs, values = zip(*points, strict=True)
        colour = colours[config]
        ax.plot(
            epochs, values, color=colour, linestyle=style["linestyle"], marker="o", ms=3, alpha=0.85
        )
        if style["marker"]:
            ax.plot(epochs[-1], values[-1], marker=style["marker"], color=colour, ms=9, ls="")
        statuses.add(row["status"])
        drawn.append(config)
    status_handles = [
        Line2D([], [], color="black", linestyle=s["linestyle"], marker=s["marker"], label=name)
        for name, s in _CURVE_STYLE.items()
        if name in statuses
    ]
    shown = [c for c in configs if c in drawn]
    legend_style = {"fontsize": 7, "title_fontsize": 8}
    if keys and shown:
        if status_handles:  # an extra artist: tight_layout makes room for ax.legend_ only
            ax.add_artist(
                ax.legend(
                    handles=status_handles,
                    title="outcome",
                    loc="lower left",
                    bbox_to_anchor=(1.02, 0.0),
                    **legend_style,
                )
            )
        config_handles = [
            Line2D([], [], color=colours[c], marker="o", ms=3, label=configuration_label(c, keys))
            for c in shown
        ]
        ax.legend(
            handles=config_handles,
            title="configuration",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            ncols=1 if len(shown) <= 18 else 2,
            **legend_style,
        )
    elif status_handles:
        ax.legend(handles=status_handles, title="outcome", **legend_style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (measured epochs)")
    ax.set_title("Every trial by epoch")
    return fig


def plot_learning_curves(
    rows: Sequence[Row],
    histories: dict[str, list[tuple[int, float]]],
    stem: Path,
    metric: str,
    varying_keys: Sequence[str] = (),
) -> list[Path]:
    """``learning_curves_figure`` written as ``stem.png`` and ``stem.svg``."""
    return _save(learning_curves_figure(rows, histories, varying_keys, metric), stem)


# ----------------------------------------------------------------------------- the registry

#: ``[(figure name, keys it shows)]``: what a ``FigureKind`` chooses for a sweep.
Chosen = list[tuple[str, tuple[str, ...]]]


@dataclass(frozen=True)
class FigureKind:
    """A kind of figure: which figures of it a sweep gets, and how one is drawn.

    ``choose(varying_keys, rows, metric, covered) -> [(name, keys)]``: the figures of this
    kind for the sweep (none: empty), each its file name without suffix and the keys it shows,
    which the kinds chosen after it see in ``covered`` (the generic plot leaves them alone).
    ``draw(results, keys, stem, metric) -> [paths written]`` (``stem.png`` and ``stem.svg``).
    ``needs_data``: drawn only when some comparable trial reported ``metric``. ``fallback``:
    chosen after every other kind and the plugins.
    """

    choose: Callable[[Sequence[str], Sequence[Row], str, set[str]], Chosen]
    draw: Callable[[SweepResults, tuple[str, ...], Path, str], list[Path]]
    needs_data: bool = True
    fallback: bool = False


def _function_figure(name: str, make: Callable[[SweepResults, str], Any]) -> FigureKind:
    """A user's ``make(results, metric) -> Figure | None`` as a kind drawn once per report,
    written under its name with ``.`` and ``:`` as ``_`` (``my_figs:pairs`` ->
    ``my_figs_pairs.png``)."""

    def draw(results: SweepResults, keys: tuple[str, ...], stem: Path, metric: str) -> list[Path]:
        figure = make(results, metric)
        if figure is None:
            return []
        if not isinstance(figure, Figure):
            raise TypeError(
                f"report figure {name} returned {type(figure).__name__}, not a "
                "matplotlib.figure.Figure (or None for no figure)"
            )
        return _save(figure, stem)

    return FigureKind(lambda *_: [(file_stem(name), ())], draw)


def _plugin_kind(name: str, component: Any) -> Entry[FigureKind]:
    """A user's figure: a ``FigureKind``, or a function ``(results, metric) -> Figure | None``."""
    if isinstance(component, FigureKind):
        kind = component
    elif callable(component):
        kind = _function_figure(name, component)
    else:
        raise TypeError(
            f"report figure {name}: {type(component).__name__} is neither an "
            "ablate.report.FigureKind nor a function (results, metric) -> matplotlib Figure"
        )
    doc = (inspect.getdoc(component) or "").strip()
    return Entry(name, kind, doc.splitlines()[0] if doc else "", {}, plugin=True)


#: The kinds of figure a report draws, by name, in the order they are chosen.
FIGURES: Registry[FigureKind] = Registry("report figure", "report.figures", check=_plugin_kind)


def _when_varied(
    name: str, key: str, shows: tuple[str, ...], condition: Callable[[Sequence[Row], str], bool]
) -> Callable[[Sequence[str], Sequence[Row], str, set[str]], Chosen]:
    """The chooser of a figure drawn once when ``key`` varies and ``condition(rows, metric)``."""

    def choose(keys: Sequence[str], rows: Sequence[Row], metric: str, covered: set[str]) -> Chosen:
        return [(name, shows)] if key in keys and condition(rows, metric) else []

    return choose


def _always(rows: Sequence[Row], metric: str) -> bool:
    return True


def _choose_generic(
    keys: Sequence[str], rows: Sequence[Row], metric: str, covered: set[str]
) -> Chosen:
    """One or two varying keys with one uncovered: one plot of them all; more: one per key
    that no other figure covers."""
    rest = [k for k in keys if k not in covered]
    if len(keys) in (1, 2) and rest:
        return [("by_" + "_x_".join(keys), tuple(keys))]
    return [("by_" + key, (key,)) for key in rest]


def _draw_curves(
    results: SweepResults, keys: tuple[str, ...], stem: Path, metric: str
) -> list[Path]:
    if not any(results.histories.values()):
        return []
    return plot_learning_curves(results.rows, results.histories, stem, metric, results.varying_keys)


FIGURES.add(
    "augmentation_matrix",
    FigureKind(
        _when_varied(
            "augmentation_matrix",
            OPS_KEY,
            (OPS_KEY,),
            lambda rows, metric: bool(augmentation_matrix(rows, metric).ops),
        ),
        lambda results, keys, stem, metric: plot_augmentation_matrix(
            augmentation_matrix(
                results.rows, metric, other_keys=configuration_keys(results.varying_keys)
            ),
            stem,
            metric,
        ),
    ),
    "Figure 5: op pairs as a heatmap, the op alone on the diagonal (augment.ops varies)",
)
FIGURES.add(
    "projection_head",
    FigureKind(
        _when_varied("projection_head", "model.head", ("model.head", "model.out_dim"), _always),
        lambda results, keys, stem, metric: plot_head_bars(
            results.rows, results.varying_keys, stem, metric
        ),
    ),
    "Figure 8: head type by projection output dimension (model.head varies)",
)
FIGURES.add(
    "batch_size_epochs",
    FigureKind(
        _when_varied(
            "batch_size_epochs",
            "train.batch_size",
            ("train.batch_size", "train.epochs"),
            _always,
        ),
        lambda results, keys, stem, metric: plot_batch_epochs(
            results.rows, results.varying_keys, stem, metric
        ),
    ),
    "Figure 9: batch size by training epochs (train.batch_size varies)",
)
FIGURES.add(
    "temperature",
    FigureKind(
        _when_varied("temperature", "loss.temperature", ("loss.temperature",), _always),
        lambda results, keys, stem, metric: plot_temperature(
            results.rows, stem, metric, results.varying_keys
        ),
    ),
    "NT-Xent temperature against the metric and the contrastive accuracy",
)


def _choose_interactions(
    keys: Sequence[str], rows: Sequence[Row], metric: str, covered: set[str]
) -> Chosen:
    """One interaction plot per crossed pair of configuration keys (every combination of
    their values measured, two or more values each), at most ``MAX_INTERACTION_FIGURES``."""
    used = [r for r in comparable(rows) if is_finite(r.get(metric))]
    config = configuration_keys(keys, used)
    chosen: Chosen = []
    for i, a in enumerate(config):
        for b in config[i + 1 :]:
            va = {format_value(r.get(a)) for r in used}
            vb = {format_value(r.get(b)) for r in used}
            cells = {(format_value(r.get(a)), format_value(r.get(b))) for r in used}
            if len(cells) == len(va) * len(vb) and len(va) >= 2 and len(vb) >= 2:
                chosen.append((f"interaction_{a}_x_{b}", (a, b)))
    return chosen[:MAX_INTERACTION_FIGURES]


#: Most interaction plots a report draws (the pairs of the first keys).
MAX_INTERACTION_FIGURES = 6

FIGURES.add(
    "interaction",
    FigureKind(
        _choose_interactions,
        lambda results, keys, stem, metric: plot_interaction(
            results.rows, keys, stem, metric, results.varying_keys
        ),
    ),
    "interaction_<a>_x_<b>: one line per value of b against a, with the interaction's test "
    "(two crossed keys)",
)
FIGURES.add(
    "by",
    FigureKind(
        _choose_generic,
        lambda results, keys, stem, metric: plot_generic(
            results.rows, list(keys), stem, metric, results.varying_keys
        ),
        fallback=True,
    ),
    "by_<key>: a line, bars or a heatmap of the keys no other figure covers",
)
FIGURES.add(
    "learning_curves",
    FigureKind(lambda *_: [("learning_curves", ())], _draw_curves, needs_data=False, fallback=True),
    "every trial's metric by epoch, coloured by configuration, styled by outcome",
)


def _chosen(
    varying_keys: Sequence[str],
    rows: Sequence[Row],
    metric: str,
    extra: Sequence[str],
    failed: list[str] | None = None,
) -> list[tuple[FigureKind, str, tuple[str, ...], str | None]]:
    """``[(kind, name, keys, plugin)]``: every kind in ``FIGURES`` then the ``extra`` plugins
    (``plugin``: the name it was given; None for a registered kind), the fallback kinds last,
    each choosing with the keys the ones before it covered. A key that takes one value in
    every row (a grid of one value) is not offered: a figure of it would compare nothing. With
    ``failed``, a plugin whose ``choose`` raises is left out and described there
    (``registry.raised``)."""
    if rows:
        varying_keys = [k for k in varying_keys if len({format_value(r.get(k)) for r in rows}) > 1]
    plugins = [FIGURES.get(n) for n in dict.fromkeys(extra) if n not in FIGURES.names()]
    entries = [*FIGURES, *plugins]
    ordered = [e for e in entries if not e.component.fallback]
    ordered += [e for e in entries if e.component.fallback]
    covered: set[str] = set()
    chosen = []
    for entry in ordered:
        plugin = entry.name if entry.plugin else None
        try:
            choices = entry.component.choose(list(varying_keys), rows, metric, covered)
        except Exception as error:
            if plugin is None or failed is None:
                raise
            failed.append(raised("figure", plugin, error))
            continue
        for name, keys in choices:
            chosen.append((entry.component, name, keys, plugin))
            covered.update(keys)
    return chosen


def choose_figures(
    varying_keys: Sequence[str],
    rows: Sequence[Row],
    metric: str = DEFAULT_RANKING_METRIC,
    extra: Sequence[str] = (),
) -> list[tuple[str, tuple[str, ...]]]:
    """``[(figure name, keys)]`` to draw for the keys this sweep varies: the paper's figures
    for the keys they cover, the ``extra`` figures (``module.path:factory`` plugins), a generic
    plot for the rest, and the learning curves (``FIGURES`` chooses them).

    Raises ``registry.UnknownComponentError`` / ``PluginImportError`` for an ``extra`` name
    that is unknown or does not import, TypeError for one that is no figure.
    """
    return [(name, keys) for _, name, keys, _ in _chosen(varying_keys, rows, metric, extra)]


def file_stem(name: str) -> str:
    """``name`` as a file name: characters other than letters, digits, ``-`` and ``_`` as ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def draw_figures(
    results: SweepResults,
    fig_dir: Path,
    metric: str,
    extra: Sequence[str] = (),
    failed: list[str] | None = None,
) -> list[Path]:
    """Draw the figures ``choose_figures`` picks into ``fig_dir`` (made if missing); those that
    need data only when a comparable trial reported ``metric``. Returns the files written.

    ``failed``: where a user's figure (an ``extra`` plugin) that raises is described (``figure
    `a.b:f` raised ValueError: ...``) instead of raising, so that one broken figure of the
    user's does not cost the report of a sweep that ran; without it, its error propagates. A
    registered figure's error always propagates (a bug of ours)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    has_data = bool(group_stats(results.rows, [], metric))
    paths: list[Path] = []
    for kind, name, keys, plugin in _chosen(
        results.varying_keys, results.rows, metric, extra, failed
    ):
        if kind.needs_data and not has_data:
            continue
        try:
            with _closing_pyplot_figures(plugin is not None):
                paths += kind.draw(results, keys, fig_dir / file_stem(name), metric)
        except Exception as error:
            if plugin is None or failed is None:
                raise
            failed.append(raised("figure", plugin, error))
    return paths


@contextlib.contextmanager
def _closing_pyplot_figures(active: bool) -> Iterator[None]:
    """Close the pyplot figures opened inside (when ``active``: around a user's figure). Our
    figures are ``Figure`` objects that nothing else holds; a user's drawn with pyplot stay in
    pyplot's list until closed, and the driver would keep every report's (matplotlib warns
    past 20)."""
    if not active:
        yield
        return
    # pyplot is looked up, not imported: a figure that used it has imported it.
    pyplot = sys.modules.get("matplotlib.pyplot")
    before = set(pyplot.get_fignums()) if pyplot is not None else set()
    try:
        yield
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            for number in set(pyplot.get_fignums()) - before:
                pyplot.close(number)


# ----------------------------------------------------------------------------- confidence: figures


def plot_forest(conf: Confidence, stem: Path) -> list[Path]:
    """``forest_figure`` written as ``stem.png`` and ``stem.svg``."""
    return _save(forest_figure(conf), stem)


def forest_figure(conf: Confidence) -> Figure:
    """Each configuration's difference from the best (paired by seed) with its 95% CI, best at
    the top: tied with the best (Holm p >= alpha) blue, below it (Holm p < alpha) red, not
    tested (one replicate) a hollow grey point without an interval; a legend names the ones
    present."""
    rows = conf.comparison_rows()
    longest = max((len(_short(r[CONFIGURATION])) for r in rows), default=0)
    fig = Figure(figsize=(6.5 + 0.06 * longest, max(2.5, 0.32 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    styles = {
        "best": ("black", "D", "the best by mean"),
        "tied": ("tab:blue", "o", f"tied with the best (Holm p ≥ {ALPHA:g})"),
        "below": ("tab:red", "o", f"below the best (Holm p < {ALPHA:g})"),
        "untested": ("tab:gray", "o", "not tested (one seed: no interval)"),
    }
    present: set[str] = set()
    for y, row in enumerate(rows):
        if row["test"] == "best":
            kind = "best"
        elif row["p_adjusted"] is None:
            kind = "untested"
        else:
            kind = "tied" if row["tied_with_best"] else "below"
        present.add(kind)
        color, marker, _ = styles[kind]
        if row["ci_low"] is not None and kind != "best":
            ax.errorbar(
                row["diff"],
                y,
                xerr=[[row["diff"] - row["ci_low"]], [row["ci_high"] - row["diff"]]],
                fmt=marker,
                color=color,
                capsize=3,
            )
        else:
            hollow = "none" if kind == "untested" else color
            ax.plot(row["diff"], y, marker, mfc=hollow, color=color)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [_short(row[CONFIGURATION]) for row in rows], fontsize=8)
    ax.invert_yaxis()
    tested = any(k in present for k in ("tied", "below"))
    how = f"{CONFIDENCE:.0%} CI, paired by seed" if tested else "single runs, no interval"
    ax.set_xlabel(f"{conf.metric}: configuration − best\n({how})")
    ax.set_title("Difference from the best" + ("" if tested else " (not tested: one seed each)"))
    handles = [
        Line2D([], [], color=styles[k][0], marker=styles[k][1], ls="",
               mfc="none" if k == "untested" else styles[k][0], label=styles[k][2])
        for k in ("best", "tied", "below", "untested")
        if k in present
    ]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _short(label: str, limit: int = 48) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def plot_importance(importance: KeyImportance, stem: Path, metric: str) -> list[Path]:
    """Bar chart of the share of the variance of ``metric`` each key, each two-way interaction
    and the seed noise explain (``stats.key_importance``), each term's F-test p beside it; with
    one seed per configuration the seed noise is not measured and no term is tested, which the
    figure says."""
    terms = importance_terms(importance)
    tests = {key: imp for key, imp in importance.main.items()}
    tests |= {f"{a} x {b}": imp for (a, b), imp in importance.interactions.items()}
    measured = importance.df_resid > 0
    colors = {"main effect": "tab:blue", "interaction": "tab:orange", "seed noise": "tab:gray"}
    fig = Figure(figsize=(7, max(2.5, 0.4 * len(terms) + 1.5)))
    ax = fig.add_subplot()
    y = np.arange(len(terms))
    ax.barh(y, [share for _, share, _ in terms], color=[colors[k] for _, _, k in terms])
    for i, (name, share, kind) in enumerate(terms):
        if kind == "seed noise" and not measured:
            label = " not measured (one seed per configuration)"
        else:
            term = tests.get(name)
            p = "" if term is None or term.p is None else f"  p {term.p:.2g}"
            label = f" {share:.2f}{p}"
        ax.text(share, i, label, va="center", fontsize=8)
    ax.set_yticks(y, [_short(name) for name, _, _ in terms], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xlabel(f"share of the variance of {metric}")
    ax.set_title("Importance of each swept key (blue), interactions (orange)")
    _footnote(
        fig,
        "p: F-test of the term against the seed noise (two-way ANOVA, type II)."
        if measured
        else "One seed per configuration: no seed noise to test against, so no p.",
    )
    return _save(fig, stem)


def draw_confidence_figures(conf: Confidence, fig_dir: Path) -> list[Path]:
    """``comparisons_forest`` (two or more configurations) and ``importance`` (a key varies
    and some trial has the metric)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if conf.best is not None and len(conf.table) >= 2:
        paths += plot_forest(conf, fig_dir / "comparisons_forest")
    if conf.importance is not None:
        paths += plot_importance(conf.importance, fig_dir / "importance", conf.metric)
    return paths
