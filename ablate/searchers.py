"""The searchers and schedulers a sweep can name: ``algorithm.name`` and ``scheduler.name``.

``SEARCHERS`` and ``SCHEDULERS`` are the two ``ablate.registry.Registry`` of this axis. Each entry
is a factory that builds the Ray Tune object from the spec: ``factory(section, plan)``, where
``section`` is the spec's ``algorithm`` (an ``ablate.spec.AlgorithmSpec``) or ``scheduler``
(``ablate.spec.SchedulerSpec``) and ``plan`` the ``ablate.spec.SweepPlan`` (``plan.metric``,
``plan.mode``, ``plan.trials``, ``plan.sampled``, ``plan.spec``). The spec validates both
names against them (did-you-mean, the valid names listed); ``build_searcher`` and
``build_scheduler`` make the objects ``ablate.sweep`` hands ``tune.TuneConfig``.

Built-ins: searchers ``grid`` and ``random`` hand Tune the plan's precomputed trials
(``ablate.tunesearch.PlannedTrials``); ``optuna`` proposes configurations from ``space`` with
Optuna's TPE sampler (``ablate.tunesearch.OptunaTrials``). Schedulers ``fifo`` (every trial
runs all its epochs) and ``asha`` (``ablate.scheduling.ReplicateASHA``, with the spec's rung
settings).

A user's own, named ``module.path:factory`` (imported from the directory the sweep is
launched in, or installed; only the driver runs searchers and schedulers):

* searcher: ``factory(section, plan)`` returns a ``ray.tune.search.Searcher`` that *proposes*
  configurations, as ``optuna`` does: the spec's ``space`` holds ``choice`` / ``uniform`` /
  ``loguniform`` / ``randint`` entries (no ``grid``, ``op_pairs`` or ``together``;
  ``replicates: 1``) and ``algorithm.num_samples`` trials run. Its ``suggest(trial_id)``
  returns ``{dotted key: value}`` (or None to wait, or ``Searcher.FINISHED``); the sweep makes
  each suggestion a full trial (base config <- the values, validated) and passes results on
  (``ablate.tunesearch.ProposedTrials``). Before the first suggestion it is told the metric,
  the mode and the sampled keys as a Tune search space (``set_search_properties``), so Tune's
  own searchers (e.g. ``HyperOptSearch()``) need no space of their own.
* scheduler: ``factory(section, plan)`` returns a ``ray.tune.schedulers.TrialScheduler``; it
  may stop trials early (their outcome is then ``stopped``) and Tune actors are not reused.

A plugin's factory must be callable (checked when the spec is loaded) and return the right
kind of object (checked at preflight, ``ablate.preflight.check_components``); either failure
is a ``SpecError`` at ``algorithm.name`` / ``scheduler.name`` (exit status 2).

This module imports no Ray: the built-ins import their Tune classes when built.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ablate.registry import Entry, Registry

if TYPE_CHECKING:
    from ablate.spec import SweepPlan

#: ``factory(section, plan) -> ray.tune.search.Searcher``.
SearcherFactory = Callable[[Any, "SweepPlan"], Any]
#: ``factory(section, plan) -> ray.tune.schedulers.TrialScheduler``.
SchedulerFactory = Callable[[Any, "SweepPlan"], Any]


class ComponentTypeError(TypeError):
    """A factory returned something else than the Tune object its key needs."""


def _callable_plugin(**meta: Any) -> Callable[[str, Any], Entry[Any]]:
    def check(name: str, component: Any) -> Entry[Any]:
        if not callable(component):
            raise TypeError(
                f"{name} is a {type(component).__name__}, not a factory: give a callable "
                "taking (section, plan)"
            )
        doc = (getattr(component, "__doc__", None) or "").strip().splitlines()
        return Entry(name, component, doc[0] if doc else "", dict(meta), plugin=True)

    return check


#: ``algorithm.name``. Meta: ``expands`` is how the plan enumerates trials (``"grid"``,
#: ``"random"``) or None for a searcher that proposes them at run time from ``space``;
#: ``proposer`` names who proposes, for ``--dry-run``.
SEARCHERS: Registry[SearcherFactory] = Registry(
    "searcher", "algorithm.name", check=_callable_plugin(expands=None, proposer=None)
)

#: ``scheduler.name``. Meta: ``early_stopping`` (it may stop trials before their last epoch),
#: ``by_configuration`` (it judges a configuration's replicates together, so they are run next
#: to each other), ``rungs`` (it compares trials at ``grace_period`` and later rungs).
SCHEDULERS: Registry[SchedulerFactory] = Registry(
    "scheduler",
    "scheduler.name",
    check=_callable_plugin(early_stopping=True, by_configuration=False, rungs=False),
)


# ----------------------------------------------------------------------------- searchers


def planned(section: Any, plan: SweepPlan) -> Any:
    """Hand Tune the plan's trials in order (``ablate.tunesearch.PlannedTrials``)."""
    from ablate.tunesearch import PlannedTrials

    return PlannedTrials([trial.param() for trial in plan.trials], plan.metric, plan.mode)


