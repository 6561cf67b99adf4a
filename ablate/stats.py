"""Statistics of a sweep's results: what a group of replicates says, and how groups rank.

Pure functions of numbers (no MLflow, no Ray); distributions come from ``scipy.stats``.

The ranking rule, used by the sweep's closing table, ``summary.json`` and the report alike:
a configuration's statistics use its *comparable* replicates only (``vocabulary.
COMPARABLE_STATUSES``: a trial stopped early reports an earlier epoch's value); configurations
are ordered by that mean in the direction of ``mode``; configurations with no comparable value
come last, in their given order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats as scipy_stats

K = TypeVar("K", bound=Hashable)

#: Confidence level of every interval the report states.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class GroupStats:
    """Mean, sample std, n and the t-interval of the mean of one group's finite values.

    ``std`` and the interval are None for a single value: one replicate has no spread.
    """

    mean: float
    std: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    def __str__(self) -> str:
        if self.std is None:
            return f"{self.mean:.4f} (n=1)"
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"

    @property
    def ci_half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN and inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values: Iterable[float | None], confidence: float = CONFIDENCE) -> GroupStats | None:
    """``GroupStats`` of the finite ``values``; None when there is none.

    The interval is Student's t interval of the mean (``scipy.stats.t``), ``n - 1`` degrees
    of freedom; with zero spread it collapses to the mean.
    """
    data = finite(values)
    if not data:
        return None
    mean = float(np.mean(data))
    if len(data) == 1:
        return GroupStats(mean, None, 1)
    std = float(np.std(data, ddof=1))
    half = (
        float(scipy_stats.t.ppf(0.5 + confidence / 2, len(data) - 1)) * std / math.sqrt(len(data))
    )
    return GroupStats(mean, std, len(data), mean - half, mean + half)


def rank(groups: Mapping[K, GroupStats | None], mode: str) -> list[K]:
    """The keys of ``groups`` best first by mean (``mode`` ``"max"`` or ``"min"``); groups
    without statistics last, in their given order. Raises ValueError for another mode."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    sign = -1.0 if mode == "max" else 1.0
    measured = [k for k, s in groups.items() if s is not None]
    unmeasured = [k for k, s in groups.items() if s is None]
    return sorted(measured, key=lambda k: sign * groups[k].mean) + unmeasured
