"""The ``--dry-run`` view of a plan: the trial table, the resources, the estimated compute and
the estimated wall-clock time.

Imports no Ray and decodes no data: dataset sizes come from ``ablate.data``'s facts
(``split_sizes``, ``steps_per_epoch``), computed as the trial's own split and shards do.

The wall-clock estimate (``estimate_wall_clock``) rests on one of two measurements, named in
the output with their uncertainty:

* **measured**: the sweep's directory already holds a ``summary.json`` (an earlier run of this
  sweep): each trial's seconds per optimiser step (``wall_seconds`` over its epochs and steps)
  and its start-up (``overhead_seconds``); a planned trial takes the median start-up plus its
  steps at the median step time, its range the fastest and slowest measured.
* **calibration**: otherwise the first trial's pretraining step (``ablate.train.step``:
  augmentation, encoder, head, loss, backward, optimiser) is timed on this machine on random
  images of the trial's size (``CALIBRATION_STEPS`` after a warm-up, on at most
  ``CALIBRATION_BATCH`` images scaled to the batch; a GPU trial only where there is a GPU).
  It leaves out trial
  start-up, the kNN monitor and the final probes, so the range runs from the steps alone up
  to ``CALIBRATION_HIGH`` times that plus ``STARTUP_SECONDS`` of start-up per trial.

Trials are laid out as Tune hands them out, in plan order, at most ``concurrency`` at once
(``schedule_seconds``): ``algorithm.max_concurrent_trials`` and what this machine's CPUs and
GPUs hold (``preflight.worker_slots``); a cluster that holds more trials runs faster.
"""

from __future__ import annotations

import heapq
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------- wall clock

#: Timed pretraining steps of the calibration (after ``CALIBRATION_WARMUP`` untimed ones).
CALIBRATION_STEPS = 3
CALIBRATION_WARMUP = 1
#: Images a calibration step is timed on (at most the trial's per-worker batch; the time is
#: scaled to the full batch) and the calibration's time budget in seconds.
CALIBRATION_BATCH = 16
CALIBRATION_BUDGET_S = 5.0
#: The calibration's upper bound: steps x this (evaluation, data loading, a busier machine).
CALIBRATION_HIGH = 2.0
#: A trial's start-up that a calibration cannot measure (a Ray Train worker group with torch
#: imported: 10-30 s on a laptop's 2 cores), in the calibration's upper bound.
STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class WallClock:
    """An estimate of a plan's wall-clock time: ``per_trial`` (seconds, the central estimate
    of each trial in plan order), ``total`` (seconds, trials laid out ``concurrency`` at once),
    ``low``/``high`` (the total's range), ``source`` (what was measured, in words) and
    ``caveat`` (what the estimate leaves out)."""

    per_trial: list[float]
    total: float
    low: float
    high: float
    concurrency: int
    source: str
    caveat: str


