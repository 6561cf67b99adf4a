"""MLflow tracking of a sweep: a real Ray Tune run feeding MlflowCallback, a real SQLite store."""

from __future__ import annotations

import math
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from ray import cloudpickle, tune
from ray.tune.result import (
    AUTO_RESULT_KEYS,
    DONE,
    EPISODES_THIS_ITER,
    EXPERIMENT_TAG,
    SHOULD_CHECKPOINT,
    TIMESTEPS_THIS_ITER,
    TRIAL_ID,
)
from ray.tune.search.basic_variant import BasicVariantGenerator

from ablate.config import TrialConfig, flatten, resolve, set_dotted
from ablate.tracking import (
    MlflowCallback,
    SweepTracker,
    TrackingError,
    check_reachable,
    config_params,
    default_tracking_uri,
    run_name,
)
from ablate.tracking.results import TUNE_RESULT_KEYS, epoch_metrics
from ablate.vocabulary import Outcome, trial_outcome

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
SPEC_YAML = "name: track-test\nsearch:\n  model.head: [nonlinear, linear, none]\n"
KNN_BASE = {"nonlinear": 0.5, "linear": 0.1, "none": 0.3}


def fake_trial(param: dict) -> None:
    """A Tune function trainable that reports the train loop's metric keys per epoch.

    It honours the config's fault injection the way ablate.train does: ``raise_at_start``
    raises before training, ``raise_once_at_epoch`` raises once after reporting that epoch
    (Tune then retries it from scratch, re-reporting earlier epochs), ``nan_loss_at_epoch``
    reports a diverged epoch and ends the trial.
    """
    cfg = TrialConfig.model_validate(param["config"])
    faults = cfg.train.faults
    if faults.raise_at_start:
        raise RuntimeError(faults.raise_at_start)
    marker = Path(tune.get_context().get_trial_dir()) / "raised_once"
    base = KNN_BASE[cfg.model.head]
    start = time.time()
    for epoch in range(1, cfg.train.epochs + 1):
        metrics = {
            "epoch": epoch,
            "train/loss": 5.0 - epoch,
            "train/contrastive_top1": 0.2 * epoch,
            "train/lr": 0.1,
            "train/images_per_sec": 1000.0,
            "train/epoch_seconds": 0.01,
            "val/knn_top1": base + 0.05 * epoch,
            "val/online_top1": base,
            "wall_seconds": time.time() - start + epoch,
            "status": "running",
            "reason": "",
        }
        if faults.nan_loss_at_epoch == epoch:
            metrics.update({"train/loss": math.nan, "status": "diverged", "reason": "loss is nan"})
            tune.report(metrics)
            return
        if epoch == cfg.train.epochs:
            metrics.update(
                {
                    "status": "completed",
                    "val/probe_top1": base + 0.2,
                    "val/probe_top5": 0.99,
                    "test/probe_top1": base + 0.19,
                    "test/probe_top5": 0.98,
                    "test/knn_top1": base + 0.1,
                }
            )
        tune.report(metrics)
        if faults.raise_once_at_epoch == epoch and not marker.exists():
            marker.touch()
            raise RuntimeError("worker group lost (simulated)")


def trial_param(head: str, replicate: int, **overrides: object) -> dict:
    config: dict = {
        "model": {"head": head},
        "train": {"epochs": EPOCHS, "seed": replicate},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
    }
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return {
        "config": resolve(config),
        "varying": {"model.head": head},
        "replicate": replicate,
        "sweep": "track-test",
    }


# Each trial's behaviour, keyed by (head, replicate).
PARAMS = {
    "flaky": trial_param("nonlinear", 0, **{"train.faults.raise_once_at_epoch": 2}),
    "stopped": trial_param("linear", 0),  # the stopper ends it at epoch 2 (knn < 0.25)
    "diverged": trial_param("none", 0, **{"train.faults.nan_loss_at_epoch": 2}),
    "failed": trial_param("nonlinear", 1, **{"train.faults.raise_at_start": "simulated CUDA OOM"}),
}


