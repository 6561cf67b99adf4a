"""One trial end to end through a real Ray Train TorchTrainer (CPU, gloo, tiny encoder)."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import ray
import torch
from local_servers import placement_groups_left

from ablate import vocabulary
from ablate.config import TrialConfig, resolve
from ablate.models import build_encoder
from ablate.probe import extract_features, knn_top1
from ablate.train import (
    FaultInjector,
    TrialState,
    build_trainer,
    build_worker,
    final_evaluation,
    fit_trial,
    prepare_data,
    read_checkpoint,
    run_epoch,
    write_checkpoint,
)

PER_EPOCH_KEYS = {
    "epoch",
    *vocabulary.EPOCH_METRICS,
    *vocabulary.MONITOR_METRICS,
    *vocabulary.TEXT_KEYS,
}
FINAL_KEYS = {"val/probe_top1", "val/probe_top5", "test/probe_top1", "test/probe_top5"}
#: Every key a trial may report: the epoch and the names the vocabulary lists.
KNOWN_KEYS = PER_EPOCH_KEYS | set(vocabulary.FINAL_METRICS)


def tiny_config(**sections: dict) -> dict:
    config = {
        "data": {
            "name": "synthetic",
            "num_train": 640,
            "num_test": 256,
            "synthetic_size": 16,
            "num_classes": 4,
        },
        "model": {"arch": "resnet18", "width": 8, "out_dim": 32},
        "augment": {"ops": ["crop", "flip", "color"]},
        "optim": {"name": "sgd", "base_lr": 0.05, "warmup_epochs": 0},
        "train": {"epochs": 3, "batch_size": 64, "checkpoint_every": 1},
        "eval": {"knn_k": 20, "probe": {"max_iter": 50}},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return resolve(config)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_one_worker_reports_every_metric(local_ray, tmp_path):
    config = tiny_config(eval={"knn_k": 20, "probe": {"max_iter": 50, "epochs": [1]}})
    history = fit_trial(config, storage_path=str(tmp_path), name="one")

    assert [row["epoch"] for row in history] == [1, 2, 3]
    # The probe runs at epoch 1 (asked for) and at the end; its results are not carried on.
    assert [bool(row.keys() & FINAL_KEYS) for row in history] == [True, False, True]
    for row in history:
        assert row.keys() >= PER_EPOCH_KEYS, PER_EPOCH_KEYS - row.keys()
        assert row.keys() <= KNOWN_KEYS, row.keys() - KNOWN_KEYS
        assert math.isfinite(row["train/loss"]) and row["train/images_per_sec"] > 0
    final = history[-1]
    assert final["status"] == "completed"
    assert final.keys() >= FINAL_KEYS
    for key in ("val/knn_top1", *FINAL_KEYS):
        assert 0.0 <= final[key] <= 1.0, (key, final[key])
    # top-5 of 4 classes covers every class: a probe that scores its own labels gets 1.
    assert final["test/probe_top5"] == 1.0
    # The loss is the NT-Xent of 2N views: bounded by log(2N - 1) at chance.
    assert history[0]["train/loss"] < math.log(2 * 64 - 1) + 0.5


@pytest.mark.slow
def test_a_run_whose_trial_stops_taking_reports_is_aborted(local_ray, tmp_path):
    """As when Tune stops a trial: the trial raises at its first report (Tune's session does so),
    which closes the run's relay channel; the Train run aborts at a next report and removes its
    placement group, while the trial's process lives on (a run left blocked on the relay would
    hold its group until that process ended; one left going would train all 30 epochs)."""
    from ablate import relay

    handle = relay.start_relay()
    try:
        channel = relay.new_channel("stopped")
        trainer = build_trainer(
            tiny_config(train={"epochs": 30, "batch_size": 64, "checkpoint_every": 1}),
            storage_path=str(tmp_path),
            name="stopped",
            callbacks=[relay.RelayReportCallback(handle, channel)],
        )
        reports: list[dict] = []

        def stop_at_first(report: dict) -> None:
            reports.append(report)
            raise SystemExit(0)

        with pytest.raises(SystemExit):
            relay.fit_and_forward(trainer.fit, handle, channel, stop_at_first)
        deadline = time.time() + 90
        while placement_groups_left() and time.time() < deadline:
            time.sleep(0.5)
        assert placement_groups_left() == []
        assert [report["epoch"] for report in reports] == [1]
        kept = sorted((tmp_path / "stopped").glob("epoch_*"))
        assert kept and kept[-1].name <= "epoch_00004", kept  # aborted, not trained to the end
    finally:
        relay.stop_relay(handle)


@pytest.mark.slow
def test_two_workers_resume_after_a_worker_raises(local_ray, tmp_path):
    config = tiny_config(
        train={"epochs": 3, "batch_size": 64, "faults": {"raise_once_at_epoch": 2}},
        resources={"num_workers": 2},
    )
    history = fit_trial(config, storage_path=str(tmp_path), name="two")

    # Epochs 1-2 come back from the checkpoint the restarted group resumed from, epoch 3 ran after.
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["restored_epoch"] for row in history] == [0, 0, 2]
    assert history[-1]["status"] == "completed"
    assert history[-1].keys() >= FINAL_KEYS


@pytest.mark.slow
def test_nan_loss_ends_the_trial_as_diverged(local_ray, tmp_path):
    config = tiny_config(train={"epochs": 4, "batch_size": 64, "faults": {"nan_loss_at_epoch": 2}})
    history = fit_trial(config, storage_path=str(tmp_path), name="nan")

    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["status"] == "diverged"
    assert "non-finite loss" in history[-1]["reason"]
    assert "epoch 2" in history[-1]["reason"]


def above(accuracy: float, baseline: float, n: int) -> bool:
    """More than four binomial standard errors (of ``n`` trials at ``baseline``) above it."""
    return accuracy > baseline + 4.0 * math.sqrt(baseline * (1 - baseline) / n)


def untrained_test_knn(config: dict) -> float:
    """Test kNN top-1 of the encoder as the trial initialises it (same seed, before epoch 1)."""
    trial = TrialConfig.model_validate(config)
    data = prepare_data(trial, {})
    torch.manual_seed(trial.train.seed)  # the worker seeds, then builds the encoder first
    encoder = build_encoder(trial.model)
    bank = extract_features(encoder, data.images[data.pretrain_idx], data.mean, data.std)
    test = extract_features(encoder, data.test_images, data.mean, data.std)
    return knn_top1(
        bank,
        torch.from_numpy(data.labels[data.pretrain_idx]),
        test,
        torch.from_numpy(data.test_labels),
        k=trial.eval.knn_k,
        temperature=trial.eval.knn_temperature,
        num_classes=data.num_classes,
    )


@pytest.mark.slow
def test_a_short_pretraining_learns_the_shapes(local_ray, tmp_path):
    # Measured on seeds 0-3: the kNN monitor stalls near its epoch-0 value for 4-8 epochs,
    # then climbs; after 16 epochs test kNN was 0.88-0.99 against 0.40-0.65 untrained.
    config = tiny_config(
        data={"num_train": 2048, "num_test": 512},
        augment={
            "ops": ["crop", "flip", "color"],
            "crop": {"scale": [0.5, 1.0]},
            "color": {"strength": 1.0},
        },
        loss={"temperature": 0.1},
        optim={
            "name": "adamw",
            "base_lr": 1e-2,
            "lr_scaling": "none",
            "weight_decay": 1e-4,
            "warmup_epochs": 1,
        },
        train={"epochs": 16, "batch_size": 64, "checkpoint_every": 16},
        eval={"knn_k": 20, "eval_every": 8, "probe": {"max_iter": 100}},
    )
    final = fit_trial(config, storage_path=str(tmp_path), name="learns")[-1]

    assert final["status"] == "completed"
    chance = 1 / 4
    assert above(final["test/knn_top1"], chance, 512), final["test/knn_top1"]
    assert above(final["test/probe_top1"], chance, 512), final["test/probe_top1"]
    # Learning, not just a random conv net's features: clearly better than at initialisation.
    untrained = untrained_test_knn(config)
    assert above(final["test/knn_top1"], untrained, 512), (final["test/knn_top1"], untrained)


def small_trial(**sections: dict) -> TrialConfig:
    small = {
        "data": {"num_train": 256, "num_test": 64},
        "eval": {"knn_k": 5, "probe": {"max_iter": 5}},
    }
    for name, values in sections.items():
        small.setdefault(name, {}).update(values)
    return TrialConfig.model_validate(tiny_config(**small))


def test_final_evaluation_of_read_only_arrays_warns_nothing(tmp_path):
    # The data cache hands out read-only memory maps, as Ray's object store hands out read-only
    # arrays; torch warns (once per process) when it wraps one without copying.
    config = small_trial(
        data={"labelled_fraction": 0.25},
        eval={"semi_supervised": {"enabled": True, "epochs": 1, "batch_size": 32}},
    )
    prepare_data(config, {"data_cache_dir": str(tmp_path)})  # fills the cache
    worker = build_worker(config, {"data_cache_dir": str(tmp_path)})
    assert not worker.data.images.flags.writeable
    assert not worker.data.test_images.flags.writeable
    # The labels the evaluation wraps are the worker's own (small) copies.
    assert worker.data.labels.flags.writeable and worker.data.test_labels.flags.writeable

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = final_evaluation(worker)

    assert results.keys() >= FINAL_KEYS | {"test/knn_top1", "val/semi_top1", "test/semi_top1"}
    assert results.keys() <= set(vocabulary.FINAL_METRICS) | set(vocabulary.MONITOR_METRICS)


def tensors(state: dict) -> dict:
    """The tensors of a (nested) state dict, by their dotted path."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in tensors(value).items()})
        elif isinstance(value, torch.Tensor):
            flat[str(key)] = value
    return flat