def schedule_seconds(durations: Sequence[float], concurrency: int) -> float:
    """The makespan (seconds) of ``durations`` started in order, each as soon as one of
    ``concurrency`` slots is free (Tune's FIFO hand-out). Raises ValueError for a concurrency
    below 1."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    slots = [0.0] * min(concurrency, max(len(durations), 1))
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + float(duration))
    return max(slots)


def local_concurrency(plan: SweepPlan, gpus: int = 0) -> int:
    """Trials this machine holds at once (its CPUs and ``gpus``, ``preflight.worker_slots``),
    capped by ``algorithm.max_concurrent_trials`` and the number of trials (at least 1)."""
    node = {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}
    fits = []
    for config in plan.configs():
        res = trial_resources(config)
        slots = preflight.worker_slots([node], res["cpus_per_worker"], res["gpus_per_worker"])
        fits.append(slots // max(int(res["workers"]), 1))
    limits = [max(min(fits, default=1), 1), max(plan.num_trials, 1)]
    if plan.spec.algorithm.max_concurrent_trials:
        limits.append(plan.spec.algorithm.max_concurrent_trials)
    return min(limits)


def _trial_steps(config: TrialConfig) -> int | None:
    per_epoch = steps_per_epoch(config)
    return None if per_epoch is None else per_epoch * config.train.epochs


def measured_times(plan: SweepPlan) -> tuple[list[float], list[float], str] | None:
    """Seconds per optimiser step and start-up seconds of each trial of the last run of this
    sweep (its ``summary.json``, matched to its saved plans' configs), and that file; None
    when there is none or it measured nothing."""
    from ablate import rounds
    from ablate.config import TrialConfig
    from ablate.trialrecord import planned_key

    path = f"{plan.experiment_dir}/summary.json"
    try:
        text = preflight.read_text(path)
        summary = json.loads(text) if text else None
        saved = rounds.saved_rounds(plan.experiment_dir)
    except (OSError, ValueError):
        return None
    if not summary:
        return None
    configs = {
        planned_key(p.get("varying") or {}, int(p.get("replicate") or 0)): p.get("config")
        for r in saved
        for p in r.plan.get("trials") or []
    }
    per_step, startup = [], []
    for trial in summary.get("trials") or []:
        wall, epoch = (trial.get("metrics") or {}).get("wall_seconds"), trial.get("epoch")
        config = configs.get(planned_key(trial.get("varying") or {}, trial.get("replicate", 0)))
        if isinstance(trial.get("overhead_seconds"), (int, float)):
            startup.append(float(trial["overhead_seconds"]))
        if not (isinstance(wall, (int, float)) and epoch and config):
            continue
        per_epoch = steps_per_epoch(TrialConfig.model_validate(config))
        if per_epoch:
            per_step.append(float(wall) / (float(epoch) * per_epoch))
    return (per_step, startup or [0.0], path) if per_step else None


def calibrate_step_seconds(config: TrialConfig, steps: int = CALIBRATION_STEPS) -> float | None:
    """Seconds of one pretraining step (``ablate.train.step.pretraining_step``) of ``config``
    on this machine: the median of ``steps`` steps on random uint8 images of its image side,
    at most ``CALIBRATION_BATCH`` of them, scaled to its per-worker batch (fewer steps when
    they pass ``CALIBRATION_BUDGET_S``). None when the side is not known without decoding the
    data (an image folder or parquet without ``data.image_size``) or the trial needs a GPU
    this machine lacks."""
    side = config.data.image_size or (
        config.data.synthetic_size if config.data.name == "synthetic" else None
    )
    if side is None and config.data.name.startswith("cifar"):
        side = 32
    if side is None:
        return None
    import torch

    from ablate.train.step import build_pretraining, pretraining_step

    if config.resources.gpus_per_worker > 0:
        if not torch.cuda.is_available():
            return None  # a GPU trial timed on CPU would say nothing about it
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    batch = max(config.train.batch_size // config.resources.num_workers, 2)
    timed = min(batch, CALIBRATION_BATCH)
    torch.manual_seed(0)
    parts = build_pretraining(config, (0.5,) * 3, (0.25,) * 3, device, steps_per_epoch=steps + 1)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (timed, 3, side, side), dtype=torch.uint8, device=device)
    times: list[float] = []
    began = time.perf_counter()
    for index in range(CALIBRATION_WARMUP + steps):
        start = time.perf_counter()
        pretraining_step(parts, images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= CALIBRATION_WARMUP or time.perf_counter() - began > CALIBRATION_BUDGET_S:
            times.append(time.perf_counter() - start)
        if time.perf_counter() - began > CALIBRATION_BUDGET_S:
            break
    # A step's cost grows about linearly with its images once the batch fills the device.
    return statistics.median(times) * batch / timed


def calibrate_in_subprocess(config: TrialConfig) -> tuple[float | None, int]:
    """``calibrate_step_seconds`` of ``config`` and this machine's GPU count, measured in a
    child Python, so that the dry-run itself never imports torch (its import costs seconds
    and its threads stay). ``(None, 0)`` when the child fails (its error is not the plan's)."""
    import subprocess
    import sys

    code = (
        "import json, sys, torch\n"
        "from ablate.config import TrialConfig\n"
        "from ablate.dryrun import calibrate_step_seconds\n"
        "config = TrialConfig.model_validate_json(sys.stdin.read())\n"
        "print(json.dumps([calibrate_step_seconds(config), torch.cuda.device_count()]))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=config.model_dump_json(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        step, gpus = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None, 0
    return (None if step is None else float(step)), int(gpus)


def estimate_wall_clock(
    plan: SweepPlan,
    concurrency: int | None = None,
    calibrate: Any = calibrate_in_subprocess,
) -> WallClock | None:
    """The plan's wall-clock estimate (see the module docstring); None for a plan whose steps
    are unknown (an image folder's size) or that cannot be calibrated. ``concurrency``:
    trials at once (default ``local_concurrency``); ``calibrate``: ``config -> (seconds per
    step or None, GPUs here)``, called only when the sweep's directory measured nothing."""
    configs = plan.configs()
    if plan.proposes:
        configs = configs * plan.num_trials
    steps = [_trial_steps(c) for c in configs]
    if any(s is None for s in steps):
        return None
    measured = measured_times(plan)
    gpus = 0
    step = None
    if measured is None:
        step, gpus = calibrate(configs[0])
        if step is None:
            return None
    concurrency = concurrency or local_concurrency(plan, gpus)
    if measured is not None:
        per_step, startup, path = measured
        central = [statistics.median(startup) + n * statistics.median(per_step) for n in steps]
        fast = [min(startup) + n * min(per_step) for n in steps]
        slow = [max(startup) + n * max(per_step) for n in steps]
        source = (
            f"measured: {len(per_step)} trial(s) of the last run of this sweep ({path}): "
            f"{statistics.median(per_step):.3g} s a step (range {min(per_step):.3g}-"
            f"{max(per_step):.3g}), start-up {statistics.median(startup):.3g} s a trial"
        )
        caveat = "range: the fastest and the slowest trial measured"
    else:
        assert step is not None
        central = [n * step * (1 + CALIBRATION_HIGH) / 2 + STARTUP_SECONDS / 2 for n in steps]
        fast = [n * step for n in steps]
        slow = [n * step * CALIBRATION_HIGH + STARTUP_SECONDS for n in steps]
        source = (
            f"calibration: {CALIBRATION_STEPS} pretraining steps of the first trial on this "
            f"machine, {step:.3g} s a step"
        )
        caveat = (
            "the steps alone at the low end; evaluation, data loading and trial start-up are "
            f"not measured: the high end allows x{CALIBRATION_HIGH:g} the steps and "
            f"{STARTUP_SECONDS:g} s of start-up a trial"
        )
    return WallClock(
        per_trial=central,
        total=schedule_seconds(central, concurrency),
        low=schedule_seconds(fast, concurrency),
        high=schedule_seconds(slow, concurrency),
        concurrency=concurrency,
        source=source,
        caveat=caveat,
    )


def duration_text(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def wall_clock_lines(plan: SweepPlan, estimate: WallClock | None) -> list[str]:
    """The dry-run's lines of ``estimate``."""
    if estimate is None:
        return [
            "estimated wall clock: unknown (no earlier run of this sweep measured it, and the "
            "first trial cannot be timed here: it needs a GPU this machine lacks, or the "
            "dataset's size or image side, which only decoding it tells)"
        ]
    per = estimate.per_trial
    each = (
        duration_text(per[0])
        if max(per) - min(per) < 0.05 * max(per)
        else f"{duration_text(min(per))} to {duration_text(max(per))}"
    )
    lines = [
        f"estimated wall clock: {duration_text(estimate.total)} (range "
        f"{duration_text(estimate.low)} to {duration_text(estimate.high)}), {each} a trial, "
        f"{estimate.concurrency} trial(s) at once on this machine",
        f"  from {estimate.source}",
        f"  uncertainty: {estimate.caveat}; a cluster that holds more trials at once is faster",
    ]
    if plan.spec.racing is not None:
        lines.append(
            f"  racing: the trials of the first round; up to {plan.spec.racing.max} seeds a "
            "configuration if the race stays undecided"
        )
    return lines


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


def describe_plan(plan: SweepPlan, wall_clock: bool = True) -> str:
    """The ``--dry-run`` text: the trial table, the resources and the estimated compute.

    Raises ``SpecError`` for a batch larger than its pretraining set
    (``preflight.check_batch_sizes``): a trial table with 0 steps per epoch is no plan; and
    for a data source whose size cannot be counted (a ``DataError`` of ``ablate.data``, e.g. a
    dangling symbolic link in an image folder), at the key the error names."""
    try:
        return _describe_plan(plan, wall_clock)
    except data.DataError as error:
        message = str(error).removeprefix(f"{error.key}: ")
        raise SpecError(plan.source, error.key, message) from None


def _describe_plan(plan: SweepPlan, wall_clock: bool) -> str:
    preflight.check_batch_sizes(plan)
    spec = plan.spec
    description = " ".join(spec.description.split())
    lines = [
        f"sweep {plan.name!r} from {plan.source}",
        *([f"  {description}"] if description else []),
        f"  algorithm {spec.algorithm.name}, scheduler {spec.scheduler.name} "
        f"({spec.scheduler.metric}, {spec.scheduler.mode}), replicates {_replicates(spec)}",
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
        racing = " (the first round of the race)" if spec.racing is not None else ""
        lines.append(
            f"{plan.num_trials} trials = {len(plan.configurations())} configurations x "
            f"{spec.min_replicates} replicate(s){racing}"
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
    if wall_clock:
        lines += ["", *wall_clock_lines(plan, estimate_wall_clock(plan))]
    return "\n".join(lines)


def _replicates(spec: Any) -> str:
    racing = spec.racing
    if racing is None:
        return str(spec.replicates)
    return f"raced from {racing.min} to at most {racing.max} (undecided configurations only)"
