"""The sweep engine: concurrency, ranking, Optuna pruning, and end to end through Ray.

The end-to-end tests share one local Ray cluster (2 CPUs) and run the quickstart spec with a
reduced budget through Tune + Train + ASHA, then kill a sweep driver and resume it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_servers import placement_groups_left
from tiny_quickstart import QUICKSTART, REPO, TINY, sweep_args

from ablate.preflight import (
    check_cluster,
    check_experiment_dir,
    max_concurrent_trials,
    worker_slots,
)
from ablate.searchers import build_scheduler
from ablate.spec import SpecError, parse_sweep
from ablate.sweep import format_summary, summarize, trial_records
from ablate.trialrecord import TrialRecord
from ablate.tunesearch import OptunaTrials, PlannedTrials

#: The quickstart cut down for CI: 256 tiny images, 3 epochs of at most 3 steps.
SMALL = [*TINY, "train.epochs=3"]


def sweep_of(text: str, *overrides: str, storage: Path | None = None):
    extra = [f"storage.path={storage}"] if storage else []
    return parse_sweep(text, source="t.yaml", overrides=[*overrides, *extra])


# ----------------------------------------------------------------------------- concurrency


def test_worker_slots_pack_per_node():
    nodes = [{"CPU": 3.0}, {"CPU": 3.0, "GPU": 1.0}]
    assert worker_slots(nodes, cpus=2, gpus=0) == 2  # one per node, not floor(6 / 2)
    assert worker_slots(nodes, cpus=1, gpus=0.5) == 2  # two halves of the one GPU
    assert worker_slots(nodes, cpus=1, gpus=1) == 1


def test_concurrency_is_capped_by_cluster_and_spec():
    sweep = sweep_of(
        "name: t\nresources: {num_workers: 2, cpus_per_worker: 1}\n"
        "space: {model.head: {grid: [none, linear, nonlinear]}}\n"
        "algorithm: {max_concurrent_trials: 5}"
    )
    limit = check_cluster(sweep, [{"CPU": 4.0}, {"CPU": 3.0}])
    assert limit == 3  # 7 worker slots hold 3 groups of 2
    assert max_concurrent_trials(sweep, limit) == 3
    assert max_concurrent_trials(sweep, 100) == 3  # never more than the trials
    capped = sweep_of(
        "name: t\nspace: {model.head: {grid: [none, linear, nonlinear]}}\n"
        "algorithm: {max_concurrent_trials: 2}"
    )
    assert max_concurrent_trials(capped, check_cluster(capped, [{"CPU": 8.0}])) == 2


@pytest.mark.parametrize(
    ("resources", "nodes", "key"),
    [
        ("{gpus_per_worker: 1}", [{"CPU": 8.0}], "resources.gpus_per_worker"),
        ("{cpus_per_worker: 4}", [{"CPU": 2.0}, {"CPU": 2.0}], "resources.cpus_per_worker"),
        (
            "{num_workers: 3, cpus_per_worker: 2}",
            [{"CPU": 2.0}, {"CPU": 3.0}],
            "resources.num_workers",
        ),
    ],
)
def test_unsatisfiable_resources_are_spec_errors(resources, nodes, key):
    sweep = sweep_of(f"name: t\ntrain: {{batch_size: 48}}\nresources: {resources}")
    with pytest.raises(SpecError) as caught:
        check_cluster(sweep, nodes)
    assert caught.value.key == key
    assert "node 0" in caught.value.message


def test_swept_resources_report_the_space_key():
    sweep = sweep_of("name: t\nspace: {resources.gpus_per_worker: {grid: [0, 0.5]}}")
    with pytest.raises(SpecError) as caught:
        check_cluster(sweep, [{"CPU": 2.0}])
    assert caught.value.key == "space.resources.gpus_per_worker"


# ----------------------------------------------------------------------------- outcomes


def record(head: str, seed: int, status: str, knn: float, probe: float | None = None):
    metrics = {"val/knn_top1": knn}
    if probe is not None:
        metrics["test/probe_top1"] = probe
    return TrialRecord(
        trial_id=f"{head}{seed}",
        varying={"model.head": head},
        replicate=seed,
        seed=seed,
        status=status,
        epoch=3 if status == "completed" else 1,
        epochs=3,
        overhead_seconds=1.0,
        error=None,
        metrics=metrics,
    )


def test_summary_ranks_groups_by_their_completed_replicates():
    """stats.rank's rule: means over completed replicates only, in the direction of mode;
    a group without a completed replicate ranks last."""
    sweep = sweep_of("name: t\nspace: {model.head: {grid: [none, linear, nonlinear]}}")
    records = [
        record("linear", 0, "completed", 0.60, 0.5),
        record("linear", 1, "completed", 0.70, 0.7),
        record("nonlinear", 0, "completed", 0.80, 0.8),
        record("nonlinear", 1, "completed", 0.90, 0.9),
        record("none", 0, "stopped", 0.95),  # an early score: enters no mean
        record("none", 1, "completed", 0.50),
        record("extra", 0, "stopped", 0.99),  # nothing completed: last, whatever its score
    ]
    rows = summarize(sweep, records)
    assert [r["varying"]["model.head"] for r in rows] == ["nonlinear", "linear", "none", "extra"]
    best = rows[0]
    assert best["rank"] == 1 and best["trials"] == 2 and best["completed"] == 2
    assert best["metrics"]["val/knn_top1"]["mean"] == pytest.approx(0.85)
    assert best["metrics"]["val/knn_top1"]["std"] == pytest.approx(0.0707, abs=1e-4)
    assert best["metrics"]["test/probe_top1"]["mean"] == pytest.approx(0.85)
    none = rows[2]
    assert none["stopped"] == 1 and none["metrics"]["val/knn_top1"]["mean"] == 0.50
    assert none["metrics"]["val/knn_top1"]["std"] is None  # one replicate has no spread
    assert rows[3]["metrics"]["val/knn_top1"]["n"] == 0
    minimise = sweep_of(
        "name: t\nscheduler: {mode: min}\nspace: {model.head: {grid: [linear, nonlinear]}}"
    )
    assert summarize(minimise, records[:4])[0]["varying"]["model.head"] == "linear"


def test_summary_and_closing_table_include_semi_supervised_metrics(tmp_path):
    """Every final metric a trial reports reaches summary.json's rows and the closing table."""
    from ray.tune import Result

    sweep = sweep_of("name: t\nspace: {model.head: {grid: [linear]}}", storage=tmp_path)
    trial = sweep.trials[0]
    final = {
        "val/knn_top1": 0.8,
        "val/probe_top1": 0.7,
        "test/probe_top1": 0.69,
        "val/semi_top1": 0.61,
        "test/semi_top1": 0.6,
    }
    result = Result(
        metrics={"config": trial.param(), "epoch": trial.epochs, "status": "completed", **final},
        checkpoint=None,
        error=None,
        path=str(tmp_path / "t" / "trial0"),
    )
    records = trial_records(sweep, [result])
    assert records[0].status == "completed" and records[0].epochs == trial.epochs
    assert records[0].metrics["test/semi_top1"] == 0.6
    assert records[0].to_json() == dict(records[0])  # summary.json's entry, key for key
    assert list(records[0].to_json()) == [
        "trial_id", "varying", "replicate", "seed", "status", "epoch", "epochs",
        "overhead_seconds", "error", "metrics",
    ]  # fmt: skip
    rows = summarize(sweep, records)
    assert rows[0]["metrics"]["val/semi_top1"]["mean"] == pytest.approx(0.61)
    assert rows[0]["metrics"]["test/semi_top1"]["mean"] == pytest.approx(0.6)
    assert "val/probe_top5" not in rows[0]["metrics"]  # not reported: no empty column
    table = format_summary(sweep, rows, records)
    header = table.splitlines()[2]
    assert "val/semi_top1" in header and "test/semi_top1" in header
    assert "0.6100" in table


