"""Run a plan: Ray Tune trials, each a function trainable that runs one Ray Train trial.

``run_sweep(spec)`` runs the checks of ``ablate.preflight`` (once), connects to Ray (joins
``address`` / ``$RAY_ADDRESS``, else starts a local instance on 127.0.0.1), checks the cluster
can hold one trial's worker group (``preflight.check_cluster``), runs every trial of the
``ablate.spec.SweepPlan`` through ``ray.tune.Tuner``, logs the sweep to MLflow as the spec's
``tracking.*`` settings say (``ablate.tracking``) and writes its report:

* Each trial is ``tune_trial``: it builds a ``TorchTrainer`` with ``ablate.train.build_trainer``
  and calls ``fit()`` (the Train V2 pattern; Tune no longer accepts trainers). The sweep's
  ``ablate.relay.ReportRelay`` (in place of Ray's ``TuneReportCallback`` and its per-trial
  queue actor) forwards every epoch's rank-0 report to ``tune.report``, so ASHA sees
  ``epoch`` and ``val/knn_top1`` as they happen.
* The trial reserves no CPU or GPU (only one byte of ``memory``; Tune needs a non-empty bundle)
  and Train V2's controller actor reserves ``num_cpus=0``: the worker group's placement group
  holds all of a trial's compute, so a running trial never waits on resources its own driver
  took. Concurrency is capped by how many worker groups the cluster's nodes can hold.
* ASHA counts ``epoch`` (Tune's ``training_iteration`` restarts when a trial is retried).
  Stopping a trial ends its Tune actor; the Train controller it owns dies with it (fate
  sharing), its workers with the controller, and the sweep's one placement-group janitor
  (``ablate.placement``, in place of Train's per-trial ``PlacementGroupCleaner``) removes the
  worker placement group. Without a scheduler that stops trials (``fifo``) a trial's Tune actor
  is reused for the next trial (``reuse_trial_actors``).
* The searcher and scheduler are those ``algorithm.name`` and ``scheduler.name`` name
  (``ablate.searchers``: built-ins or a user's ``module.path:factory``); each trial's param
  dict is the plain form of its ``ablate.trialrecord.PlannedTrial``, made at Tune's boundary.
  Each returned trial becomes one ``ablate.trialrecord.TrialRecord`` (``trial_records``).

A sweep runs in rounds (``ablate.rounds``): round 0 is the plan's trials; ``--resume`` with a
spec that plans more trials (more replicates, more grid values) runs only those as the next
round, and a racing spec (``replicates: {min, max}``) adds rounds of seeds for the
configurations still undecided; the summary ranks the trials of every round.

Results: ``<storage>/<sweep>/`` holds Tune's experiment, ``train/<trial_id>/`` each trial's Train
run (checkpoints, so a retried or resumed trial continues), ``plan.json`` (the planned trials,
checked on ``--resume``), ``round-k/`` each later round's Tune experiment and ``plan.json``,
``summary.json`` (the ranked table ``run_sweep`` returns) and ``report/``
(``ablate.tracking.publish_report``). Outcomes, metric names, group statistics and the
ranking rule are ``ablate.vocabulary``'s and ``ablate.stats``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ablate import data as data_lib
from ablate import (
    driverlock,
    placement,
    plugins,
    preflight,
    relay,
    rounds,
    stats,
    trialrecord,
    vocabulary,
)
from ablate.config import DataConfig
from ablate.searchers import build_scheduler, build_searcher
from ablate.spec import SpecError, SweepPlan, load_sweep, parse_sweep
from ablate.trialrecord import TrialRecord, planned_key

# Their former home: the Tuner and searcher state of a sweep started before they moved to
# ablate.tunesearch pickle them by this path, and --resume unpickles that state.
from ablate.tunesearch import OptunaTrials, PlannedTrials  # noqa: F401
from ablate.vocabulary import format_value

# ----------------------------------------------------------------------------- errors


class SweepStalledError(RuntimeError):
    """No trial could start for ``resources.schedule_timeout_s``: the message says what the
    waiting trial needs and who holds the cluster; the sweep's state is saved (``--resume``)."""


# ----------------------------------------------------------------------------- the trial


