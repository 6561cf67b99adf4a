"""The training step without per-step host syncs keeps the training the same.

Each test runs the loop's step (``run_epoch``: device-resident rows, device-side finiteness
flag and skipped updates, multi-tensor LARS and online probe) and a straightforward reference
step kept here (the previous per-step-sync logic: host gather and copy, ``.item()`` of the
finiteness before updating, plain optimiser and probe steps) on the same seed, and compares
losses and weights. Also: the worker's device / backend / precision choice as pure functions,
``train.compile``'s modes, and (slow) two half-GPU trials at once on a Ray node that declares
one GPU it does not have.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import ray
import torch
from local_servers import free_port
from pydantic import ValidationError
from torch import nn

from ablate.config import TrialConfig, resolve
from ablate.data import shard_indices
from ablate.loss import contrastive_top1
from ablate.probe import OnlineProbe
from ablate.train import (
    DIVERGENCE_CHECK_EVERY,
    NaNLossFromCall,
    agreed_finite,
    autocast_dtype,
    build_worker,
    compiled,
    epoch_seed,
    fit_trial,
    process_group_backend,
    resident_data,
    run_epoch,
    to_device_batch,
    worker_device,
)

CPU = torch.device("cpu")


def step_config(optim: str = "lars", steps: int = 3, **train) -> TrialConfig:
    return TrialConfig.model_validate(
        resolve(
            {
                "data": {
                    "name": "synthetic",
                    "num_train": 256,
                    "num_test": 32,
                    "synthetic_size": 16,
                    "num_classes": 4,
                },
                "model": {"arch": "resnet18", "width": 8, "out_dim": 16},
                "augment": {"ops": ["crop", "flip", "color"]},
                "optim": {"name": optim, "base_lr": 0.3, "warmup_epochs": 1},
                "train": {
                    "epochs": 3,
                    "batch_size": 32,
                    "precision": "fp32",
                    "steps_per_epoch": steps,
                    **train,
                },
            }
        )
    )


def make_worker(config: TrialConfig, device_skip: bool):
    """A worker on the CPU; ``device_skip``: the accelerator's step (updates skipped on the
    device, rows gathered from the resident training set with index tensors)."""
    worker = build_worker(config, {}, 0, 1, CPU)
    worker.parts.device_skip = device_skip
    if device_skip:
        worker.resident = resident_data(worker.data.images, worker.data.labels, CPU)
    return worker


def reference_epoch(worker, generator: torch.Generator, epoch: int) -> tuple[float, float, str]:
    """The previous step, per-step host sync: (loss sum, top-1 sum, divergence message)."""
    config, data, parts = worker.config, worker.data, worker.parts
    parts.model.train()
    generator.manual_seed(epoch_seed(config.train.seed, worker.rank, epoch))
    shard = shard_indices(len(data.pretrain_idx), 0, 1, epoch, config.train.seed)
    order = data.pretrain_idx[np.asarray(shard)]
    loss_sum = top1_sum = torch.zeros(())
    for step in range(worker.steps_per_epoch):
        rows = np.sort(order[step * worker.local_batch : (step + 1) * worker.local_batch])
        images = torch.from_numpy(np.ascontiguousarray(data.images[rows])).permute(0, 3, 1, 2)
        view1, view2 = parts.pipeline(images, generator)
        both = torch.cat([view1, view2]).contiguous(memory_format=torch.channels_last)
        h, z = parts.model(both)
        z1, z2 = z.float().chunk(2)
        loss = parts.loss_fn(z1, z2)
        if not torch.isfinite(loss).item():
            lr = parts.scheduler.get_last_lr()[0]
            message = f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step + 1}; "
            return loss_sum.item(), top1_sum.item(), message + f"lr={lr:.4g}"
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        parts.scheduler.step()
        worker.online.step(h[: len(rows)], torch.from_numpy(data.labels[rows]))
        loss_sum = loss_sum + loss.detach()
        top1_sum = top1_sum + contrastive_top1(z1.detach(), z2.detach())
    return loss_sum.item(), top1_sum.item(), ""


def assert_same_weights(new, ref, batchnorm_statistics: bool = True) -> None:
    """Model, optimiser state and online probe bit-identical (the model's BatchNorm running
    statistics too unless ``batchnorm_statistics`` is False)."""
    states = [
        (new.parts.model.state_dict(), ref.parts.model.state_dict()),
        (new.online.state_dict(), ref.online.state_dict()),
    ]
    for got, want in states:
        for key, value in want.items():
            if not isinstance(value, torch.Tensor):
                continue
            if not batchnorm_statistics and ("running_" in key or "num_batches" in key):
                continue
            assert torch.equal(got[key], value), key
    for p, q in zip(new.parts.model.parameters(), ref.parts.model.parameters(), strict=True):
        got = new.parts.optimizer.state[p]
        want = ref.parts.optimizer.state[q]
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key


def reference_worker(config: TrialConfig):
    worker = make_worker(config, device_skip=False)
    # The probe's SGD as it was: the per-parameter loop (the new one is multi-tensor).
    worker.online.optimizer.param_groups[0]["foreach"] = False
    return worker


# SGD has no device-side skip: build_pretraining sets device_skip for LARS only.
@pytest.mark.parametrize(
    ("optim", "device_skip"), [("lars", False), ("lars", True), ("sgd", False)]
)
def test_epochs_equal_the_reference_step_bit_for_bit(device_skip, optim):
    """Two epochs: the loss and top-1 sums of each epoch and every weight, optimiser and
    probe state are bit-identical to the per-step-sync reference (the changes reorder when
    the host looks, not what is computed). device_skip=True is the accelerator's path (the
    update masked on the device) run on the CPU."""
    config = step_config(optim)
    new, ref = make_worker(config, device_skip), reference_worker(config)
    gen_new, gen_ref = torch.Generator(), torch.Generator()
    for epoch in (1, 2):
        result = run_epoch(new, gen_new, epoch)
        loss_sum, top1_sum, diverged = reference_epoch(ref, gen_ref, epoch)
        assert (result.diverged, diverged) == ("", "")
        assert result.steps == new.steps_per_epoch == 3
        assert result.loss_sum == loss_sum and result.top1_sum == top1_sum
    # The CPU gathers from the arrays; the accelerator's path from the resident set.
    assert bool(new.resident) == device_skip
    assert_same_weights(new, ref)


@pytest.mark.parametrize("device_skip", [False, True])
def test_a_divergence_in_mid_epoch_is_reported_with_its_step_and_updates_nothing(device_skip):
    """The loss turns NaN at step 3 of 6: the epoch reports epoch, step and lr as the reference
    does, sums over the 2 good steps only, and the weights are those after step 2 (the
    device-side path ran the later steps, every update skipped on the device; their forward
    passes still moved the model's BatchNorm running statistics, which a diverged trial never
    uses)."""
    config = step_config(steps=6)
    new, ref = make_worker(config, device_skip), reference_worker(config)
    for worker in (new, ref):
        worker.parts.loss_fn = NaNLossFromCall(worker.parts.loss_fn, at=3)
    result = run_epoch(new, torch.Generator(), 1)
    loss_sum, top1_sum, diverged = reference_epoch(ref, torch.Generator(), 1)
    assert diverged.startswith("non-finite loss (nan) at epoch 1, step 3; lr=")
    assert result.diverged == diverged
    assert result.steps == 2 and result.loss_sum == loss_sum and result.top1_sum == top1_sum
    # The host read the flag every step on the CPU path, within DIVERGENCE_CHECK_EVERY steps
    # (here: at the end of the epoch) on the device path.
    assert new.parts.loss_fn.calls == (6 if device_skip else 3)
    assert DIVERGENCE_CHECK_EVERY > 6
    assert_same_weights(new, ref, batchnorm_statistics=not device_skip)


def test_a_poisoned_epoch_diverges_at_its_first_step_and_changes_no_weight():
    """``train.faults.nan_loss_at_epoch``'s path, on the device-side skip."""
    worker = make_worker(step_config(), device_skip=True)
    start = {k: v.clone() for k, v in worker.parts.model.state_dict().items()}
    result = run_epoch(worker, torch.Generator(), 1, poison=True)
    assert result.diverged.startswith("non-finite loss (nan) at epoch 1, step 1; lr=")
    assert result.loss_sum == 0.0 and result.steps == 1.0  # steps floored at 1 for the mean
    for key, value in worker.parts.model.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BN statistics: forward only
            assert torch.equal(value, start[key]), key


