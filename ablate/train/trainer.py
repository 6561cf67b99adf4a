"""The ``TorchTrainer`` of one trial (``build_trainer``) and its fit outside Tune
(``fit_trial``): the worker group's scaling config (``resources.*``: workers, CPUs and GPUs a
worker), its process-group backend (``process_group_backend``), the failure policy
(``FailureConfig`` retries plus ``repeated_crash_policy``), the checkpoints Train keeps, the
runtime the workers receive beside the trial config (start times, dataset reference,
heartbeat to the sweep's ``ablate.relay.ReportRelay``), and the controller callbacks.

Ray Train pickles the workers' entry point by its module path
(``ablate.train.worker.train_loop_per_worker``): ``ablate`` must be importable on every node.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from ablate.config import TrialConfig
from ablate.train.worker import train_loop_per_worker


def process_group_backend(use_gpu: bool, cuda_available: bool) -> str:
    """The torch.distributed backend of a trial's workers: nccl when they reserve GPUs and
    CUDA is usable, else gloo (nccl has no CPU tensors)."""
    return "nccl" if use_gpu and cuda_available else "gloo"


def gpus_usable() -> bool:
    """Whether the GPUs the Ray cluster declares are CUDA devices, as far as the trial's
    driver can tell (it reserves no GPU itself, so Ray may hide them from it): True when
    another node declares GPUs (assumed real), else whether this node has CUDA or an NVIDIA
    driver loaded. False on a node that declares GPU resources it does not have (a test's
    ``ray.init(num_gpus=1)`` on a CPU machine)."""
    import ray

    if ray.is_initialized():
        here = ray.get_runtime_context().get_node_id()
        gpu_nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
        if any(node["NodeID"] != here for node in gpu_nodes):
            return True
    return (
        torch.cuda.is_available()
        or os.path.exists("/proc/driver/nvidia/version")
        or os.path.exists("/dev/nvidiactl")
    )


def repeated_crash_policy(failure_config: Any) -> Any:
    """Ray Train's default failure policy (``FailureConfig``'s retries), except that a worker
    group in which a worker process died (a native crash: a signal, no Python exception) for
    the second time is not retried again: a segfault at a given width or kernel repeats, and
    each retry costs a worker group's start-up for nothing."""
    from ray.train.v2._internal.execution.failure_handling.default import DefaultFailurePolicy
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

    from ablate.relay import process_died

    class RepeatedCrashPolicy(DefaultFailurePolicy):
        crashes = 0

        def make_decision(self, training_failed_error: Any) -> Any:
            failures = getattr(training_failed_error, "worker_failures", None) or {}
            if any(process_died(f) for f in failures.values()):
                self.crashes += 1
                if self.crashes >= 2:
                    return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return RepeatedCrashPolicy(failure_config)


#: Ray Train's limit (s) on waiting for a worker group's placement group (``constants``).
WORKER_GROUP_START_TIMEOUT_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def build_trainer(
    config: TrialConfig | dict[str, Any],
    *,
    storage_path: str,
    name: str,
    callbacks: list[Any] | tuple[Any, ...] = (),
    launched_at: float | None = None,
    dataset_ref: Any = None,
    data_cache_dir: str | None = None,
    max_failures: int = 2,
    placement_janitor: str | None = None,
    heartbeat: tuple[Any, str] | None = None,
) -> Any:
    """A ``TorchTrainer`` that runs one trial of ``config``: a ``TrialConfig``, or the dict Tune
    hands the trial (validated here, in the trial actor). The workers receive it as a dict
    again, at Train's boundary, and each validates it once (``train_loop_per_worker``).

    Re-running a trainer with the same ``storage_path``/``name`` continues from the run's
    latest checkpoint; a worker group that fails is restarted up to ``max_failures`` times and
    resumes from the latest checkpoint as well.

    Two of Ray Train's default controller callbacks each start one more actor (a Python
    process importing Ray Train) per run, and are left out: the Ray Data ``DatasetsCallback``
    (a ``DatasetManager``; the trials read no Ray Dataset) and, when ``placement_janitor``
    names a sweep's ``ablate.placement.PlacementGroupJanitor``, the per-run
    ``PlacementGroupCleaner``, whose work that janitor does for every trial of the sweep.

    ``heartbeat``: ``(ReportRelay handle, channel)`` the workers beat to (``ablate.relay``).
    The worker group waits up to ``resources.schedule_timeout_s`` for the cluster to hold it
    (Train's own limit is 60 s, after which it retries with a new placement group: on a
    busy cluster that churn never ends).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    from ablate.placement import JanitorCallback
    from ablate.rendezvous import LocalRendezvousTorchConfig

    class TrialTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            # Ray Train 2.60 builds the controller's failure policy in fit(); ours only adds
            # the rule for a worker process that dies twice.
            policy = repeated_crash_policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(
                **{**controller_init_kwargs, "failure_policy": policy}
            )

        def _create_default_callbacks(self) -> list[Any]:
            # Ray Train 2.60 builds its default callbacks in this private method; the others
            # are kept as they are.
            callbacks = []
            for callback in super()._create_default_callbacks():
                if isinstance(callback, DatasetsCallback):
                    continue
                if placement_janitor and isinstance(callback, PlacementGroupCleanerCallback):
                    callback = JanitorCallback(placement_janitor)
                callbacks.append(callback)
            return callbacks

    # Train V2 starts a PreemptionWatcher actor per worker group (one more process to start
    # beside the workers, and an error line from the controller's core worker at each start);
    # it only observes node preemption, which a failed worker group's restart from its
    # checkpoint covers. Train passes the variable on to the controller and workers it starts.
    # RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 in the environment turns it back on.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    trial = config if isinstance(config, TrialConfig) else TrialConfig.model_validate(config)
    resources = trial.resources
    # Read by the controller that fit() starts (Train passes the variable on to it).
    os.environ[WORKER_GROUP_START_TIMEOUT_VAR] = f"{resources.schedule_timeout_s:g}"
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    runtime = {
        "launched_at": launched_at or time.time(),
        "fit_at": time.time(),  # the trainer is fitted as soon as it is built
        "dataset_ref": dataset_ref,
        "data_cache_dir": data_cache_dir,
        "heartbeat": list(heartbeat) if heartbeat else None,
    }
    return TrialTrainer(
        train_loop_per_worker,
        train_loop_config={"config": trial.model_dump(mode="json"), "runtime": runtime},
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
        ),
        torch_config=LocalRendezvousTorchConfig(
            backend=process_group_backend(use_gpu, use_gpu and gpus_usable())
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks) or None,
        ),
    )


def fit_trial(
    config: TrialConfig | dict[str, Any], *, storage_path: str, name: str, **kwargs: Any
) -> list[dict[str, Any]]:
    """Fit one trial's ``TorchTrainer`` to the end outside Tune (``kwargs``: see
    ``build_trainer``); returns every epoch's report (rank 0's), raises the trial's error."""
    result = build_trainer(config, storage_path=storage_path, name=name, **kwargs).fit()
    if result.error is not None:
        raise result.error
    return list(result.return_value or [])
