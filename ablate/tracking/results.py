"""A trial's reported results as MLflow metrics: the epoch a result reports, its numeric metrics
without Ray Tune's bookkeeping keys, the ``compute/*`` metrics of a trial that ended, and the
trial's own record of its epochs (Tune's ``result.json``) read back for ``SweepTracker.backfill``.

No Ray: Tune's bookkeeping keys are written out here by name (``TUNE_RESULT_KEYS``, checked
against ``ray.tune.result`` by tests/test_tracking.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ablate import vocabulary

#: Keys Ray Tune adds to every result: bookkeeping, not metrics of the trial. Ray's
#: ``ray.tune.result.AUTO_RESULT_KEYS`` with ``DONE``, ``TRIAL_ID``, ``EXPERIMENT_TAG``,
#: ``SHOULD_CHECKPOINT``, ``EPISODES_THIS_ITER`` and ``TIMESTEPS_THIS_ITER``, by name: the writer
#: reads results without importing Ray.
TUNE_RESULT_KEYS = frozenset(
    (
        "training_iteration",
        "time_total_s",
        "time_this_iter_s",
        "time_since_restore",
        "iterations_since_restore",
        "timestamp",
        "date",
        "node_ip",
        "hostname",
        "pid",
        "config",
        "checkpoint_dir_name",
        "episodes_total",
        "timesteps_total",
        "timesteps_since_restore",
        "done",
        "trial_id",
        "experiment_tag",
        "should_checkpoint",
        "episodes_this_iter",
        "timesteps_this_iter",
    )
)


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of one reported result, without Ray Tune's bookkeeping keys."""
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if key in TUNE_RESULT_KEYS or key.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            metrics[key] = float(value)
    return metrics


def result_epoch(result: dict[str, Any]) -> int:
    """The epoch a result reports (``epoch``; Tune's ``training_iteration`` if absent)."""
    epoch = result.get("epoch", result.get("training_iteration"))
    if epoch is None:
        raise ValueError(f"result has neither 'epoch' nor 'training_iteration': {sorted(result)}")
    return int(epoch)


def compute_metrics(
    result: dict[str, Any],
    epochs_run: int,
    resources: dict[str, Any] | None = None,
    retries: int = 0,
) -> dict[str, float]:
    """The ``compute/*`` metrics (``vocabulary.COMPUTE_METRICS``) of a trial that ended.

    Wall seconds are the last result's ``wall_seconds`` (Tune's ``time_total_s`` if absent);
    CPU and GPU seconds are *reserved* ones, wall x ``num_workers`` x ``cpus_per_worker`` /
    ``gpus_per_worker`` of the resolved ``resources`` section (left out without it).
    """
    wall = float(result.get("wall_seconds", result.get("time_total_s", 0.0)) or 0.0)
    compute = {
        "compute/epochs_run": float(epochs_run),
        "compute/wall_seconds": wall,
        "compute/retries": float(retries),
    }
    if resources:
        workers = float(resources.get("num_workers", 1))
        compute["compute/cpu_seconds"] = (
            wall * workers * float(resources.get("cpus_per_worker", 1.0))
        )
        compute["compute/gpu_seconds"] = (
            wall * workers * float(resources.get("gpus_per_worker", 0.0))
        )
    assert set(compute) <= set(vocabulary.COMPUTE_METRICS)
    return compute


def _read_text(path: str) -> str | None:
    """A local file's or a URI's (``pyarrow.fs``) text; None when it does not exist."""
    try:
        if "://" not in path:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as stream:
            return stream.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def recorded_results(paths: Sequence[str]) -> dict[int, dict[str, Any]]:
    """A trial's own record of its epochs: the first result of each epoch in the ``result.json``
    files (Tune's ``JsonLoggerCallback``, one JSON result a line) at ``paths``, by epoch.

    The first, as ``SweepTracker.log_epoch`` logs the first report of an epoch; a line cut
    short (a driver killed mid-write) or without an epoch is skipped.
    """
    results: dict[int, dict[str, Any]] = {}
    for path in paths:
        text = _read_text(path)
        for line in (text or "").splitlines():
            try:
                result = json.loads(line)
                epoch = result_epoch(result)
            except (ValueError, TypeError):
                continue
            if epoch >= 1:
                results.setdefault(epoch, result)
    return results