def _trial_function(
    train_storage_path: str,
    dataset_refs: dict[str, Any],
    report_relay: Any,
    placement_janitor: str | None = None,
) -> Any:
    """The Tune function trainable of this sweep (closes over where Train runs are stored, the
    shared datasets, the handle of the sweep's ``ablate.relay.ReportRelay``, which carries each
    epoch's report from the trial's Train controller to ``tune.report``, and the name of its
    ``ablate.placement`` janitor).

    ``tune_trial`` names nothing of this module: Ray pickles it by value, and a reference to
    one of this module's names would make every trial actor import this module and, through
    ``ablate.stats``, scipy (about 1 s of each trial's start-up).
    """

    def tune_trial(param: dict[str, Any]) -> None:
        launched_at = time.time()
        # Imported here: the trial actor needs them, the driver's import path does not.
        from ablate import relay
        from ablate.train import build_trainer

        trial_id = tune.get_context().get_trial_id()
        channel = relay.new_channel(trial_id)
        # _data_key's key, spelled out (see the docstring)
        ref = dataset_refs.get(json.dumps(param["config"]["data"], sort_keys=True))
        trainer = build_trainer(
            param["config"],
            storage_path=train_storage_path,
            name=trial_id,
            callbacks=[relay.RelayReportCallback(report_relay, channel)],
            launched_at=launched_at,
            dataset_ref=ref,
            placement_janitor=placement_janitor,
            heartbeat=(report_relay, channel),
        )
        relay.fit_and_forward(
            trainer.fit,
            report_relay,
            channel,
            tune.report,
            stall_timeout_s=float(param["config"]["resources"]["stall_timeout_s"]),
        )

    return tune_trial


def _trial_name(trial: Any) -> str:
    """Trial names and directories are the trial id (Tune's default spells out the config)."""
    return str(trial.trial_id)


def _data_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


# ----------------------------------------------------------------------------- cluster


def connect(address: str | None = None, runtime_env: dict[str, Any] | None = None) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS`` or start a local Ray on 127.0.0.1.

    ``runtime_env``: the job's runtime env when joining a cluster (``ablate.plugins.runtime_env``:
    the plan's plugin modules). Returns True when this call started (and so should shut down)
    the connection.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **({"runtime_env": runtime_env} if runtime_env else {}))
    else:
        start_local_ray()
    return True


#: Ray's setting of the niceness of the worker processes it starts (``ray_constants``).
WORKER_NICENESS_VAR = "RAY_worker_niceness"


def start_local_ray(**kwargs: Any) -> Any:
    """``ray.init`` of a new single-node Ray bound to 127.0.0.1.

    The dashboard runs (on a free loopback port) because Ray Train's own
    ``PlacementGroupCleaner`` (a trainer fitted outside a sweep) asks the state API whether a
    Train controller is still alive, and ``ray job submit`` talks to it.
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
        # Ray starts its workers at niceness 15, so on a machine busy with anything else the
        # trials got a few percent of a core: worker groups took minutes to start and timed
        # out (issue 22). At 0 they share the cores fairly, as the driver does; Ray's job
        # manager sets the same for the drivers it starts.
        "runtime_env": {"env_vars": {WORKER_NICENESS_VAR: "0"}},
    }
    return ray.init(**{**options, **kwargs})


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


# ----------------------------------------------------------------------------- storage


def _write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: locally a temporary file in the same
    directory, flushed to disk, then renamed over ``path``, so a crash or a full disk never
    leaves it cut short; a URI (an object store) is written in one upload."""
    fs, inner = preflight.filesystem(path)
    directory = inner.rsplit("/", 1)[0]
    fs.create_dir(directory, recursive=True)
    if "://" in path:
        with fs.open_output_stream(inner) as stream:
            stream.write(text.encode())
        return
    import tempfile

    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on filesystems that allow it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ----------------------------------------------------------------------------- datasets


def _share_datasets(plan: SweepPlan) -> dict[str, Any]:
    """Decode each distinct dataset once in the driver and put it in the object store.

    Every trial then maps the same arrays instead of decoding them again (worker start-up is
    the fixed per-trial overhead). ``image_folder`` datasets are left to the workers.
    """
    refs: dict[str, Any] = {}
    for config in plan.configs():
        data = config.data
        # The key tune_trial looks its dataset up by: the JSON of the param dict's data section.
        key = _data_key(data.model_dump(mode="json"))
        if key in refs or data.name == "image_folder":
            continue
        try:
            dataset = data_lib.load_dataset(data)
        except data_lib.DataError as error:
            raise SpecError(plan.source, "data", str(error)) from None
        _check_batches(plan, data, dataset)
        refs[key] = [ray.put(dataset)]
    return refs


