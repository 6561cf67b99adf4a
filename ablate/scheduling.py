"""Early stopping that judges a configuration's replicates (seeds) together.

``ReplicateASHA`` is asynchronous successive halving (ASHA; Li et al., "A System for Massively
Parallel Hyperparameter Tuning", MLSys 2020, https://arxiv.org/abs/1810.05934, as in Ray Tune's
``AsyncHyperBandScheduler`` with one bracket) whose unit of decision is a *configuration*, not a
trial. Ray's ``Repeater`` documentation warns against combining an early-stopping scheduler with
repeated seeds: plain ASHA judges each seed alone, so one lucky seed keeps a bad configuration
running to the end and one unlucky seed drops a good configuration's replicate, leaving the
configuration with fewer comparable replicates than planned. Here no configuration is kept or
dropped on one seed.

The rule (``time_attr`` is ``epoch``, the value is the sweep's ``metric`` under its ``mode``):

1. Rungs are ASHA's milestones ``grace_period * reduction_factor**k`` below ``max_t``. A result
   at or past ``max_t`` stops its trial (it has run every epoch), as in ASHA.
2. Trials are grouped by configuration (``group_key``): the param dict's ``varying`` without
   ``train.seed``; trials without that structure are groups of one. A group has
   ``max(replicates, members added so far)`` members: members the searcher has yet to hand out
   are waited for.
3. At each result, a trial's value is recorded at the highest rung it has reached and not yet
   recorded (ASHA's bookkeeping). A group is *ready* at a rung when every member has reached
   it (its latest epoch is at or past the rung) or has ended (completed, errored, removed).
4. When a group becomes ready at a rung, its mean (over the members' finite values recorded at
   that rung) is compared once with the group means recorded at that rung so far: the group
   continues if its mean is not below the ``(1 - 1/reduction_factor)`` quantile of them
   (``numpy.nanpercentile``, ASHA's asynchronous cutoff; the first group at a rung always
   continues), else every member is stopped. The mean is then recorded for later groups.
5. A member that reaches a rung before its siblings continues (function trainables cannot be
   paused without a restart) until the group is decided; a member of a stopped group gets
   ``STOP`` at its next result. So a group's members stop on the same rung decision, but an
   early member may have run a few epochs past the rung while waiting. A member that already
   ended before the decision keeps its outcome.

With one replicate per configuration every group is ready when its only trial reaches the
rung, so the decisions are ASHA's. Members are judged together only if they run at the same
time: hand out a configuration's replicates together (configuration-major order) with at least
``replicates`` concurrent trials; otherwise the first members run on while later ones queue.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

SEED_KEY = "train.seed"


def group_key(param: dict[str, Any] | None, trial_id: str) -> str:
    """The configuration a trial's param dict belongs to: its ``varying`` dict without
    ``train.seed``, as JSON with sorted keys; ``trial:<trial_id>`` (a group of one) for a param
    dict without a ``varying`` dict."""
    varying = (param or {}).get("varying")
    if not isinstance(varying, dict):
        return f"trial:{trial_id}"
    shared = {key: value for key, value in varying.items() if key != SEED_KEY}
    return json.dumps(shared, sort_keys=True, default=str)


class ReplicateASHA(FIFOScheduler):
    """ASHA on configurations: a configuration's replicates continue or stop together on their
    mean at each rung (the rule is this module's docstring).

    Args:
        time_attr: result key counting progress (``epoch``; must increase within a trial).
        metric, mode: the value judged and its direction (``max``/``min``); None takes them from
            ``tune.TuneConfig``.
        max_t: last ``time_attr`` value; a result at or past it stops its trial.
        grace_period: first rung (``time_attr`` units), > 0 and <= ``max_t``.
        reduction_factor: > 1; a group continues if its mean is in the top ``1/reduction_factor``
            of the group means recorded at the rung.
        replicates: trials per configuration the searcher will hand out (>= 1).

    Raises:
        ValueError: an argument out of the ranges above, or (at the first trial) no metric/mode.
    """

    def __init__(
        self,
        *,
        time_attr: str = "epoch",
        metric: str | None = None,
        mode: str | None = None,
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
        replicates: int = 1,
    ) -> None:
        if not 0 < grace_period <= max_t:
            raise ValueError(f"need 0 < grace_period <= max_t, got {grace_period} and {max_t}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        if replicates < 1:
            raise ValueError(f"replicates must be >= 1, got {replicates}")
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        super().__init__()
        self._time_attr = time_attr
        self._metric = metric
        self._mode = mode
        self._max_t = max_t
        self._reduction_factor = reduction_factor
        self._replicates = replicates
        # ASHA's milestone count (AsyncHyperBandScheduler, bracket 0), without max_t itself:
        # a result at max_t stops its trial whatever the rung says.
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self._rungs = [
            m for m in (grace_period * reduction_factor**k for k in range(count)) if m < max_t
        ]
        self._group_of: dict[str, str] = {}  # trial id -> group key
        self._members: dict[str, list[str]] = {}  # group key -> trial ids, in order added
        self._reached: dict[str, float] = {}  # trial id -> latest time_attr seen
        self._ended: set[str] = set()
        self._values: dict[float, dict[str, float]] = {m: {} for m in self._rungs}
        self._group_means: dict[float, dict[str, float]] = {m: {} for m in self._rungs}
        self._stopped_groups: dict[str, float] = {}  # group key -> rung it was stopped at
        self._num_stopped = 0

    # ------------------------------------------------------------------ Tune's interface

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    @property
    def rungs(self) -> list[float]:
        """The milestones (``time_attr`` values) at which groups are judged, ascending."""
        return list(self._rungs)

    @property
    def stopped_groups(self) -> dict[str, float]:
        """Group key -> the rung at which that configuration was stopped."""
        return dict(self._stopped_groups)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if not self._metric or self._mode not in ("max", "min"):
            raise ValueError(
                f"{type(self).__name__} needs a metric and a mode ('max' or 'min'), got "
                f"{self._metric!r} and {self._mode!r}: pass them here or to tune.TuneConfig"
            )
        trial_id = trial.trial_id
        if trial_id not in self._group_of:  # Tune re-adds a trial it requeues after an error
            key = group_key(trial.config, trial_id)
            self._group_of[trial_id] = key
            self._members.setdefault(key, []).append(trial_id)
        self._ended.discard(trial_id)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):  # restored experiment
            if trial.last_result:
                self._record(trial_id, trial.last_result)
            self._end(trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        trial_id = trial.trial_id
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        self._ended.discard(trial_id)
        self._record(trial_id, result)
        self._decide(self._group_of[trial_id])
        action = TrialScheduler.CONTINUE
        if (
            self._group_of[trial_id] in self._stopped_groups
            or result[self._time_attr] >= self._max_t
        ):
            action = TrialScheduler.STOP
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        if self._time_attr in result and self._metric in result:
            self._record(trial.trial_id, result)
        self._end(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._end(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._end(trial.trial_id)

    def debug_string(self) -> str:
        cutoffs = " | ".join(
            f"{self._time_attr} {m:g}: {len(means)} configurations, cutoff {self._cutoff(m)}"
            for m, means in self._group_means.items()
        )
        return (
            f"Using ReplicateASHA: num_stopped={self._num_stopped}, configurations stopped="
            f"{len(self._stopped_groups)}\n{cutoffs}"
        )

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    # ------------------------------------------------------------------ the rule

    def _signed(self, value: float) -> float:
        return float(value) if self._mode == "max" else -float(value)

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        t = result[self._time_attr]
        self._reached[trial_id] = max(t, self._reached.get(trial_id, t))
        value = result.get(self._metric)
        if value is None:
            return
        # ASHA's bookkeeping: the highest rung reached and not yet recorded takes the value.
        for milestone in reversed(self._rungs):
            if t >= milestone and trial_id not in self._values[milestone]:
                self._values[milestone][trial_id] = self._signed(value)
                break

    def _end(self, trial_id: str) -> None:
        self._ended.add(trial_id)
        if trial_id in self._group_of:
            self._decide(self._group_of[trial_id])

    def _cutoff(self, milestone: float) -> float | None:
        means = list(self._group_means[milestone].values())
        if not means:
            return None
        return float(np.nanpercentile(means, (1 - 1 / self._reduction_factor) * 100))

    def _decide(self, key: str) -> None:
        """Take every decision that ``key``'s group is ready for, lowest rung first."""
        members = self._members[key]
        expected = max(self._replicates, len(members)) if not key.startswith("trial:") else 1
        for milestone in self._rungs:
            if key in self._stopped_groups:
                return
            if key in self._group_means[milestone]:
                continue
            settled = [
                m for m in members if m in self._ended or self._reached.get(m, -1) >= milestone
            ]
            if len(settled) < expected:
                return
            values = [self._values[milestone][m] for m in members if m in self._values[milestone]]
            if not values:
                continue  # every member ended before this rung: nothing left to judge
            finite = [v for v in values if math.isfinite(v)]
            mean = float(np.mean(finite)) if finite else math.nan
            cutoff = self._cutoff(milestone)
            self._group_means[milestone][key] = mean
            if cutoff is not None and mean < cutoff:
                self._stopped_groups[key] = milestone
