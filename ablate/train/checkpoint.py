"""A trial's checkpoint: what it holds (``TrialState`` and the worker's model, optimiser,
schedule, online probe and torch RNG in one file, ``CHECKPOINT_FILE``), its one writer
(``write_checkpoint``) and one reader (``read_checkpoint``), and the resume from the newest
checkpoint that loads, not only from the newest one (``resume``).

Ray Train hands a restarted worker group the run's latest registered checkpoint
(``ray.train.get_checkpoint()``). If that one is damaged (cut short by a full disk or a kill
mid-upload), loading it fails in every retry and the trial fails, although Train keeps the
previous checkpoint beside it (``CheckpointConfig(num_to_keep=2)``). ``load_newest_intact``
tries the latest first and then every older checkpoint of the run's directory, newest first,
with a warning in the trial's log for each one that does not load.

Checkpoint directories are named ``epoch_00003`` (``dir_name``). After a fallback the epochs
after the intact checkpoint run again, and their checkpoints must not reuse the names of the
damaged ones, which Train still tracks and deletes by path as newer checkpoints come: a path
that two of Train's records share would be deleted under the newer one, and Train fails when
it deletes the other. So the checkpoints of a group that fell back carry a retry number
(``epoch_00003-r1``), higher than any in the run's directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from ablate import vocabulary
from ablate.train.step import bare_model

if TYPE_CHECKING:
    from ablate.train.worker import Worker

logger = logging.getLogger(__name__)

#: The one file of a checkpoint directory: see ``write_checkpoint`` for its keys.
CHECKPOINT_FILE = "state.pt"


@dataclass
class TrialState:
    """What a trial carries from epoch to epoch and across a restart, in its checkpoint."""

    epoch: int = 0  # the last epoch completed
    #: The latest value of each monitor, reported at every epoch until it is evaluated again
    #: (the ranking metric is always present, NaN before its first evaluation, for ASHA).
    monitors: dict[str, float] = field(
        default_factory=lambda: {vocabulary.DEFAULT_RANKING_METRIC: float("nan")}
    )
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's report
    #: Not saved: what this worker group's checkpoint names end with ("" unless it resumed
    #: from an older checkpoint than Train's latest, which was damaged: ``load_newest_intact``).
    checkpoint_suffix: str = ""


def write_checkpoint(directory: str, worker: Worker, state: TrialState) -> None:
    """Save the worker's model, optimiser, schedule, online probe and torch RNG with ``state``
    to ``directory/CHECKPOINT_FILE`` (the layout ``read_checkpoint`` reads)."""
    parts = worker.parts
    torch.save(
        {
            "model": bare_model(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "online_probe": worker.online.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": state.epoch,
            "carried_metrics": dict(state.monitors),
            "history": state.history,
        },
        os.path.join(directory, CHECKPOINT_FILE),
    )


def read_checkpoint(directory: str, worker: Worker) -> TrialState:
    """Load what ``write_checkpoint`` saved in ``directory`` into ``worker``; its state."""
    parts = worker.parts
    saved = torch.load(
        os.path.join(directory, CHECKPOINT_FILE), map_location=worker.device, weights_only=True
    )
    bare_model(parts.model).load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    worker.online.load_state_dict(saved["online_probe"])
    torch.set_rng_state(saved["torch_rng"])
    state = TrialState(epoch=int(saved["epoch"]), history=list(saved["history"]))
    state.monitors.update({k: float(v) for k, v in saved["carried_metrics"].items()})
    return state


def resume(worker: Worker) -> TrialState | None:
    """The state of Ray Train's latest checkpoint of this run, loaded into ``worker``; None
    when the run starts fresh. A latest checkpoint that does not load (cut short) is skipped
    for the newest older one that does, with a warning in the trial's log
    (``load_newest_intact``); raises ``CheckpointDamaged`` when none does."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    resumed = load_newest_intact(checkpoint, lambda directory: read_checkpoint(directory, worker))
    resumed.value.checkpoint_suffix = resumed.suffix
    return resumed.value


T = TypeVar("T")

_NAME = re.compile(r"^epoch_(\d+)(?:-r(\d+))?$")


def dir_name(epoch: int, suffix: str = "") -> str:
    """The checkpoint directory of ``epoch`` (``suffix``: ``Resumed.suffix``)."""
    return f"epoch_{epoch:05d}{suffix}"


def parse_dir_name(name: str) -> tuple[int, int] | None:
    """``(epoch, retry)`` of a checkpoint directory name (retry 0: none), else None."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


class CheckpointDamaged(RuntimeError):
    """No checkpoint of the run loads: the message names the latest and why it failed."""


@dataclass
class Resumed(Generic[T]):
    """What ``load_newest_intact`` loaded: ``value`` (what ``load`` returned), from which
    checkpoint directory (``name``), the newer ones it skipped (``skipped``: name, why) and
    the ``suffix`` of the checkpoint names this worker group writes ("" unless it fell back)."""

    value: T
    name: str
    skipped: list[tuple[str, str]]
    suffix: str


def load_newest_intact(checkpoint: Any, load: Callable[[str], T]) -> Resumed[T]:
    """``load(directory)`` of ``checkpoint`` (a ``ray.train.Checkpoint``, Train's latest);
    when it raises, of the newest older checkpoint of the same run directory that loads.

    ``load`` must raise on a damaged checkpoint (a cut-short file fails to unpickle) and may
    be called more than once. Each failure is logged as a warning. Raises
    ``CheckpointDamaged`` (naming the latest and its error) when no checkpoint loads.
    """
    from ray.train import Checkpoint

    run_dir, latest = checkpoint.path.rstrip("/").rsplit("/", 1)
    try:
        return Resumed(_load(checkpoint, load), latest, [], "")
    except Exception as error:
        skipped = [(latest, _reason(error))]
        logger.warning(
            "checkpoint %s/%s does not load (%s); trying the run's older checkpoints",
            run_dir,
            latest,
            skipped[0][1],
        )
    parsed = {
        n: p for n in _checkpoint_names(checkpoint.filesystem, run_dir) if (p := parse_dir_name(n))
    }
    newest = parse_dir_name(latest)
    older = [n for n, p in parsed.items() if n != latest and (newest is None or p[0] <= newest[0])]
    retry = 1 + max((p[1] for p in parsed.values()), default=0)
    for name in sorted(older, key=parsed.__getitem__, reverse=True):
        try:
            value = _load(
                Checkpoint(path=f"{run_dir}/{name}", filesystem=checkpoint.filesystem), load
            )
        except Exception as error:
            skipped.append((name, _reason(error)))
            logger.warning(
                "checkpoint %s/%s does not load either (%s)", run_dir, name, skipped[-1][1]
            )
            continue
        logger.warning(
            "resuming from the older checkpoint %s/%s instead of the damaged %s: the epochs "
            "after it run again (their checkpoints are named *-r%d)",
            run_dir,
            name,
            ", ".join(n for n, _ in skipped),
            retry,
        )
        return Resumed(value, name, skipped, f"-r{retry}")
    raise CheckpointDamaged(
        f"checkpoint {run_dir}/{latest} does not load ({skipped[0][1]}) and no older "
        f"checkpoint of this trial does ({', '.join(n for n, _ in skipped[1:]) or 'none left'})"
    )


def _load(checkpoint: Any, load: Callable[[str], T]) -> T:
    with checkpoint.as_directory() as directory:
        return load(directory)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _checkpoint_names(filesystem: Any, run_dir: str) -> list[str]:
    """Names of the directories in ``run_dir`` (checkpoints and whatever else Train keeps)."""
    import pyarrow.fs

    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]
