"""A sweep's rounds: extending a sweep that ran, and racing its configurations.

A sweep runs in rounds, each one Ray Tune experiment. Round 0 is the sweep's own experiment
(``<storage>/<sweep>/``, its trials listed in ``plan.json``); round k >= 1 lives in
``<storage>/<sweep>/round-k/`` beside it, and its ``plan.json`` lists every trial of the sweep
once that round is added (the earlier rounds' and its own); ``spec.yaml`` there is the spec it
was planned from. Nothing already written is overwritten: each round's plan is a new file.
Every round's trials share the sweep's Train storage (``train/<trial_id>``), its MLflow parent
run and its summary, which ranks the trials of all rounds.

Why a new experiment per round rather than more trials in the restored one: Ray Tune 2.60's
``Tuner.restore`` takes no ``TuneConfig``, so the saved Tuner keeps its ``num_samples`` and its
searcher's saved state (``search_gen_state-*.json``: the samples handed out, finished): a
restored experiment cannot be handed more trials through the public API. Each round's
experiment restores on its own (``--resume`` restores every saved round, then adds the next).

Two things add rounds:

* **Extending** (``check_resume``): ``--resume`` with a spec that plans more trials than the
  sweep ran (more ``replicates``, more grid values) runs only the planned trials no round has
  (matched by their varying values and replicate, ``PlannedTrial.key``). A spec that would
  change a trial already run (another ``train.epochs``, learning rate, ...) or no longer
  plans one is refused, naming the changed keys.
* **Racing** (``replicates: {min, max}``; ``next_race_round``): every configuration runs
  ``min`` seeds; after each round, one more seed (replicate r runs ``train.seed`` + r) goes to
  each configuration whose comparison with the best is still undecided by the report's own
  rule (``ablate.stats.versus_best``: paired t by seed, Holm over the configurations, level
  ``stats.ALPHA``), until none is or they reach ``max``. This is irace's iterated racing
  (López-Ibáñez et al. 2016, "The irace package", Operations Research Perspectives 3),
  which adds instances only to the surviving configurations; here the test is the report's,
  so a race stops where the report would call the verdicts.

Pure: reads ``plan.json`` files (``ablate.preflight.read_text``: local or URI), imports no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ablate import stats
from ablate.spec import SpecError, SweepPlan
from ablate.trialrecord import PlannedTrial, planned_key
from ablate.vocabulary import format_value

#: A later round's directory name in the sweep's directory: ``round-<k>``.
ROUND_PREFIX = "round-"
PLAN_FILE = "plan.json"


def round_name(index: int) -> str | None:
    """The Tune experiment name of round ``index`` under the sweep's directory (None for round
    0, which is the sweep's own experiment)."""
    return None if index == 0 else f"{ROUND_PREFIX}{index}"


def round_dir(experiment_dir: str, index: int) -> str:
    """Round ``index``'s Tune experiment directory."""
    name = round_name(index)
    return experiment_dir if name is None else f"{experiment_dir.rstrip('/')}/{name}"


@dataclass(frozen=True)
class Round:
    """One saved round: its ``index``, Tune ``experiment_dir``, ``plan`` (its parsed
    ``plan.json``: every trial of the sweep up to this round) and ``own`` (the keys of the
    trials this round ran, ``PlannedTrial.key``, in its plan's order)."""

    index: int
    experiment_dir: str
    plan: dict[str, Any]
    own: tuple[str, ...]


def saved_rounds(experiment_dir: str) -> list[Round]:
    """The rounds saved in ``experiment_dir``: round 0 (its ``plan.json``) and each
    ``round-k/plan.json`` after it, k = 1, 2, ... while they exist; [] without a ``plan.json``.

    Raises ``SpecError`` naming a ``plan.json`` that is not JSON (e.g. cut short)."""
    from ablate.preflight import read_text

    rounds: list[Round] = []
    seen: set[str] = set()
    while True:
        directory = round_dir(experiment_dir, len(rounds))
        path = f"{directory}/{PLAN_FILE}"
        try:
            text = read_text(path)
            plan = None if text is None else json.loads(text)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise SpecError(
                path,
                "",
                f"is damaged ({error}), so --resume cannot check that the spec still plans the "
                f"trials this sweep ran (its spec is {directory}/spec.yaml). Restore {path} "
                "from a backup and pass --resume again, or run the sweep anew under another "
                "name (--set name=<new name>, without --resume)",
            ) from None
        if plan is None:
            return rounds
        keys = [_param_key(p) for p in plan.get("trials") or []]
        own = tuple(k for k in keys if k not in seen)
        seen.update(keys)
        rounds.append(Round(len(rounds), directory, plan, own))


