"""The evaluations of one trial, on rank 0 after an epoch (``evaluate``): the validation
monitors (``validation_monitors``: weighted kNN against the pretraining set, the online probe)
every ``eval.eval_every`` epochs, and at the last epoch and each of ``eval.probe.epochs`` the
final evaluation (``final_evaluation``: offline linear probe, kNN and online probe on the
validation and test splits, semi-supervised fine-tuning), all on frozen features
(``ablate.probe``). ``val/knn_top1`` is the ranking metric; the test split is never a monitor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ablate import vocabulary
from ablate.config import TrialConfig
from ablate.train.step import bare_model

if TYPE_CHECKING:
    from ablate.train.worker import Worker


def evaluate(worker: Worker, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
    """The evaluations due after ``epoch`` (rank 0 only): ``(monitors, probe_results)``.

    At the last epoch and each of ``eval.probe.epochs``: ``final_evaluation``, whose
    validation monitors also update the monitors; else every ``eval.eval_every`` epochs the
    validation monitors alone; otherwise nothing.
    """
    config = worker.config
    if worker.rank != 0:
        return {}, {}
    if epoch == config.train.epochs or epoch in config.eval.probe.epochs:
        # Extracts the features once for the probe and the kNN monitor alike.
        results = final_evaluation(worker)
        monitors = {k: v for k, v in results.items() if k in vocabulary.MONITOR_METRICS}
        return monitors, results
    if vocabulary.monitor_measured(epoch, config.train.epochs, config.eval.eval_every):
        return validation_monitors(worker), {}
    return {}, {}


def validation_monitors(worker: Worker) -> dict[str, float]:
    """``val/knn_top1`` against the pretraining bank and ``val/online_top1``."""
    from ablate import probe

    data, parts = worker.data, worker.parts
    bank = data.pretrain_idx
    feats = probe.extract_features(
        bare_model(parts.model).encoder,
        data.images[np.concatenate([bank, data.val_idx])],
        data.mean,
        data.std,
        device=parts.device,
        channels_last=parts.channels_last,
        autocast_dtype=parts.amp_dtype,
    )
    return monitor_metrics(
        "val",
        feats[: len(bank)],
        torch.from_numpy(data.labels[bank]),
        feats[len(bank) :],
        torch.from_numpy(data.labels[data.val_idx]),
        worker.online,
        worker.config,
        data.num_classes,
    )


def monitor_metrics(
    split: str,
    bank_feats: torch.Tensor,
    bank_labels: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    online: Any,
    config: TrialConfig,
    num_classes: int,
) -> dict[str, float]:
    """``<split>/knn_top1`` (weighted kNN against the pretraining bank) and, when enabled,
    ``<split>/online_top1`` of the online probe. Features (N, F) on the CPU, labels (N,)."""
    from ablate import probe

    results = {
        f"{split}/knn_top1": probe.knn_top1(
            bank_feats,
            bank_labels,
            feats,
            labels,
            k=config.eval.knn_k,
            temperature=config.eval.knn_temperature,
            num_classes=num_classes,
        )
    }
    if config.eval.online_probe:
        results[f"{split}/online_top1"] = online.accuracy(feats, labels)
    return results


def final_evaluation(worker: Worker) -> dict[str, float]:
    """Linear probe, kNN and online probe on frozen features of the train, validation and
    test splits (features extracted once; ``val/knn_top1`` stays the ranking metric), and
    with ``eval.semi_supervised`` fine-tuning on ``data.labelled_fraction``: the names of
    ``vocabulary.FINAL_METRICS`` plus the validation monitors."""
    from ablate import probe

    config, data, parts = worker.config, worker.data, worker.parts
    encoder = bare_model(parts.model).encoder
    extract = {
        "device": parts.device,
        "channels_last": parts.channels_last,
        "autocast_dtype": parts.amp_dtype,
    }
    train_rows = data.pretrain_idx
    train_feats = probe.extract_features(
        encoder, data.images[train_rows], data.mean, data.std, **extract
    )
    val_feats = probe.extract_features(
        encoder, data.images[data.val_idx], data.mean, data.std, **extract
    )
    test_feats = probe.extract_features(encoder, data.test_images, data.mean, data.std, **extract)
    train_labels = torch.from_numpy(data.labels[train_rows])
    val_labels = torch.from_numpy(data.labels[data.val_idx])
    test_labels = torch.from_numpy(data.test_labels)
    results = probe.linear_probe(
        train_feats,
        train_labels,
        {"val": (val_feats, val_labels), "test": (test_feats, test_labels)},
        data.num_classes,
        config.eval.probe,
        seed=config.train.seed,
    )
    for split, feats, labels in (("val", val_feats, val_labels), ("test", test_feats, test_labels)):
        results.update(
            monitor_metrics(
                split,
                train_feats,
                train_labels,
                feats,
                labels,
                worker.online,
                config,
                data.num_classes,
            )
        )
    semi = config.eval.semi_supervised
    if semi.enabled and config.data.labelled_fraction:
        from ablate.data import labelled_subset

        subset = train_rows[
            labelled_subset(
                data.labels[train_rows], config.data.labelled_fraction, config.data.seed
            )
        ]
        results.update(
            probe.fine_tune(
                encoder,
                encoder.feat_dim,
                data.images[subset],
                data.labels[subset],
                {
                    "val": (data.images[data.val_idx], val_labels.numpy()),
                    "test": (data.test_images, data.test_labels),
                },
                data.num_classes,
                semi,
                augment_fn=None,
                mean=data.mean,
                std=data.std,
                device=parts.device,
                seed=config.train.seed,
            )
        )
    return results
