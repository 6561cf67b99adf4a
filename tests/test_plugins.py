"""A user's components (module.path:factory): the example op outside the package, preflight's
checks of plugins (exit 2 naming the key), and how Ray workers get to import them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ablate import plugins, preflight
from ablate.augment import build_ops, build_pipeline
from ablate.config import AugmentConfig
from ablate.spec import SpecError, parse_sweep

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_op.yaml"
SOLARIZE = "examples.my_op:solarize"
MY_FIGURE = "examples.my_figure:seed_spread"
MY_FINDING = "examples.my_figure:best_beats_median"

#: The example cut down for CI: 256 tiny images, 2 epochs of 3 steps, no MLflow.
TINY = [
    "data.num_train=256",
    "data.num_test=64",
    "train.batch_size=32",
    "train.steps_per_epoch=3",
    "train.epochs=2",
    "eval.knn_k=10",
    "eval.probe.max_iter=10",
    "tracking.enabled=false",
]


def example_plan(*overrides: str, storage: Path | None = None):
    extra = [f"storage.path={storage}"] if storage else []
    return parse_sweep(EXAMPLE.read_text(), source=str(EXAMPLE), overrides=[*overrides, *extra])


# ----------------------------------------------------------------------------- the example op


def test_example_op_solarizes_the_chosen_samples_only():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    always = AugmentConfig(ops=[SOLARIZE], params={SOLARIZE: {"p": 1.0, "threshold": 0.3}})
    out = build_ops(always.ops, always)(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, torch.where(x >= 0.3, 1.0 - x, x)) and torch.equal(x, before)
    never = AugmentConfig(ops=[SOLARIZE], params={SOLARIZE: {"p": 0.0}})
    assert torch.equal(build_ops(never.ops, never)(x, torch.Generator().manual_seed(1)), x)
    half = AugmentConfig(ops=["flip", SOLARIZE], params={SOLARIZE: {"p": 0.5}})
    first = build_ops(half.ops, half)(x, torch.Generator().manual_seed(2))
    again = build_ops(half.ops, half)(x, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)  # its draws follow the pipeline's generator
    solarized = (first != x.flip(-1)).flatten(1).any(dim=1) & (first != x).flatten(1).any(dim=1)
    assert 2 < int(solarized.sum()) < 14


def test_example_op_runs_in_the_two_view_pipeline():
    cfg = AugmentConfig(ops=["crop", "color", SOLARIZE], params={SOLARIZE: {"p": 1.0}})
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    v1, v2 = build_pipeline(cfg, (0.5,) * 3, (0.25,) * 3)(images, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, 16, 16) and torch.isfinite(v1).all()
    without = AugmentConfig(ops=["crop", "color"])
    w1, _ = build_pipeline(without, (0.5,) * 3, (0.25,) * 3)(
        images, torch.Generator().manual_seed(0)
    )
    assert not torch.equal(v1, w1)


def test_the_example_plan_resolves_the_op_and_its_parameters():
    plan = example_plan()
    configs = plan.configs()
    assert [c.augment.ops for c in configs] == [["crop", "color"], ["crop", "color", SOLARIZE]]
    assert configs[1].augment.params == {SOLARIZE: {"p": 0.5, "threshold": 0.5}}
    assert [(u.name, u.key) for u in plugins.plugin_uses(plan)] == [(SOLARIZE, "augment.ops")]
    plugins.check(plan)  # runs the op once on two images of the trial's side


# ----------------------------------------------------------------------------- preflight


def test_a_bad_plugin_path_exits_2_naming_the_key(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.sweep",
            str(EXAMPLE),
            "--set",
            "space.augment.ops={grid: [[crop, examples.my_opp:solarize]]}",
            "--set",
            f"storage.path={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "space.augment.ops" in done.stderr
    assert "cannot import module 'examples.my_opp'" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("loss.name=examples.my_op:solarise", "loss.name", "did you mean examples.my_op:solarize"),
        ("model.arch=examples.my_op:nothing", "model.arch", "has no attribute 'nothing'"),
        ("model.arch=examples.my_ops:x", "model.arch", "cannot import module 'examples.my_ops'"),
        ("augment.base=[examples.my_op]", "augment.base", "unknown augmentation op"),
    ],
)
def test_bad_plugin_names_are_spec_errors_at_their_key(override, key, text):
    with pytest.raises(SpecError) as error:
        example_plan(override)
    assert error.value.key.startswith(key) and text in error.value.message, str(error.value)


BROKEN = """
    import torch
    from torch import nn


    def shrinks(x, generator, params):
        return x[:, :, ::2, ::2]


    def in_place(x, generator, params):
        return x.mul_(0.5)


    def wrong_features(cfg):
        class Net(nn.Module):
            feat_dim = 7

            def forward(self, x):
                return x.flatten(1)[:, :3]

        return Net()


    def vector_loss(cfg):
        class Loss(nn.Module):
            def forward(self, z1, z2):
                return (z1 - z2).pow(2).sum(dim=1)

        return Loss()