def _check_batches(plan: SweepPlan, data: DataConfig, dataset: data_lib.Dataset) -> None:
    """Every trial on ``data`` has a batch its pretraining set holds (``preflight.
    check_batch_sizes`` on the loaded set's class counts: for sources whose size preflight could
    not know)."""
    counts = Counter(int(label) for label in dataset.train.labels).values()
    sizes = data_lib.sizes_from_counts(list(counts), float(data.val_fraction))
    preflight.check_batch_sizes(plan, lambda config_data: sizes if config_data == data else None)


# ----------------------------------------------------------------------------- summary


def trial_records(plan: SweepPlan, results: Any) -> list[TrialRecord]:
    """One ``ablate.trialrecord.TrialRecord`` per Tune trial: its varying values, outcome
    (``vocabulary.trial_outcome``) and the last value of every metric it reported: the ranking
    metric, the final evaluations (``vocabulary.FINAL_METRICS``, semi-supervised ones
    included), the loss and wall time. ``results``: Tune's ``Result`` objects, whose ``config``
    is the trial's param dict (``PlannedTrial.param``).

    The outcome rests on the trial's own record of its epochs
    (``trialrecord.newest_recorded_result``) where that goes further than the last result
    Tune restored: a trial that ran its planned epochs is completed (even if Tune then marked
    it errored). "Stopped" needs a scheduler that stops trials early (ASHA); under FIFO an
    unfinished trial is interrupted."""
    early_stopping = plan.early_stopping
    records = []
    for result in results:
        param = result.config or {}
        # The param dict's plain config is read for two numbers, not validated again.
        config = param.get("config") or plan.base
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(str(result.path)).name
        errored = result.error is not None
        recorded = trialrecord.newest_recorded_result(
            str(result.path) if result.path else None, f"{plan.train_storage_path}/{trial_id}"
        )
        if recorded and recorded["epoch"] > (metrics.get("epoch") or 0):
            metrics.update(recorded)
            errored = errored and recorded.get("status") != "completed"
        epochs = int(config["train"]["epochs"])
        outcome = vocabulary.trial_outcome(metrics, epochs, errored, early_stopping)
        records.append(
            TrialRecord(
                trial_id=trial_id,
                varying=param.get("varying", {}),
                replicate=param.get("replicate", 0),
                seed=config["train"]["seed"],
                status=outcome.status,
                epoch=metrics.get("epoch"),
                epochs=epochs,
                overhead_seconds=metrics.get("overhead_seconds"),
                error=vocabulary.error_line(result.error, 300)
                if errored
                else (metrics.get("reason") or None)
                if metrics.get("status") == "failed"
                else None,
                metrics={
                    k: metrics[k]
                    for k in (plan.metric, *vocabulary.FINAL_METRICS, "train/loss", "wall_seconds")
                    if isinstance(metrics.get(k), (int, float))
                },
            )
        )
    return records


