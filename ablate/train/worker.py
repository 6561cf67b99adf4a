"""One worker of a trial: the entry point Ray Train runs on it (``train_loop_per_worker``),
what it holds (``Worker``) and how that is built from the trial config (``build_worker``,
``distribute``).

The entry point receives the trial config as a dict (Train's boundary: what Tune handed the
trial, dumped by ``ablate.train.trainer.build_trainer``), validates it into a ``TrialConfig``
once, and everything below it takes that typed config. It sets the worker's device
(``worker_device``) and CPU threads; the process group is Ray Train's (its backend:
``ablate.train.trainer.process_group_backend``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ablate.config import ConfigurationError, TrialConfig
from ablate.train.checkpoint import resume
from ablate.train.data import ResidentData, TrialData, prepare_data
from ablate.train.loop import configuration_failure, run_trial
from ablate.train.step import Pretraining, bare_model, build_pretraining


def worker_device(assigned: torch.device, cuda_available: bool) -> torch.device:
    """The device a worker trains on: Ray Train's ``assigned`` one (``ray.train.torch.
    get_device()``: ``cuda:i`` when the worker reserved a GPU), or the CPU when CUDA is not
    usable in this process (a node that declares GPU resources it does not have, a driver
    mismatch): the trial then runs, slower, instead of failing on its first CUDA call."""
    if assigned.type == "cuda" and not cuda_available:
        return torch.device("cpu")
    return assigned


@dataclass
class Worker:
    """What one worker of a trial holds, built once from the trial config (``build_worker``)."""

    config: TrialConfig
    rank: int
    world_size: int
    data: TrialData
    parts: Pretraining  # model, optimiser, schedule, loss, augmentation, device, precision
    online: Any  # ablate.probe.OnlineProbe on the encoder's features
    local_batch: int  # this worker's share of train.batch_size
    steps_per_epoch: int
    #: The training set on the device (``resident_data``), made at the first epoch; False
    #: when it does not fit there.
    resident: ResidentData | bool | None = None

    @property
    def device(self) -> torch.device:
        return self.parts.device


def build_worker(
    config: TrialConfig,
    runtime: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> Worker:
    """Seed, load and split the data, build the model, optimiser and online probe of ``config``
    for worker ``rank`` of ``world_size`` (``runtime``: see ``train_loop_per_worker``).

    Raises ``ConfigurationError`` (``data.check_batch``) when one step's batch exceeds the
    pretraining set.
    """
    from ablate import probe
    from ablate.data import check_batch

    device = device or torch.device("cpu")
    torch.manual_seed(config.train.seed)
    data = prepare_data(config, runtime)
    local_batch = config.train.batch_size // world_size
    check_batch((len(data.pretrain_idx), len(data.val_idx)), config.train.batch_size, world_size)
    steps_per_epoch = len(data.pretrain_idx) // world_size // local_batch
    if config.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    parts = build_pretraining(config, data.mean, data.std, device, steps_per_epoch)
    online = probe.OnlineProbe(
        bare_model(parts.model).encoder.feat_dim, data.num_classes, config.eval.online_probe_lr
    )
    online.to(device)
    return Worker(config, rank, world_size, data, parts, online, local_batch, steps_per_epoch)


def distribute(worker: Worker) -> None:
    """Wrap the model for DDP (Ray Train) and compile it in ``train.compile``'s mode; after a
    checkpoint was read into the bare model.

    Only the model (encoder + head, forward and backward) is compiled: augmentation, loss and
    optimiser step stay eager, so the augmentation generator's draws never enter a graph
    (CUDA graphs of ``reduce-overhead`` cannot capture a CPU generator, and would replay a
    device generator's captured offsets).
    """
    import ray.train.torch

    # The worker's own device (it may have fallen back to the CPU: ``worker_device``) for DDP.
    model = ray.train.torch.prepare_model(worker.parts.model, move_to_device=worker.device)
    worker.parts.model = compiled(model, worker.config.train.compile)


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` under ``torch.compile`` in ``mode`` (``TrainConfig.compile``); ``off``: as is."""
    return model if mode == "off" else torch.compile(model, mode=mode)


class StartupTimes:
    """Where a trial's fixed overhead goes: seconds from the trial's start (``launched_at``,
    ``time.time()`` in the Tune trial actor) to each stage of this worker's start-up.

    Stages: ``fit`` (the trial actor built the trainer and called ``fit()``), ``worker process``
    (this process was created: Train's controller actor and placement group came before it),
    ``train loop`` (Ray Train's set-up and the process group were done), then each ``mark``.
    """

    def __init__(self, launched_at: float, fit_at: float | None) -> None:
        import psutil

        self.launched_at = launched_at
        self.stages: list[tuple[str, float]] = []
        if fit_at is not None:
            self.stages.append(("fit", fit_at))
        self.stages.append(("worker process", psutil.Process().create_time()))
        self.mark("train loop")

    def mark(self, stage: str) -> None:
        self.stages.append((stage, time.time()))

    def describe(self, first_step_at: float) -> str:
        """One line: each stage's offset (s) from the trial's start, then the first step's."""
        stages = [*self.stages, ("first step", first_step_at)]
        times = ", ".join(f"{name} +{at - self.launched_at:.1f}" for name, at in stages)
        return f"trial start-up (s after the trial started): {times}"


def train_loop_per_worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train worker entry point: ``{"config": resolved TrialConfig, "runtime": {...}}``.

    ``runtime`` holds what is not part of the experiment's definition: ``launched_at`` (the
    trial's start, to measure the fixed per-trial overhead), ``dataset_ref`` (a one-element list
    with an object-store reference to the decoded dataset) or ``data_cache_dir``, and
    ``heartbeat`` (``[ReportRelay handle, channel]``: every worker beats there, for the sweep's
    stall watchdog, ``ablate.relay``).

    Returns every epoch's report, the epochs before a restart included (they travel in the
    checkpoint), which ``TorchTrainer.fit().return_value`` hands to the caller.
    """
    import ray.train
    import ray.train.torch

    from ablate.data import DataError

    # The one validation of the trial config on the worker; everything below takes it typed.
    config = TrialConfig.model_validate(loop_config["config"])
    runtime = loop_config.get("runtime", {})
    launched_at = runtime.get("launched_at") or time.time()
    startup = StartupTimes(launched_at, runtime.get("fit_at"))
    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    try:
        worker = build_worker(
            config,
            runtime,
            context.get_world_rank(),
            context.get_world_size(),
            worker_device(ray.train.torch.get_device(), torch.cuda.is_available()),
        )
    except (ConfigurationError, DataError) as error:
        # Every worker fails alike: report it and return, so that Ray Train's FailureConfig
        # does not restart a worker group that cannot run (a crash would be retried).
        failed = configuration_failure(error)
        ray.train.report(failed)
        return [failed]
    startup.mark("data + model")
    if runtime.get("heartbeat"):
        from ablate.relay import Heartbeat

        relay, channel = runtime["heartbeat"]
        Heartbeat(relay, channel, worker.rank).start()  # a daemon: it ends with the worker
    resumed = resume(worker)
    distribute(worker)
    startup.mark("checkpoint + DDP")
    return run_trial(worker, resumed, startup)
