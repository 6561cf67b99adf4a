"""The real cluster path, as a user runs it: a Ray head from ``ray start`` (token auth on), the
quickstart submitted with ``ray job submit --working-dir .``, an ``mlflow server`` it logs to
over HTTP, and the MLflow UI in headless Chromium. Everything binds to 127.0.0.1 and is stopped
by PID, pass or fail.

One job (2 trials x 1 epoch of tiny images) feeds every test of the module.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
from local_servers import (
    BIN,
    REPO,
    MlflowServer,
    RayHead,
    chromium,
    listeners_of,
    render_page,
)
from mlflow import MlflowClient

from ablate.tracking import sweep_page

pytestmark = pytest.mark.slow

SWEEP = "cluster_job"
#: The quickstart cut to 2 trials (linear vs nonlinear head) of 1 epoch on 256 images.
JOB_OVERRIDES = (
    f"name={SWEEP}",
    "data.num_train=256",
    "data.num_test=64",
    "data.synthetic_size=16",
    "train.batch_size=64",
    "train.epochs=1",
    "eval.knn_k=10",
    "eval.probe.max_iter=10",
    "space.augment.ops={grid: [[crop, color]]}",
    "space.model.head={grid: [linear, nonlinear]}",
    "algorithm.max_concurrent_trials=2",
)
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head and an MLflow server, started side by side (each takes seconds)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    head = RayHead(num_cpus=2)
    try:
        server.start()
        head.start()
        head.wait_ready()
        server.wait_ready()
        yield head, server
    finally:
        head.stop()
        server.stop()


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory):
    """``ray job submit`` of the quickstart, from the repository root, as the README says."""
    head, server = cluster
    storage = tmp_path_factory.mktemp("shared_storage")  # absolute, as on a shared mount
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "entrypoints.sweep",
        "search_spaces/quickstart.yaml",
        *(x for o in JOB_OVERRIDES for x in ("--set", o)),
        "--set",
        f"tracking.uri={server.uri}",
        "--storage-path",
        str(storage),
    ]
    # A big file where results and artifacts go: ignored files must not travel with the job.
    ARTIFACTS.mkdir(exist_ok=True)
    probe = ARTIFACTS / "upload_probe.bin"
    probe.write_bytes(os.urandom(8 * 2**20))
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            env=head.env(RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
            capture_output=True,
            text=True,
            timeout=560,
        )
    finally:
        probe.unlink()
    print(f"ray job submit: {time.monotonic() - started:.0f} s")
    return {"done": done, "storage": storage, "output": done.stdout + done.stderr}


def test_job_submit_runs_the_sweep_and_logs_to_the_mlflow_server(job, cluster):
    _, server = cluster
    done = job["done"]
    assert done.returncode == 0, job["output"][-4000:]
    assert "succeeded" in job["output"]
    experiment = job["storage"] / SWEEP
    summary = json.loads((experiment / "summary.json").read_text())
    assert sorted(t["status"] for t in summary["trials"]) == ["completed", "completed"]
    assert (experiment / "report").is_dir()  # the report is written beside the results

    client = MlflowClient(server.uri)  # read back over HTTP, as the MLflow UI does
    found = client.get_experiment_by_name(SWEEP)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ablate.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["ablate.trial_id"] for r in children} == {
        t["trial_id"] for t in summary["trials"]
    }
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["ablate.status"] == "completed"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1]
        assert "val/knn_top1" in run.data.metrics and "test/probe_top1" in run.data.metrics
    heads = sorted(r.data.params["model.head"] for r in children)
    assert heads == ["linear", "nonlinear"]
    spec = client.download_artifacts(parents[0].info.run_id, "spec.yaml")  # via the server
    assert "name: quickstart" in Path(spec).read_text()


def test_working_dir_upload_leaves_out_ignored_and_big_files(job, cluster):
    head, _ = cluster
    assert job["done"].returncode == 0, job["output"][-4000:]
    unpacked = Path(head.temp_dir).glob("session_*/runtime_resources/working_dir_files/*")
    packages = sorted({p.resolve() for p in unpacked if p.is_dir()})  # session_latest links
    assert len(packages) == 1, packages
    files = [p for p in packages[0].rglob("*") if p.is_file()]
    names = {str(p.relative_to(packages[0])) for p in files}
    assert "entrypoints/sweep.py" in names and "search_spaces/quickstart.yaml" in names
    top = {name.split("/")[0] for name in names}
    # (CI's virtual environment is .venv/ in the checkout: it must stay home too.)
    assert not top & {".git", ".venv", "test-artifacts", "ablate_runs", ".pytest_cache"}, top
    assert not [n for n in names if n.endswith((".db", ".pyc", ".bin"))]
    size = sum(p.stat().st_size for p in files)
    assert size < 3 * 2**20, f"{size / 2**20:.1f} MiB uploaded"  # the 8 MiB probe stayed home


def test_token_authentication_stays_on(job, cluster):
    head, _ = cluster
    assert job["done"].returncode == 0, job["output"][-4000:]  # the job CLI used the token
    token = head.token_path.read_text().strip()
    url = f"{head.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    bad = requests.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert bad.status_code == 403
    good = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert good.status_code == 200
    assert any(j.get("status") == "SUCCEEDED" for j in good.json())


def test_ray_head_and_mlflow_server_listen_on_loopback_only(job, cluster):
    head, server = cluster
    ray_sockets = listeners_of(head.pids())
    ports = {entry.port for entry in ray_sockets}
    assert head.port in ports and head.dashboard_port in ports  # the scan sees the head
    assert len({entry.process for entry in ray_sockets}) >= 3  # gcs, raylet, dashboard, ...
    exposed = [entry for entry in ray_sockets if not entry.loopback]
    assert not exposed, exposed
    mlflow_sockets = listeners_of(server.pids())
    assert server.port in {entry.port for entry in mlflow_sockets}
    assert all(entry.loopback for entry in mlflow_sockets), mlflow_sockets


def _page_text(dom: str) -> str:
    """The words a person sees on a rendered page: no styles, scripts or tags."""
    text = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def test_mlflow_ui_opens_on_the_trials_ranked_by_the_sweeps_metric(job, cluster):
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, server = cluster
    assert job["done"].returncode == 0, job["output"][-4000:]
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(SWEEP)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags["ablate.role"] == "trial"]
    (parent,) = [r for r in runs if r.data.tags["ablate.role"] == "sweep"]
    assert len(trials) == 2
    # The page the sweep names at its end (README: "browse the runs").
    url = sweep_page(server.uri, SWEEP)
    assert url is not None and f"the trials, best first: {url}" in job["output"]
    screenshot = ARTIFACTS / "mlflow_ui.png"
    text = _page_text(render_page(url, screenshot))
    assert screenshot.stat().st_size > 10_000
    assert "Runs" in text and "Sessions" not in text, text[:2000]  # model training, not GenAI
    ranked = sorted(trials, key=lambda r: -r.data.metrics["val/knn_top1"])
    places = [text.find(r.info.run_name) for r in ranked]
    assert all(p >= 0 for p in places), (places, text[:3000])  # every trial, flat
    assert places == sorted(places), "trials are not listed best first"
    assert parent.info.run_name not in text  # the sweep's run does not fold them away
    assert "val/knn_top1" in text and "ablate.status" in text and "model.head" in text
    shown = re.findall(r"\b[01]\.\d+\b", text)  # the metric's values are on the page
    for run in trials:
        value = run.data.metrics["val/knn_top1"]
        assert any(abs(float(v) - value) < 0.006 for v in shown), (value, shown)