def stop_low_knn(trial_id: str, result: dict) -> bool:
    """An early stop like ASHA's: a trial that is still poor at epoch 2 is cut."""
    return result["epoch"] >= 2 and result["val/knn_top1"] < 0.25


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    """Run the four trials through Tune with the callback; return what a test needs."""
    root = tmp_path_factory.mktemp("sweep")
    uri = default_tracking_uri(root / "storage")
    tracker = SweepTracker(
        uri, "track-test", execution="exec-1", spec_text=SPEC_YAML, storage_path=root / "storage"
    )
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tuner = tune.Tuner(
        tune.with_resources(fake_trial, {"cpu": 1}),
        param_space=PARAMS["flaky"],  # a template with every key; the points set the values
        tune_config=tune.TuneConfig(
            num_samples=len(PARAMS),
            search_alg=BasicVariantGenerator(points_to_evaluate=list(PARAMS.values())),
        ),
        run_config=tune.RunConfig(
            name="track-test",
            storage_path=str(root / "storage"),
            callbacks=[MlflowCallback(tracker, strict=True)],
            stop=stop_low_knn,
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    tuner.fit()
    client = MlflowClient(uri)
    children = client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'"
    )
    by_role = {}
    for run in children:
        for role, param in PARAMS.items():
            if (
                run.data.params["train.seed"] == str(param["replicate"])
                and run.data.params["model.head"] == (param["config"]["model"]["head"])
            ):
                by_role[role] = run
    return {"tracker": tracker, "client": client, "children": children, "runs": by_role}


def test_parent_run_tags_and_spec(sweep):
    tracker, client = sweep["tracker"], sweep["client"]
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["ablate.sweep"] == "track-test" and tags["ablate.execution"] == "exec-1"
    assert tags["ablate.version.ray"] == ray.__version__
    assert "ablate.version.torch" in tags and "ablate.version.mlflow" in tags
    assert tags["ablate.trials.completed"] == "1" and tags["ablate.trials.failed"] == "1"
    spec = Path(client.download_artifacts(tracker.parent_run_id, "spec.yaml"))
    assert spec.read_text() == SPEC_YAML
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "track-test"
    assert experiment.artifact_location.startswith("file://")
    assert Path(tracker.tracking_uri[len("sqlite:///") :]).parent.as_posix() in (
        experiment.artifact_location
    )


def test_one_nested_child_per_trial_with_every_param(sweep):
    children, runs = sweep["children"], sweep["runs"]
    assert len(children) == len(PARAMS) and set(runs) == set(PARAMS)
    for role, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == sweep["tracker"].parent_run_id
        param = PARAMS[role]
        expected = config_params(param["config"])
        assert set(expected) == set(flatten(resolve({}))), "every resolved key is a param"
        assert run.data.params == expected
        assert run.info.run_name == run_name(param["varying"], param["replicate"])
    assert sweep["runs"]["flaky"].data.params["augment.ops"] == '["crop", "flip", "color"]'
    assert sweep["runs"]["flaky"].info.run_name == "head=nonlinear | seed=0"


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_per_epoch_metrics_logged_once_per_epoch(sweep):
    client, runs = sweep["client"], sweep["runs"]
    flaky = runs["flaky"].info.run_id  # reported epochs 1, 2, then 1, 2, 3 after its retry
    assert [step for step, _ in _history(client, flaky, "train/loss")] == [1, 2, 3]
    knn = _history(client, flaky, "val/knn_top1")
    assert [step for step, _ in knn] == [1, 2, 3]
    assert [value for _, value in knn] == pytest.approx([0.55, 0.6, 0.65])
    assert _history(client, flaky, "epoch") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    for key in ("train/lr", "train/images_per_sec", "train/epoch_seconds", "val/online_top1"):
        assert len(_history(client, flaky, key)) == EPOCHS
    assert _history(client, flaky, "val/probe_top1") == [(3, pytest.approx(0.7))]
    assert _history(client, flaky, "test/probe_top5") == [(3, pytest.approx(0.98))]
    assert "training_iteration" not in runs["flaky"].data.metrics  # Tune bookkeeping: not logged
    stopped = runs["stopped"].info.run_id
    assert [step for step, _ in _history(client, stopped, "val/knn_top1")] == [1, 2]
    diverged = _history(client, runs["diverged"].info.run_id, "train/loss")
    assert [step for step, _ in diverged] == [1, 2] and math.isnan(diverged[1][1])


def test_trial_statuses_and_compute(sweep):
    client, runs = sweep["client"], sweep["runs"]
    expect = {
        "flaky": ("completed", "FINISHED"),
        "stopped": ("stopped", "FINISHED"),
        "diverged": ("diverged", "FINISHED"),
        "failed": ("failed", "FAILED"),
    }
    for role, (status, mlflow_status) in expect.items():
        run = client.get_run(runs[role].info.run_id)
        assert (run.data.tags["ablate.status"], run.info.status) == (status, mlflow_status), role
    stopped = client.get_run(runs["stopped"].info.run_id)
    assert stopped.data.tags["ablate.stopped_at_epoch"] == "2"
    assert "epoch 2 of 3" in stopped.data.tags["ablate.status_detail"]
    assert stopped.data.metrics["compute/epochs_run"] == 2
    diverged = client.get_run(runs["diverged"].info.run_id)
    assert diverged.data.tags["ablate.reason"] == "loss is nan"
    flaky = client.get_run(runs["flaky"].info.run_id)
    assert flaky.data.metrics["compute/epochs_run"] == EPOCHS
    assert flaky.data.metrics["compute/retries"] == 1
    wall = flaky.data.metrics["compute/wall_seconds"]
    assert wall >= EPOCHS  # the last report's wall_seconds
    assert flaky.data.metrics["compute/cpu_seconds"] == pytest.approx(wall * 2 * 0.5)
    failed = client.get_run(runs["failed"].info.run_id)
    assert failed.data.tags["ablate.error"] == "RuntimeError: simulated CUDA OOM"
    error_txt = Path(client.download_artifacts(failed.info.run_id, "error.txt")).read_text()
    assert "raise RuntimeError(faults.raise_at_start)" in error_txt  # the whole traceback
    assert "failed" in failed.data.tags["ablate.status_detail"]


def test_no_run_left_running(sweep):
    client, tracker = sweep["client"], sweep["tracker"]
    runs = client.search_runs([tracker.experiment_id])
    assert runs and all(run.info.status != "RUNNING" for run in runs)


# ----------------------------------------------------------------------------- without Ray


def test_resume_continues_runs_and_never_logs_an_epoch_twice(tmp_path):
    uri = default_tracking_uri(tmp_path)
    param = trial_param("linear", 3)
    result = {"epoch": 1, "train/loss": 3.0, "val/knn_top1": 0.1, "status": "running"}

    first = SweepTracker(uri, "resume", execution="e1", spec_text="a: 1\n")
    parent = first.start()
    run_id = first.start_trial("t-1", param["config"], param["varying"], param["replicate"])
    assert first.log_epoch("t-1", result)
    assert first.log_epoch("t-1", {**result, "epoch": 2, "train/loss": 2.0})
    assert not first.log_epoch("t-1", {**result, "train/loss": 99.0})  # a retry re-reports 1
    first.close("KILLED")  # the driver was interrupted
    client = MlflowClient(uri)
    runs = client.search_runs([first.experiment_id])
    assert {run.info.status for run in runs} == {"KILLED"}
    assert client.get_run(run_id).data.tags["ablate.status"] == "interrupted"
    first.close("FINISHED")  # idempotent: a second close changes nothing
    assert client.get_run(parent).info.status == "KILLED"

    resumed = pickle.loads(pickle.dumps(first))  # Tune pickles its callbacks with the run
    assert resumed.start() == parent
    assert client.get_run(parent).info.status == "RUNNING"
    assert resumed.last_epoch("t-1") == 2
    assert resumed.start_trial("t-1", param["config"], param["varying"], 3) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    for epoch in (1, 2, 3):  # a restored trial re-reports from its checkpoint
        resumed.log_epoch("t-1", {**result, "epoch": epoch, "train/loss": 10.0 + epoch})
    assert _history(client, run_id, "train/loss") == [(1, 3.0), (2, 2.0), (3, 13.0)]
    resumed.finish_trial("t-1", "completed", last_result={**result, "epoch": 3})
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([first.experiment_id])) == 2  # no duplicated runs
    other = SweepTracker(uri, "resume", execution="e2")
    assert other.start() != parent  # another execution: another parent
    resumed.close("FINISHED")
    other.close("FAILED")
    statuses = {run.info.status for run in client.search_runs([first.experiment_id])}
    assert statuses == {"FINISHED", "FAILED"}


