"""One trial: SimCLR pretraining plus evaluation, run by a Ray Train ``TorchTrainer``.

``build_trainer(config)`` turns a resolved trial config (``ablate.config.TrialConfig``) into a
``TorchTrainer`` whose workers run ``train_loop_per_worker``; ``fit_trial`` runs one to the end
outside Tune. The loop pretrains with the global batch split over the workers (DDP; gloo on
CPU, nccl on GPU). One module per part, each depending only on those above it:

* ``data``: the trial's dataset split once per worker, a step's rows as a device batch;
* ``step``: one pretraining step (augment -> encoder/head -> loss -> optimiser) and what it
  uses (``build_pretraining``);
* ``checkpoint``: what a checkpoint holds, its writer and reader, the resume from the newest
  checkpoint that loads;
* ``epoch``: one epoch's steps on the worker's shard, stopped at a non-finite loss;
* ``evaluation``: the kNN and online-probe monitors and the final linear probe;
* ``faults``: the failures ``train.faults.*`` injects at the loop's named points;
* ``loop``: the epoch loop, its reports (with checkpoints) and its faults;
* ``worker``: the entry point Ray Train runs on each worker, which validates the trial config
  once, and the worker it builds from it;
* ``trainer``: the ``TorchTrainer``: scaling, process-group backend, failure policy, runtime.

Every epoch reports ``epoch``, ``vocabulary.EPOCH_METRICS``, the latest
``vocabulary.MONITOR_METRICS`` (``val/knn_top1``, ``val/online_top1``, carried between
evaluations) and ``vocabulary.TEXT_KEYS`` (status "running" | "completed" | "diverged",
reason). The last epoch (and each of ``eval.probe.epochs``) adds ``vocabulary.FINAL_METRICS``:
the offline linear probe, kNN and the online probe on the validation and test splits and, with
semi-supervised fine-tuning, ``*/semi_top1``/``*/semi_top5``, reported at that epoch only.
Ranking and early stopping use ``val/knn_top1``: it is comparable across batch sizes and
temperatures, unlike the contrastive loss, and it never touches the test split.
"""

from ablate.train.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointDamaged,
    TrialState,
    load_newest_intact,
    read_checkpoint,
    resume,
    write_checkpoint,
)
from ablate.train.data import (
    RESIDENT_MAX_FRACTION,
    ResidentData,
    TrialData,
    prepare_data,
    resident_data,
    to_device_batch,
)
from ablate.train.epoch import DIVERGENCE_CHECK_EVERY, EpochResult, epoch_seed, run_epoch
from ablate.train.evaluation import evaluate, final_evaluation, validation_monitors
from ablate.train.faults import FaultInjector, NaNLossFromCall
from ablate.train.loop import configuration_failure, run_trial
from ablate.train.step import (
    Pretraining,
    StepResult,
    agreed_finite,
    autocast_dtype,
    build_pretraining,
    contrastive_forward,
    optimizer_step,
    pretraining_step,
)
from ablate.train.trainer import (
    build_trainer,
    fit_trial,
    gpus_usable,
    process_group_backend,
    repeated_crash_policy,
)
from ablate.train.worker import (
    Worker,
    build_worker,
    compiled,
    distribute,
    train_loop_per_worker,
    worker_device,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DIVERGENCE_CHECK_EVERY",
    "RESIDENT_MAX_FRACTION",
    "CheckpointDamaged",
    "EpochResult",
    "FaultInjector",
    "NaNLossFromCall",
    "Pretraining",
    "ResidentData",
    "StepResult",
    "TrialData",
    "TrialState",
    "Worker",
    "agreed_finite",
    "autocast_dtype",
    "build_pretraining",
    "build_trainer",
    "build_worker",
    "compiled",
    "configuration_failure",
    "contrastive_forward",
    "distribute",
    "epoch_seed",
    "evaluate",
    "final_evaluation",
    "fit_trial",
    "gpus_usable",
    "load_newest_intact",
    "optimizer_step",
    "prepare_data",
    "pretraining_step",
    "process_group_backend",
    "read_checkpoint",
    "repeated_crash_policy",
    "resident_data",
    "resume",
    "run_epoch",
    "run_trial",
    "to_device_batch",
    "train_loop_per_worker",
    "validation_monitors",
    "worker_device",
    "write_checkpoint",
]
