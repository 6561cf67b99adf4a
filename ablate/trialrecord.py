"""One trial's typed record, from the plan to the results.

``PlannedTrial`` is a trial as the plan holds it (``ablate.spec.SweepPlan.trials``): the
values it varies, its replicate, and its full ``ablate.config.TrialConfig``, validated once
when the plan is built. It becomes a plain dict only at Ray Tune's boundary
(``PlannedTrial.param``: the param dict a searcher hands Tune, and an entry of ``plan.json``).

``TrialRecord`` is the same trial as the results see it (``ablate.sweep.trial_records``): its
outcome, epochs and last metrics, one record per trial, the entries of ``summary.json``'s
``trials`` (``TrialRecord.to_json``) and the input of its ranked rows. A record also reads as
that JSON entry (a read-only ``Mapping``: ``record["status"] == record.status``).

Tune's last result of a trial comes from its saved experiment state when a sweep is resumed,
and that state is saved every few seconds: a trial that reported its last epoch after the last
save, then was resumed from its final checkpoint (so it ran, and reported, nothing more), ends
with a last result epochs short of what it ran. Two records the trial itself wrote say how far
it got: the result lines Tune's JSON logger appended to ``<trial dir>/result.json`` as each
epoch arrived, and the metrics of the latest checkpoint in Ray Train's
``checkpoint_manager_snapshot.json`` of the trial's Train run. ``newest_recorded_result``
returns the one with the highest ``epoch``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ablate.config import TrialConfig

#: Tune's per-trial result log (``ray.tune.logger.JsonLoggerCallback``).
RESULT_FILE = "result.json"

#: The keys of a Tune param dict, the one plain form of a planned trial (``PlannedTrial.param``).
PARAM_KEYS: tuple[str, ...] = ("config", "varying", "replicate", "sweep")


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a plan.

    ``config``: the trial's full configuration (base <- ``varying`` <- the replicate's seed),
    validated; ``varying``: dotted trial-config key -> the value this trial takes, typed as the
    schema validated it (``1e-1`` a float; an augmentation preset keeps its name) and in spec
    order; ``replicate``: 0-based index of the seed (``train.seed`` = base seed + replicate);
    ``sweep``: the sweep's name.
    """

    config: TrialConfig
    varying: dict[str, Any]
    replicate: int
    sweep: str

    @property
    def seed(self) -> int:
        """``train.seed`` of the trial."""
        return self.config.train.seed

    @property
    def epochs(self) -> int:
        """``train.epochs`` of the trial."""
        return self.config.train.epochs

    def param(self) -> dict[str, Any]:
        """The trial as Tune's param dict (what a searcher suggests, what ``plan.json`` lists):
        ``{"config": the TrialConfig as JSON, "varying": ..., "replicate": ..., "sweep": ...}``;
        a new dict each call."""
        return {
            "config": self.config.model_dump(mode="json"),
            "varying": copy.deepcopy(self.varying),
            "replicate": self.replicate,
            "sweep": self.sweep,
        }

    def key(self) -> str:
        """The trial's identity within a plan: its varying values and replicate, as JSON."""
        return planned_key(self.varying, self.replicate)


def planned_key(varying: Mapping[str, Any], replicate: int) -> str:
    """``[varying, replicate]`` as JSON with sorted keys: how a returned trial is matched to its
    planned one (``PlannedTrial.key``, ``ablate.sweep.trial_tally``)."""
    return json.dumps([dict(varying), replicate], sort_keys=True, default=str)


@dataclass(frozen=True)
class TrialRecord(Mapping[str, Any]):
    """What one trial came to: an entry of ``summary.json``'s ``trials`` (``to_json``, the
    fields in this order) and the unit the summary's rows group and rank.

    ``trial_id``: Tune's id; ``varying``, ``replicate``: as planned; ``seed``: its
    ``train.seed``; ``status``: its outcome (``ablate.vocabulary.TRIAL_STATUSES``); ``epoch``:
    the last epoch it reported (None: none); ``epochs``: the epochs it was planned to run;
    ``overhead_seconds``: trial start to first training step (None: not measured); ``error``:
    the error line of a failed trial, else None; ``metrics``: the last value of each metric it
    reported that the summary keeps (name -> float).
    """

    trial_id: str
    varying: dict[str, Any]
    replicate: int
    seed: int
    status: str
    epoch: int | float | None
    epochs: int
    overhead_seconds: float | None
    error: str | None
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """The record as ``summary.json`` holds it (a new dict)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in _RECORD_FIELDS}

    # A read-only Mapping of the same keys, for code written against summary.json's entries.
    def __getitem__(self, key: str) -> Any:
        if key not in _RECORD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_RECORD_NAMES)

    def __len__(self) -> int:
        return len(_RECORD_NAMES)


_RECORD_FIELDS = dataclasses.fields(TrialRecord)
_RECORD_NAMES = tuple(f.name for f in _RECORD_FIELDS)


def newest_recorded_result(trial_dir: str | None, train_run_dir: str | None) -> dict[str, Any]:
    """The recorded result with the highest ``epoch`` from ``<trial_dir>/result.json`` and the
    latest checkpoint of the Train run in ``train_run_dir`` (local paths or URIs; either may
    be None or missing); {} when neither holds one. Unreadable lines (a line cut short by a
    killed driver) are skipped."""
    candidates = []
    if trial_dir:
        candidates += _result_lines(f"{trial_dir.rstrip('/')}/{RESULT_FILE}")
    if train_run_dir:
        candidates += _checkpointed_result(train_run_dir.rstrip("/"))
    epochs = [c for c in candidates if isinstance(c.get("epoch"), (int, float))]
    return max(epochs, key=lambda c: c["epoch"], default={})


def _read(path: str) -> str | None:
    from ablate.preflight import read_text

    try:
        return read_text(path)
    except (OSError, ValueError):
        return None


def _result_lines(path: str) -> list[dict[str, Any]]:
    results = []
    for line in (_read(path) or "").splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def _checkpointed_result(train_run_dir: str) -> list[dict[str, Any]]:
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    text = _read(f"{train_run_dir}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}")
    try:
        latest = (json.loads(text or "{}").get("latest_checkpoint_result") or {}).get("metrics")
    except (ValueError, AttributeError):
        return []
    return [latest] if isinstance(latest, dict) else []
