"""Run a sweep: Ray Tune trials, each a function trainable that runs one Ray Train trial.

``run_sweep(spec)`` connects to Ray (joins ``address`` / ``$RAY_ADDRESS``, else starts a local
instance on 127.0.0.1), checks the cluster can hold one trial's worker group, and runs every
trial of the ``ablate.spec.Sweep`` through ``ray.tune.Tuner``:

* Each trial is ``_run_trial``: it builds a ``TorchTrainer`` with ``ablate.train.build_trainer``
  and calls ``fit()`` (the Train V2 pattern; Tune no longer accepts trainers). Ray Train's
  ``TuneReportCallback`` forwards every epoch's rank-0 report to Tune, so ASHA sees
  ``epoch`` and ``val/knn_top1`` as they happen.
* The trial reserves no CPU or GPU (only one byte of ``memory``; Tune needs a non-empty bundle)
  and Train V2's controller actor reserves ``num_cpus=0``: the worker group's placement group
  holds all of a trial's compute, so a running trial never waits on resources its own driver
  took. Concurrency is capped by how many worker groups the cluster's nodes can hold.
* ASHA counts ``epoch`` (Tune's ``training_iteration`` restarts when a trial is retried).
  Stopping a trial ends its Tune actor; the Train controller it owns dies with it (fate
  sharing), its workers with the controller, and Train's detached ``PlacementGroupCleaner``
  removes the worker placement group.
* Optuna: ``OptunaTrials`` wraps ``OptunaSearch`` so that per-epoch values are reported with
  ``step = epoch`` and trials that ASHA stopped early are told to Optuna as *pruned*:
  ``OptunaSearch`` alone would record an early-stopped trial as COMPLETE with its early score.

Results: ``<storage>/<sweep>/`` holds Tune's experiment, ``train/<trial_id>/`` each trial's Train
run (checkpoints, so a retried or resumed trial continues), ``plan.json`` (the planned trials,
checked on ``--resume``) and ``summary.json`` (the ranked table ``run_sweep`` returns).
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from ablate.spec import (
    SUMMARY_METRICS,
    SpecError,
    Sweep,
    check_data_sources,
    check_storage_path,
    format_value,
    load_sweep,
    parse_sweep,
    trial_resources,
)

#: Outcomes of a trial in the summary (``trial_status``).
TRIAL_STATUSES = ("completed", "stopped", "diverged", "failed", "interrupted")

#: Per-epoch metrics shown in Tune's progress table.
PROGRESS_METRICS = ("epoch", "val/knn_top1", "train/loss", "train/images_per_sec", "status")


# ----------------------------------------------------------------------------- the trial


def _trial_function(train_storage_path: str, dataset_refs: dict[str, Any]) -> Any:
    """The Tune function trainable of this sweep (closes over where Train runs are stored)."""

    def run_trial(param: dict[str, Any]) -> None:
        launched_at = time.time()
        # Imported here: the trial actor needs them, the driver's import path does not.
        from ray.tune.integration.ray_train import TuneReportCallback

        from ablate.train import build_trainer

        trial_id = tune.get_context().get_trial_id()
        ref = dataset_refs.get(_data_key(param["config"]["data"]))
        trainer = build_trainer(
            param["config"],
            storage_path=train_storage_path,
            name=trial_id,
            callbacks=[TuneReportCallback()],
            launched_at=launched_at,
            dataset_ref=ref,
        )
        trainer.fit()

    return run_trial


def _trial_name(trial: Any) -> str:
    """Trial names and directories are the trial id (Tune's default spells out the config)."""
    return str(trial.trial_id)


def _data_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


# ----------------------------------------------------------------------------- searchers


class PlannedTrials(Searcher):
    """Hands Tune the sweep's precomputed trials (grid and random), in order, then finishes."""

    def __init__(self, params: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self._params = params
        self._next = 0

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # metric, mode and the trials all come from the spec

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._params):
            return Searcher.FINISHED
        param = copy.deepcopy(self._params[self._next])
        self._next += 1
        return param

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"next": self._next}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self._next = pickle.load(file)["next"]