def _param_key(param: Mapping[str, Any]) -> str:
    return planned_key(param.get("varying") or {}, int(param.get("replicate") or 0))


@dataclass(frozen=True)
class Resume:
    """What ``--resume`` continues: the saved ``rounds``, the trials they hold as the spec
    plans them (``saved``, in their order) and ``new``, the trials the spec plans that no
    round has (an extension; [] for a plain resume)."""

    rounds: list[Round]
    saved: list[PlannedTrial]
    new: list[PlannedTrial]

    def own_trials(self, index: int) -> list[PlannedTrial]:
        """The trials round ``index`` runs."""
        own = set(self.rounds[index].own)
        return [t for t in self.saved if t.key() in own]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf where two nested dicts differ (a missing leaf
    is None)."""
    a, b = _flat(dict(old)), _flat(dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(plan: SweepPlan, rounds: Sequence[Round]) -> Resume:
    """Match the spec's ``plan`` against the ``rounds`` of the sweep it resumes.

    Every trial the rounds ran must be one the spec plans (its configuration, and a replicate
    below ``replicates`` / ``replicates.max``) with the same config; the spec's other planned
    trials are ``Resume.new``. Searchers that propose trials (optuna, a plugin) resume their
    original plan only. Raises ``SpecError`` naming the changed keys (old -> new) or the trials
    the spec no longer plans, and how to go on.
    """
    latest = rounds[-1].plan
    where = rounds[-1].experiment_dir
    ours = json.loads(plan.plan_json())
    changed = {
        f"{section}.{key}": values
        for section in ("algorithm", "scheduler")
        for key, values in changed_keys(latest.get(section) or {}, ours[section]).items()
        # Concurrency is how the sweep runs, not what it computes.
        if f"{section}.{key}" != "algorithm.max_concurrent_trials"
    }
    if plan.proposes:
        # Named as the spec's keys: plan.json's base.train.epochs is train.epochs, its sampled
        # keys are the spec's space keys.
        renamed = {"base.": "", "sampled.": "space."}
        changed = {
            next(
                (new + key[len(old) :] for old, new in renamed.items() if key.startswith(old)), key
            ): values
            for key, values in changed_keys(latest, ours).items()
        }
        if changed:
            # Tune restores the searcher as it was saved, its concurrency limit included.
            _refuse(
                plan,
                where,
                changed,
                {},
                how=f"--resume continues a sweep searched by {plan.spec.algorithm.name} exactly "
                "as it was planned (the searcher is restored as saved, its "
                "algorithm.max_concurrent_trials included): restore those values, or run the "
                "changed spec under a new name (--set name=...)",
            )
        return Resume(list(rounds), [], [])
    configurations = {planned_key(v, 0): v for v in plan.configurations()}
    planned = {t.key(): t for t in plan.trials}
    saved: list[PlannedTrial] = []
    removed: list[str] = []
    removed_key = ""
    changed_trials: dict[str, int] = {}
    for param in (p for r in rounds for p in r.plan.get("trials") or []):
        replicate = int(param.get("replicate") or 0)
        varying = configurations.get(planned_key(param.get("varying") or {}, 0))
        if varying is None or replicate >= plan.spec.max_replicates:
            removed.append(_describe_trial(param.get("varying") or {}, replicate))
            removed_key = "space" if varying is None or removed_key == "space" else "replicates"
            continue
        trial = planned.get(planned_key(varying, replicate)) or plan.trial(varying, replicate)
        for key, values in changed_keys(param.get("config") or {}, trial.param()["config"]).items():
            changed.setdefault(key, values)
            changed_trials[key] = changed_trials.get(key, 0) + 1
        saved.append(trial)
    if changed or removed:
        _refuse(plan, where, changed, changed_trials, removed, removed_key)
    # The plan.json of every round lists the earlier rounds' trials too: keep one of each.
    saved = list({t.key(): t for t in saved}.values())
    have = {t.key() for t in saved}
    return Resume(list(rounds), saved, [t for t in plan.trials if t.key() not in have])


def _describe_trial(varying: Mapping[str, Any], replicate: int) -> str:
    values = ", ".join(f"{k}={format_value(v)}" for k, v in varying.items()) or "the base"
    return f"{values} (replicate {replicate})"


def _refuse(
    plan: SweepPlan,
    where: str,
    changed: Mapping[str, tuple[Any, Any]],
    counts: Mapping[str, int],
    removed: Sequence[str] = (),
    removed_key: str = "space",
    how: str = "--resume continues a sweep and can add trials (more replicates, more grid "
    "values) but cannot change or drop the ones it ran: restore those values, or run the "
    "changed spec under a new name (--set name=...)",
) -> None:
    parts = []
    if changed:
        shown = "; ".join(
            f"{key}: {format_value(old)} -> {format_value(new)}"
            + (f" ({counts[key]} trial(s))" if key in counts else "")
            for key, (old, new) in list(changed.items())[:8]
        )
        parts.append(f"the spec's trials differ from those this sweep already ran: {shown}")
    if removed:
        more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
        parts.append(
            f"the spec no longer plans {len(removed)} trial(s) it ran: "
            f"{'; '.join(removed[:3])}{more}"
        )
    first = next(iter(changed), removed_key if removed else "name")
    raise SpecError(
        plan.source,
        first,
        f"{' and '.join(parts)} ({where}). {how}",
    )


# ----------------------------------------------------------------------------- racing


@dataclass(frozen=True)
class RaceState:
    """The racing rule applied to a sweep's results: ``best`` (the best configuration's key,
    None without a comparable value), ``worse`` (configurations distinguished from the best:
    Holm-adjusted paired p < ``stats.ALPHA``), ``undecided`` (the others, the best among them
    while any other is undecided) and ``seeds`` (configuration key -> replicates planned)."""

    best: str | None
    worse: frozenset[str]
    undecided: frozenset[str]
    seeds: dict[str, int]


def race_state(
    plan: SweepPlan, trials: Sequence[PlannedTrial], records: Sequence[Mapping[str, Any]]
) -> RaceState:
    """Where the race stands after ``records`` (``TrialRecord``s or ``summary.json`` entries)
    of the ``trials`` planned so far: each configuration's completed replicates, paired by
    seed, against the best (``stats.samples_by_config``, ``stats.versus_best``)."""
    seeds: dict[str, int] = {}
    for trial in trials:
        key = planned_key(trial.varying, 0)
        seeds[key] = max(seeds.get(key, 0), trial.replicate + 1)
    rows = [
        {
            "configuration": planned_key(r["varying"], 0),
            "seed": r["seed"],
            "status": r["status"],
            plan.metric: (r["metrics"] or {}).get(plan.metric),
        }
        for r in records
    ]
    table = {
        c[0]: v
        for c, v in stats.samples_by_config(rows, ["configuration"], plan.metric).items()
        if v
    }
    if not table:
        return RaceState(None, frozenset(), frozenset(), seeds)
    family = stats.versus_best(table, plan.mode)
    worse = frozenset(
        k for k, c in family.comparisons.items() if c.testable and c.p_reported < family.alpha
    )
    undecided = frozenset(k for k in table if k not in worse and k != family.best)
    if undecided:
        undecided |= {family.best}
    return RaceState(str(family.best), worse, frozenset(undecided), seeds)


def next_race_round(
    plan: SweepPlan, trials: Sequence[PlannedTrial], records: Sequence[Mapping[str, Any]]
) -> list[PlannedTrial]:
    """The next racing round: one more replicate of each undecided configuration
    (``race_state``) that has fewer than ``replicates.max``; [] when the race is over (or the
    spec does not race)."""
    racing = plan.spec.racing
    if racing is None:
        return []
    state = race_state(plan, trials, records)
    by_key = {planned_key(v, 0): v for v in plan.configurations()}
    return [
        plan.trial(by_key[key], state.seeds[key])
        for key in by_key
        if key in state.undecided and state.seeds.get(key, 0) < racing.max
    ]


def unfinished(records: Sequence[Mapping[str, Any]], trials: Sequence[PlannedTrial]) -> int:
    """Planned ``trials`` without a record, plus records that were interrupted: a race (or an
    extension) goes on only when this is 0."""
    keys = {planned_key(r["varying"], r["replicate"]) for r in records}
    missing = sum(t.key() not in keys for t in trials)
    return missing + sum(r["status"] == "interrupted" for r in records)
