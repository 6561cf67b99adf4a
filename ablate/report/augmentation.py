"""Op lists in the results table: how a row's ``augment.ops`` reads, by name and by the
paper's meaning, and the Figure 5 matrix of op pairs (SimCLR, Chen et al., 2020).

Rows write an op list as ``crop+color`` (``vocabulary.format_value``) or hold the list itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ablate.ops import BUILTIN as AUGMENTATION_OPS  # not via ablate.config: it loads ablate.data
from ablate.ops import FIGURE5 as FIGURE5_OPS
from ablate.report.table import Row, comparable, pairing_key
from ablate.stats import describe
from ablate.vocabulary import COMPARABLE_STATUSES, DEFAULT_RANKING_METRIC, OPS_KEY, format_value

#: Ops that ride with another under the paper's names: its "crop" is a random crop and resize
#: *with a random horizontal flip* (Chen et al., 2020, Appendix A), so [crop, flip] is its crop.
RIDES_WITH: dict[str, str] = {"flip": "crop"}


def parse_ops(value: Any) -> list[str]:
    """``["crop", "color"]`` or ``"crop+color"`` -> ``["crop", "color"]``."""
    if isinstance(value, str):
        return [op for op in value.split("+") if op and op != "none"]
    return [str(op) for op in value]


def paper_ops(value: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """An op list by what the paper's names mean: ``(its ops in order without riders, the
    riders)``; ``RIDES_WITH`` names them (``[crop, flip, color]`` -> ``((crop, color),
    {flip})``: the paper's crop + colour)."""
    ops = parse_ops(value)
    riders = frozenset(op for op in ops if RIDES_WITH.get(op) in ops)
    return tuple(op for op in ops if op not in riders), riders


def op_meanings(rows: Sequence[Row]) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
    """``{id(row): (set of its paper ops, riders)}`` of the rows with ``augment.ops``."""
    meanings = {}
    for row in rows:
        if row.get(OPS_KEY) is not None:
            ops, riders = paper_ops(row[OPS_KEY])
            meanings[id(row)] = (frozenset(ops), riders)
    return meanings


@dataclass
class AugmentationMatrix:
    """Figure 5: row = first op, column = second op, diagonal = the op alone.

    ``mean``/``std``/``count`` are (n, n) with NaN/0 where the sweep has no trial: the mean,
    sample std and number of *seeds* (a seed's value is the mean of its trials in the cell, so
    the std is seed noise, not the spread over other keys); ``row_mean`` (n,) averages the
    row's cells (the paper's last column); ``averaged``: the other keys whose values a seed's
    value averages over.
    """

    ops: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    row_mean: np.ndarray
    averaged: list[str] = field(default_factory=list)

    def cell(self, first: str, second: str | None = None) -> float:
        i = self.ops.index(first)
        return float(self.mean[i, self.ops.index(second or first)])


def augmentation_matrix(
    rows: Iterable[Row],
    metric: str = DEFAULT_RANKING_METRIC,
    key: str = OPS_KEY,
    statuses: Sequence[str] = COMPARABLE_STATUSES,
    other_keys: Sequence[str] = (),
) -> AugmentationMatrix:
    """Results table -> the Figure 5 matrix (pure: no I/O). Trials with 1 or 2 ops count.

    Statistics are over seeds (``table.pairing_key``: ``seed``, else ``replicate``, else each
    trial its own): the trials of one seed in a cell (other keys varying) are averaged first.
    ``other_keys``: the sweep's other configuration keys, to name those a cell averages over.
    """
    used = []
    for row in comparable(rows, statuses):
        value, score = row.get(key), row.get(metric)
        if value is None or score is None or not math.isfinite(score):
            continue
        if len(parse_ops(value)) in (1, 2):
            used.append(row)
    pair_by = pairing_key(used)
    per_seed: dict[tuple[str, str], dict[Any, list[float]]] = {}
    seen: dict[str, set[str]] = {}
    for index, row in enumerate(used):
        ops = parse_ops(row[key])
        cell = (ops[0], ops[-1])
        pid = row[pair_by] if pair_by else index
        per_seed.setdefault(cell, {}).setdefault(pid, []).append(float(row[metric]))
        for other in other_keys:
            if other != key:
                seen.setdefault(other, set()).add(format_value(row.get(other)))
    cells = {
        cell: [math.fsum(v) / len(v) for v in by_seed.values()]
        for cell, by_seed in per_seed.items()
    }
    present = {op for pair in cells for op in pair}
    order = [op for op in (*FIGURE5_OPS, *AUGMENTATION_OPS) if op in present]
    order = list(dict.fromkeys(order)) + sorted(present - set(order))
    n = len(order)
    mean = np.full((n, n), np.nan)
    std = np.full((n, n), np.nan)
    count = np.zeros((n, n), dtype=np.int64)
    for (first, second), values in cells.items():
        i, j = order.index(first), order.index(second)
        summary = describe(values)
        assert summary is not None
        mean[i, j], count[i, j] = summary.mean, summary.n
        std[i, j] = np.nan if summary.std is None else summary.std
    row_mean = np.full(n, np.nan)
    for i in range(n):
        if np.isfinite(mean[i]).any():
            row_mean[i] = float(np.nanmean(mean[i]))
    averaged = [k for k in other_keys if len(seen.get(k, ())) > 1]
    return AugmentationMatrix(order, mean, std, count, row_mean, averaged)
