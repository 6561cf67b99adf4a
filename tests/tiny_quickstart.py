"""The quickstart spec cut down for tests: 256 synthetic 16-px images, epochs of at most 3
steps, a small kNN monitor and probe, no MLflow; how to plan it and how to run it as a user
does (``python -m entrypoints.sweep``).

Nothing here is a test; ``test_sweep``, ``test_resume``, ``test_rounds`` and ``test_storage``
add their own epochs, searcher and concurrency to ``TINY``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ablate.spec import SweepPlan, parse_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"

#: ``--set`` overrides every cut-down quickstart shares.
TINY = [
    "data.num_train=256",
    "data.num_test=64",
    "data.synthetic_size=16",
    "train.batch_size=32",
    "train.steps_per_epoch=3",
    "eval.knn_k=10",
    "eval.eval_every=1",
    "eval.probe.max_iter=10",
    "tracking.enabled=false",
]


def plan_of(storage: Path, *overrides: str, base: Sequence[str] = TINY) -> SweepPlan:
    """The quickstart's plan with ``base`` and then ``overrides``, storing under ``storage``."""
    return parse_sweep(
        QUICKSTART.read_text(),
        source=str(QUICKSTART),
        overrides=[*base, f"storage.path={storage}", *overrides],
    )


def sweep_args(
    storage: Path, *overrides: str, base: Sequence[str] = TINY, address: str | None = None
) -> list[str]:
    """The command line ``python -m entrypoints.sweep <quickstart> --storage-path storage
    [--address address] --set ...`` with ``base`` and then ``overrides``."""
    args = [sys.executable, "-m", "entrypoints.sweep", str(QUICKSTART)]
    args += ["--storage-path", str(storage)]
    if address:
        args += ["--address", address]
    for override in [*base, *overrides]:
        args += ["--set", override]
    return args


def run(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run ``args`` from the repository root, unbuffered, its output captured as text; extra
    environment variables in ``env``. Raises subprocess.TimeoutExpired past ``timeout`` s."""
    return subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