# ----------------------------------------------------------------------------- searchers


def test_planned_trials_hands_out_the_plan_then_finishes(tmp_path):
    sweep = sweep_of("name: t\nspace: {model.head: {grid: [none, linear]}}\nreplicates: 2")
    params = [t.param() for t in sweep.trials]
    searcher = PlannedTrials(params, sweep.metric, sweep.mode)
    assert searcher.suggest("a") == params[0]
    searcher.save(str(tmp_path / "state"))
    restored = PlannedTrials(params, sweep.metric, sweep.mode)
    restored.restore(str(tmp_path / "state"))
    assert [restored.suggest(x) for x in "bcd"] == params[1:]
    assert restored.suggest("e") == "FINISHED"


def test_asha_is_replicate_aware_and_runs_a_configurations_seeds_together():
    """scheduler: asha builds ReplicateASHA with the plan's values, and with replicates the
    trials are configuration-major so a configuration's seeds run (and are judged) together;
    fifo keeps replicates outermost. The order is a function of the spec (plan.json stable)."""
    from ablate.scheduling import ReplicateASHA, group_key

    text = (
        "name: t\ntrain: {epochs: 9}\nreplicates: 3\n"
        "space: {model.head: {grid: [none, linear]}}\n"
        "scheduler: {name: asha, grace_period: 2, reduction_factor: 3}"
    )
    asha = sweep_of(text)
    scheduler = build_scheduler(asha)
    assert isinstance(scheduler, ReplicateASHA)
    assert scheduler.rungs == [2, 6]  # grace 2 x 3^k below max_t = train.epochs = 9
    assert scheduler._replicates == 3 and scheduler._max_t == 9
    assert [(t.varying["model.head"], t.replicate) for t in asha.trials] == [
        ("none", 0), ("none", 1), ("none", 2), ("linear", 0), ("linear", 1), ("linear", 2)
    ]  # fmt: skip
    groups = [group_key(t.param(), str(i)) for i, t in enumerate(asha.trials)]
    assert len(set(groups[:3])) == 1 and len(set(groups)) == 2
    assert sweep_of(text).plan_json() == asha.plan_json()
    fifo = sweep_of(text, "scheduler.name=fifo")
    assert [t.replicate for t in fifo.trials] == [0, 0, 1, 1, 2, 2]
    assert type(build_scheduler(fifo)).__name__ == "FIFOScheduler"
    assert build_scheduler(sweep_of(text, "scheduler.max_t=4"))._max_t == 4