"""


@pytest.mark.parametrize(
    ("override", "where", "text"),
    [
        (
            "space.augment.ops={grid: [[crop], [crop, broken_plugins:shrinks]]}",
            "space.augment.ops",
            "returned (2, 3, 8, 8) for a batch of shape (2, 3, 16, 16)",
        ),
        ("augment.base=[broken_plugins:in_place]", "augment.base", "modified its input in place"),
        (
            "model.arch=broken_plugins:wrong_features",
            "model.arch",
            "returned (2, 3), expected (N, feat_dim) = (2, 7)",
        ),
        ("loss.name=broken_plugins:vector_loss", "loss.name", "returned (4,), not a scalar"),
    ],
)
def test_preflight_runs_each_plugin_once_and_names_its_key(
    tmp_path, monkeypatch, override, where, text
):
    (tmp_path / "broken_plugins.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.syspath_prepend(str(tmp_path))
    plan = example_plan(override, *TINY, "data.synthetic_size=16", storage=tmp_path / "runs")
    with pytest.raises(SpecError) as error:
        preflight.check(plan)
    assert error.value.key == where and text in error.value.message, str(error.value)


# ----------------------------------------------------------------------------- runtime env


def test_runtime_env_adds_py_modules_only_where_ray_does_not_ship_the_module(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(plugins.JOB_CONFIG_VAR, raising=False)
    plan = example_plan()
    # A local Ray: its workers get the driver's directory on sys.path from Ray itself.
    assert plugins.runtime_env(plan, None) == {}
    # Joining a cluster from outside a job: the examples package is uploaded.
    assert plugins.runtime_env(plan, "10.0.0.1:6379") == {"py_modules": [str(REPO / "examples")]}
    # Inside `ray job submit --working-dir .`: the working directory already holds it.
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}
    monkeypatch.setenv(plugins.JOB_CONFIG_VAR, json.dumps(job))
    monkeypatch.chdir(REPO)
    assert plugins.runtime_env(plan, "10.0.0.1:6379") == {}
    # No plugin, nothing to ship.
    monkeypatch.delenv(plugins.JOB_CONFIG_VAR)
    assert plugins.runtime_env(example_plan("space.augment.ops={grid: [[crop]]}"), "x:1") == {}
    # An installed module (site-packages) is on the cluster like ablate's own dependencies.
    installed = example_plan("space.augment.ops={grid: [[torch.nn.functional:relu]]}")
    assert plugins.runtime_env(installed, "10.0.0.1:6379") == {}


JOIN = """
import sys
import ray
from ablate import plugins
from ablate.spec import parse_sweep

address, ship = sys.argv[1], sys.argv[2] == "ship"
plan = parse_sweep(
    "name: t\\nspace: {augment.ops: {grid: [[crop], [crop, far_away_ops:negate]]}}\\n",
    source="t.yaml",
)
env = plugins.runtime_env(plan, address) if ship else {}
print("runtime_env", env, flush=True)
ray.init(address=address, **({"runtime_env": env} if env else {}))


@ray.remote(num_cpus=0)
def where():
    import far_away_ops

    return far_away_ops.__file__