def test_context_manager_kills_runs_on_interrupt(tmp_path):
    uri = default_tracking_uri(tmp_path)
    param = trial_param("none", 0)
    tracker = SweepTracker(uri, "interrupt", execution="e1")
    with pytest.raises(KeyboardInterrupt), tracker:
        tracker.start_trial("t-1", param["config"], param["varying"], 0)
        tracker.log_epoch("t-1", {"epoch": 1, "train/loss": 1.0})
        raise KeyboardInterrupt
    runs = MlflowClient(uri).search_runs([tracker.experiment_id])
    assert sorted(run.info.status for run in runs) == ["KILLED", "KILLED"]
    with pytest.raises(ValueError, match="boom"), SweepTracker(uri, "interrupt", execution="e2"):
        raise ValueError("boom")
    runs = MlflowClient(uri).search_runs([tracker.experiment_id], "tags.`ablate.execution` = 'e2'")
    assert [run.info.status for run in runs] == ["FAILED"]


def test_unreachable_server_fails_fast_with_the_uri():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}.*not reachable"):
        check_reachable(uri)
    with pytest.raises(TrackingError, match="mlflow server"):
        SweepTracker(uri, "x").start()
    assert time.monotonic() - start < 5.0


def test_file_store_and_relative_sqlite_are_refused(tmp_path):
    with pytest.raises(TrackingError, match="file store"):
        check_reachable(str(tmp_path / "mlruns"))
    with pytest.raises(TrackingError, match="absolute"):
        check_reachable("sqlite:///relative.db")


