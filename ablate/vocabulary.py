"""The words the sweep, tracking and report share: trial outcomes, metric names and their
direction, how a swept value is written, and the line of an error a person reads.

Each rule here has exactly one home. ``train`` reports metrics under these names, ``sweep``
decides a trial's outcome with :func:`trial_outcome`, ``tracking`` tags MLflow runs with it and
``report`` reads them back; none of them keeps a list of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- outcomes

#: How a trial ended (tag ``ablate.status``), each with the MLflow run status it closes with.
#: ``completed``: ran its planned ``train.epochs``; ``stopped``: the scheduler (ASHA) stopped it
#: early; ``diverged``: its loss became non-finite; ``failed``: it raised; ``interrupted``: it
#: never reported an epoch, or, where no scheduler stops trials early (FIFO), it ended before
#: its planned epochs (the sweep ended or was killed first).
TRIAL_STATUSES: dict[str, str] = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
#: Outcomes whose final metrics are comparable: they enter means, rankings, figures, findings.
COMPARABLE_STATUSES: tuple[str, ...] = ("completed",)


@dataclass(frozen=True)
class Outcome:
    """A trial's outcome: one of ``TRIAL_STATUSES`` and a sentence for a person."""

    status: str
    detail: str


def trial_outcome(
    last_result: dict[str, Any] | None,
    planned_epochs: int,
    errored: bool = False,
    early_stopping: bool = True,
) -> Outcome:
    """How a trial ended, from its last reported result.

    diverged: the last result says so (even if the trial then raised); failed: it raised, or
    its last result says ``status: failed`` (a configuration that cannot run, reported by the
    trial instead of raised so that it is not retried; ``reason`` says why);
    interrupted: it never reported an epoch; completed: it reported ``status: completed`` or
    reached ``planned_epochs``; otherwise the scheduler stopped it early, if the sweep's
    scheduler stops trials early (``early_stopping``: ASHA), else it was interrupted.
    """
    last_result = last_result or {}
    epoch = last_result.get("epoch")
    if last_result.get("status") == "diverged":
        reason = last_result.get("reason") or "non-finite loss"
        return Outcome("diverged", f"diverged at epoch {epoch}: {reason}")
    if last_result.get("status") == "failed":
        return Outcome("failed", str(last_result.get("reason") or "failed"))
    if errored:
        return Outcome("failed", f"failed after epoch {epoch or 0} of {planned_epochs}")
    if epoch is None:
        return Outcome("interrupted", "interrupted before its first epoch was reported")
    if last_result.get("status") == "completed" or int(epoch) >= planned_epochs:
        return Outcome("completed", f"completed {planned_epochs} epochs")
    if not early_stopping:
        return Outcome(
            "interrupted",
            f"interrupted at epoch {epoch} of {planned_epochs} (the sweep ended first)",
        )
    return Outcome(
        "stopped", f"stopped by the scheduler (ASHA) at epoch {epoch} of {planned_epochs}"
    )


_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def error_line(text: str | BaseException, limit: int = 1000) -> str:
    """The line of a (remote) traceback that says what went wrong: its last non-empty line,
    terminal colours removed, at most ``limit`` characters."""
    if isinstance(text, BaseException):
        fallback, text = type(text).__name__, str(text)
    else:
        fallback = text
    lines = [_ANSI_COLOUR.sub("", line).strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line]
    line = lines[-1] if lines else str(fallback)
    return line if len(line) <= limit else line[: limit - 15] + "...[truncated]"


# ----------------------------------------------------------------------------- metrics

#: Reported by every epoch of a trial (``train``), beside its ``epoch``: ``wall_seconds`` since
#: the worker group started, ``overhead_seconds`` from the trial's launch to its first step,
#: ``restored_epoch`` the checkpoint epoch the worker group resumed from (0: none).
EPOCH_METRICS: tuple[str, ...] = (
    "train/loss",
    "train/contrastive_top1",
    "train/lr",
    "train/images_per_sec",
    "train/epoch_seconds",
    "wall_seconds",
    "overhead_seconds",
    "restored_epoch",
)
#: Monitors evaluated every ``eval.eval_every`` epochs on the validation split.
MONITOR_METRICS: tuple[str, ...] = ("val/knn_top1", "val/online_top1")