def trial_tally(plan: SweepPlan, records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The planned trials against those Tune returned: ``planned`` (``plan.num_trials``), the
    count of each outcome (``vocabulary.TRIAL_STATUSES``) and ``missing``, planned trials Tune
    returned no trial for (matched by varying values and replicate; when the searcher proposes
    trials, by count). ``records``: ``TrialRecord`` or their ``summary.json`` entries."""
    tally = {"planned": plan.num_trials}
    tally.update({s: sum(r["status"] == s for r in records) for s in vocabulary.TRIAL_STATUSES})
    if plan.trials:
        returned = Counter(planned_key(r["varying"], r["replicate"]) for r in records)
        planned = Counter(t.key() for t in plan.trials)
        tally["missing"] = sum((planned - returned).values())
    else:
        tally["missing"] = max(0, plan.num_trials - len(records))
    return tally


def format_tally(tally: dict[str, int]) -> str:
    """``N planned, N completed, N stopped, N failed, N missing`` (diverged and interrupted
    trials named when there are any)."""
    parts = [f"{tally['planned']} planned"]
    parts += [f"{tally[s]} {s}" for s in ("completed", "stopped", "failed")]
    parts += [f"{tally[s]} {s}" for s in ("diverged", "interrupted") if tally[s]]
    return ", ".join([*parts, f"{tally['missing']} missing"])


def _stats_record(group: stats.GroupStats | None) -> dict[str, float | int | None]:
    """``GroupStats`` as JSON (``n`` 0 and the rest None for a group without a value)."""
    if group is None:
        return {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
    return asdict(group)


def summary_metrics(plan: SweepPlan, records: list[dict[str, Any]]) -> list[str]:
    """The ranking metric, then every final metric some trial reported, in vocabulary order."""
    reported = {name for r in records for name in r["metrics"]}
    return [plan.metric, *(m for m in vocabulary.FINAL_METRICS if m in reported)]


def summarize(plan: SweepPlan, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group trials by varying values (the seed excluded) and rank the groups.

    Each metric's statistics use the group's comparable (completed) replicates only
    (``stats.describe``); groups are ranked by ``report.rank_configurations``, the ranking of
    ``summary.md`` too: by the mean of the ranking metric in the direction of
    ``scheduler.mode``, ties by their values, groups without a completed replicate last.
    """
    # Imported here: the report package is pure (no Ray, no MLflow) but loads matplotlib.
    from ablate.report.table import rank_configurations

    keys = list(dict.fromkeys(k for r in records for k in r["varying"] if k != "train.seed"))
    flat = [
        {**r["varying"], "status": r["status"], plan.metric: r["metrics"].get(plan.metric)}
        for r in records
    ]
    names = summary_metrics(plan, records)
    rows = []
    ranking = rank_configurations(flat, keys, plan.metric, plan.mode)
    for rank, configuration in enumerate(ranking, start=1):
        members = [records[i] for i in configuration.members]
        varying = {k: v for k, v in members[0]["varying"].items() if k != "train.seed"}
        statuses = [m["status"] for m in members]
        comparable = [m for m in members if m["status"] in vocabulary.COMPARABLE_STATUSES]
        described = {
            name: stats.describe(m["metrics"].get(name) for m in comparable) for name in names
        }
        rows.append(
            {
                "varying": json.loads(json.dumps(varying, sort_keys=True)),
                "trials": len(members),
                **{s: statuses.count(s) for s in vocabulary.TRIAL_STATUSES},
                "epochs": max((m["epoch"] or 0) for m in members),
                "metrics": {name: _stats_record(g) for name, g in described.items()},
                "trial_ids": [m["trial_id"] for m in members],
                "rank": rank,
            }
        )
    return rows


def _mean_std(record: dict[str, Any]) -> str:
    if record["mean"] is None:
        return "-"
    text = f"{record['mean']:.4f}"
    return text + (f" ± {record['std']:.4f}" if record["std"] is not None else "")


def _num_classes(plan: SweepPlan) -> int | None:
    """The most classes of any planned dataset, when known without reading it (else None)."""
    counts = []
    for config in plan.configs():
        cfg = config.data
        if cfg.name == "synthetic":
            counts.append(cfg.num_classes)
        elif cfg.name in data_lib.KNOWN_TRAIN_CLASSES:
            counts.append(data_lib.KNOWN_TRAIN_CLASSES[cfg.name][0])
        else:
            return None
    return max(counts)


def format_summary(
    plan: SweepPlan, rows: list[dict[str, Any]], records: list[dict[str, Any]]
) -> str:
    """The final table: best configurations first, mean ± std over completed replicates of the
    ranking metric and of every informative final metric the trials reported."""
    keys = [k for k in plan.varying_keys if k != "train.seed"]
    metrics = vocabulary.shown_metrics(summary_metrics(plan, records), _num_classes(plan))
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
        f"\nsweep {plan.name}: {len(records)} trials, ranked by {plan.metric} ({plan.mode}) "
        "over completed replicates; test/ columns are reported, never used for ranking",
        *(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, ["-" * w for w in widths], *body]
        ),
    ]
    overhead = _overhead(records)
    if overhead["n"]:
        lines.append(
            f"per-trial fixed overhead (trial start -> first training step): "
            f"mean {overhead['mean']:.1f} s, max {overhead['max']:.1f} s "
            f"over {overhead['n']} trials"
        )
    tally = trial_tally(plan, records)
    lines.append(f"trials: {format_tally(tally)}")
    failed = [r for r in records if r["status"] == "failed"]
    for record in failed[:5]:
        lines.append(f"failed trial {record['trial_id']}: {record['error']}")
    unfinished = tally["missing"] + tally["interrupted"]
    if unfinished:
        lines.append(
            f"{unfinished} planned trial(s) did not finish (missing or interrupted): rerun "
            "the same command with --resume to run them"
        )
    lines.append(f"results: {plan.experiment_dir}")
    return "\n".join(lines)