def test_optuna_learns_early_stopped_trials_as_pruned():
    sweep = sweep_of(
        "name: t\ntrain: {epochs: 4}\nscheduler: {name: asha}\n"
        "space: {optim.base_lr: {loguniform: [0.01, 1.0]}, "
        "augment.ops: {choice: [[crop], [crop, color]]}}\n"
        "algorithm: {name: optuna, num_samples: 3, seed: 1}"
    )
    searcher = OptunaTrials(sweep)
    params = [searcher.suggest(t) for t in ("done", "early", "broken", "nan")]
    for param in params:
        assert set(param) == {"config", "varying", "replicate", "sweep"}
        assert 0.01 <= param["config"]["optim"]["base_lr"] <= 1.0
        assert param["config"]["augment"]["ops"] in (["crop"], ["crop", "color"])
    for epoch in (1, 2, 3, 4):
        searcher.on_trial_result("done", {"epoch": epoch, "val/knn_top1": 0.5 + epoch / 10})
    searcher.on_trial_result("done", {"epoch": 2, "val/knn_top1": 0.0})  # re-report: ignored
    searcher.on_trial_result("early", {"epoch": 1, "val/knn_top1": 0.3})
    searcher.on_trial_complete("done", {"epoch": 4, "val/knn_top1": 0.9, "status": "completed"})
    # ASHA stops "early" on its epoch-2 result, which Tune passes to on_trial_complete only.
    searcher.on_trial_complete("early", {"epoch": 2, "val/knn_top1": 0.2, "status": "running"})
    searcher.on_trial_complete("broken", {"epoch": 2, "val/knn_top1": 0.4}, error=True)
    searcher.on_trial_complete("nan", {"epoch": 2, "val/knn_top1": 0.4, "status": "diverged"})
    done, early, broken, diverged = searcher.study().trials
    assert (done.state.name, done.value) == ("COMPLETE", 0.9)
    assert done.intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8, 4: 0.9}  # step = epoch
    assert early.state.name == "PRUNED"  # not COMPLETE with its early score
    assert early.intermediate_values == {1: 0.3, 2: 0.2}
    assert broken.state.name == "FAIL"
    assert diverged.state.name == "PRUNED"


# ----------------------------------------------------------------------------- storage


def test_existing_sweep_directory_needs_resume(tmp_path):
    text = "name: t\nspace: {model.head: {grid: [none, linear]}}"
    sweep = sweep_of(text, storage=tmp_path)
    assert check_experiment_dir(sweep, resume=False) is None
    Path(sweep.experiment_dir).mkdir(parents=True)
    with pytest.raises(SpecError) as caught:
        check_experiment_dir(sweep, resume=False)
    assert "--resume" in caught.value.message and caught.value.key == "name"
    assert check_experiment_dir(sweep, resume=True) is not None


