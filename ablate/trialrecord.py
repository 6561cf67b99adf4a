"""A trial's own record of the epochs it ran, beside the last result Tune holds for it.

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

import json
from typing import Any

#: Tune's per-trial result log (``ray.tune.logger.JsonLoggerCallback``).
RESULT_FILE = "result.json"


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