def _overhead(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-trial fixed overhead (seconds) over every trial that measured it."""
    values = stats.finite(r["overhead_seconds"] for r in records)
    return {**_stats_record(stats.describe(values)), "max": max(values, default=None)}


# ----------------------------------------------------------------------------- running


def _reporter(plan: SweepPlan) -> Any:
    from ray.tune import CLIReporter

    # Only keys every trial has: the best-trial line looks each column up without a default,
    # so a `together` key that some entries leave out would crash the sweep's reporter.
    keys = [k for k in plan.varying_keys if all(k in t.varying for t in plan.trials)]
    params = {f"varying/{k}": k.split(".")[-1] for k in keys}
    params["replicate"] = "rep"
    return CLIReporter(
        parameter_columns=params,
        metric_columns={
            m: m.split("/")[-1]
            for m in ("epoch", plan.metric, "train/loss", "train/images_per_sec", "status")
        },
        max_report_frequency=30,
        max_column_length=24,
        sort_by_metric=True,
    )


def reuse_trial_actors(plan: SweepPlan) -> bool:
    """Whether a trial's Tune actor runs the next trial: only when no trial is stopped early.

    A reused actor has imported Ray Train and torch already (3-4 s of a trial's start-up on 2
    cores). But a trial that a scheduler stops still has its thread blocked in
    ``TorchTrainer.fit()``; Tune would cache its actor, and resetting it for the next trial
    fails that trial. Without reuse Tune kills the stopped trial's actor, and its Train
    controller with it.
    """
    return not plan.early_stopping


def build_tuner(
    plan: SweepPlan,
    *,
    concurrency: int,
    callbacks: Sequence[Any] = (),
    report_relay: Any,
    dataset_refs: dict[str, Any] | None = None,
    placement_janitor: str | None = None,
    restore: bool = False,
    verbose: bool = False,
    round_index: int = 0,
) -> tune.Tuner:
    """A new ``Tuner`` for ``plan``'s trials, or the one restored from its experiment directory.

    ``round_index``: the sweep's round the trials make (``ablate.rounds``): 0 is the sweep's
    own experiment directory, a later round's experiment is ``<experiment_dir>/round-k``.

    ``report_relay``: an ``ablate.relay.ReportRelay`` handle (``relay.start_relay()``);
    ``placement_janitor``: the name of an ``ablate.placement`` janitor, else each trial's Train
    run starts Ray's own ``PlacementGroupCleaner``.

    ``verbose``: Tune's own status table (``CLIReporter``); otherwise Tune prints nothing and
    the view is the caller's (``ablate.console.SweepConsole`` among ``callbacks``).
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    trainable = tune.with_resources(
        _trial_function(
            plan.train_storage_path, dataset_refs or {}, report_relay, placement_janitor
        ),
        # One byte of memory: Tune needs a non-empty bundle; the worker group holds the compute.
        {"memory": 1},
    )
    experiment = rounds.round_dir(plan.experiment_dir, round_index)
    if restore and tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(
            experiment,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=build_searcher(plan),
            scheduler=build_scheduler(plan),
            num_samples=plan.num_trials,
            max_concurrent_trials=concurrency,
            reuse_actors=reuse_trial_actors(plan),
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=rounds.round_name(round_index) or plan.name,
            storage_path=plan.experiment_dir if round_index else plan.storage_path,
            # Explicit, so results reach disk even where TUNE_DISABLE_AUTO_CALLBACK_LOGGERS is set.
            callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
            progress_reporter=_reporter(plan) if verbose else None,
            # Ray Train already restarts failed worker groups from their checkpoints
            # (build_trainer's FailureConfig); a trial that still fails is reported, not rerun.
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1 if verbose else 0,
        ),
    )


