"""The epoch loop of one worker (``run_trial``): each epoch's steps (``ablate.train.epoch``),
its evaluations (``ablate.train.evaluation``) and its report through ``ray.train.report``, with
a checkpoint when one is due (``report``); the faults of ``train.faults`` fire at their named
points (``ablate.train.faults.FaultInjector``: at start, before each epoch, in the loss, after
each report).

Every epoch reports ``epoch``, ``vocabulary.EPOCH_METRICS``, the latest
``vocabulary.MONITOR_METRICS`` (carried between evaluations) and ``vocabulary.TEXT_KEYS``
(status "running" | "completed" | "diverged", reason); the epochs that ran the final
evaluation add its ``vocabulary.FINAL_METRICS``, at that epoch only. A trial whose config or
data cannot run reports once (``configuration_failure``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import TYPE_CHECKING, Any

import torch

from ablate import vocabulary
from ablate.train.checkpoint import TrialState, dir_name, write_checkpoint
from ablate.train.epoch import EpochResult, run_epoch
from ablate.train.evaluation import evaluate
from ablate.train.faults import FaultInjector

if TYPE_CHECKING:
    from ablate.train.worker import StartupTimes, Worker

logger = logging.getLogger(__name__)


def run_trial(
    worker: Worker, resumed: TrialState | None, startup: StartupTimes
) -> list[dict[str, Any]]:
    """Run ``worker``'s epochs after ``resumed``'s (None: from the first), reporting each;
    returns every epoch's report, the epochs before a restart included. ``worker`` is built
    and distributed (``ablate.train.worker``); ``startup`` is logged at the first step.

    Stops early, after reporting it, at an epoch whose loss is not finite (``diverged``).
    Raises what the injected faults raise (``train.faults``).
    """
    import ray.train

    config = worker.config
    state = resumed or TrialState()
    faults = FaultInjector(config.train.faults, worker.rank, resumed=resumed is not None)
    restored_epoch = state.epoch
    generator = torch.Generator(device=worker.device)
    wall_start = time.time()
    overhead: float | None = None
    faults.at_start()
    if resumed is not None and state.epoch >= config.train.epochs and state.history:
        # Every epoch ran before the restart: report the last one again, or a trial Tune
        # restored without a result would end with none (and Tune's metric check fails).
        ray.train.report(state.history[-1])

    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        faults.before_epoch(epoch)
        result = run_epoch(worker, generator, epoch, poison=faults.poison_loss(epoch))
        if overhead is None:
            overhead = result.started_at - startup.launched_at
            if worker.rank == 0:
                # Train's worker logger: the sweep's log file (ablate.console), not the console.
                # (A print reaches that file twice: Train copies prints to its logger.)
                logger.info(startup.describe(result.started_at))
        metrics = epoch_metrics(worker, epoch, result, overhead, restored_epoch)
        if result.diverged:
            metrics.update(state.monitors, status="diverged", reason=result.diverged)
            metrics["wall_seconds"] = time.time() - wall_start
            state.history.append(metrics)
            ray.train.report(metrics)
            return state.history

        monitors, probe_results = evaluate(worker, epoch)
        state.monitors.update(monitors)
        metrics.update(state.monitors)
        metrics.update(probe_results)  # only at the epoch it was measured
        last = epoch == config.train.epochs
        if last:
            metrics["status"] = "completed"
        metrics["wall_seconds"] = time.time() - wall_start
        state.history.append(metrics)
        state.epoch = epoch
        save = last or epoch % config.train.checkpoint_every == 0
        faults.after_epoch(epoch, report(worker, state, metrics, save))
    return state.history


def epoch_metrics(
    worker: Worker, epoch: int, result: EpochResult, overhead: float, restored_epoch: int
) -> dict[str, Any]:
    """The report of ``epoch`` before evaluation: ``vocabulary.EPOCH_METRICS`` but
    ``wall_seconds`` (set when the report is sent), ``status: running``."""
    return {
        "epoch": epoch,
        "train/loss": result.loss_sum / result.steps,
        "train/contrastive_top1": result.top1_sum / result.steps,
        "train/lr": worker.parts.scheduler.get_last_lr()[0],
        "train/images_per_sec": result.steps * worker.local_batch / max(result.seconds, 1e-9),
        "train/epoch_seconds": result.seconds,
        "overhead_seconds": overhead,
        # The checkpoint epoch this worker group started from: > 0 after a restart.
        "restored_epoch": restored_epoch,
        "status": "running",
        "reason": "",
    }


def report(worker: Worker, state: TrialState, metrics: dict[str, Any], save: bool) -> str | None:
    """Send ``metrics`` through ``ray.train.report``, with a checkpoint of ``state`` (written
    by rank 0) when ``save``; the checkpoint's directory name, or None."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return None
    name = dir_name(state.epoch, state.checkpoint_suffix)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if worker.rank == 0:
            write_checkpoint(directory, worker, state)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
    return name


def configuration_failure(error: Exception) -> dict[str, Any]:
    """The one report of a trial whose config or data cannot run (``ConfigurationError``,
    ``DataError``: deterministic, so not retried): ``status: failed`` and the message
    as ``reason`` (``vocabulary.trial_outcome`` reads it), epoch 0 and NaN monitors (Tune
    checks that every result holds the ranking metric)."""
    return {
        "epoch": 0,
        **{metric: float("nan") for metric in vocabulary.MONITOR_METRICS},
        "status": "failed",
        "reason": str(error),
    }