SEARCHERS.add(
    "grid",
    planned,
    "every combination of `grid`/`choice`/`op_pairs`/`together`",
    expands="grid",
    proposer=None,
)
SEARCHERS.add(
    "random",
    planned,
    "`num_samples` draws of the distributions, each crossed with the grid",
    expands="random",
    proposer=None,
)


@SEARCHERS.register(
    "optuna",
    "`num_samples` trials proposed by Optuna's TPE sampler (distributions and `choice` only)",
    expands=None,
    proposer="Optuna (TPE)",
)
def optuna(section: Any, plan: SweepPlan) -> Any:
    """Optuna's TPE proposes the sampled keys (``ablate.tunesearch.OptunaTrials``)."""
    from ablate.tunesearch import OptunaTrials

    return OptunaTrials(plan)


# ----------------------------------------------------------------------------- schedulers


@SCHEDULERS.register(
    "fifo",
    "every trial runs all its epochs",
    early_stopping=False,
    by_configuration=False,
    rungs=False,
)
def fifo(section: Any, plan: SweepPlan) -> Any:
    """Ray Tune's ``FIFOScheduler``: no early stopping."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SCHEDULERS.register(
    "asha",
    "asynchronous successive halving on configurations (`ablate.scheduling.ReplicateASHA`): "
    "with `replicates > 1` a configuration's seeds are judged together, continued or stopped "
    "together on their mean at each rung (a seed that reaches a rung first runs on until its "
    "siblings do), so no configuration is kept or dropped on one lucky seed; its replicates "
    "are then run next to each other (configuration-major order), and "
    "`algorithm.max_concurrent_trials` should be at least `replicates`. With one replicate it "
    "decides as Ray's ASHA",
    early_stopping=True,
    by_configuration=True,
    rungs=True,
)
def asha(section: Any, plan: SweepPlan) -> Any:
    """``ReplicateASHA`` over ``epoch``: rungs from ``grace_period`` by ``reduction_factor`` up
    to ``max_t`` (default: the plan's largest ``train.epochs``)."""
    from ablate.scheduling import ReplicateASHA

    return ReplicateASHA(
        time_attr="epoch",
        max_t=section.max_t or plan.max_epochs(),
        grace_period=section.grace_period,
        reduction_factor=section.reduction_factor,
        # The replicates of a configuration among this plan's trials: a later round of an
        # extended sweep (ablate.rounds) runs only the new seeds, and judges those together.
        replicates=max(Counter(_configuration(t.varying) for t in plan.trials).values(), default=1),
    )


def _configuration(varying: dict[str, Any]) -> str:
    return json.dumps(varying, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- building


def names_text(registry: Registry[Any]) -> str:
    """``name: description`` of each registered entry, for the schema's field docs."""
    return "; ".join(f"{e.name}: {e.description}" for e in registry) + "."


def build_searcher(plan: SweepPlan) -> Any:
    """The Tune ``Searcher`` of ``plan`` (``search_alg``): the factory of ``algorithm.name``
    called with ``(plan.spec.algorithm, plan)``; a plugin's searcher is wrapped in
    ``ProposedTrials``. Raises ``ComponentTypeError`` when the factory returns something else
    than a ``Searcher``; whatever the factory raises passes through."""
    from ray.tune.search import Searcher

    entry = SEARCHERS.get(plan.spec.algorithm.name)
    searcher = entry.component(plan.spec.algorithm, plan)
    if not isinstance(searcher, Searcher):
        raise ComponentTypeError(
            f"the factory returned a {type(searcher).__name__}, not a ray.tune.search.Searcher"
        )
    if entry.plugin:
        from ablate.tunesearch import ProposedTrials

        return ProposedTrials(searcher, plan)
    return searcher


def build_scheduler(plan: SweepPlan) -> Any:
    """The Tune ``TrialScheduler`` of ``plan``: the factory of ``scheduler.name`` called with
    ``(plan.spec.scheduler, plan)``. Raises ``ComponentTypeError`` when the factory returns
    something else than a ``TrialScheduler``; whatever the factory raises passes through."""
    from ray.tune.schedulers import TrialScheduler

    entry = SCHEDULERS.get(plan.spec.scheduler.name)
    scheduler = entry.component(plan.spec.scheduler, plan)
    if not isinstance(scheduler, TrialScheduler):
        raise ComponentTypeError(
            f"the factory returned a {type(scheduler).__name__}, not a "
            "ray.tune.schedulers.TrialScheduler"
        )
    return scheduler
