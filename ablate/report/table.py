"""The results table: one row per trial, written as Parquet, grouped into configurations.

A row (``Row``) is one trial of a sweep as ``ablate.tracking.load_results`` reads it back:
its ids, ``status``, each varying key's value and the metrics, None where absent. Means use
comparable rows only (``vocabulary.COMPARABLE_STATUSES``: a trial stopped early by ASHA has
fewer epochs). A configuration is one value of each configuration key (the varying keys but
the seed); ``rank_configurations`` is the one ranking of configurations, used by the report's
``summary.md`` and by the sweep's ``summary.json`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ablate.stats import GroupStats, describe, finite, improvement_sign, samples_by_config
from ablate.vocabulary import COMPARABLE_STATUSES, format_value

Row = dict[str, Any]


@dataclass
class SweepResults:
    """The trials of one sweep execution: what a report is built from.

    ``rows``: one dict per trial (``trial_id``, ``run_id``, ``run_name``, ``replicate``, ``seed``,
    ``status``, ``status_detail``, ``epochs_planned``, each varying key, and the metrics of
    ``vocabulary.RESULT_METRICS`` and ``COMPUTE_METRICS``, None where absent). ``histories``:
    ``run_id -> [(epoch, value)]`` of the ranking metric, epochs ascending. ``num_classes``, when
    known, hides top-k accuracies with k >= it (always 1.0). ``description``: the question the
    sweep asks (its spec's ``description``; empty when it has none), which ``summary.md``
    opens with.
    """

    experiment: str
    parent_run_id: str
    rows: list[Row]
    varying_keys: list[str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    num_classes: int | None = None
    description: str = ""


def write_results_table(rows: Sequence[Row], path: Path, metadata: dict[str, str]) -> pa.Table:
    """Rows -> Parquet with one type per column (mixed numbers widen to float, else text)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    arrays, fields = [], []
    for name in columns:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            kind = pa.bool_()
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            kind = pa.int64()
        elif present and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
        ):
            kind = pa.float64()
            values = [float(v) if v is not None else None for v in values]
        else:
            kind = pa.string()
            values = [None if v is None else v if isinstance(v, str) else str(v) for v in values]
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(name, kind))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    pq.write_table(table, path)
    return table


# ----------------------------------------------------------------------------- aggregation


def comparable(rows: Iterable[Row], statuses: Sequence[str] = COMPARABLE_STATUSES) -> list[Row]:
    """The rows whose status is one of ``statuses``."""
    return [row for row in rows if row.get("status") in statuses]


def group_stats(
    rows: Iterable[Row],
    keys: Sequence[str],
    metric: str,
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> dict[tuple[Any, ...], GroupStats]:
    """``GroupStats`` of ``metric`` per combination of ``keys`` (over replicates and the rest),
    for groups with a finite value."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in comparable(rows, statuses):
        if row.get(metric) is None:
            continue
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row[metric])
    described = {key: describe(values) for key, values in groups.items()}
    return {key: value for key, value in described.items() if value is not None}


def pairing_key(rows: Sequence[Row]) -> str | None:
    """What replicates pair by: ``seed`` when every row has one, else ``replicate``, else None
    (each row its own replicate)."""
    return next((k for k in ("seed", "replicate") if all(r.get(k) is not None for r in rows)), None)


def seed_group_stats(
    rows: Iterable[Row],
    keys: Sequence[str],
    metric: str,
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> dict[tuple[Any, ...], GroupStats]:
    """``GroupStats`` of ``metric`` per combination of ``keys`` over *seeds*: the values of one
    seed (other keys varying within the group) are averaged first, so n counts seeds and a ±
    is seed noise, not the spread over the other keys. Rows without a seed or replicate are each
    their own replicate (``pairing_key``)."""
    used = [r for r in comparable(rows, statuses) if is_finite(r.get(metric))]
    pair_by = pairing_key(used)
    groups: dict[tuple[Any, ...], dict[Any, list[float]]] = {}
    for index, row in enumerate(used):
        pid = row[pair_by] if pair_by else index
        group = tuple(row.get(k) for k in keys)
        groups.setdefault(group, {}).setdefault(pid, []).append(float(row[metric]))
    described = {
        group: describe(math.fsum(v) / len(v) for v in by_seed.values())
        for group, by_seed in groups.items()
    }
    return {group: value for group, value in described.items() if value is not None}


def averaged_keys(
    rows: Iterable[Row],
    label: Callable[[Row], Any],
    keys: Sequence[str],
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> dict[Any, list[str]]:
    """``{label: the keys of ``keys`` that take more than one value among its comparable rows}``:
    what a mean of that label averages over besides seeds."""
    values: dict[Any, dict[str, set[str]]] = {}
    for row in comparable(rows, statuses):
        name = label(row)
        if name is None:
            continue
        seen = values.setdefault(name, {})
        for key in keys:
            seen.setdefault(key, set()).add(format_value(row.get(key)))
    return {name: [k for k in keys if len(seen.get(k, ())) > 1] for name, seen in values.items()}


def spread_text(n: int, over: Sequence[str] = ()) -> str:
    """What a mean (± std) is taken over: ``"± std over 3 seeds; each seed a mean over
    model.head"``, ``"1 seed; mean over model.head"``, ``"1 seed"``."""
    text = "1 seed" if n <= 1 else f"± std over {n} seeds"
    if over:
        text += f"; {'mean' if n <= 1 else 'each seed a mean'} over {', '.join(over)}"
    return text


def sorted_values(values: Iterable[Any]) -> list[Any]:
    """The distinct ``values`` sorted: numerically when all are numbers, else by their text."""
    values = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=str)


