"""Inputs that users of SimCLR code, MLflow and Ray have reported breaking (issue 13): a batch
larger than the pretraining set, empty image files, experiment names MLflow search filters
choke on, YAML scientific notation, and a report over swept values of every type."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from local_servers import REPO, RUN_MAIN, child_env
from PIL import Image

from ablate import data, vocabulary
from ablate.config import ConfigurationError, TrialConfig
from ablate.spec import SpecError, parse_sweep
from ablate.tracking import SweepTracker, publish_report
from ablate.train import build_worker, configuration_failure


def run_main(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    ray_tmp = tmp_path / "ray_tmp"
    ray_tmp.mkdir(exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_MAIN,
            str(spec),
            "--storage-path",
            str(tmp_path / "runs"),
            *args,
        ],
        cwd=REPO,
        env=child_env(RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert list(ray_tmp.iterdir()) == [], "no Ray session was started"
    return done


def image_folder(root: Path, sizes: dict[str, int], empty: str | None = None) -> Path:
    """ROOT/{train,test}/<class>/<i>.png with ``sizes[class]`` 8-px images per split."""
    for split in ("train", "test"):
        for name, n in sizes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i % 255, 80, 120)).save(
                    root / split / name / f"{i}.png"
                )
    if empty is not None:
        (root / empty).write_bytes(b"")
    return root


# ----------------------------------------------------------------------------- batch > set


@pytest.mark.parametrize(
    ("data_section", "train_section", "words"),
    [
        # 64 synthetic images, 8 held out: 56 to pretrain on.
        ("{name: synthetic, num_train: 64}", "{batch_size: 256}", ["256", "56 images", "<= 56"]),
        # Swept: the one trial that cannot run refuses the sweep.
        (
            "{name: synthetic, num_train: 64}",
            "{batch_size: 16}\nspace: {train.batch_size: {grid: [16, 128]}}",
            ["space.train.batch_size", "128", "56 images"],
        ),
        # Two workers: each holds 28 rows, so 2 x 30 cannot make a step.
        (
            "{name: synthetic, num_train: 64}",
            "{batch_size: 60}\nresources: {num_workers: 2}",
            ["60", "2 shards of 28", "<= 56"],
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_batch_larger_than_the_pretraining_set_exits_2_before_ray(
    tmp_path, data_section, train_section, words, dry_run
):
    text = f"name: tiny\ndata: {data_section}\ntrain: {train_section}\n"
    started = time.monotonic()
    done = run_main(tmp_path, text, *(["--dry-run"] if dry_run else []))
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "train.batch_size" in errors[0], done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in done.stderr and "ray not imported" in done.stderr
    assert not (tmp_path / "runs").exists()
    assert time.monotonic() - started < 60


def test_image_folder_size_is_counted_for_the_batch_check(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    cfg = data.DataConfig(name="image_folder", root=str(root), image_size=8)
    assert data.train_class_counts(cfg) == [3, 3]
    assert data.split_sizes(cfg) == (4, 2)
    done = run_main(
        tmp_path,
        f"name: t\ndata: {{name: image_folder, root: {root}, image_size: 8}}\n"
        "train: {batch_size: 8}\n",
        "--dry-run",
    )
    assert done.returncode == 2 and "train.batch_size: 8 is larger" in done.stderr, done.stderr


def test_the_drivers_load_checks_every_batch_the_plan_holds(tmp_path):
    """A set whose size only its load tells (here: measured on the loaded synthetic set) is
    checked by preflight's rule (``check_batch_sizes``) before any trial, with its key."""
    from ablate.sweep import _check_batches

    text = (
        "name: t\ndata: {name: synthetic, num_train: 64, num_test: 16, synthetic_size: 8}\n"
        "space: {train.batch_size: {choice: [8, 128]}}\nalgorithm: {name: random, num_samples: 1}\n"
    )
    plan = parse_sweep(text, source="t.yaml")
    cfg = plan.configs()[0].data
    dataset = data.load_dataset(cfg)
    with pytest.raises(SpecError) as raised:
        _check_batches(plan, cfg, dataset)
    assert raised.value.key == "space.train.batch_size" and "128 is larger" in str(raised.value)
    other = cfg.model_copy(update={"num_train": 1000})
    _check_batches(plan, other, dataset)  # another set: not this one's rule


def test_a_worker_configuration_error_is_reported_failed_not_raised():
    config = TrialConfig.model_validate(
        {"data": {"name": "synthetic", "num_train": 64}, "train": {"batch_size": 256}}
    )
    with pytest.raises(ConfigurationError, match=r"train\.batch_size: 256") as caught:
        build_worker(config, {})
    report = configuration_failure(caught.value)
    # What Tune checks every result for, so the report is accepted; then its outcome.
    assert math.isnan(report[vocabulary.DEFAULT_RANKING_METRIC])
    outcome = vocabulary.trial_outcome(report, planned_epochs=5, errored=False)
    assert outcome.status == "failed" and "larger than the pretraining set" in outcome.detail


# ----------------------------------------------------------------------------- empty images


