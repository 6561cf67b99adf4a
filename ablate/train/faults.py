"""Fault injection (``train.faults.*``): the failures a trial's recovery paths are rehearsed on.

Off by default. ``ablate.train.loop`` builds one :class:`FaultInjector` per worker and calls it
at four named points of the trial loop; nothing else in the loop knows about faults:

* :meth:`FaultInjector.at_start`: ``raise_at_start`` raises ``RuntimeError(text)`` before the
  first epoch (e.g. a simulated CUDA out-of-memory error: the trial fails);
* :meth:`FaultInjector.poison_loss`: ``nan_loss_at_epoch`` makes every loss of that epoch NaN
  (the trial ends ``diverged``);
* :meth:`FaultInjector.after_epoch`: after the epoch's report (and checkpoint),
  ``raise_once_at_epoch`` raises on rank 0 and ``kill_once_at_epoch`` SIGKILLs rank 0's
  process, each only in a worker group that did not resume from a checkpoint, so Ray Train's
  restart from the checkpoint then runs to the end; ``stop_at_epoch`` SIGSTOPs rank 0 (a hung
  worker); :meth:`FaultInjector.before_epoch`: ``crash_at_epoch`` SIGSEGVs rank 0 as that
  epoch starts, in every worker group (a native crash that repeats).

:class:`NaNLossFromCall` wraps a loss module so that it turns NaN in mid-epoch, for checks of
a single step's divergence path (``tests/test_step.py``, ``benchmarks/step_check.py``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import torch
from torch import nn

from ablate.config import FaultConfig


@dataclass(frozen=True)
class FaultInjector:
    """The faults of ``config`` for one worker: its ``rank`` and whether its group ``resumed``
    from a checkpoint (the ``*_once_*`` faults fire only in a group that did not)."""

    config: FaultConfig
    rank: int
    resumed: bool

    def at_start(self) -> None:
        """Raises ``RuntimeError(train.faults.raise_at_start)`` when set."""
        if self.config.raise_at_start:
            raise RuntimeError(self.config.raise_at_start)

    def before_epoch(self, epoch: int) -> None:
        """``crash_at_epoch``: rank 0 dies of SIGSEGV as ``epoch`` starts, in every worker group
        (a restart from the checkpoint before it meets the same crash)."""
        if self.rank == 0 and self.config.crash_at_epoch == epoch:
            # A native crash, as a segfault in a kernel: the fault handlers write the signal
            # and the stack to the worker's log and the process dies of the signal.
            os.kill(os.getpid(), signal.SIGSEGV)

    def poison_loss(self, epoch: int) -> bool:
        """Whether the losses of ``epoch`` are to be made NaN (``nan_loss_at_epoch``)."""
        return self.config.nan_loss_at_epoch == epoch

    def after_epoch(self, epoch: int, checkpoint_dir_name: str | None) -> None:
        """Raise or kill rank 0 after ``epoch`` was reported; ``checkpoint_dir_name``: the
        checkpoint that report carried (None: none), which a kill waits to be registered."""
        if self.rank != 0:
            return
        if self.config.stop_at_epoch == epoch:
            # A hung process: alive to the OS and to Ray, doing nothing, never reporting.
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.resumed:
            return
        if self.config.raise_once_at_epoch == epoch:
            raise RuntimeError(
                f"injected fault: worker raised after epoch {epoch} "
                "(train.faults.raise_once_at_epoch)"
            )
        if self.config.kill_once_at_epoch == epoch:
            if checkpoint_dir_name is not None:
                _wait_for_registered_checkpoint(checkpoint_dir_name)
            # A real crash of this worker process: no exception, no cleanup, no goodbye.
            os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_registered_checkpoint(dir_name: str, timeout_s: float = 120.0) -> None:
    """Block until Ray Train's controller has registered checkpoint ``dir_name``.

    ``ray.train.report`` returns once the result is queued in this worker; the controller
    takes it on its next poll. A worker killed before that poll loses the report and its
    checkpoint, so ``kill_once_at_epoch`` waits until the controller's checkpoint-manager
    snapshot on storage names the checkpoint as the latest (then kills anyway on timeout).
    """
    import ray.train

    storage = ray.train.get_context().get_storage()
    snapshot, filesystem = storage.checkpoint_manager_snapshot_path, storage.storage_filesystem
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with filesystem.open_input_stream(snapshot) as stream:
                state = json.loads(stream.read())
        except (OSError, ValueError):
            state = {}
        latest = state.get("latest_checkpoint_result") or {}
        if latest.get("checkpoint_dir_name") == dir_name:
            return
        time.sleep(0.2)


class NaNLossFromCall(nn.Module):
    """``loss_fn``, NaN from its ``at``-th call on (a divergence in mid-epoch); ``calls`` counts
    the calls so far. Same inputs and output shape as ``loss_fn``."""

    def __init__(self, loss_fn: nn.Module, at: int) -> None:
        super().__init__()
        self.loss_fn, self.at, self.calls = loss_fn, at, 0

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.loss_fn(z1, z2)
        return loss * float("nan") if self.calls >= self.at else loss