def is_finite(value: Any) -> bool:
    """A number (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_name(row: Row) -> str:
    """How the report names a trial: its run name, else its trial id."""
    return str(row.get("run_name") or row.get("trial_id") or "?")


def labelled_samples(
    rows: Sequence[Row], label: Callable[[Row], Any], metric: str
) -> tuple[dict[Any, dict[Any, float]], dict[Any, list[str]]]:
    """``({label: {seed: value}}, {label: run names})`` of the comparable rows with a finite
    ``metric`` whose ``label(row)`` is not None (``stats.samples_by_config`` on that label).

    Pairs by ``seed`` when every used row has one, else by ``replicate``; without either each
    row is its own pairing id, so comparisons fall back to Welch's unpaired t.
    """
    used = [r for r in comparable(rows) if is_finite(r.get(metric)) and label(r) is not None]
    pair_by = pairing_key(used)
    keyed = [
        {**r, "_label": label(r), "_pair": r[pair_by] if pair_by else index}
        for index, r in enumerate(used)
    ]
    table = {k[0]: v for k, v in samples_by_config(keyed, ["_label"], metric, "_pair").items()}
    names: dict[Any, list[str]] = {}
    for r in keyed:
        names.setdefault(r["_label"], []).append(run_name(r))
    return table, names


def configuration_keys(varying_keys: Sequence[str], rows: Sequence[Row] = ()) -> list[str]:
    """The keys that make a configuration: the varying keys except ``train.seed`` (seeds are
    the replicates every configuration is paired by) and, given the ``rows``, except keys that
    take one value in all of them (a grid of one value names no difference)."""
    keys = [k for k in varying_keys if k != "train.seed"]
    if not rows:
        return keys
    return [k for k in keys if len({format_value(r.get(k)) for r in rows}) > 1]


def configuration_label(values: Sequence[Any], keys: Sequence[str]) -> str:
    """``crop+color`` for one key, ``augment.ops=crop+color, model.head=linear`` for more,
    ``all trials`` for none."""
    if not keys:
        return "all trials"
    if len(keys) == 1:
        return format_value(values[0])
    return ", ".join(f"{k}={format_value(v)}" for k, v in zip(keys, values, strict=True))


def sorted_configs(rows: Sequence[Row], keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """The configurations of ``rows`` in a stable order (each key's values sorted)."""
    configs = list(dict.fromkeys(tuple(row.get(k) for k in keys) for row in rows))
    return sorted(configs, key=lambda c: tuple(value_order(v) for v in c))


def value_order(value: Any) -> tuple[int, float, str]:
    """A sort key that puts numbers first, by value, then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


@dataclass(frozen=True)
class RankedConfiguration:
    """One configuration in the ranking (``rank_configurations``).

    ``values``: its value of each key, as its first row holds them; ``members``: the indices
    of its rows in the ``rows`` ranked, ascending; ``stats``: ``stats.describe`` of the metric
    over its comparable members (None when none has a finite value).
    """

    values: tuple[Any, ...]
    members: tuple[int, ...]
    stats: GroupStats | None


def rank_configurations(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    mode: str = "max",
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> list[RankedConfiguration]:
    """The configurations of ``rows`` (one per combination of the values of ``keys``), best
    first: the one ranking of ``summary.json`` (``sweep.summarize``) and ``summary.md``.

    ``rows``: mappings with each of ``keys`` (a missing key reads as None), ``status`` and
    ``metric`` (None or non-finite: no value). A configuration scores the mean of ``metric``
    over its rows whose status is in ``statuses``; higher ranks first with ``mode`` ``"max"``,
    lower with ``"min"``; configurations without such a value rank last. Ties, and the
    configurations without a value, are ordered by their values (``value_order``: numbers by
    value, then text as ``format_value`` writes it), so the ranking does not depend on the
    order of ``rows`` nor on whether an op list is a list or its ``crop+color`` text.

    Raises ValueError for a mode other than ``"max"`` / ``"min"``.
    """
    sign = improvement_sign(mode)
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(tuple(_hashable(row.get(k)) for k in keys), []).append(index)
    ranked = []
    for members in groups.values():
        values = tuple(rows[members[0]].get(k) for k in keys)
        scores = finite(rows[i].get(metric) for i in members if rows[i].get("status") in statuses)
        # fsum: the exact sum, so the mean of equal values is equal whatever their order.
        score = -sign * math.fsum(scores) / len(scores) if scores else math.inf
        order = (not scores, score, tuple(value_order(v) for v in values))
        ranked.append((order, RankedConfiguration(values, tuple(members), describe(scores))))
    return [configuration for _, configuration in sorted(ranked, key=lambda item: item[0])]


def _hashable(value: Any) -> Hashable:
    """A value as a group key: lists (op lists, JSON arrays) become tuples, dicts item tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


def best_configurations(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    metric: str,
    mode: str = "max",
    top: int = 10,
    also: Sequence[str] = (),
) -> list[tuple[tuple[Any, ...], dict[str, GroupStats | None]]]:
    """The ``top`` configurations (values of ``varying_keys``) by ``rank_configurations``:
    mean ``metric`` of comparable replicates in the direction of ``mode``, configurations
    without a comparable value last. Each comes with the ``GroupStats`` of ``metric`` and
    ``also`` over its comparable rows. Raises ValueError for a mode other than ``"max"`` /
    ``"min"``.
    """
    best = []
    for configuration in rank_configurations(rows, varying_keys, metric, mode)[:top]:
        members = comparable(rows[i] for i in configuration.members)
        stats = {m: describe(r.get(m) for r in members) for m in dict.fromkeys((metric, *also))}
        best.append((configuration.values, stats))
    return best
