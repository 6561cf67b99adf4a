"""Bad input through the real entrypoint: one clear message naming the file and key, exit
status 2, nothing started (Ray not even imported, no tracking store, no Ray session) and
nothing written where results go. The README's "What bad input gets" table lists these rows
and the tests of the others (tests/test_spec.py, tests/test_sweep.py, tests/test_faults.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from local_servers import REPO, RUN_MAIN, child_env
from PIL import Image

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def image_folder_with_a_dangling_link(root: Path) -> Path:
    """ROOT/{train,test}/{a,b}/<i>.png (8 px) and ROOT/train/a/gone.png linking to nothing."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(root / split / name / f"{i}.png")
    (root / "train" / "a" / "gone.png").symlink_to(root / "deleted.png")
    return root


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
    }


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("malformed_yaml", ["bad.yaml", "malformed YAML at line 4, column 8"]),
        ("wrong_type", ["train.epochs", "valid integer", "'five'"]),
        ("missing_parquet", ["data.train_path", "missing.parquet", "does not exist"]),
        ("missing_image_folder", ["data.root", "no_such_folder", "does not exist", "ROOT/train"]),
        ("storage_under_a_file", ["storage.path", "cannot be created", "is a file"]),
        ("duplicate_key", ["dup.yaml", "train.epochs", "duplicate key 'epochs' at lines 3 and 4"]),
        ("boolean_count", ["replicates", "a boolean (true/false) is not a number"]),
        ("absurd_size", ["data.num_train", "8 <= data.num_train <= 1,000,000"]),
        ("too_many_trials", ["space.train.seed", "60,000 trials", "valid: 1 to 10,000"]),
        ("dangling_link", ["data.root", "gone.png", "dangling symbolic link"]),
    ],
)
def test_bad_input_exits_2_with_one_message_and_starts_nothing(tmp_path, case, words):
    storage = tmp_path / "runs"
    (storage / "earlier_sweep").mkdir(parents=True)
    (storage / "earlier_sweep" / "summary.json").write_text("{}")
    spec, sets = QUICKSTART, [f"storage.path={storage}"]
    if case == "malformed_yaml":
        spec = tmp_path / "bad.yaml"
        spec.write_text("name: t\nmodel:\n  head: [linear\n  width: 8\n")
    elif case == "wrong_type":
        sets.append("train.epochs=five")
    elif case == "missing_parquet":
        sets += [
            "data.name=parquet",
            f"data.train_path={tmp_path / 'missing.parquet'}",
            f"data.test_path={tmp_path / 'missing_test.parquet'}",
        ]
    elif case == "missing_image_folder":
        sets += ["data.name=image_folder", f"data.root={tmp_path / 'no_such_folder'}"]
    elif case == "duplicate_key":
        spec = tmp_path / "dup.yaml"
        spec.write_text("name: t\ntrain:\n  epochs: 2\n  epochs: 3\n")
    elif case == "boolean_count":
        sets.append("replicates=true")
    elif case == "absurd_size":
        sets.append("data.num_train=3000000000")
    elif case == "too_many_trials":  # 6 configurations x 100 seeds x 100 replicates
        sets += [f"space.train.seed={{grid: {list(range(100))}}}", "replicates=100"]
    elif case == "dangling_link":
        root = image_folder_with_a_dangling_link(tmp_path / "images")
        sets += ["data.name=image_folder", f"data.root={root}", "train.batch_size=2"]
    elif case == "storage_under_a_file":
        (tmp_path / "a_file").write_text("not a directory")
        sets = [f"storage.path={tmp_path / 'a_file' / 'runs'}"]
    before = _snapshot(storage)
    ray_tmp = tmp_path / "ray_tmp"
    ray_tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, str(spec), *(x for s in sets for x in ("--set", s))],
        cwd=REPO,
        env=child_env(RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in done.stderr
    assert "ray not imported" in done.stderr  # nothing started, not even imported
    assert list(ray_tmp.iterdir()) == []
    assert _snapshot(storage) == before  # no sweep directory, no MLflow store, nothing changed


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["replicates=1000000000"], ["replicates", "1 <= replicates <= 100"]),
        (["data.num_test=2000000000"], ["data.num_test", "<= 1,000,000"]),
        (["data.limit_train=9000000000"], ["data.limit_train", "<= 100,000,000"]),
        (["data.num_train=1000000", "data.synthetic_size=1024"], ["data.num_train", "8 GiB"]),
        (["replicates=yes"], ["replicates", "boolean"]),
    ],
)
def test_dry_run_refuses_absurd_sizes_before_allocating(tmp_path, sets, words):
    """Before bounds, these ended in MemoryError or numpy tracebacks, even in --dry-run."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, str(QUICKSTART), "--dry-run"]
        + [x for s in sets for x in ("--set", s)],
        cwd=REPO,
        env=child_env(RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    for word in words:
        assert word in error, error


def test_dry_run_names_a_dangling_link_in_an_image_folder(tmp_path):
    root = image_folder_with_a_dangling_link(tmp_path / "images")
    sets = ["data.name=image_folder", f"data.root={root}", "train.batch_size=2"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, str(QUICKSTART), "--dry-run"]
        + [x for s in sets for x in ("--set", s)],
        cwd=REPO,
        env=child_env(RAY_ADDRESS=None, MLFLOW_TRACKING_URI=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    gone = root.resolve() / "train" / "a" / "gone.png"
    assert f"error: {QUICKSTART}: data.root: {gone}: dangling" in done.stderr
