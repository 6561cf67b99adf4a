"""A report figure and a report finding written outside the package, named in a spec's ``report``.

The report (``ablate.report``) draws the paper's figures and checks the paper's findings on every
sweep; a sweep adds its own by import path (the sweep runs from the repository root, so
``examples`` imports)::

    report:
      figures: [examples.my_figure:seed_spread]
      findings: [examples.my_figure:best_beats_median]

- ``seed_spread(results, metric) -> Figure | None``: the ranking metric of every trial, one
  column per configuration (highest mean first) and one line per seed across them. Seeds are the
  pairing of every comparison the report makes (``ablate.stats.compare``): parallel lines mean
  the seed shifts every configuration alike, which pairing removes; crossing lines mean the
  ranking itself changes from seed to seed. Written as ``report/figures/
  examples_my_figure_seed_spread.png`` and ``.svg``.
- ``best_beats_median(rows, varying_keys, metric, mode) -> Finding``: the best configuration
  (by mean, as ``summary.md`` ranks) against the median-ranked one, paired by seed, and the
  verdict of ``ablate.stats.verdict`` (holds / contradicted / undecided (add k seeds) /
  untestable). The best is picked on the same seeds it is then tested on, so its advantage is
  optimistic (the winner's curse); the report's own comparisons of every configuration with
  the best are one Holm family for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from ablate.report import (
    NOT_COVERED,
    Finding,
    Row,
    SweepResults,
    configuration_keys,
    configuration_label,
    labelled_samples,
    rank_configurations,
)
from ablate.stats import compare, describe, verdict

SOURCE = "examples/my_figure.py"


def _ranked_samples(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str
) -> tuple[list[str], dict[str, dict[Any, float]], dict[str, list[str]]]:
    """The configuration labels best first, ``{label: {seed: value}}`` and ``{label: run names}``
    of the comparable trials with a value of ``metric``."""
    keys = configuration_keys(varying_keys, rows)

    def label(row: Row) -> str:
        return configuration_label([row.get(k) for k in keys], keys)

    samples, names = labelled_samples(rows, label, metric)
    ranked = [
        configuration_label(list(c.values), keys)
        for c in rank_configurations(rows, keys, metric, mode)
    ]
    return [c for c in ranked if c in samples], samples, names


def seed_spread(results: SweepResults, metric: str) -> Figure | None:
    """Each trial's ``metric`` by configuration (highest mean first: a figure is not told the
    ranking's mode), one line per seed; None when no comparable trial reported it."""
    order, samples, _ = _ranked_samples(results.rows, results.varying_keys, metric, "max")
    if not order:
        return None
    seeds = sorted({seed for label in order for seed in samples[label]}, key=str)
    figure = Figure(figsize=(max(4.0, 1.1 * len(order) + 2.0), 3.6))
    axes = figure.add_subplot()
    positions = range(len(order))
    for seed in seeds:
        values = [samples[label].get(seed) for label in order]
        xs = [x for x, v in zip(positions, values, strict=True) if v is not None]
        ys = [v for v in values if v is not None]
        axes.plot(xs, ys, marker="o", alpha=0.7, label=f"seed {seed}")
    means = [describe(samples[label].values()).mean for label in order]
    axes.scatter(positions, means, marker="_", s=600, color="black", zorder=3, label="mean")
    axes.set_xticks(list(positions), order, rotation=30, ha="right")
    axes.set_xlabel(", ".join(configuration_keys(results.varying_keys, results.rows)))
    axes.set_ylabel(metric)
    axes.set_title("Every seed across the configurations (highest mean first)")
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return figure


def best_beats_median(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str
) -> Finding:
    """The best configuration beats the median configuration (paired by seed)."""
    claim = "the best configuration beats the median configuration"
    order, samples, names = _ranked_samples(rows, varying_keys, metric, mode)
    if len(order) < 3:
        return Finding(claim, SOURCE, NOT_COVERED, "fewer than three configurations have a value")
    best, median = order[0], order[len(order) // 2]  # of an even count, the lower middle
    comparison = compare(samples[best], samples[median])
    judged = verdict(comparison, "greater" if mode == "max" else "less")
    evidence = (
        f"{metric}: best {best} {describe(samples[best].values()).mean:.4f}, median "
        f"({order.index(median) + 1} of {len(order)}) {median} "
        f"{describe(samples[median].values()).mean:.4f}"
    )
    return Finding(
        claim,
        SOURCE,
        str(judged),
        evidence,
        judged.label,
        {f"{best} − {median}": comparison},
        [*names[best], *names[median]],
    )
