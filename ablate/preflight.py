"""Every check that runs before a sweep starts, in one place: each problem is a ``SpecError``
naming the file and dotted key (the entrypoint's exit status 2), raised before Ray starts or
anything is written.

``check(plan, resume)`` runs them all, once, in order: the storage path; the data sources (via
``ablate.data.check_sources``, which decodes nothing) and every trial's batch against them; a
user's searcher or scheduler (``check_components``: its factory builds the Tune object its
key needs), plugin components (``ablate.plugins.check``) and the report's own figures and
findings (``check_report``: imported, as they run in the driver only); the sweep's driver lock
(``ablate.driverlock``: ``<storage>/<sweep>/driver.lock``, the one thing written here, so
that a second driver of the same sweep is refused and the next check cannot race another
driver's start); the sweep's results directory (refused unless ``--resume``; on resume, the
spec is matched against the saved rounds, ``ablate.rounds``: more trials extend the sweep, a
changed or damaged ``plan.json`` is refused, and Tune's saved experiment state of each round
is checked, ``ablate.tunestate``) and, when tracking is on, whether the MLflow store answers
(``ablate.tracking``, imported only then: it imports MLflow). Its ``Preflight`` says what the
sweep needs to go on and holds the lock, which a failed check releases. The cluster's
resources are known only once Ray is connected: ``check_cluster`` holds that rule, and
``ablate.sweep`` calls it with Ray's node list.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate import data, driverlock, plugins, rounds
from ablate.config import ConfigurationError, DataConfig
from ablate.registry import is_plugin_name
from ablate.searchers import (
    SCHEDULERS,
    SEARCHERS,
    ComponentTypeError,
    build_scheduler,
    build_searcher,
)
from ablate.spec import SpecError, SweepPlan, trial_resources


@dataclass(frozen=True)
class Preflight:
    """What the checks found: ``restore`` (continue the sweep from its results directory),
    ``tracking_uri`` (the MLflow store that answered; None when the spec turns tracking off)
    and ``lock``, the sweep's driver lock this process holds (None for remote storage), which
    ``release`` gives up (``ablate.sweep.run_sweep`` does at its end)."""

    restore: bool
    tracking_uri: str | None
    lock: driverlock.DriverLock | None = None
    #: On ``--resume``: the saved rounds and the trials an extended spec adds
    #: (``ablate.rounds.check_resume``); None for a new sweep.
    resume: rounds.Resume | None = None

    def release(self) -> None:
        """Release the driver lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()


