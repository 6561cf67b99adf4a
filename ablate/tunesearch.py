"""The Ray Tune searchers that hand a plan's trials to Tune (``ablate.searchers`` names them).

Every searcher here suggests the sweep's param dict, the plain form of an
``ablate.trialrecord.PlannedTrial`` (``{"config", "varying", "replicate", "sweep"}``), which
the trial function and the tracking callback read:

* ``PlannedTrials`` hands out the plan's precomputed trials (grid and random), then finishes.
* ``OptunaTrials`` wraps ``OptunaSearch`` so that per-epoch values are reported with
  ``step = epoch`` and trials that ASHA stopped early are told to Optuna as *pruned*:
  ``OptunaSearch`` alone would record an early-stopped trial as COMPLETE with its early score.
* ``ProposedTrials`` wraps a user's searcher (``algorithm.name: module.path:factory``) that
  proposes ``{dotted key: value}``: each proposal becomes a full trial of the plan.
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from ablate import vocabulary
from ablate.spec import ParamValues, SweepPlan
from ablate.vocabulary import format_value


class PlannedTrials(Searcher):
    """Hands Tune the sweep's precomputed trials (grid and random), in order, then finishes."""

    def __init__(self, params: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self._params = params
        self._next = 0

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # metric, mode and the trials all come from the spec

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._params):
            return Searcher.FINISHED
        param = copy.deepcopy(self._params[self._next])
        self._next += 1
        return param

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"next": self._next}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self._next = pickle.load(file)["next"]


class OptunaTrials(Searcher):
    """Optuna (TPE) proposes the sampled keys; every trial gets the sweep's full param dict.

    ASHA-stopped trials reach ``on_trial_complete`` with their last (early) result; they are
    passed on as *pruned* (with their per-epoch values, which TPE ranks below completed trials),
    never as completed with an early score. Diverged trials are pruned too (their carried-forward
    kNN score predates the divergence); errored ones fail. Only trials that ran every epoch are
    COMPLETE.
    """

    def __init__(self, plan: SweepPlan) -> None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric=plan.metric, mode=plan.mode)
        self._plan = plan
        self._labels: dict[str, dict[str, Any]] = {}
        space: dict[str, Any] = {}
        for key, values in plan.sampled.items():
            kind = values.kind()
            if kind == "choice":
                labels = {format_value(v): v for v in values.choice or []}
                self._labels[key] = labels
                space[key] = optuna.distributions.CategoricalDistribution(list(labels))
            elif kind == "randint":
                lo, hi = values.randint  # type: ignore[misc]
                space[key] = optuna.distributions.IntDistribution(int(lo), int(hi))
            else:
                lo, hi = getattr(values, kind)
                space[key] = optuna.distributions.FloatDistribution(
                    float(lo), float(hi), log=kind == "loguniform"
                )
        self._optuna = OptunaSearch(
            space=space,
            metric=plan.metric,
            mode=plan.mode,
            sampler=optuna.samplers.TPESampler(seed=plan.spec.algorithm.seed),
        )
        self._epochs: dict[str, int] = {}
        self._steps: dict[str, int] = {}

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        suggested = self._optuna.suggest(trial_id)
        if not isinstance(suggested, dict):
            return suggested
        varying = {
            key: self._labels[key][value] if key in self._labels else value
            for key, value in suggested.items()
        }
        trial = self._plan.trial(varying)
        self._epochs[trial_id] = trial.epochs
        return trial.param()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if epoch is None or value is None or not math.isfinite(value):
            return
        if epoch <= self._steps.get(trial_id, 0):  # re-reported after a restore
            return
        self._steps[trial_id] = int(epoch)
        self._optuna.on_trial_result(trial_id, {**result, "training_iteration": int(epoch)})

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._epochs:
            return
        if result and not error:
            # Tune hands the result a scheduler stopped on to on_trial_complete only.
            self.on_trial_result(trial_id, result)
        # OptunaSearch records a trial with no result as FAIL (error) or PRUNED (no error); with
        # a result it records COMPLETE with the last value, whatever epoch that came from.
        outcome = vocabulary.trial_outcome(result, self._epochs[trial_id])
        if error or outcome.status not in vocabulary.COMPARABLE_STATUSES:
            result = None
        self._optuna.on_trial_complete(trial_id, result=result, error=error)

    def study(self) -> Any:
        return self._optuna._ot_study

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))


def tune_space(sampled: dict[str, ParamValues]) -> dict[str, Any]:
    """The sampled keys of a plan as a Tune search space, keyed by dotted key:
    ``tune.choice`` / ``tune.uniform`` / ``tune.loguniform`` / ``tune.randint`` (``randint`` is
    inclusive of ``hi`` here, as in the spec, so Tune's exclusive upper bound is ``hi + 1``)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, values in sampled.items():
        kind = values.kind()
        if kind == "choice":
            space[key] = tune.choice(copy.deepcopy(values.choice or []))
        elif kind == "randint":
            lo, hi = values.randint  # type: ignore[misc]
            space[key] = tune.randint(int(lo), int(hi) + 1)
        else:
            lo, hi = getattr(values, kind)
            space[key] = getattr(tune, kind)(float(lo), float(hi))
    return space


class ProposedTrials(Searcher):
    """A user's searcher that proposes ``{dotted key: value}``; every proposal becomes the full
    param dict of a trial (``SweepPlan.trial``: base config <- the values, validated).

    The inner searcher is told the plan's metric, mode and sampled keys as a Tune search space
    (``set_search_properties``) once, here; results and completions are passed on unchanged.
    A proposal the schema refuses raises ``ablate.spec.SpecError`` naming the searcher.
    """

    def __init__(self, searcher: Searcher, plan: SweepPlan) -> None:
        super().__init__(metric=plan.metric, mode=plan.mode)
        self._inner = searcher
        self._plan = plan
        # Searcher's own default answers False; a searcher built with its space keeps it.
        searcher.set_search_properties(plan.metric, plan.mode, tune_space(plan.sampled))

    @property
    def inner(self) -> Searcher:
        """The user's searcher."""
        return self._inner

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # metric, mode and the space all come from the spec

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        proposed = self._inner.suggest(trial_id)
        if not isinstance(proposed, dict):
            return proposed  # None (wait) or Searcher.FINISHED
        from ablate.spec import SpecError

        unknown = sorted(set(proposed) - set(self._plan.sampled))
        if unknown:
            raise SpecError(
                self._plan.source,
                "algorithm.name",
                f"{self._plan.spec.algorithm.name} proposed {', '.join(unknown)}, which `space` "
                f"does not sample; it may propose: {', '.join(self._plan.sampled)}",
            )
        return self._plan.trial(proposed).param()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._inner.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
