"""The ``--dry-run`` view of a plan: the trial table, the resources and the estimated compute.

Imports no Ray and decodes no data: dataset sizes come from ``ablate.data``'s facts
(``split_sizes``, ``steps_per_epoch``), computed as the trial's own split and shards do.
"""

from __future__ import annotations

from typing import Any

from ablate import data, preflight
from ablate.config import TrialConfig
from ablate.searchers import SEARCHERS
from ablate.spec import SpecError, SweepPlan, trial_resources
from ablate.vocabulary import format_value


def steps_per_epoch(config: TrialConfig) -> int | None:
    """Optimiser steps of one epoch of the trial ``config``, as ``ablate.train`` computes them
    from the trial's split; None when the dataset's class counts are not known without
    decoding it."""
    sizes = data.split_sizes(config.data)
    if sizes is None:
        return None
    return data.steps_per_epoch(
        sizes[0],
        config.train.batch_size,
        config.resources.num_workers,
        config.train.steps_per_epoch,
    )


def estimate_compute(plan: SweepPlan) -> dict[str, Any]:
    """Upper bounds (every trial runs all its epochs): steps, images, worker-CPU/GPU-epochs."""
    per_trial = plan.configs()
    multiplier = plan.num_trials if plan.proposes else 1
    epochs = steps = images = cpu_epochs = gpu_epochs = 0.0
    unknown = False
    for config in per_trial:
        n_epochs = config.train.epochs
        per_epoch = steps_per_epoch(config)
        res = trial_resources(config)
        epochs += n_epochs
        cpu_epochs += n_epochs * res["cpus"]
        gpu_epochs += n_epochs * res["gpus"]
        if per_epoch is None:
            unknown = True
        else:
            steps += n_epochs * per_epoch
            images += n_epochs * per_epoch * config.train.batch_size
    return {
        "trials": plan.num_trials,
        "epochs": int(epochs * multiplier),
        "steps": None if unknown else int(steps * multiplier),
        "images": None if unknown else int(images * multiplier),
        "worker_cpu_epochs": cpu_epochs * multiplier,
        "worker_gpu_epochs": gpu_epochs * multiplier,
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _recipe_line(name: str | None) -> str:
    """``name (title; source)``, or that the schema's defaults are the base."""
    if name is None:
        return "none (base: the schema's defaults and this file's sections)"
    from ablate.recipes import get_recipe

    recipe = get_recipe(name)
    return f"{name} ({recipe.title}; published: {recipe.published})"


def describe_plan(plan: SweepPlan) -> str:
    """The ``--dry-run`` text: the trial table, the resources and the estimated compute.

    Raises ``SpecError`` for a batch larger than its pretraining set
    (``preflight.check_batch_sizes``): a trial table with 0 steps per epoch is no plan; and
    for a data source whose size cannot be counted (a ``DataError`` of ``ablate.data``, e.g. a
    dangling symbolic link in an image folder), at the key the error names."""
    try:
        return _describe_plan(plan)
    except data.DataError as error:
        message = str(error).removeprefix(f"{error.key}: ")
        raise SpecError(plan.source, error.key, message) from None


def _describe_plan(plan: SweepPlan) -> str:
    preflight.check_batch_sizes(plan)
    spec = plan.spec
    description = " ".join(spec.description.split())
    lines = [
        f"sweep {plan.name!r} from {plan.source}",
        *([f"  {description}"] if description else []),
        f"  algorithm {spec.algorithm.name}, scheduler {spec.scheduler.name} "
        f"({spec.scheduler.metric}, {spec.scheduler.mode}), replicates {spec.replicates}",
        f"  recipe: {_recipe_line(spec.recipe)}",
        f"  results: {plan.experiment_dir}",
        "",
    ]
    if plan.proposes:
        rows = [[k, v.kind(), format_value(getattr(v, v.kind()))] for k, v in plan.sampled.items()]
        proposer = SEARCHERS.get(spec.algorithm.name).meta["proposer"] or spec.algorithm.name
        lines.append(f"{plan.num_trials} trials proposed by {proposer} from:")
        lines.append(_table(["key", "kind", "values"], rows))
    else:
        keys = plan.varying_keys
        header = ["#", *keys, "seed", "epochs", "steps/ep", "workers", "cpu/w", "gpu/w"]
        rows = []
        for index, trial in enumerate(plan.trials):
            config, res = trial.config, trial_resources(trial.config)
            per_epoch = steps_per_epoch(config)
            rows.append(
                [
                    str(index),
                    *(format_value(trial.varying[k]) if k in trial.varying else "-" for k in keys),
                    str(trial.seed),
                    str(trial.epochs),
                    "?" if per_epoch is None else str(per_epoch),
                    str(res["workers"]),
                    f"{res['cpus_per_worker']:g}",
                    f"{res['gpus_per_worker']:g}",
                ]
            )
        configurations = len(plan.trials) // spec.replicates
        lines.append(
            f"{plan.num_trials} trials = {configurations} configurations x "
            f"{spec.replicates} replicate(s)"
        )
        lines.append(_table(header, rows))
    compute = estimate_compute(plan)
    steps = "?" if compute["steps"] is None else f"{compute['steps']:,}"
    images = "?" if compute["images"] is None else f"{compute['images']:,}"
    lines += [
        "",
        "estimated compute (upper bound: every trial runs all its epochs):",
        f"  {compute['trials']} trials, {compute['epochs']:,} epochs, {steps} steps, "
        f"{images} images (x2 views)",
        f"  {compute['worker_cpu_epochs']:,.1f} worker-CPU-epochs, "
        f"{compute['worker_gpu_epochs']:,.1f} worker-GPU-epochs",
    ]
    user_cap = spec.algorithm.max_concurrent_trials
    lines.append(
        f"  max concurrent trials: {user_cap or 'as many as the cluster holds'} "
        "(capped by cluster CPUs/GPUs when the sweep starts)"
    )
    return "\n".join(lines)
