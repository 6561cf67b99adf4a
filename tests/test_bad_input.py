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

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


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
