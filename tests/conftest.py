"""Shared test setup: keep Ray on loopback and torch light on a 2-core machine."""

from __future__ import annotations

import os

# Ray 2.60 on Linux swaps 127.0.0.1 for the outward address unless told to stay local.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch

torch.set_num_threads(1)
