"""Shared test setup: keep Ray on loopback and torch light on a 2-core machine."""

from __future__ import annotations

import os

import pytest

# Ray 2.60 on Linux swaps 127.0.0.1 for the outward address unless told to stay local.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, on loopback) per test module: in-process sweeps use it, subprocess
    drivers join it (its GCS address is the fixture's value). Worker output streams to this
    driver, as in a real sweep: run_sweep routes it to the sweep's log file (ablate.console).
    Modules that need another set-up define their own."""
    import ray

    from ablate.sweep import start_local_ray

    start_local_ray(num_cpus=2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
