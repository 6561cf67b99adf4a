"""A sweep never freezes on resources: orphaned placement groups are removed, a hung worker is
ended by the stall watchdog, and a trial the cluster cannot place ends the sweep with a message
that says who holds the cluster (issue 22). Real Ray, real sweeps on synthetic data.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from local_servers import placement_groups_left, placement_groups_text
from tiny_quickstart import QUICKSTART

#: One tiny trial of the quickstart: 128 images of 16 px, 3 epochs of 2 steps, no MLflow.
TINY = [
    "data.num_train=128",
    "data.num_test=32",
    "data.synthetic_size=16",
    "train.batch_size=32",
    "train.steps_per_epoch=2",
    "train.epochs=3",
    "eval.knn_k=5",
    "eval.probe.max_iter=5",
    "tracking.enabled=false",
    "space.augment.ops={grid: [[crop, color]]}",
    "space.model.head={grid: [linear]}",
]


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.mark.slow
def test_the_janitor_removes_orphaned_groups_pending_or_placed_and_keeps_live_ones(
    ray_cluster,
):
    """A controller that dies while its group is still waiting leaves a pending group that
    Ray places later (it then holds the cores for good: the ASHA freeze); one that dies while
    holding its group leaves it reserved. The janitor removes both without any registration;
    the group of a live creator stays."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from ablate import placement

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self, cpus: float) -> str:
            self.group = placement_group([{"CPU": cpus}])
            return self.group.id.hex()

        def remove(self) -> None:
            ray.util.remove_placement_group(self.group)

    janitor, _ = placement.start_janitor()
    holding, waiting, live = Creator.remote(), Creator.remote(), Creator.remote()
    held = ray.get(holding.make.remote(1))
    pending = ray.get(waiting.make.remote(64))  # no node holds 64 CPUs: pending for ever
    kept = ray.get(live.make.remote(1))
    assert _wait(lambda: placement_group_table()[held]["state"] == "CREATED", 30)
    ray.kill(holding)
    ray.kill(waiting)
    try:
        assert _wait(
            lambda: all(placement_group_table()[g]["state"] == "REMOVED" for g in (held, pending)),
            30,
        )
        assert placement_group_table()[kept]["state"] != "REMOVED"
        assert sorted(placement.stop_janitor(janitor, timeout_s=10)) == sorted([held, pending])
    finally:
        ray.get(live.remove.remote())
        ray.kill(live)


@pytest.mark.timeout(120)
def test_a_killed_controller_counts_until_its_process_is_gone(ray_cluster, monkeypatch, request):
    """ray.kill marks an actor dead before its process exits, and a controller killed while it
    starts a worker group could create that group in between (a group then outlived the sweep
    on loaded cores): the janitor reads the process's end from the GCS's worker table and
    waits for it; a process a lost node never reports gone counts as gone after DYING_S."""
    import ray

    from ablate import placement

    @ray.remote(num_cpus=0)
    class Controller:
        def ready(self) -> bool:
            return True

    actor = Controller.remote()
    ray.get(actor.ready.remote())
    actor_id = actor._actor_id.hex()
    assert placement._actor_state(actor_id) == "alive"
    ray.kill(actor, no_restart=True)
    seen = []
    assert _wait(lambda: seen.append(placement._actor_state(actor_id)) or seen[-1] == "gone", 30)
    assert "alive" not in seen

    janitor = placement.PlacementGroupJanitor(interval_s=0.1)
    request.addfinalizer(janitor.stop)
    janitor.waiting("c1", "trial-1", [{"CPU": 1.0}])
    states = {"c1": "dying"}
    monkeypatch.setattr(placement, "_actor_state", lambda actor: states[actor])
    assert janitor.drain(timeout_s=1.0) == 1  # dead, its process still running: not over
    assert janitor.view()["waiting"] == []  # but no longer waiting for the cluster
    states["c1"] = "gone"
    assert janitor.drain(timeout_s=5.0) == 0
    janitor.waiting("c2", "trial-2", [{"CPU": 1.0}])
    states["c2"] = "dying"
    monkeypatch.setattr(placement, "DYING_S", 0.3)
    assert janitor.drain(timeout_s=5.0) == 0