def test_entrypoint_refuses_an_existing_sweep_before_starting_ray(tmp_path):
    (tmp_path / "quickstart").mkdir()
    done = subprocess.run(
        sweep_args(tmp_path, base=()), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "already exists" in done.stderr and "--resume" in done.stderr
    assert "Started a local Ray instance" not in done.stderr


# ----------------------------------------------------------------------------- end to end


#: Actors a sweep creates: per trial Tune's trial actor, the Train controller, its
#: synchronization actor and the workers; per sweep the placement-group janitor and the report
#: relay.
TRIAL_ACTORS = (
    "ImplicitFunc",
    "TrainController",
    "SynchronizationActor",
    "RayTrainWorker",
    "PlacementGroupJanitor",
    "ReportRelay",
)


def _actors_created_since(known: set[str]) -> list[str]:
    """Class names of the actors (alive or dead) whose ids are not in ``known``."""
    from ray._private import state

    return sorted(a["ActorClassName"] for i, a in state.actors().items() if i not in known)


def _actor_ids() -> set[str]:
    from ray._private import state

    return set(state.actors())


def _leftovers() -> tuple[list[str], list[str], list[int]]:
    """Alive trial actors, placement groups not removed, and trial processes still running."""
    from ray._private import state  # the GCS actor table; ray.util.state needs a dashboard

    actors = [a for a in state.actors().values() if a["ActorClassName"] in TRIAL_ACTORS]
    alive = [a["ActorClassName"] for a in actors if a["State"] != "DEAD"]
    groups = placement_groups_left()
    running = [a["Pid"] for a in actors if a["Pid"] and _process_exists(a["Pid"])]
    return alive, groups, running


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _wait_for_no_leaks(timeout: float = 60.0) -> tuple[list[str], list[str], list[int]]:
    # Actors and processes of a killed driver's job take a while to go on 2 loaded cores (over
    # 30 s seen): a real leak never clears at all.
    deadline = time.time() + timeout
    while True:
        leftovers = _leftovers()
        if not any(leftovers) or time.time() > deadline:
            return leftovers
        time.sleep(0.5)


@pytest.mark.slow
def test_the_janitor_removes_the_placement_group_of_a_dead_controller_only(ray_cluster):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ablate import placement

    @ray.remote(num_cpus=0)
    class StandIn:
        """In a Train controller's place: creates a placement group and registers it."""

        def start(self, janitor_name: str, release: bool):
            group = placement_group([{"CPU": 1}])
            ray.get(group.ready())
            janitor = ray.get_actor(janitor_name)
            me = ray.get_runtime_context().get_actor_id()
            ray.get(janitor.register.remote(me, group))
            if release:  # as a controller that shuts down and removes its group itself
                ray.get(janitor.release.remote(me))
                remove_placement_group(group)
            return group

    janitor, name = placement.start_janitor()
    dying, releasing = StandIn.remote(), StandIn.remote()
    dead_group = ray.get(dying.start.remote(name, False))
    released_group = ray.get(releasing.start.remote(name, True))
    ray.kill(dying)
    ray.kill(releasing)
    # Only the dead controller's group is the janitor's to remove; the other one's owner did.
    assert placement.stop_janitor(janitor, timeout_s=30) == [dead_group.id.hex()]
    table = ray.util.placement_group_table()
    assert table[dead_group.id.hex()]["state"] == "REMOVED"
    assert table[released_group.id.hex()]["state"] == "REMOVED"
    assert _wait_for_no_leaks() == ([], [], [])


def test_the_relay_forwards_each_report_in_order_then_the_result_or_the_error(
    ray_cluster, tmp_path
):
    import ray
    from ray.train import Checkpoint

    from ablate import relay

    handle = relay.start_relay()
    try:
        # fit() stands in for a Train run: the controller's callback puts what its workers
        # report (rank 0's metrics, the checkpoint's path) while fit() runs in another thread.
        checkpoint = Checkpoint(path=str(tmp_path))

        aborted: list[str] = []

        class Callback(relay.RelayReportCallback):
            def abort_run(self) -> None:  # this driver is no Train controller: record it
                aborted.append(self.channel)

        def fit_reporting_into(channel: str) -> Callable[[], str]:
            callback = Callback(handle, channel)

            def fit() -> str:
                for epoch in (1, 2, 3):
                    ranks = [{"epoch": epoch}, {"epoch": -epoch}]
                    callback.after_report(None, ranks, checkpoint if epoch == 2 else None)
                return "fitted"

            return fit

        channel = relay.new_channel("trial")
        reports: list[dict] = []
        fit = fit_reporting_into(channel)
        assert relay.fit_and_forward(fit, handle, channel, reports.append, poll_s=0.5) == "fitted"
        assert reports == [
            {"epoch": 1},
            {"epoch": 2, "checkpoint_path": str(tmp_path)},
            {"epoch": 3},
        ]

        # A failed run: the reports made before the failure, then its error.
        failing_channel = relay.new_channel("trial")
        assert failing_channel != channel  # a retried trial does not read an old channel

        def failing_fit() -> None:
            relay.RelayReportCallback(handle, failing_channel).after_report(
                None, [{"epoch": 1}], None
            )
            raise ValueError("worker group failed")

        reports = []
        with pytest.raises(ValueError, match="worker group failed"):
            relay.fit_and_forward(failing_fit, handle, failing_channel, reports.append, 0.5)
        assert reports == [{"epoch": 1}]

        # A stopped trial: what report raises (Tune's session ends the trial's thread so)
        # ends the forwarding and closes the channel; the run's next report aborts it.
        def stop(report: dict) -> None:
            raise SystemExit(0)

        assert aborted == []
        stopped = relay.new_channel("trial")
        with pytest.raises(SystemExit):
            relay.fit_and_forward(fit_reporting_into(stopped), handle, stopped, stop, 0.5)
        deadline = time.time() + 30
        while not aborted and time.time() < deadline:
            time.sleep(0.1)
        assert aborted[:1] == [stopped]

        # One report in flight: a put waits until the trial took the previous one.
        busy = relay.new_channel("trial")
        assert ray.get(handle.put.remote(busy, {"epoch": 1})) is True
        waiting = handle.put.remote(busy, {"epoch": 2})
        assert ray.wait([waiting], timeout=1.0)[0] == []
        assert ray.get(handle.get.remote(busy, 1.0)) == {"epoch": 1}
        assert ray.get(waiting, timeout=10) is True
        assert ray.get(handle.get.remote(busy, 1.0)) == {"epoch": 2}
        assert ray.get(handle.get.remote(busy, 0.2)) is None
        # Closing wakes a put waiting for room, and refuses later ones.
        ray.get(handle.put.remote(busy, {"epoch": 3}))
        waiting = handle.put.remote(busy, {"epoch": 4})
        assert ray.wait([waiting], timeout=1.0)[0] == []
        ray.get(handle.close.remote(busy))
        assert ray.get(waiting, timeout=10) is False
        assert ray.get(handle.put.remote(busy, {"epoch": 5})) is False
        assert ray.get(handle.get.remote(busy, 0.2)) is None
    finally:
        relay.stop_relay(handle)


def test_trial_actors_are_reused_only_where_no_trial_is_stopped_early():
    from ablate.sweep import reuse_trial_actors

    assert reuse_trial_actors(sweep_of(QUICKSTART.read_text(), "scheduler.name=fifo"))
    assert not reuse_trial_actors(
        sweep_of(QUICKSTART.read_text(), "scheduler.name=asha", "eval.eval_every=1")
    )


@pytest.mark.slow
def test_quickstart_end_to_end_with_asha_stopping(ray_cluster, tmp_path, capfd):
    from ablate.sweep import run_sweep

    # Two trials in a fixed order: 2 classes (an easy kNN) then 8 classes (a hard one). With one
    # trial at a time, ASHA's first rung (epoch 1) holds the easy trial's score, and the hard
    # trial scores below it, so it is stopped at epoch 1 of 3.
    overrides = [
        *SMALL,
        f"storage.path={tmp_path}",
        "space.augment.ops={grid: [[crop, color]]}",
        "space.model.head={grid: [nonlinear]}",
        "space.data.num_classes={grid: [2, 8]}",
        "algorithm.max_concurrent_trials=1",
        "scheduler.name=asha",
        "scheduler.grace_period=1",
        "scheduler.reduction_factor=2",
    ]
    known = _actor_ids()
    rows = run_sweep(QUICKSTART, overrides=overrides).rows

    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    statuses = {t["varying"]["data.num_classes"]: t["status"] for t in summary["trials"]}
    assert statuses == {2: "completed", 8: "stopped"}, summary["trials"]
    easy = next(t for t in summary["trials"] if t["varying"]["data.num_classes"] == 2)
    hard = next(t for t in summary["trials"] if t["varying"]["data.num_classes"] == 8)
    assert easy["epoch"] == 3 and hard["epoch"] == 1
    assert "test/probe_top1" in easy["metrics"]  # the final epoch's probe reached Tune
    assert easy["overhead_seconds"] > 0
    assert summary["overhead_seconds"]["n"] == 2
    # Ranked rows: the completed configuration first; also returned by run_sweep.
    assert rows == summary["rows"]
    assert rows[0]["varying"]["data.num_classes"] == 2 and rows[0]["completed"] == 1
    # On disk: Tune's per-trial results, and each trial's Train run with checkpoints.
    train_runs = tmp_path / "quickstart" / "train"
    assert (train_runs / easy["trial_id"]).is_dir()
    assert list((train_runs / easy["trial_id"]).glob("checkpoint_*")) or list(
        (train_runs / easy["trial_id"]).glob("epoch_*")
    )
    result_lines = (tmp_path / "quickstart" / easy["trial_id"] / "result.json").read_text()
    results = [json.loads(line) for line in result_lines.splitlines()]
    assert [result["epoch"] for result in results] == [1, 2, 3]
    assert Path(results[-1]["checkpoint_path"]).is_dir()  # the relay forwards it, as Ray's did
    # Stopping a trial tears its worker group down: no actors or placement groups left. The
    # stopped trial's controller died with its Tune actor, so its placement group was left for
    # the sweep's janitor: Train's per-trial cleaner and Ray Data's manager never started, and
    # with ASHA no trial actor was reused (one per trial).
    assert _wait_for_no_leaks() == ([], [], [])
    created = _actors_created_since(known)
    assert "PlacementGroupCleaner" not in created and "DatasetManager" not in created
    assert created.count("PlacementGroupJanitor") == 1
    # One Train run per trial. Tune's trial actors are not counted: once (CI, 2 cores) the GCS
    # actor table listed neither trial's ImplicitFunc actor although both trials ran.
    assert created.count("TrainController") == 2 and created.count("ImplicitFunc") <= 2
    # Reports travel through the sweep's one relay, not a queue actor per trial.
    assert created.count("ReportRelay") == 1 and "_QueueActor" not in created
    # The console: one plain line per trial event (not a TTY), nothing of Ray's own output.
    out, err = capfd.readouterr()
    events = {
        trial["trial_id"]: [
            line.split(": ", 1)[1].split("  ")[0]
            for line in out.splitlines()
            if line.startswith("[") and f"] {trial['trial_id']} " in line
        ]
        for trial in (easy, hard)
    }
    assert events[easy["trial_id"]] == [
        "started",
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
        "completed",
    ]
    assert events[hard["trial_id"]][:2] == ["started", "epoch 1/3"]
    assert events[hard["trial_id"]][2].startswith("stopped") and len(events[hard["trial_id"]]) == 3
    for noise in ("TrainingReport(", "Checkpoint successfully", " E ", "WARNING", "Warning"):
        assert noise not in out + err, noise
    # Ray's and Ray Train's lines are in the sweep's log file, which the console names.
    log = tmp_path / "quickstart" / "logs" / "sweep.log"
    assert f"log: {log}" in err
    text = log.read_text()
    assert "Reporting training result" in text
    assert text.count("trial start-up") == 2  # once per trial (a print was copied twice)


@pytest.mark.slow
def test_run_sweep_as_a_library_tracks_and_reports(ray_cluster, tmp_path):
    """Without the entrypoint, run_sweep logs to the spec's tracking.uri / tracking.experiment
    and writes the report beside the results; with replicates: 2 the report has the
    comparisons table, the forest and importance figures and findings with CIs, and MLflow
    holds them (and the importance metrics)."""
    from mlflow import MlflowClient

    from ablate.sweep import run_sweep

    uri = f"sqlite:///{tmp_path}/store.db"
    overrides = [
        *SMALL,
        f"storage.path={tmp_path}",
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        "tracking.experiment=library-exp",
        "space.augment.ops={grid: [[crop, color]]}",
        "space.model.head={grid: [linear, nonlinear]}",
        "replicates=2",
        "scheduler.name=fifo",
    ]
    known = _actor_ids()
    done = run_sweep(QUICKSTART, overrides=overrides)

    assert done.tracking_uri == uri and done.failed == 0
    # FIFO stops no trial: a finished trial's Tune actor ran a later one (4 trials, 2 at once).
    created = _actors_created_since(known)
    assert created.count("TrainController") == 4 and created.count("ImplicitFunc") < 4
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("library-exp")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags.get("ablate.role") for r in runs) == ["sweep", *["trial"] * 4]
    trial = next(r for r in runs if r.data.tags.get("ablate.role") == "trial")
    assert trial.info.status == "FINISHED" and trial.data.tags["ablate.status"] == "completed"
    assert "val/knn_top1" in trial.data.metrics
    report = Path(done.report_path)
    assert report.is_file() and report.parent == tmp_path / "quickstart" / "report"
    assert json.loads(Path(done.summary_path).read_text())["rows"] == done.rows
    # How sure: every configuration against the best, paired over the 2 seeds.
    comparisons = pq.read_table(report.parent / "comparisons.parquet").to_pylist()
    assert sorted(r["test"] for r in comparisons) == ["best", "paired t"]
    other = next(r for r in comparisons if r["test"] == "paired t")
    assert other["n_pairs"] == 2 and other["ci_low"] <= other["diff"] <= other["ci_high"]
    text = report.read_text()
    assert "## Tied for best" in text and "## Which keys matter" in text
    assert "nonlinear − linear: " in text and "[95% CI " in text and "(paired t, 2 seeds)" in text
    for stem in ("comparisons_forest", "importance"):
        assert (report.parent / "figures" / f"{stem}.png").stat().st_size > 1000
    parent = next(r for r in runs if r.data.tags.get("ablate.role") == "sweep")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/comparisons.parquet", "report/summary.md"} <= logged
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert {"report/figures/comparisons_forest.svg", "report/figures/importance.png"} <= figures
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert 0.0 <= metrics["importance/model.head"] <= 1.0
    assert "importance/seed_noise" in metrics