class OptunaTrials(Searcher):
    """Optuna (TPE) proposes the sampled keys; every trial gets the sweep's full param dict.

    ASHA-stopped trials reach ``on_trial_complete`` with their last (early) result; they are
    passed on as *pruned* (with their per-epoch values, which TPE ranks below completed trials),
    never as completed with an early score. Diverged trials are pruned too (their carried-forward
    kNN score predates the divergence); errored ones fail. Only trials that ran every epoch are
    COMPLETE.
    """

    def __init__(self, sweep: Sweep) -> None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric=sweep.metric, mode=sweep.mode)
        self._sweep = sweep
        self._labels: dict[str, dict[str, Any]] = {}
        space: dict[str, Any] = {}
        for key, values in sweep.sampled.items():
            kind = values.kind()
            if kind == "choice":
                labels = {format_value(v): v for v in values.choice or []}
                self._labels[key] = labels
                space[key] = optuna.distributions.CategoricalDistribution(list(labels))
            elif kind == "randint":
                lo, hi = values.randint  # type: ignore[misc]
                space[key] = optuna.distributions.IntDistribution(int(lo), int(hi))
            else:
                lo, hi = getattr(values, kind)
                space[key] = optuna.distributions.FloatDistribution(
                    float(lo), float(hi), log=kind == "loguniform"
                )
        self._optuna = OptunaSearch(
            space=space,
            metric=sweep.metric,
            mode=sweep.mode,
            sampler=optuna.samplers.TPESampler(seed=sweep.spec.algorithm.seed),
        )
        self._epochs: dict[str, int] = {}
        self._steps: dict[str, int] = {}

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        suggested = self._optuna.suggest(trial_id)
        if not isinstance(suggested, dict):
            return suggested
        varying = {
            key: self._labels[key][value] if key in self._labels else value
            for key, value in suggested.items()
        }
        param = self._sweep.make_param(varying)
        self._epochs[trial_id] = int(param["config"]["train"]["epochs"])
        return param

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if epoch is None or value is None or not math.isfinite(value):
            return
        if epoch <= self._steps.get(trial_id, 0):  # re-reported after a restore
            return
        self._steps[trial_id] = int(epoch)
        self._optuna.on_trial_result(trial_id, {**result, "training_iteration": int(epoch)})

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._epochs:
            return
        if result and not error:
            # Tune hands the result a scheduler stopped on to on_trial_complete only.
            self.on_trial_result(trial_id, result)
        # OptunaSearch records a trial with no result as FAIL (error) or PRUNED (no error); with
        # a result it records COMPLETE with the last value, whatever epoch that came from.
        if error or trial_status(result, self._epochs[trial_id]) != "completed":
            result = None
        self._optuna.on_trial_complete(trial_id, result=result, error=error)

    def study(self) -> Any:
        return self._optuna._ot_study

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))


def trial_status(result: dict[str, Any] | None, planned_epochs: int, errored: bool = False) -> str:
    """completed | stopped (by the scheduler) | diverged | failed | interrupted (no epoch
    reported, e.g. the sweep was interrupted first), from a trial's last result."""
    result = result or {}
    if result.get("status") == "diverged":
        return "diverged"
    if errored:
        return "failed"
    epoch = result.get("epoch")
    if epoch is None:
        return "interrupted"
    if result.get("status") == "completed" or (epoch is not None and epoch >= planned_epochs):
        return "completed"
    return "stopped"


# ----------------------------------------------------------------------------- cluster


def connect(address: str | None = None) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS`` or start a local Ray on 127.0.0.1.

    Returns True when this call started (and so should shut down) the connection.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        start_local_ray()
    return True


