"""How sure a sweep is: every configuration against the best (paired by seed, Holm), the
importance of each swept key and the synergy of each op composition (``assess``).

Pure: computed from the results table's rows with ``ablate.stats``; ``markdown`` writes it as
text, ``figures`` draws it, ``build`` writes ``Confidence.comparison_rows`` as
``comparisons.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ablate.report.augmentation import paper_ops
from ablate.report.table import (
    Row,
    comparable,
    configuration_keys,
    configuration_label,
    is_finite,
    labelled_samples,
    pairing_key,
    seed_group_stats,
    sorted_values,
)
from ablate.stats import (
    ALPHA,
    BestFamily,
    Interaction,
    KeyImportance,
    RankAgreement,
    Synergy,
    Verdict,
    describe,
    difference_of_differences,
    holm_family,
    key_importance,
    rank,
    rank_agreement,
    samples_by_config,
    synergy,
    verdict,
    versus_best,
)
from ablate.vocabulary import OPS_KEY

#: Key of a configuration's label in the comparisons table.
CONFIGURATION = "configuration"


def better(mode: str) -> str:
    """The ``stats.verdict`` claim "A is better than B" under ``mode``."""
    return "greater" if mode == "max" else "less"


@dataclass
class Confidence:
    """How sure the sweep is: every configuration against the best, the importance of each
    swept key, and the synergy of each op composition (``assess``).

    ``keys``: the configuration keys; ``table``: ``{configuration label: {seed: value}}``;
    ``best``: ``stats.versus_best`` of it (None without a finite value); ``importance``:
    ``stats.key_importance`` (None without keys or values); ``synergies``: ``{"a+b":
    (stats.Synergy, Verdict)}``, Holm over all compositions; ``replicates``: the most
    comparable replicates any configuration has; ``contrasts``: ``{(key, by):
    stats.Interaction}`` for each crossed pair of keys with two values each (the difference of
    differences, paired by seed); ``agreement``: ``stats.rank_agreement`` of the configurations'
    means on ``metric`` and on ``second_metric`` (the linear probe when ranking by kNN, and
    the other way round; None when the rows lack it).
    """

    metric: str
    mode: str
    keys: list[str]
    table: dict[str, dict[Any, float]]
    names: dict[str, list[str]]
    best: BestFamily | None
    importance: KeyImportance | None
    synergies: dict[str, tuple[Synergy, Verdict]]
    replicates: int
    contrasts: dict[tuple[str, str], Interaction] = field(default_factory=dict)
    agreement: RankAgreement | None = None
    second_metric: str | None = None

    @property
    def tested(self) -> bool:
        """Some configuration has two comparable replicates: differences can be tested."""
        return self.replicates >= 2

    @property
    def noise_dominates(self) -> bool:
        """Seed noise is the largest share of the metric's variance and no swept key or
        interaction is significant at ``stats.ALPHA``: the sweep cannot tell its
        configurations apart."""
        imp = self.importance
        if imp is None or not self.tested or imp.df_resid <= 0:
            return False
        terms = [*imp.main.values(), *imp.interactions.values()]
        if any(t.p is not None and t.p < ALPHA for t in terms):
            return False
        return imp.residual >= max((t.share for t in terms), default=0.0)

    def comparison_rows(self) -> list[Row]:
        """The comparisons table: one row per configuration, best first, against the best
        (``diff`` = configuration - best, paired by seed; ``verdict``: of the claim "the best
        is better than this configuration")."""
        if self.best is None:
            return []
        groups = {k: describe(v.values()) for k, v in self.table.items()}
        rows: list[Row] = []
        for label in rank(groups, self.mode):
            s = groups[label]
            c = self.best.comparisons.get(label)
            worse = "less" if self.mode == "max" else "greater"
            rows.append(
                {
                    CONFIGURATION: label,
                    "metric": self.metric,
                    "mean": s.mean if s else None,
                    "std": s.std if s else None,
                    "n": s.n if s else 0,
                    "diff": c.diff if c else 0.0,
                    "ci_low": c.ci_low if c else None,
                    "ci_high": c.ci_high if c else None,
                    "p": c.p if c else None,
                    "p_adjusted": c.p_adjusted if c else None,
                    "p_permutation": c.p_permutation if c else None,
                    "effect_size": c.effect_size if c else None,
                    "n_pairs": c.n if c else None,
                    "test": c.test if c else "best",
                    "family_size": c.family_size if c else None,
                    "tied_with_best": label in self.best.tied,
                    "verdict": str(verdict(c, worse)) if c else "best",
                }
            )
        return rows


def assess(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str = "max"
) -> Confidence:
    """The ``Confidence`` of a results table: pure, tolerant of missing metrics, failed trials,
    one replicate and nothing varying (the parts that cannot be computed are None / empty)."""
    keys = configuration_keys(varying_keys, rows)

    def label(row: Row) -> str:
        return configuration_label([row.get(k) for k in keys], keys)

    table, names = labelled_samples(rows, label, metric)
    best = versus_best(table, mode) if table else None
    used = [r for r in comparable(rows) if is_finite(r.get(metric))]
    importance = key_importance(used, keys, metric) if keys and used else None
    second = second_metric(metric, rows)
    agreement = None
    if second is not None and len(table) >= 2:
        means = {
            name: {configuration_label(c, keys): s.mean for c, s in stats.items()}
            for name, stats in (
                (metric, seed_group_stats(rows, keys, metric)),
                (second, seed_group_stats(rows, keys, second)),
            )
        }
        agreement = rank_agreement(means[metric], means[second], mode)
    return Confidence(
        metric,
        mode,
        keys,
        table,
        names,
        best,
        importance,
        _synergies(rows, varying_keys, metric, mode),
        max((len(v) for v in table.values()), default=0),
        interaction_contrasts(used, keys, metric),
        agreement if agreement is not None and agreement.n >= 2 else None,
        second,
    )


def second_metric(metric: str, rows: Sequence[Row]) -> str | None:
    """The metric a ranking is checked against: the linear probe of the same split for a kNN
    metric (``val/knn_top1`` -> ``val/probe_top1``), kNN for a probe metric; None for another
    metric or when no comparable row has it."""
    if "knn" in metric:
        other = metric.replace("knn", "probe")
    elif "probe" in metric:
        other = metric.replace("probe", "knn")
    else:
        return None
    return other if any(is_finite(r.get(other)) for r in comparable(rows)) else None


def interaction_contrasts(
    rows: Sequence[Row], keys: Sequence[str], metric: str
) -> dict[tuple[str, str], Interaction]:
    """The difference of differences of each crossed pair of keys with exactly two values each
    (other keys averaged per seed), when replicates pair by seed or replicate."""
    pair_by = pairing_key(rows)
    if pair_by is None:
        return {}
    found: dict[tuple[str, str], Interaction] = {}
    for i, key in enumerate(keys):
        for by in keys[i + 1 :]:
            table = samples_by_config(rows, [key, by], metric, pair_by)
            levels = sorted_values(c[0] for c in table)
            by_levels = sorted_values(c[1] for c in table)
            if len(levels) != 2 or len(by_levels) != 2 or len(table) != 4:
                continue
            found[(key, by)] = difference_of_differences(
                table, key, tuple(levels), by, tuple(by_levels)
            )
    return found


def _synergies(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str
) -> dict[str, tuple[Synergy, Verdict]]:
    """Each composition of two ops (a then b, by paper meaning) whose single ops were both
    measured: ``stats.synergy`` against the better single op, Holm over the compositions."""
    if OPS_KEY not in varying_keys:
        return {}

    def ops(row: Row) -> str | None:
        if row.get(OPS_KEY) is None:
            return None
        core = paper_ops(row[OPS_KEY])[0]
        return "+".join(core) if len(core) in (1, 2) and len(set(core)) == len(core) else None

    table, _ = labelled_samples(rows, ops, metric)
    found = {
        label: synergy(table, label, tuple(label.split("+")), mode)
        for label in table
        if "+" in label and all(op in table for op in label.split("+"))
    }
    family = holm_family({label: s.comparison for label, s in found.items()})
    return {
        label: (replace(s, comparison=family[label]), verdict(family[label], better(mode)))
        for label, s in found.items()
    }


def importance_terms(importance: KeyImportance) -> list[tuple[str, float, str]]:
    """``(name, share, kind)`` of every main effect, interaction and the seed noise."""
    terms = [(key, imp.share, "main effect") for key, imp in importance.main.items()]
    terms += [
        (f"{a} x {b}", imp.share, "interaction") for (a, b), imp in importance.interactions.items()
    ]
    terms.append(("seed noise (within configurations)", importance.residual, "seed noise"))
    return terms