def test_reservations_are_described_by_trial_and_foreign_groups():
    from ablate import placement

    view = {
        "holding": [{"trial": "t1", "placement_group": "aa" * 18}],
        "waiting": [{"trial": "t2", "waited_s": 70.0, "bundles": [{"CPU": 1.0}]}],
    }
    groups = {
        "aa" * 18: {"state": "CREATED", "bundles": {0: {"CPU": 1.0}}},
        "bb" * 18: {"state": "CREATED", "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}},
        "cc" * 18: {"state": "REMOVED", "bundles": {0: {"CPU": 4.0}}},
        "dd" * 18: {"state": "CREATED", "bundles": {0: {"memory": 1.0}}},  # a Tune trial's own
    }
    text = placement.describe_reservations(view, groups, {"CPU": 3.0}, {"CPU": 0.0})
    assert text.startswith("the cluster has 0 of 3 CPU free; reserved by: ")
    assert "trial t1 (1 x {CPU: 1})" in text
    assert f"placement group {'bb' * 6} (2 x {{CPU: 1}}) of no running trial" in text
    assert "cc" not in text
    assert "dd" not in text and "memory" not in text


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_hung_worker_is_ended_as_stalled_and_the_sweep_goes_on(ray_cluster, tmp_path):
    """Two trials; rank 0 of one SIGSTOPs itself after epoch 1. The stall watchdog ends that
    trial failed with the reason 'stalled' and its worker group torn down; the other trial
    completes, and nothing stays reserved."""
    from ablate.sweep import run_sweep

    done = run_sweep(
        QUICKSTART,
        overrides=[
            *TINY,
            f"storage.path={tmp_path}",
            "space.train.faults.stop_at_epoch={grid: [1, null]}",
            "resources.stall_timeout_s=20",
            "algorithm.max_concurrent_trials=1",
        ],
    )
    by_fault = {t["varying"]["train.faults.stop_at_epoch"]: t for t in done.trials}
    assert by_fault[None]["status"] == "completed"
    stalled = by_fault[1]
    assert stalled["status"] == "failed"
    assert "stalled: worker rank 0 gave no sign of life" in stalled["error"]
    assert "resources.stall_timeout_s=20" in stalled["error"]
    assert _wait(lambda: placement_groups_left() == [], 30)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_the_cluster_cannot_place_ends_the_sweep_naming_who_holds_it(ray_cluster, tmp_path):
    """Another job's placement group holds both CPUs. The sweep warns who holds them while its
    trial waits, then ends with SweepStalledError at resources.schedule_timeout_s, instead of
    waiting for ever (the ASHA freeze); its trial's own waiting group is removed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ablate.sweep import SweepStalledError, run_sweep

    foreign = placement_group([{"CPU": 2.0}])
    ray.get(foreign.ready(), timeout=60)
    started = time.monotonic()
    try:
        with pytest.raises(SweepStalledError) as raised:
            run_sweep(
                QUICKSTART,
                overrides=[
                    *TINY,
                    f"storage.path={tmp_path}",
                    "resources.schedule_timeout_s=40",
                ],
            )
        elapsed = time.monotonic() - started
        message = str(raised.value)
        assert "could not start for" in message and "schedule_timeout_s=40" in message
        assert f"placement group {foreign.id.hex()[:12]} (1 x {{CPU: 2}})" in message
        assert "--resume" in message
        assert elapsed < 200
        # The warning is printed, and kept in the sweep's log with Ray's lines (the log is read:
        # Ray's log thread may write to the captured stderr while the test reads it).
        log = (tmp_path / "quickstart" / "logs" / "sweep.log").read_text()
        warning = next(line for line in log.splitlines() if "ablate: warning: trial" in line)
        assert "has waited" in warning and "reserved by: placement group" in warning
        assert f"{foreign.id.hex()[:12]} (1 x {{CPU: 2}})" in warning
        assert "memory" not in message  # the trial's own Tune group holds no CPU
        # Only the foreign group is left: the trial's pending group went with its controller,
        # also one it created while being killed (under load, after the janitor's first look).
        assert _wait(lambda: placement_groups_left() == [foreign.id.hex()], 30), (
            placement_groups_text()
        )
    finally:
        remove_placement_group(foreign)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_native_crash_that_repeats_is_named_and_not_retried_again(ray_cluster, tmp_path):
    """Rank 0 dies of SIGSEGV as epoch 2 starts, in every worker group: Train restarts the
    group once from the epoch-1 checkpoint, the crash repeats, and the trial fails naming the
    signal and the worker's log file instead of a generic 'actor died' after 3 attempts."""
    import ray

    from ablate.sweep import run_sweep

    def workers_created() -> int:
        from ray._private import state

        job = ray.get_runtime_context().get_job_id()
        return sum(
            a["ActorClassName"] == "RayTrainWorker" and a["JobID"] == job
            for a in state.actors().values()
        )

    before = workers_created()
    done = run_sweep(
        QUICKSTART,
        overrides=[*TINY, f"storage.path={tmp_path}", "train.faults.crash_at_epoch=2"],
    )
    (trial,) = done.trials
    assert trial["status"] == "failed"
    assert "worker rank 0" in trial["error"] and "crashed natively: SIGSEGV" in trial["error"]
    log = trial["error"].split("Its log: ")[1].split()[0]
    assert Path(log).is_file() and "SIGSEGV" in Path(log).read_text(errors="replace")
    assert workers_created() - before == 2  # the first group and one retry, not three
    assert _wait(lambda: placement_groups_left() == [], 30)