@dataclass
class SweepSummary:
    """What ``run_sweep`` leaves: the ranked ``rows`` (``summarize``), one record per trial
    (``trial_records``), where ``summary.json`` and the report's ``summary.md`` are (the
    report: None when tracking is off or it lives in remote storage) and the MLflow store."""

    rows: list[dict[str, Any]]
    trials: list[TrialRecord]
    summary_path: str
    report_path: str | None
    tracking_uri: str | None
    #: ``trial_tally``: planned trials against the outcomes of those Tune returned.
    tally: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Trials that raised."""
        return sum(row["failed"] for row in self.rows)

    @property
    def unfinished(self) -> int:
        """Planned trials that did not end: missing from Tune's results, or interrupted."""
        return self.tally.get("missing", 0) + self.tally.get("interrupted", 0)


def run_sweep(
    spec: SweepPlan | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
    share_data: bool = True,
    checked: preflight.Preflight | None = None,
    verbose: bool = False,
) -> SweepSummary:
    """Run (or with ``resume`` continue) a plan, log it to MLflow and write its report.

    ``spec`` is a path or a loaded ``SweepPlan`` (``overrides`` are ``--set`` strings). The
    checks of ``ablate.preflight`` run first unless ``checked`` holds their result (a caller
    that ran them itself); any problem raises ``SpecError`` before a trial starts. They take
    the sweep's driver lock (``ablate.driverlock``), which this function releases when it
    returns or raises, ``checked``'s included. With
    ``tracking.enabled`` the sweep is logged to the store of the spec's ``tracking.uri`` /
    ``tracking.experiment`` and its report (ranked by ``scheduler.metric``/``mode``) written to
    ``<experiment_dir>/report``. ``callbacks`` are further Ray Tune callbacks. The console
    shows one live view of the trials (``ablate.console``) and Ray's own output goes to
    ``sweep_log_path(plan)``; ``verbose`` prints Ray's output and Tune's status table instead.
    """
    if isinstance(spec, SweepPlan):
        plan = spec
        if overrides:
            plan = parse_sweep(
                spec.text, source=spec.source, overrides=[*spec.overrides, *overrides]
            )
    else:
        plan = load_sweep(spec, overrides)
    checked = checked or preflight.check(plan, resume)
    try:
        return _run_checked(plan, checked, address, callbacks, share_data, verbose)
    finally:
        checked.release()  # the driver lock preflight.check took


def _run_checked(
    plan: SweepPlan,
    checked: preflight.Preflight,
    address: str | None,
    callbacks: Sequence[Any],
    share_data: bool,
    verbose: bool,
) -> SweepSummary:
    if "://" not in plan.storage_path and "runtime_resources" in os.getcwd():
        print(
            f"warning: results go to {plan.storage_path}, inside the job's temporary working "
            "directory; set storage.path (--storage-path) to a lasting shared path or URI",
            file=sys.stderr,
        )
    tracker = None
    if checked.tracking_uri is not None:
        from ablate import tracking

        tracker = tracking.SweepTracker(
            checked.tracking_uri,
            plan.spec.tracking.experiment or plan.name,
            execution=plan.name,
            spec_text=plan.text,
            description=plan.spec.description,
            storage_path=plan.storage_path,
            metric=plan.metric,
            results_dir=plan.experiment_dir,
        )
        callbacks = [
            tracking.MlflowCallback(
                tracker,
                early_stopping=plan.early_stopping,
                train_storage_path=plan.train_storage_path,
            ),
            *callbacks,
        ]
    with tracker if tracker is not None else contextlib.nullcontext():
        rows, records, summary_path, plan = _run_trials(
            plan, checked.resume, address, callbacks, share_data, verbose
        )
    report_path = None
    if tracker is not None:
        local = "://" not in plan.experiment_dir
        built = tracking.publish_report(
            tracker.tracking_uri,
            tracker.experiment,
            tracker.parent_run_id,
            out_dir=os.path.join(plan.experiment_dir, "report") if local else None,
            metric=plan.metric,
            mode=plan.mode,
            figures=plan.spec.report.figures,
            findings=plan.spec.report.findings,
        )
        report_path = str(built.summary_path)
        for line in built.failed:
            print(f"warning: report: {line}; left out of {report_path}", file=sys.stderr)
    return SweepSummary(
        rows, records, summary_path, report_path, checked.tracking_uri, trial_tally(plan, records)
    )