def test_zero_byte_image_file_exits_2_naming_it(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 4, "dog": 4}, empty="train/dog/9.png")
    done = run_main(
        tmp_path,
        f"name: t\ndata: {{name: image_folder, root: {root}, image_size: 8}}\n"
        "train: {batch_size: 2}\n",
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "data.root" in done.stderr and "empty image (0 bytes)" in done.stderr
    assert str(root / "train" / "dog" / "9.png") in done.stderr
    assert "Traceback" not in done.stderr and "ray not imported" in done.stderr


@pytest.mark.slow
def test_empty_parquet_cell_exits_2_at_the_drivers_load_before_any_trial(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    cells = data.encode_png(images)
    cells[2] = b""
    pq.write_table(pa.table({"image": cells, "label": [0, 1] * 3}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"image": cells[:2], "label": [0, 1]}), tmp_path / "test.parquet")
    text = (
        f"name: t\ndata: {{name: parquet, train_path: {tmp_path / 'train.parquet'}, "
        f"test_path: {tmp_path / 'test.parquet'}, image_size: 8}}\ntrain: {{batch_size: 2}}\n"
        "tracking: {enabled: false}\nresources: {cpus_per_worker: 1}\n"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.sweep",
            str(spec),
            "--storage-path",
            str(tmp_path / "runs"),
        ],
        cwd=REPO,
        env=child_env(RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "row 2 of" in done.stderr and "empty image" in done.stderr
    assert not (tmp_path / "runs" / "t" / "plan.json").exists()  # no trial was started


# ----------------------------------------------------------------------------- experiments

NAMES = [
    "the lab's crop ablation",
    'a "quoted" name',
    "both ' and \" quotes",
    "back\\slash\\",
    "température ablation 温度 🧪",
    "x" * 500,
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_any_name_mlflow_accepts_tracks_and_resumes(tmp_path, name):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    plan = parse_sweep(f"name: t\ntracking: {{experiment: {yaml_quoted(name)}}}\n")
    assert plan.spec.tracking.experiment == name
    first = SweepTracker(uri, name, execution="t")
    with first:
        parent = first.parent_run_id
    again = SweepTracker(uri, name, execution="t")  # a resumed sweep finds its parent run
    with again:
        assert again.parent_run_id == parent
    other = SweepTracker(uri, name, execution="t2")
    with other:
        assert other.parent_run_id != parent


def yaml_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_a_name_mlflow_refuses_is_refused_at_validation():
    with pytest.raises(SpecError) as caught:
        parse_sweep(f"name: t\ntracking: {{experiment: {'x' * 600}}}\n")
    assert caught.value.key == "tracking.experiment" and "500" in caught.value.message
    with pytest.raises(SpecError) as caught:
        parse_sweep(f"name: {'x' * 300}\n")
    assert caught.value.key == "name"


# ----------------------------------------------------------------------------- value types


def test_scientific_notation_and_mixed_numbers_are_typed_floats():
    plan = parse_sweep(
        "name: t\nspace:\n  loss.temperature: {grid: [1e-1, 5.0e-1, 1]}\n"
        "  optim.base_lr: {grid: ['3e-1']}\n",
    )
    values = [t.varying["loss.temperature"] for t in plan.trials]
    assert values == [0.1, 0.5, 1.0] and all(type(v) is float for v in values)
    assert {type(t.varying["optim.base_lr"]) for t in plan.trials} == {float}
    assert [t.config.loss.temperature for t in plan.trials] == values


def test_the_report_survives_swept_values_of_every_type(tmp_path):
    """Trials logged to a real SQLite store with swept values of each kind the schema allows,
    then read back and reported as a sweep is (``publish_report``): summary.md is written."""
    kinds = {
        "train.epochs": [10, 20],  # int
        "loss.temperature": [0.1, 1.0],  # float (from 1e-1 and 1)
        "model.sync_batchnorm": [True, False],  # bool
        "model.head": ["linear", "nonlinear"],  # str
        "augment.ops": [["crop", "color"], []],  # op lists, the empty one included
        "augment.crop.scale": [[0.08, 1.0], [0.2, 1.0]],  # tuples, as lists
        "train.steps_per_epoch": [None, 5],  # null where allowed
        "optim.base_lr": [1, 0.5],  # int and float in one key
        "optim.weight_decay": ["1e-6", 1e-4],  # a legacy string beside a float
    }
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = TrialConfig().model_dump(mode="json")
    for key, values in kinds.items():
        tracker = SweepTracker(uri, key, execution="t")
        with tracker:
            for rep in range(2):
                for index, value in enumerate(values):
                    trial = f"{index}-{rep}"
                    tracker.start_trial(trial, base, {key: value}, rep)
                    result = {"epoch": 1, "val/knn_top1": 0.5 + 0.2 * index + 0.01 * rep}
                    tracker.log_epoch(trial, {**result, "status": "completed"})
                    tracker.finish_trial(trial, "completed", last_result=result)
        report = publish_report(uri, key, tracker.parent_run_id, out_dir=tmp_path / key)
        text = report.summary_path.read_text()
        assert vocabulary.format_value(values[1]) in text, (key, text)