@pytest.mark.slow
def test_resources_no_node_can_hold_exit_2_before_any_trial(ray_cluster, tmp_path):
    done = subprocess.run(
        sweep_args(tmp_path, "resources.gpus_per_worker=1", base=(), address=ray_cluster),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "resources.gpus_per_worker" in done.stderr and "no node has them" in done.stderr
    assert not (tmp_path / "quickstart").exists()  # nothing started, nothing written


def _experiment_state(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.glob("experiment_state-*.json"))


@pytest.mark.slow
def test_resume_after_driver_is_killed_skips_finished_trials(ray_cluster, tmp_path):
    args = sweep_args(
        tmp_path,
        "name=resumable",
        "scheduler.name=fifo",
        "space.augment.ops={grid: [[crop, color]]}",
        "space.model.head={grid: [linear, nonlinear]}",
        "algorithm.max_concurrent_trials=1",
        base=SMALL,
        address=ray_cluster,
    )
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    experiment = tmp_path / "resumable"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while time.time() < deadline and "TERMINATED" not in _experiment_state(experiment):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    state = _experiment_state(experiment)
    assert "TERMINATED" in state, (tmp_path / "first.log").read_text()[-3000:]
    finished = [p.parent.name for p in experiment.glob("*/result.json") if _ended(p)]
    assert len(finished) == 1
    first_results = (experiment / finished[0] / "result.json").read_text()
    first_train_run = _snapshot(experiment / "train" / finished[0])
    assert first_train_run  # its checkpoints exist

    # Without --resume the name is refused; with it the sweep finishes.
    refused = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(
        [*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    summary = json.loads((experiment / "summary.json").read_text())
    assert sorted(t["status"] for t in summary["trials"]) == ["completed"] * 2
    # The trial that had finished was not run again: its results and Train run are untouched.
    assert (experiment / finished[0] / "result.json").read_text() == first_results
    assert _snapshot(experiment / "train" / finished[0]) == first_train_run
    # Nothing of the killed driver's trials outlives it (its detached PG cleaners included).
    assert _wait_for_no_leaks() == ([], [], [])


def _ended(result_json: Path) -> bool:
    lines = result_json.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("status") == "completed"


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
        if p.is_file()
    }