def start_local_ray(**kwargs: Any) -> Any:
    """``ray.init`` of a new single-node Ray bound to 127.0.0.1.

    The dashboard runs (on a free loopback port) because Ray Train's detached
    ``PlacementGroupCleaner``, one per trial, asks the state API whether its controller is
    alive: without a dashboard it never learns and never exits, leaking a process per trial.
    """
    # Without this, Ray 2.60 on Linux binds to the outward address instead of loopback. The
    # variable covers the processes Ray starts; Ray read it into ENABLE_RAY_CLUSTER when this
    # module imported it, so this process's copy is set too (else gcs, raylet and the agents
    # listen on every interface whenever Ray was imported before this call, i.e. always).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {
        # The env var above only works if set before Ray is imported; this covers the rest.
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
    }
    return ray.init(**{**options, **kwargs})


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def worker_slots(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus``/``gpus`` each the nodes can hold at once."""
    slots = 0
    for node in nodes:
        fits = math.floor(node.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0 else 1 << 30
        if gpus > 0:
            fits = min(fits, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
        slots += fits
    return slots


def check_cluster(sweep: Sweep, nodes: list[dict[str, float]]) -> int:
    """Fail (``SpecError``) when no node can hold a worker or the cluster a worker group;
    return how many trials can run at once."""
    if not nodes:
        raise SpecError(sweep.source, "resources", "the Ray cluster has no alive node")
    summary = "; ".join(
        f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes)
    )
    concurrency = None
    seen: set[tuple[int, float, float]] = set()
    for config in sweep.configs():
        res = trial_resources(config)
        shape = (int(res["workers"]), res["cpus_per_worker"], res["gpus_per_worker"])
        if shape in seen:
            continue
        seen.add(shape)
        workers, cpus, gpus = shape

        def key(name: str) -> str:
            dotted = f"resources.{name}"
            return f"space.{dotted}" if dotted in sweep.spec.space else dotted

        if not any(n.get("CPU", 0.0) + 1e-9 >= cpus for n in nodes):
            raise SpecError(
                sweep.source,
                key("cpus_per_worker"),
                f"{cpus:g} CPUs per worker, but no node has that many ({summary})",
            )
        if gpus > 0 and not any(
            n.get("GPU", 0.0) + 1e-9 >= gpus and n.get("CPU", 0.0) + 1e-9 >= cpus for n in nodes
        ):
            raise SpecError(
                sweep.source,
                key("gpus_per_worker"),
                f"{gpus:g} GPUs (with {cpus:g} CPUs) per worker, but no node has them ({summary})",
            )
        slots = worker_slots(nodes, cpus, gpus)
        if slots < workers:
            raise SpecError(
                sweep.source,
                key("num_workers"),
                f"{workers} workers of {cpus:g} CPU / {gpus:g} GPU each, but the cluster holds "
                f"only {slots} such workers at once ({summary})",
            )
        fit = slots // workers
        concurrency = fit if concurrency is None else min(concurrency, fit)
    assert concurrency is not None
    return concurrency


def max_concurrent_trials(sweep: Sweep, cluster_limit: int) -> int:
    """``min(algorithm.max_concurrent_trials, what the cluster holds, number of trials)``."""
    limits = [cluster_limit, max(sweep.num_trials, 1)]
    if sweep.spec.algorithm.max_concurrent_trials:
        limits.append(sweep.spec.algorithm.max_concurrent_trials)
    return max(1, min(limits))


# ----------------------------------------------------------------------------- storage


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = _filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def _write_text(path: str, text: str) -> None:
    fs, inner = _filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())


def _read_text(path: str) -> str | None:
    if not _exists(path):
        return None
    fs, inner = _filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def _plan_json(sweep: Sweep) -> str:
    plan = {
        "sweep": sweep.name,
        "algorithm": sweep.spec.algorithm.model_dump(),
        "scheduler": sweep.spec.scheduler.model_dump(),
        "trials": sweep.trials,
        "sampled": {k: v.model_dump(exclude_none=True) for k, v in sweep.sampled.items()},
        "base": sweep.base if not sweep.trials else None,
    }
    return json.dumps(plan, indent=1, sort_keys=True)


def check_experiment_dir(sweep: Sweep, resume: bool) -> bool:
    """Refuse to overwrite a sweep; on resume, refuse a changed plan. True: restore from it."""
    directory = sweep.experiment_dir
    if not _exists(directory):
        return False
    if not resume:
        raise SpecError(
            sweep.source,
            "name",
            f"{directory} already exists: pass --resume to continue that sweep, or give a new "
            "name (--set name=...) or --storage-path",
        )
    saved = _read_text(f"{directory}/plan.json")
    if saved is not None and json.loads(saved) != json.loads(_plan_json(sweep)):
        raise SpecError(
            sweep.source,
            "name",
            f"the spec's trials differ from those {directory} was started with; --resume "
            "continues the original plan only: restore the spec (and --set values) or use a "
            "new name",
        )
    return True


# ----------------------------------------------------------------------------- datasets


def _share_datasets(sweep: Sweep) -> dict[str, Any]:
    """Decode each distinct dataset once in the driver and put it in the object store.

    Every trial then maps the same arrays instead of decoding them again (worker start-up is
    the fixed per-trial overhead). ``image_folder`` datasets are left to the workers.
    """
    from ablate import data as data_lib
    from ablate.config import DataConfig

    refs: dict[str, Any] = {}
    for config in sweep.configs():
        data = config["data"]
        key = _data_key(data)
        if key in refs or data["name"] == "image_folder":
            continue
        try:
            dataset = data_lib.load_dataset(DataConfig.model_validate(data))
        except data_lib.DataError as error:
            raise SpecError(sweep.source, "data", str(error)) from None
        refs[key] = [ray.put(dataset)]
    return refs


# ----------------------------------------------------------------------------- summary


def _stats(values: list[float]) -> dict[str, float | int | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "max": None, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return {"mean": statistics.fmean(finite), "std": std, "max": max(finite), "n": len(finite)}


def trial_records(sweep: Sweep, results: Any) -> list[dict[str, Any]]:
    """One dict per Tune trial: its varying values, outcome and last metrics."""
    records = []
    for result in results:
        param = result.config or {}
        config = param.get("config") or sweep.base
        metrics = dict(result.metrics or {})
        errored = result.error is not None
        records.append(
            {
                "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
                "varying": param.get("varying", {}),
                "replicate": param.get("replicate", 0),
                "seed": config["train"]["seed"],
                "status": trial_status(metrics, int(config["train"]["epochs"]), errored),
                "epoch": metrics.get("epoch"),
                "epochs": int(config["train"]["epochs"]),
                "overhead_seconds": metrics.get("overhead_seconds"),
                "error": _error_line(result.error) if errored else None,
                "metrics": {
                    k: metrics[k]
                    for k in (sweep.metric, *SUMMARY_METRICS, "train/loss", "wall_seconds")
                    if isinstance(metrics.get(k), (int, float))
                },
            }
        )
    return records


def _error_line(error: BaseException) -> str:
    """The last meaningful line of a (remote) traceback, without terminal colours."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else type(error).__name__)[:300]


def summarize(sweep: Sweep, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group trials by varying values (the seed excluded) and rank the groups.

    Groups whose trials all completed rank above the others; within each tier by the mean
    of the ranking metric (``scheduler.mode``).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        varying = {k: v for k, v in record["varying"].items() if k != "train.seed"}
        groups.setdefault(json.dumps(varying, sort_keys=True), []).append(record)
    rows = []
    for key, members in groups.items():
        statuses = [m["status"] for m in members]
        row: dict[str, Any] = {
            "varying": json.loads(key),
            "trials": len(members),
            **{s: statuses.count(s) for s in TRIAL_STATUSES},
            "epochs": max((m["epoch"] or 0) for m in members),
            "metrics": {
                name: _stats([m["metrics"].get(name) for m in members])
                for name in (sweep.metric, *SUMMARY_METRICS)
            },
            "trial_ids": [m["trial_id"] for m in members],
        }
        rows.append(row)
    sign = 1.0 if sweep.mode == "max" else -1.0

    def order(row: dict[str, Any]) -> tuple[int, float]:
        mean = row["metrics"][sweep.metric]["mean"]
        complete = row["completed"] == row["trials"]
        return (0 if complete else 1, -sign * mean if mean is not None else math.inf)

    rows.sort(key=order)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _mean_std(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean']:.4f}"
    return text + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")


def format_summary(sweep: Sweep, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The final table: best configurations first, mean ± std over replicates."""
    keys = [k for k in sweep.varying_keys if k != "train.seed"]
    metrics = [sweep.metric, "val/probe_top1", "test/probe_top1"]
    header = ["rank", *keys, "n", "done/stop/fail", *(f"{m} (mean ± std)" for m in metrics)]
    body = []
    for row in rows:
        body.append(
            [
                str(row["rank"]),
                *(format_value(row["varying"][k]) if k in row["varying"] else "-" for k in keys),
                str(row["trials"]),
                f"{row['completed']}/{row['stopped']}/{row['failed'] + row['diverged']}",
                *(_mean_std(row["metrics"][m]) for m in metrics),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [
        f"\nsweep {sweep.name}: {len(records)} trials, ranked by {sweep.metric} ({sweep.mode}); "
        "test/ columns are reported, never used for ranking",
        *(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, ["-" * w for w in widths], *body]
        ),
    ]
    overhead = _stats([r["overhead_seconds"] for r in records])
    if overhead["n"]:
        lines.append(
            f"per-trial fixed overhead (trial start -> first training step): "
            f"mean {overhead['mean']:.1f} s, max {overhead['max']:.1f} s "
            f"over {overhead['n']} trials"
        )
    failed = [r for r in records if r["status"] == "failed"]
    for record in failed[:5]:
        lines.append(f"failed trial {record['trial_id']}: {record['error']}")
    lines.append(f"results: {sweep.experiment_dir}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running


def _scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = sweep.spec.scheduler
    if spec.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=spec.max_t or sweep.max_epochs(),
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
    )


def _reporter(sweep: Sweep) -> Any:
    from ray.tune import CLIReporter

    # Only keys every trial has: the best-trial line looks each column up without a default,
    # so a `together` key that some entries leave out would crash the sweep's reporter.
    keys = [k for k in sweep.varying_keys if all(k in t["varying"] for t in sweep.trials)]
    params = {f"varying/{k}": k.split(".")[-1] for k in keys}
    params["replicate"] = "rep"
    return CLIReporter(
        parameter_columns=params,
        metric_columns={m: m.split("/")[-1] for m in PROGRESS_METRICS},
        max_report_frequency=30,
        max_column_length=24,
        sort_by_metric=True,
    )


def build_tuner(
    sweep: Sweep,
    *,
    concurrency: int,
    callbacks: Sequence[Any] = (),
    dataset_refs: dict[str, Any] | None = None,
    restore: bool = False,
) -> tune.Tuner:
    """A new ``Tuner`` for ``sweep``, or the one restored from its experiment directory."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    trainable = tune.with_resources(
        _trial_function(sweep.train_storage_path, dataset_refs or {}),
        # One byte of memory: Tune needs a non-empty bundle; the worker group holds the compute.
        {"memory": 1},
    )
    if restore and tune.Tuner.can_restore(sweep.experiment_dir):
        return tune.Tuner.restore(
            sweep.experiment_dir,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    searcher = OptunaTrials(sweep) if sweep.spec.algorithm.name == "optuna" else None
    searcher = searcher or PlannedTrials(sweep.trials, sweep.metric, sweep.mode)
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher,
            scheduler=_scheduler(sweep),
            num_samples=sweep.num_trials,
            max_concurrent_trials=concurrency,
            # Not reused: a trial actor ASHA stopped still has its training thread blocked in
            # fit() and cannot be reset; a fresh actor costs less than Train's own start-up.
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=sweep.storage_path,
            # Explicit, so results reach disk even where TUNE_DISABLE_AUTO_CALLBACK_LOGGERS is set.
            callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
            progress_reporter=_reporter(sweep),
            # Ray Train already restarts failed worker groups from their checkpoints
            # (build_trainer's FailureConfig); a trial that still fails is reported, not rerun.
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def run_sweep(
    spec: Sweep | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
    share_data: bool = True,
) -> list[dict[str, Any]]:
    """Run (or with ``resume`` continue) a sweep; return its ranked summary rows.

    ``spec`` is a path or a loaded ``Sweep`` (``overrides`` are ``--set`` strings). Raises
    ``SpecError`` before any trial starts when the spec or the cluster cannot work.
    ``callbacks`` are Ray Tune callbacks (e.g. ``ablate.tracking.MlflowCallback``).
    """
    if isinstance(spec, Sweep):
        sweep = spec
        if overrides:
            sweep = parse_sweep(
                spec.text, source=spec.source, overrides=[*spec.overrides, *overrides]
            )
    else:
        sweep = load_sweep(spec, overrides)
    if "://" not in sweep.storage_path and "runtime_resources" in os.getcwd():
        print(
            f"warning: results go to {sweep.storage_path}, inside the job's temporary working "
            "directory; set storage.path (--storage-path) to a lasting shared path or URI",
            file=sys.stderr,
        )
    # Tune's legacy reporter prints the varying keys instead of every flattened config field.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    check_storage_path(sweep)
    check_data_sources(sweep)
    restore = check_experiment_dir(sweep, resume)
    started = connect(address)
    try:
        cluster_limit = check_cluster(sweep, _alive_nodes())
        concurrency = max_concurrent_trials(sweep, cluster_limit)
        print(
            f"sweep {sweep.name}: {sweep.num_trials} trials, up to {concurrency} at once "
            f"(cluster holds {cluster_limit}); results in {sweep.experiment_dir}",
            file=sys.stderr,
        )
        refs = _share_datasets(sweep) if share_data else {}
        if not restore:  # every check passed: from here on the sweep directory exists
            _write_text(f"{sweep.experiment_dir}/plan.json", _plan_json(sweep))
            header = "".join(f"# --set {o}\n" for o in sweep.overrides)
            _write_text(f"{sweep.experiment_dir}/spec.yaml", header + sweep.text)
        tuner = build_tuner(
            sweep, concurrency=concurrency, callbacks=callbacks, dataset_refs=refs, restore=restore
        )
        started_at = time.time()
        results = tuner.fit()
        records = trial_records(sweep, results)
        rows = summarize(sweep, records)
        overhead = _stats([r["overhead_seconds"] for r in records])
        summary = {
            "sweep": sweep.name,
            "source": sweep.source,
            "metric": sweep.metric,
            "mode": sweep.mode,
            "num_trials": len(records),
            "max_concurrent_trials": concurrency,
            "wall_seconds": time.time() - started_at,
            "overhead_seconds": overhead,
            "rows": rows,
            "trials": records,
        }
        _write_text(f"{sweep.experiment_dir}/summary.json", json.dumps(summary, indent=1))
        print(format_summary(sweep, rows, records))
        return rows
    finally:
        if started:
            ray.shutdown()