def test_a_checkpoint_reads_back_what_was_written(tmp_path):
    worker = build_worker(small_trial(), {})
    run_epoch(worker, torch.Generator(), 1)  # momentum, schedule and probe state to carry
    state = TrialState(epoch=1, history=[{"epoch": 1, "train/loss": 4.0}])
    state.monitors["val/online_top1"] = 0.5
    write_checkpoint(str(tmp_path), worker, state)

    fresh = build_worker(small_trial(train={"seed": 1}), {})
    restored = read_checkpoint(str(tmp_path), fresh)

    assert restored.epoch == 1 and restored.history == state.history
    assert restored.monitors.keys() == {"val/knn_top1", "val/online_top1"}
    assert restored.monitors["val/online_top1"] == 0.5
    assert math.isnan(restored.monitors["val/knn_top1"])
    for written, read in (
        (worker.parts.model, fresh.parts.model),
        (worker.parts.optimizer, fresh.parts.optimizer),
        (worker.online, fresh.online),
    ):
        expected, got = tensors(written.state_dict()), tensors(read.state_dict())
        assert expected and got.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(got[name], value), name
    assert fresh.parts.scheduler.last_epoch == worker.parts.scheduler.last_epoch > 0


def test_faults_fire_at_their_points_once():
    faults = TrialConfig.model_validate(
        tiny_config(train={"faults": {"raise_once_at_epoch": 2, "nan_loss_at_epoch": 3}})
    ).train.faults
    fresh = FaultInjector(faults, rank=0, resumed=False)
    fresh.at_start()  # raise_at_start unset
    fresh.after_epoch(1, None)
    with pytest.raises(RuntimeError, match="raise_once_at_epoch"):
        fresh.after_epoch(2, "epoch_00002")
    FaultInjector(faults, rank=0, resumed=True).after_epoch(2, None)  # once: not after a restart
    FaultInjector(faults, rank=1, resumed=False).after_epoch(2, None)  # rank 0 only
    assert [fresh.poison_loss(epoch) for epoch in (1, 2, 3, 4)] == [False, False, True, False]
    oom = TrialConfig.model_validate(
        tiny_config(train={"faults": {"raise_at_start": "simulated CUDA OOM"}})
    ).train.faults
    with pytest.raises(RuntimeError, match="simulated CUDA OOM"):
        FaultInjector(oom, rank=0, resumed=False).at_start()


def test_the_controller_unpickles_the_backend_without_importing_torch():
    """Train's controller unpickles the trainer's backend config and builds its backend; the
    config must not pull torch into that process (2.3 CPU-s of each trial's start-up)."""
    import pickle
    import subprocess
    import sys

    import cloudpickle

    from ablate.rendezvous import LocalRendezvousTorchConfig

    config = LocalRendezvousTorchConfig(backend="gloo", timeout_s=60)
    code = (
        "import pickle, sys; config = pickle.loads(sys.stdin.buffer.read()); "
        "backend = config.backend_cls(); "
        "print(config.framework.name, config.to_dict()['backend'], "
        "backend.share_cuda_visible_devices, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=cloudpickle.dumps(config, protocol=pickle.DEFAULT_PROTOCOL),
        capture_output=True,
        check=True,
    )
    assert done.stdout.decode().split() == ["TORCH", "gloo", "True", "False"]
    # Across nodes Ray's own torch backend gets the same settings as a TorchConfig.
    assert config.torch_config().backend == "gloo" and config.torch_config().timeout_s == 60