def sweep_log_path(plan: SweepPlan) -> str:
    """The sweep's log file: ``<experiment_dir>/logs/sweep.log``; with remote storage (a URI),
    ``<tmp>/ablate_logs/<sweep name>/sweep.log`` on the driver's machine."""
    if "://" in plan.experiment_dir:
        import tempfile

        return os.path.join(tempfile.gettempdir(), "ablate_logs", plan.name, "sweep.log")
    return os.path.join(plan.experiment_dir, "logs", "sweep.log")


def _run_trials(
    plan: SweepPlan,
    resume: rounds.Resume | None,
    address: str | None,
    callbacks: Sequence[Any],
    share_data: bool,
    verbose: bool = False,
) -> tuple[list[dict[str, Any]], list[TrialRecord], str, SweepPlan]:
    """Connect to Ray, check the cluster, run the rounds' Tuners; write and print the summary.
    Returns the rows, the records, where the summary is and the plan of every trial run.

    Unless ``verbose``, the console shows ``ablate.console.SweepConsole``'s view and Ray's own
    output goes to ``sweep_log_path(plan)`` (``console.route_logs``), named at the end.
    """
    # Tune's legacy reporter prints the varying keys instead of every flattened config field.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if verbose:
        return _run_tuner(plan, resume, address, callbacks, share_data, verbose=True)
    from ablate import console

    log_path = sweep_log_path(plan)
    log_dir = os.path.dirname(log_path)
    try:
        with console.route_logs(log_path) as route:
            view = console.SweepConsole(
                plan.metric,
                len(resume.saved) + len(resume.new) if resume and resume.saved else plan.num_trials,
                plan.max_epochs(),
                early_stopping=plan.early_stopping,
            )
            return _run_tuner(
                plan,
                resume,
                address,
                [*callbacks, view],
                share_data,
                route=route,
                on_round=view.begin_round,
            )
    except SpecError:
        # Nothing ran (a check after Ray started failed): leave no sweep directory behind
        # that only holds this log, or the next run of the same name would be refused.
        # The driver lock, released after this, removes the then empty directory it created.
        parent = os.path.dirname(log_dir)
        if os.path.isdir(parent) and set(os.listdir(parent)) - {driverlock.LOCK_NAME} == {"logs"}:
            import shutil

            shutil.rmtree(log_dir)
        raise
    finally:
        if os.path.exists(log_path):
            print(f"log: {log_path}", file=sys.stderr)


