"""Resume a trial from its newest checkpoint that loads, not only from the newest one.

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

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
