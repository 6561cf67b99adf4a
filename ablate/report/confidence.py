"""How sure a sweep is: every configuration against the best (paired by seed, Holm), the
importance of each swept key and the synergy of each op composition (``assess``).

Pure: computed from the results table's rows with ``ablate.stats``; ``markdown`` writes it as
text, ``figures`` draws it, ``build`` writes ``Confidence.comparison_rows`` as
``comparisons.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ablate.report.augmentation import paper_ops
from ablate.report.table import (
    Row,
    comparable,
    configuration_keys,
    configuration_label,
    is_finite,
    labelled_samples,
)
from ablate.stats import (
    BestFamily,
    KeyImportance,
    Synergy,
    Verdict,
    describe,
    holm_family,
    key_importance,
    rank,
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
    comparable replicates any configuration has.
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
    )


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