def _run_tuner(
    plan: SweepPlan,
    resume: rounds.Resume | None,
    address: str | None,
    callbacks: Sequence[Any],
    share_data: bool,
    verbose: bool = False,
    route: Any = None,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], list[TrialRecord], str, SweepPlan]:
    """Run the sweep's rounds (``ablate.rounds``): on resume the saved ones (each Tune
    experiment restored), then the trials an extended spec adds, then, when the spec races,
    round after round of the seeds the race still needs; a round starts only when every trial
    before it ended. Writes each new round's ``plan.json`` (and ``spec.yaml``) before it runs,
    and ``summary.json`` over the trials of every round. ``on_round(index, num_trials)`` is
    told before each round runs, with every trial planned so far (the console's count)."""
    started = connect(address, plugins.runtime_env(plan, address))
    if route is not None:
        route.capture_worker_output()
    restoring = resume.rounds if resume is not None else []
    done: list[Any] = list(resume.saved) if resume is not None else []
    pending = list(resume.new) if resume is not None else list(plan.trials)
    if resume is not None and not resume.rounds:  # stopped before its plan was written
        pending = list(plan.trials)
    if plan.proposes:
        done, pending = [], []
    everything = plan.with_trials([*done, *pending]) if not plan.proposes else plan
    try:
        cluster_limit = preflight.check_cluster(everything, _alive_nodes())
        concurrency = preflight.max_concurrent_trials(everything, cluster_limit)
        extending = f", {len(pending)} of them new" if done and pending else ""
        print(
            f"sweep {plan.name}: {everything.num_trials} trials{extending}, up to "
            f"{concurrency} at once (cluster holds {cluster_limit}); results in "
            f"{plan.experiment_dir}",
            file=sys.stderr,
        )
        refs = _share_datasets(everything) if share_data else {}
        janitor, janitor_name = placement.start_janitor()
        report_relay = relay.start_relay()

        def run_round(index: int, trials: Any, restore: bool, num_trials: int) -> list[Any]:
            if on_round is not None:
                on_round(index, num_trials)
            round_plan = plan if plan.proposes else plan.with_trials(trials)
            tuner = build_tuner(
                round_plan,
                concurrency=preflight.max_concurrent_trials(round_plan, cluster_limit),
                callbacks=callbacks,
                report_relay=report_relay,
                dataset_refs=refs,
                placement_janitor=janitor_name,
                restore=restore,
                verbose=verbose,
                round_index=index,
            )
            return list(tuner.fit())

        started_at = time.time()
        watch = placement.ReservationWatch(
            janitor,
            max(c.resources.schedule_timeout_s for c in everything.configs()),
            say=route.say if route is not None else lambda line: print(line, file=sys.stderr),
        ).start()
        results: list[Any] = []
        try:
            for saved in restoring:
                trials = resume.own_trials(saved.index) if resume is not None else []
                results += run_round(saved.index, trials, True, everything.num_trials)
            if resume is None or not resume.rounds:
                # A new sweep (or one stopped before its plan was written): round 0.
                _write_plan(plan, plan, 0)
                results += run_round(0, plan.trials, resume is not None, plan.num_trials)
                done, pending = list(plan.trials), []
            index = len(restoring) or 1
            while watch.error is None and not plan.proposes:
                sofar = plan.with_trials(done)
                if rounds.unfinished(trial_records(sofar, results), done):
                    break  # interrupted: --resume goes on from here
                if not pending:
                    pending = rounds.next_race_round(sofar, done, trial_records(sofar, results))
                if not pending:
                    break
                done, pending = [*done, *pending], pending
                _write_plan(plan, plan.with_trials(done), index)
                print(
                    f"round {index}: {len(pending)} new trial(s) in "
                    f"{rounds.round_dir(plan.experiment_dir, index)}",
                    file=sys.stderr,
                )
                results += run_round(index, pending, False, len(done))
                pending = []
                index += 1
        finally:
            watch.stop()
            # Runs Tune left going (an interrupted sweep): their controllers end here, so the
            # janitor removes their groups, placed or still pending, before it stops.
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(report_relay.kill_all.remote(), timeout=30)
            relay.stop_relay(report_relay)
            placement.stop_janitor(janitor)
        if watch.error is not None:
            raise SweepStalledError(watch.error)
        ran = plan if plan.proposes else plan.with_trials(done)
        records = trial_records(ran, results)
        rows = summarize(ran, records)
        summary = {
            "sweep": plan.name,
            "source": plan.source,
            "metric": plan.metric,
            "mode": plan.mode,
            "num_trials": len(records),
            "trials_planned": trial_tally(ran, records),
            "max_concurrent_trials": concurrency,
            "wall_seconds": time.time() - started_at,
            "overhead_seconds": _overhead(records),
            "rows": rows,
            "trials": [record.to_json() for record in records],
        }
        summary_path = f"{plan.experiment_dir}/summary.json"
        _write_text(summary_path, json.dumps(summary, indent=1))
        print(format_summary(ran, rows, records))
        return rows, records, summary_path, ran
    finally:
        if started:
            ray.shutdown()


def _write_plan(spec_plan: SweepPlan, plan: SweepPlan, index: int) -> None:
    """Round ``index``'s ``plan.json`` (``plan``: every trial up to it) and ``spec.yaml`` (the
    spec it was planned from, its ``--set`` values as comment lines) in its directory, new
    files beside the earlier rounds' (``ablate.rounds``)."""
    directory = rounds.round_dir(spec_plan.experiment_dir, index)
    _write_text(f"{directory}/{rounds.PLAN_FILE}", plan.plan_json())
    header = "".join(f"# --set {o}\n" for o in spec_plan.overrides)
    _write_text(f"{directory}/spec.yaml", header + spec_plan.text)