print("imported from", ray.get(where.remote()), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_driver_joining_a_cluster_ships_its_plugin_to_the_workers(ray_cluster, tmp_path):
    """A module on the driver's PYTHONPATH but outside its working directory is invisible to
    the workers of a cluster it joins, unless plugins.runtime_env uploads it (py_modules)."""
    far = tmp_path / "far"
    far.mkdir()
    (far / "far_away_ops.py").write_text("def negate(x, generator, params):\n    return 1 - x\n")
    (tmp_path / "join.py").write_text(JOIN)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{far}{os.pathsep}{REPO}"}

    def join(mode: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(tmp_path / "join.py"), ray_cluster, mode]
        return subprocess.run(
            command, capture_output=True, text=True, cwd=elsewhere, env=env, timeout=100
        )

    without = join("plain")
    assert without.returncode != 0 and "No module named 'far_away_ops'" in without.stderr
    shipped = join("ship")
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    assert f"'py_modules': ['{far / 'far_away_ops.py'}']" in shipped.stdout
    assert "imported from" in shipped.stdout and str(far) not in shipped.stdout.split("from")[-1]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_example_sweep_runs_the_users_op_on_the_workers(ray_cluster, tmp_path):
    """A user's op runs on the workers; the same sweep draws the user's own report figure and
    checks their finding (examples/my_figure.py, named in ``report:``), which its parent run
    records for ``entrypoints.report``."""
    from ablate.sweep import run_sweep
    from ablate.tracking import report_components

    # With MLflow on, as a user runs it: the op's name and parameters become run params.
    overrides = [o for o in TINY if not o.startswith("tracking.")]
    overrides += [f"report.figures=[{MY_FIGURE}]", f"report.findings=[{MY_FINDING}]"]
    done = run_sweep(EXAMPLE, overrides=[*overrides, f"storage.path={tmp_path}"])
    summary = json.loads((tmp_path / "my_op" / "summary.json").read_text())
    trials = {tuple(t["varying"]["augment.ops"]): t for t in summary["trials"]}
    baseline, solarized = trials[("crop", "color")], trials[("crop", "color", SOLARIZE)]
    assert baseline["status"] == solarized["status"] == "completed", summary["trials"]
    assert baseline["seed"] == solarized["seed"] and solarized["epoch"] == 2
    # What the worker got: the op and its parameters, defaults filled in, in the trial's config.
    params = json.loads((tmp_path / "my_op" / solarized["trial_id"] / "params.json").read_text())
    augment = params["config"]["augment"]
    assert augment["ops"] == ["crop", "color", SOLARIZE]
    assert augment["params"] == {SOLARIZE: {"p": 0.5, "threshold": 0.5}}
    # Same seed, same data, same everything else: only the op can make the training differ.
    assert baseline["metrics"]["train/loss"] != solarized["metrics"]["train/loss"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("my_op")
    logged = [r.data.params for r in client.search_runs([experiment.experiment_id])]
    key = f"augment.params.{SOLARIZE}.threshold"
    assert [p[key] for p in logged if SOLARIZE in p.get("augment.ops", "")] == ["0.5"]
    report = tmp_path / "my_op" / "report"
    assert done.report_path == str(report / "summary.md")
    assert (report / "figures" / "examples_my_figure_seed_spread.png").stat().st_size > 0
    summary = (report / "summary.md").read_text()
    # Two configurations: the finding (it needs three) says so, in the findings table.
    assert "the best configuration beats the median configuration" in summary
    assert "examples/my_figure.py" in summary and "Not in this report" not in summary
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`ablate.role` = 'sweep'", max_results=5
    )
    assert report_components(client, parents[0].info.run_id) == ([MY_FIGURE], [MY_FINDING])


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_example_sweep_submitted_as_a_ray_job_imports_the_op_from_its_working_dir(tmp_path):
    """``ray job submit --working-dir .`` from the repository root, as the README says: the
    workers import ``examples.my_op`` from the uploaded working directory."""
    from local_servers import BIN, RayHead

    head = RayHead(num_cpus=2)
    try:
        head.start()
        head.wait_ready()
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
            "examples/my_op.yaml",
            *(x for o in TINY for x in ("--set", o)),
            "--storage-path",
            str(tmp_path),
        ]
        done = subprocess.run(
            command,
            cwd=REPO,
            env=head.env(RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
            capture_output=True,
            text=True,
            timeout=360,
        )
    finally:
        head.stop()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((tmp_path / "my_op" / "summary.json").read_text())
    ops = {tuple(t["varying"]["augment.ops"]): t["status"] for t in summary["trials"]}
    assert ops == {("crop", "color"): "completed", ("crop", "color", SOLARIZE): "completed"}