def test_default_tracking_uri_is_absolute_beside_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri("runs") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert default_tracking_uri("runs").startswith("sqlite:////")


def test_run_name_aliases():
    varying = {
        "augment.ops": ["crop", "color"],
        "model.head": "nonlinear",
        "train.batch_size": 256,
        "loss.temperature": 0.5,
        "optim.base_lr": 0.001,
        "model.out_dim": 64,
        "train.epochs": 100,
        "augment.color.strength": 0.5,
    }
    assert run_name(varying, 1) == (
        "crop+color | head=nonlinear | bs=256 | t=0.5 | lr=0.001 | dim=64 | ep=100 "
        "| strength=0.5 | seed=1"
    )
    assert run_name({"train.seed": 7}, 2) == "seed=7 | rep=2"


def test_trial_outcome():
    assert trial_outcome({"epoch": 3, "status": "completed"}, 3) == Outcome(
        "completed",
        "completed 3 epochs",
    )
    assert trial_outcome({"epoch": 1, "status": "running"}, 3).status == "stopped"
    diverged = trial_outcome({"epoch": 2, "status": "diverged", "reason": "nan"}, 3, errored=True)
    assert diverged == Outcome("diverged", "diverged at epoch 2: nan")
    assert trial_outcome({}, 3, errored=True).status == "failed"