def monitor_measured(
    epoch: int, epochs: int, eval_every: int, probe_epochs: Iterable[int] = ()
) -> bool:
    """Whether ``train`` measured the ``MONITOR_METRICS`` at ``epoch`` (of ``train.epochs``):
    every ``eval.eval_every`` epochs, the last epoch and each of ``eval.probe.epochs``. At other
    epochs a result carries the last measured value (ASHA reads it at any rung)."""
    return epoch % eval_every == 0 or epoch == epochs or epoch in set(probe_epochs)


#: Metrics that may rank trials and drive ASHA / Optuna. Never a test-split metric (that would
#: select on the test set) and never the contrastive loss (not comparable across temperatures,
#: heads or batch sizes).
RANKING_METRICS: tuple[str, ...] = MONITOR_METRICS
#: The default ranking metric: weighted kNN top-1 on the held-out validation split.
DEFAULT_RANKING_METRIC = "val/knn_top1"
#: Evaluations at the last epoch (and at ``eval.probe.epochs``): the linear probe, kNN on the
#: test split and, with ``eval.semi_supervised``, fine-tuning on the labelled fraction.
FINAL_METRICS: tuple[str, ...] = (
    "val/probe_top1",
    "val/probe_top5",
    "test/probe_top1",
    "test/probe_top5",
    "test/knn_top1",
    "test/online_top1",
    "val/semi_top1",
    "val/semi_top5",
    "test/semi_top1",
    "test/semi_top5",
)
#: Compute a trial used, written by ``tracking`` when it ends.
COMPUTE_METRICS: tuple[str, ...] = (
    "compute/epochs_run",
    "compute/wall_seconds",
    "compute/cpu_seconds",
    "compute/gpu_seconds",
    "compute/retries",
)
#: Every metric a trial's results table holds, in the order tables show them.
RESULT_METRICS: tuple[str, ...] = (
    *MONITOR_METRICS,
    *FINAL_METRICS,
    "train/loss",
    "train/contrastive_top1",
)
#: Keys of a reported result that are text, not metrics.
TEXT_KEYS: tuple[str, ...] = ("status", "reason")
#: Metrics where lower is better; every other metric (accuracies, throughput) is maximised.
_MINIMISED_PREFIXES = ("train/loss", "train/epoch_seconds", "compute/")


def direction(metric: str) -> str:
    """``"max"`` or ``"min"``: which way ``metric`` improves."""
    return "min" if metric.startswith(_MINIMISED_PREFIXES) else "max"


def top_k(metric: str) -> int | None:
    """k of a top-k accuracy (``val/probe_top5`` -> 5), else None."""
    match = re.search(r"_top(\d+)$", metric)
    return int(match.group(1)) if match else None


def informative(metric: str, num_classes: int | None) -> bool:
    """False for a top-k accuracy with k >= the number of classes (always 1.0)."""
    k = top_k(metric)
    return k is None or num_classes is None or k < num_classes


def shown_metrics(metrics: Iterable[str], num_classes: int | None) -> list[str]:
    """``metrics`` without duplicates and without uninformative top-k accuracies."""
    return [m for m in dict.fromkeys(metrics) if informative(m, num_classes)]


# ----------------------------------------------------------------------------- values

#: The dotted key of the augmentation list; its values are written ``crop+color``.
OPS_KEY = "augment.ops"


def format_value(value: Any) -> str:
    """A swept value as a person reads it, the same in the dry-run, run names and the report.

    Lists of op names are joined with ``+`` (an empty list is ``none``: no augmentation);
    floats use up to 6 significant digits (``0.0003``, ``1e-05``); other lists and dicts are
    compact JSON; everything else is ``str``.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "+".join(value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)