def test_online_probe_step_is_undone_on_the_device_when_not_ok():
    """ok=True: the plain step; ok=False (NaN features): weights, momentum and BatchNorm
    statistics keep their values, on the first step and on a later one."""
    torch.manual_seed(0)
    h, labels = torch.randn(16, 8), torch.randint(0, 3, (16,))
    masked, plain = OnlineProbe(8, 3), OnlineProbe(8, 3)
    nan = torch.full_like(h, float("nan"))
    for step in range(3):
        before = [t.clone() for t in masked._state_tensors()]
        masked.step(nan, labels, ok=torch.tensor(False))
        after = masked._state_tensors()
        assert len(after) >= len(before) and all(
            torch.equal(a, b) for a, b in zip(after, before, strict=False)
        ), step
        masked.step(h + step, labels, ok=torch.tensor(True))
        plain.step(h + step, labels)
        for a, b in zip(masked._state_tensors(), plain._state_tensors(), strict=True):
            assert torch.equal(a, b), step


def _agreed_on_rank(rank: int, port: int, losses: list[float], results) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(losses)
    )
    try:
        results.put((rank, bool(agreed_finite(torch.tensor(losses[rank])))))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("losses", "agreed"), [([1.0, 2.0], True), ([1.0, float("nan")], False)])