def check(plan: SweepPlan, resume: bool = False) -> Preflight:
    """Run every pre-Ray check of ``plan`` once (see the module docstring); raises ``SpecError``
    (the driver lock released)."""
    check_storage_path(plan)
    # The input's own checks first: bad input exits 2 with nothing written, not even a lock.
    check_data_sources(plan)
    check_batch_sizes(plan)
    check_components(plan)
    plugins.check(plan)
    check_report(plan)
    lock = take_driver_lock(plan)
    try:
        resumed = check_experiment_dir(plan, resume, lock)
        return Preflight(
            restore=resumed is not None,
            tracking_uri=check_tracking(plan),
            lock=lock,
            resume=resumed,
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def take_driver_lock(plan: SweepPlan) -> driverlock.DriverLock | None:
    """The sweep's driver lock (``ablate.driverlock``) for this process; None for remote
    storage (a URI: no exclusive create there). Raises ``SpecError`` at ``name`` when another
    driver holds it (naming its pid, host and start time) or it cannot be created."""
    if "://" in plan.storage_path:
        return None
    try:
        return driverlock.acquire(plan.experiment_dir)
    except driverlock.DriverLockError as error:
        raise SpecError(plan.source, "name", str(error)) from None


# ----------------------------------------------------------------------------- storage


def filesystem(path: str) -> tuple[Any, str]:
    """The ``pyarrow.fs`` filesystem of a local path or URI (``s3://...``) and the path in it."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def path_exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def read_text(path: str) -> str | None:
    """The text of the file at ``path`` (local or URI); None when it does not exist."""
    if not path_exists(path):
        return None
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def check_storage_path(plan: SweepPlan) -> None:
    """A local ``storage.path`` must be (or be creatable as) a directory this user can write.

    Checked without creating anything; URIs (``s3://``, ...) are left to their first write.
    """
    path = plan.storage_path
    if "://" in path:
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SpecError(
            plan.source,
            "storage.path",
            f"{path} cannot be created: {existing} is a file, not a directory; give another "
            "--storage-path (or storage.path in the spec)",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(
            plan.source,
            "storage.path",
            f"{path} is not writable: this user cannot create or write in {existing}; give "
            "another --storage-path (or storage.path in the spec)",
        )


def check_experiment_dir(
    plan: SweepPlan, resume: bool, lock: driverlock.DriverLock | None = None
) -> rounds.Resume | None:
    """Refuse to overwrite a sweep; on resume, match the spec against the saved rounds
    (``ablate.rounds.check_resume``: an extended spec adds trials, a changed or damaged plan
    is refused) and check Tune's saved state of each round (``ablate.tunestate.choose_state``:
    the newest intact one, or ``SpecError`` naming the damaged file). Returns what to resume,
    None for a new sweep.

    ``lock``: the sweep's driver lock, held: a directory that lock created is a new sweep
    (checked under the lock, so two drivers started together cannot both find no results).
    Checked before the tracker reopens that sweep's MLflow runs, which would otherwise be
    closed as FAILED by a refused start.
    """
    directory = plan.experiment_dir
    if lock.created_directory if lock is not None else not path_exists(directory):
        return None
    if not resume:
        raise SpecError(
            plan.source,
            "name",
            f"{directory} already exists: pass --resume to continue that sweep, or give a new "
            "name (--set name=...) or --storage-path",
        )
    saved = rounds.saved_rounds(directory)
    resumed = (
        rounds.check_resume(plan, saved)
        if saved
        # Started but stopped before its plan was written: the spec's plan is the plan.
        else rounds.Resume([], [], [])
    )
    from ablate import tunestate  # imports Ray Tune: only on resume

    for saved_round in saved or [None]:
        tunestate.choose_state(
            saved_round.experiment_dir if saved_round else directory, plan.source
        )
    return resumed


# ----------------------------------------------------------------------------- data


def check_data_sources(plan: SweepPlan) -> None:
    """Each distinct ``data`` section of the plan names a source that can be read.

    ``ablate.data.check_sources`` decides (files, layout, columns; nothing decoded); its
    ``DataError`` becomes a ``SpecError`` at the key the message names.
    """
    seen: set[str] = set()
    for config in plan.configs():
        key = config.data.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            data.check_sources(config.data)
        except data.DataError as error:
            message = str(error).removeprefix(f"{error.key}: ")
            raise SpecError(plan.source, error.key, message) from None


def check_batch_sizes(
    plan: SweepPlan,
    sizes_for: Callable[[DataConfig], tuple[int, int] | None] | None = None,
) -> None:
    """Every planned trial's ``train.batch_size`` fits its pretraining set (``data.check_batch``)
    wherever the set's size is known: by default without decoding (``data.split_sizes``:
    synthetic, torchvision, local Parquet, local image folders); the sweep driver calls it again
    with ``sizes_for`` giving the (pretraining, validation) sizes of each set it loaded, still
    before any trial (None: not known). Under optuna, a swept batch size is checked at its
    largest value. Raises ``SpecError`` naming ``train.batch_size`` (or its space key)."""
    sizes_for = sizes_for or data.split_sizes
    sizes_of: dict[str, tuple[int, int] | None] = {}
    sampled = plan.sampled.get("train.batch_size")
    largest = max(int(v) for v in (sampled.choice or sampled.randint or [])) if sampled else None
    for config in plan.configs():
        key = config.data.model_dump_json()
        if key not in sizes_of:
            sizes_of[key] = sizes_for(config.data)
        sizes = sizes_of[key]
        if sizes is None:
            continue
        batch = largest if largest is not None else config.train.batch_size
        workers = config.resources.num_workers
        try:
            data.check_batch(sizes, batch, workers)
        except ConfigurationError as error:
            where = "space.train.batch_size" if "train.batch_size" in plan.spec.space else error.key
            message = str(error).removeprefix(f"{error.key}: ")
            raise SpecError(plan.source, where, message) from None


# ----------------------------------------------------------------------------- components


def check_components(plan: SweepPlan) -> None:
    """A user's searcher or scheduler (``module.path:factory``, ``ablate.searchers``) builds
    the kind of Tune object its key needs: the factory is called once with ``(section, plan)``
    here, before anything is written. Raises ``SpecError`` at ``algorithm.name`` /
    ``scheduler.name`` naming what went wrong. Built-ins are not built here (no Ray import)."""
    for registry, name, build in (
        (SEARCHERS, plan.spec.algorithm.name, build_searcher),
        (SCHEDULERS, plan.spec.scheduler.name, build_scheduler),
    ):
        if not registry.get(name).plugin:
            continue
        try:
            build(plan)
        except SpecError:
            raise
        except ComponentTypeError as error:
            raise SpecError(plan.source, registry.key, f"{name}: {error}") from None
        except Exception as error:  # whatever the user's factory raises
            raise SpecError(
                plan.source,
                registry.key,
                f"{name}: the factory raised {type(error).__name__}: {error}",
            ) from None


def check_report(plan: SweepPlan) -> None:
    """The sweep's own report figures and findings (``report.figures`` / ``report.findings``,
    ``module.path:factory``): each is imported and checked against its kind by
    ``ablate.report.component_errors`` here, so that a typo does not surface only when the
    report is written after the last trial. Raises ``SpecError`` at ``report.figures[i]`` /
    ``report.findings[i]`` naming what went wrong. The report is written by the driver alone,
    so no worker imports these (``ablate.plugins.runtime_env`` leaves them out). Imports
    ``ablate.report`` (seconds: matplotlib, scipy) only when the spec names a plugin."""
    report = plan.spec.report
    if not any(is_plugin_name(name) for name in [*report.figures, *report.findings]):
        return  # registered names only: checked when the spec was read
    from ablate.report import component_errors

    for kind, index, _name, error in component_errors(report.figures, report.findings):
        raise SpecError(plan.source, f"report.{kind}s[{index}]", str(error))


# ----------------------------------------------------------------------------- tracking


def check_tracking(plan: SweepPlan) -> str | None:
    """The MLflow tracking URI of the plan (``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else
    SQLite in ``storage.path``) once its store answers; None when tracking is off."""
    if not plan.spec.tracking.enabled:
        return None
    from ablate import tracking  # imports MLflow: only when everything before has passed

    uri = tracking.resolve_tracking_uri(plan.spec.tracking.uri, plan.storage_path)
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as error:
        raise SpecError(plan.source, "tracking.uri", str(error)) from None
    return uri


# ----------------------------------------------------------------------------- cluster


def worker_slots(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus``/``gpus`` each the nodes can hold at once."""
    slots = 0
    for node in nodes:
        fits = math.floor(node.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0 else 1 << 30
        if gpus > 0:
            fits = min(fits, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
        slots += fits
    return slots


def check_cluster(plan: SweepPlan, nodes: list[dict[str, float]]) -> int:
    """Fail (``SpecError``) when no node can hold a worker or the cluster a worker group;
    return how many trials can run at once. ``nodes``: the ``Resources`` of Ray's alive
    nodes."""
    if not nodes:
        raise SpecError(plan.source, "resources", "the Ray cluster has no alive node")
    summary = "; ".join(
        f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes)
    )
    concurrency = None
    seen: set[tuple[int, float, float]] = set()
    for config in plan.configs():
        res = trial_resources(config)
        shape = (int(res["workers"]), res["cpus_per_worker"], res["gpus_per_worker"])
        if shape in seen:
            continue
        seen.add(shape)
        workers, cpus, gpus = shape

        def key(name: str) -> str:
            dotted = f"resources.{name}"
            return f"space.{dotted}" if dotted in plan.spec.space else dotted

        if not any(n.get("CPU", 0.0) + 1e-9 >= cpus for n in nodes):
            raise SpecError(
                plan.source,
                key("cpus_per_worker"),
                f"{cpus:g} CPUs per worker, but no node has that many ({summary})",
            )
        if gpus > 0 and not any(
            n.get("GPU", 0.0) + 1e-9 >= gpus and n.get("CPU", 0.0) + 1e-9 >= cpus for n in nodes
        ):
            raise SpecError(
                plan.source,
                key("gpus_per_worker"),
                f"{gpus:g} GPUs (with {cpus:g} CPUs) per worker, but no node has them ({summary})",
            )
        slots = worker_slots(nodes, cpus, gpus)
        if slots < workers:
            raise SpecError(
                plan.source,
                key("num_workers"),
                f"{workers} workers of {cpus:g} CPU / {gpus:g} GPU each, but the cluster holds "
                f"only {slots} such workers at once ({summary})",
            )
        fit = slots // workers
        concurrency = fit if concurrency is None else min(concurrency, fit)
    assert concurrency is not None
    return concurrency


def max_concurrent_trials(plan: SweepPlan, cluster_limit: int) -> int:
    """``min(algorithm.max_concurrent_trials, what the cluster holds, number of trials)``."""
    limits = [cluster_limit, max(plan.num_trials, 1)]
    if plan.spec.algorithm.max_concurrent_trials:
        limits.append(plan.spec.algorithm.max_concurrent_trials)
    return max(1, min(limits))