def test_a_trial_that_never_reported_an_epoch_ends_interrupted(tmp_path):
    """Tune ended it before its first result (the sweep was stopped): not 'stopped' by ASHA,
    whose rungs need a reported epoch, but interrupted; its run ends KILLED, with 0 epochs."""
    outcome = trial_outcome({"training_iteration": None}, EPOCHS)
    assert outcome.status == "interrupted"
    uri = default_tracking_uri(tmp_path)
    param = trial_param("linear", 0)
    tracker = SweepTracker(uri, "never-reported", execution="e1")
    run_id = tracker.start_trial("t-1", param["config"], param["varying"], 0)
    tracker.finish_trial("t-1", outcome.status, detail=outcome.detail)
    tracker.close("FINISHED")
    run = MlflowClient(uri).get_run(run_id)
    assert (run.data.tags["ablate.status"], run.info.status) == ("interrupted", "KILLED")
    assert run.data.tags["ablate.status_detail"] == outcome.detail
    assert run.data.metrics["compute/epochs_run"] == 0
    assert tracker.experiment == "never-reported"


def test_long_param_values_are_capped():
    config = resolve({})
    config["data"]["train_path"] = "x" * 7000
    assert len(config_params(config)["data.train_path"]) == 6000


def test_tune_result_keys_are_rays_own():
    """The writer names Tune's bookkeeping keys without importing Ray: the same set as Ray's."""
    rays = {
        *AUTO_RESULT_KEYS,
        DONE,
        TRIAL_ID,
        EXPERIMENT_TAG,
        SHOULD_CHECKPOINT,
        EPISODES_THIS_ITER,
        TIMESTEPS_THIS_ITER,
    }
    assert rays == TUNE_RESULT_KEYS
    result = {key: 1.0 for key in rays} | {"epoch": 2, "val/knn_top1": 0.5, "done": True}
    assert epoch_metrics(result) == {"epoch": 2.0, "val/knn_top1": 0.5}


def _modules_after(code: str) -> str:
    """The last line ``code`` prints, run in a fresh interpreter at the repository's root."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_tracking_imports_neither_ray_nor_the_report():
    """The writer, the reader and the report's publisher load without Ray or ``ablate.report``;
    ``MlflowCallback`` (the one name that needs Ray) is loaded when it is asked for."""
    code = (
        "import sys\n"
        "import ablate.tracking, ablate.tracking.reader, ablate.tracking.writer\n"
        "import ablate.tracking.publish\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.split('.')[0] == 'ray' or m.startswith('ablate.report'))\n"
        "from ablate.tracking import MlflowCallback\n"
        "print(loaded, MlflowCallback.__module__, 'ray.tune' in sys.modules)"
    )
    assert _modules_after(code) == "[] ablate.tracking.callback True"


def test_report_rebuilds_from_a_sqlite_store_without_ray(tmp_path):
    """``python -m entrypoints.report`` reads a sweep back from a real SQLite store, writes its
    report and logs it to the parent run, with Ray never imported."""
    uri = default_tracking_uri(tmp_path / "storage")
    tracker = SweepTracker(uri, "rebuilt", execution="e1", spec_text=SPEC_YAML)
    with tracker:
        for head, base in (("nonlinear", 0.5), ("linear", 0.2)):
            for replicate in (0, 1):
                param = trial_param(head, replicate)
                trial_id = f"{head}-{replicate}"
                tracker.start_trial(trial_id, param["config"], param["varying"], replicate)
                for epoch in range(1, EPOCHS + 1):
                    knn = base + 0.1 * epoch + 0.01 * replicate
                    tracker.log_epoch(trial_id, {"epoch": epoch, "val/knn_top1": knn})
                last = {"epoch": EPOCHS, "val/knn_top1": knn, "status": "completed"}
                tracker.finish_trial(trial_id, "completed", last_result=last)
    out = tmp_path / "report"
    args = ["--experiment", "rebuilt", "--tracking-uri", uri, "--out", str(out)]
    code = (
        "import sys\n"
        "from entrypoints.report import main\n"
        f"status = main({args!r})\n"
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    assert _modules_after(code) == "0 []"
    summary = (out / "summary.md").read_text()
    assert "nonlinear" in summary and "linear" in summary
    logged = MlflowClient(uri).list_artifacts(tracker.parent_run_id, "report")
    assert "report/summary.md" in {artifact.path for artifact in logged}