def test_finiteness_is_agreed_by_every_worker(losses, agreed):
    """Two gloo processes: one worker's NaN makes both skip the step."""
    import multiprocessing

    port = free_port()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_agreed_on_rank, args=(rank, port, losses, results))
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    got = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert got == {0: agreed, 1: agreed}


# ----------------------------------------------------------------------------- rows


def test_resident_rows_gather_as_the_host_gather_does():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    images.flags.writeable = False  # as from a memory map or Ray's object store
    labels = rng.integers(0, 4, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resident = resident_data(images, labels, CPU)
    assert resident is not None and resident.images.data_ptr() == images.ctypes.data
    rows = np.sort(rng.choice(50, 16, replace=False))
    for channels_last in (True, False):
        host = to_device_batch(images, rows, CPU, channels_last)
        device = to_device_batch(resident.images, torch.from_numpy(rows), CPU, channels_last)
        assert torch.equal(host, device) and host.stride() == device.stride()
    assert torch.equal(resident.labels[torch.from_numpy(rows)], torch.from_numpy(labels[rows]))


# ----------------------------------------------------------------------------- device choice


def test_worker_device_falls_back_to_the_cpu_without_cuda():
    cuda0, cuda1 = torch.device("cuda:0"), torch.device("cuda:1")
    assert worker_device(cuda1, cuda_available=True) == cuda1
    assert worker_device(cuda0, cuda_available=False) == CPU  # declared GPU, no CUDA
    assert worker_device(CPU, cuda_available=True) == CPU


def test_process_group_backend():
    assert process_group_backend(use_gpu=True, cuda_available=True) == "nccl"
    assert process_group_backend(use_gpu=True, cuda_available=False) == "gloo"
    assert process_group_backend(use_gpu=False, cuda_available=True) == "gloo"


def test_precision_bf16_autocast_only_where_it_is_native():
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None and autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native else None)


def test_compile_modes():
    def mode(value):
        return TrialConfig.model_validate({"train": {"compile": value}}).train.compile

    assert (mode(True), mode(False), mode("reduce-overhead")) == (
        "default",
        "off",
        "reduce-overhead",
    )
    assert TrialConfig().train.compile == "off"
    with pytest.raises(ValidationError, match="max-autotune"):
        mode("cudagraph")
    model = nn.Linear(2, 2)
    assert compiled(model, "off") is model
    assert compiled(model, "default")._orig_mod is model


# ----------------------------------------------------------------------------- Ray, fake GPU


@pytest.mark.slow
def test_two_half_gpu_trials_share_a_declared_gpu_and_train_on_the_cpu(tmp_path):
    """A local Ray node declaring one GPU (none is there): two trials of gpus_per_worker 0.5
    hold the GPU resource at once; their workers fall back to the CPU and gloo and complete."""
    config = resolve(
        {
            "data": {"name": "synthetic", "num_train": 256, "num_test": 64, "synthetic_size": 16},
            "model": {"arch": "resnet18", "width": 8, "out_dim": 16},
            "augment": {"ops": ["crop", "color"]},
            "train": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 2},
            "eval": {"knn_k": 5, "probe": {"max_iter": 5}},
            "resources": {"gpus_per_worker": 0.5, "cpus_per_worker": 1},
        }
    )
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        fit = ray.remote(num_cpus=0)(fit_trial)
        free_gpu: list[float] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                free_gpu.append(ray.available_resources().get("GPU", 0.0))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        refs = [fit.remote(config, storage_path=str(tmp_path), name=f"half{i}") for i in range(2)]
        histories = ray.get(refs, timeout=600)
        done.set()
        watcher.join()
    finally:
        ray.shutdown()
    for history in histories:
        assert history[-1]["status"] == "completed"
        assert history[-1]["train/loss"] > 0
    assert min(free_gpu) == 0.0, "the two half-GPU trials never held the GPU at once"
