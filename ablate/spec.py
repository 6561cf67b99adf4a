"""The sweep spec: one YAML file that fully defines an ablation, validated before anything runs.

A spec names the sweep, gives a partial trial config (the sections of
``ablate.config.TrialConfig``: ``data``, ``model``, ``augment``, ``loss``, ``optim``, ``train``,
``eval``, ``resources``) and says what varies: ``space`` (dotted key -> values), ``together``
(keys that vary jointly) and ``replicates`` (seeds); ``report`` names its own report figures
and findings (``ReportSpec``). ``load_sweep`` reads the file, applies
``--set`` overrides, expands every configuration, validates each one against the trial schema
and returns a ``SweepPlan``: the resolved plan that ``ablate.sweep`` runs. Every problem raises
``SpecError(file, dotted key, message)``.

This module holds the schema (``SweepSpec``) and the plan only: it reads no data and imports
no Ray. Checks of the world outside the file (storage, data, tracking, cluster) are
``ablate.preflight``'s; the ``--dry-run`` view is ``ablate.dryrun``'s; ``ablate.reference``
writes ``docs/search_space.md`` from the models below, so the reference cannot drift.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import to_jsonable_python

from ablate.config import (
    AUGMENTATION_PRESETS,
    MAX_EPOCHS,
    MAX_SEED,
    TrialConfig,
    TypedModel,
    set_dotted,
)
from ablate.ops import OPS
from ablate.recipes import RECIPE_NAMES, UnknownRecipe, get_recipe
from ablate.recipes import merge as merge_sections
from ablate.registry import is_plugin_name
from ablate.searchers import SCHEDULERS, SEARCHERS, names_text
from ablate.trialrecord import PlannedTrial, planned_key
from ablate.vocabulary import DEFAULT_RANKING_METRIC, OPS_KEY, RANKING_METRICS, format_value

#: The trial-config sections a spec may set at its top level (the base configuration).
CONFIG_SECTIONS: tuple[str, ...] = tuple(TrialConfig.model_fields)

PARAM_KINDS: tuple[str, ...] = ("grid", "choice", "uniform", "loguniform", "randint", "op_pairs")
_ENUMERATED = ("grid", "op_pairs")
_SAMPLED = ("uniform", "loguniform", "randint")

#: Trials one sweep may plan (configurations x replicates; optuna: num_samples). Every trial is
#: expanded and validated before Ray starts (about 1 ms each) and tracked as a Tune trial and an
#: MLflow run: split a larger study into several sweeps.
MAX_TRIALS = 10_000
#: Seeds per configuration; a mean over more than this many seeds gains nothing measurable.
MAX_REPLICATES = 100
#: A spec file's size: specs are written by hand (the shipped ones are under 4 KB), and
#: PyYAML's pure-Python parser takes seconds a megabyte.
MAX_SPEC_BYTES = 1 << 20


class SpecError(ValueError):
    """A spec problem a person can fix: which file, which dotted key, what was expected."""

    def __init__(self, file: str | os.PathLike[str], key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


# ----------------------------------------------------------------------------- YAML schema


class _SpecModel(TypedModel):
    model_config = ConfigDict(extra="forbid")


class ParamValues(_SpecModel):
    """The values of one swept key: exactly one of the fields below."""

    grid: list[Any] | None = Field(
        None, description="Every value, in order; crossed with the other keys of `space`."
    )
    choice: list[Any] | None = Field(
        None,
        description="Categorical: `random` draws one value per trial, `optuna` suggests one, "
        "`grid` enumerates them like `grid`.",
    )
    uniform: tuple[float, float] | None = Field(
        None, description="`[lo, hi]`, drawn uniformly (algorithms `random` and `optuna`)."
    )
    loguniform: tuple[float, float] | None = Field(
        None,
        description="`[lo, hi]` with 0 < lo, drawn uniformly in log space (`random`, `optuna`): "
        "learning rates, temperatures, weight decays.",
    )
    randint: tuple[int, int] | None = Field(
        None,
        description="`[lo, hi]`, an integer drawn from lo to hi inclusive (`random`, `optuna`).",
    )
    op_pairs: list[str] | None = Field(
        None,
        description="Augmentation names -> every single op, then every ordered pair of two "
        "different ops: n + n(n-1) op lists (the 7x7 matrix of the paper's Figure 5 is 49). "
        "For `augment.ops` / `augment.base`.",
    )

    def kind(self) -> str:
        return next(k for k in PARAM_KINDS if getattr(self, k) is not None)


class AlgorithmSpec(_SpecModel):
    """How configurations are chosen."""

    name: str = Field(
        "grid",
        description=names_text(SEARCHERS)
        + " Or `module.path:factory`, your own: called with (this section, the plan), it returns "
        "a Tune `Searcher` that proposes `num_samples` trials from the distributions and "
        "`choice` of `space` (`ablate.searchers`).",
    )
    num_samples: int = Field(
        1,
        ge=1,
        le=MAX_TRIALS,
        description="random and optuna: how many configurations to draw (grid: keep 1), at "
        f"most {MAX_TRIALS:,}.",
    )
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        le=MAX_TRIALS,
        description="Upper bound on trials running at once; the sweep also caps it by what the "
        "cluster's CPUs/GPUs can hold (workers x per-worker resources of one trial).",
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the random draws and of Optuna's sampler (0 to 2**32 - 1).",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        try:
            return SEARCHERS.validate(value)
        except TypeError as error:  # a plugin that is no factory: pydantic reports ValueErrors
            raise ValueError(str(error)) from None


class SchedulerSpec(_SpecModel):
    """Early stopping (ASHA) or none (fifo). Also names the ranking metric of the summary."""

    name: str = Field(
        "fifo",
        description=names_text(SCHEDULERS)
        + " Or `module.path:factory`, your own: called with (this section, the plan), it returns "
        "a Tune `TrialScheduler` (`ablate.searchers`).",
    )
    metric: str = Field(
        DEFAULT_RANKING_METRIC,
        description=f"Ranking metric, reported every epoch: one of {', '.join(RANKING_METRICS)}.",
    )
    mode: Literal["max", "min"] = Field("max", description="max for accuracies.")
    grace_period: int = Field(
        1,
        ge=1,
        le=MAX_EPOCHS,
        description="asha: epochs before a configuration can be stopped (first rung).",
    )
    reduction_factor: float = Field(
        2.0,
        gt=1.0,
        description="asha: keep the best 1/reduction_factor of configurations at each rung "
        "(ranked by the mean of their replicates).",
    )
    max_t: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="asha: last rung, in epochs; default: the largest `train.epochs`.",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        try:
            return SCHEDULERS.validate(value)
        except TypeError as error:  # a plugin that is no factory: pydantic reports ValueErrors
            raise ValueError(str(error)) from None

    @field_validator("metric")
    @classmethod
    def _rankable(cls, value: str) -> str:
        if value.startswith("test/"):
            raise ValueError(
                f"{value!r} is a test-split metric; ranking on it selects on the test set. "
                f"Use a validation metric: {', '.join(RANKING_METRICS)}"
            )
        if value == "train/loss":
            raise ValueError(
                "the contrastive loss is not comparable across temperatures, heads or batch "
                f"sizes; rank by {', '.join(RANKING_METRICS)}"
            )
        if value not in RANKING_METRICS:
            raise ValueError(
                f"{value!r} is not a per-epoch ranking metric; valid: {', '.join(RANKING_METRICS)}"
            )
        return value


class TrackingSpec(_SpecModel):
    """MLflow tracking from the sweep driver (``ablate.tracking``)."""

    enabled: bool = Field(True, description="Log the sweep and every trial to MLflow.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else a SQLite file "
        "`mlflow.db` in `storage.path`.",
    )
    experiment: str | None = Field(
        None,
        description="MLflow experiment; default: the sweep name. Any name MLflow accepts (quotes, "
        "backslashes, unicode; at most 500 characters).",
    )

    @field_validator("experiment")
    @classmethod
    def _mlflow_accepts(cls, value: str | None) -> str | None:
        """MLflow's own rule (``mlflow.utils.validation._validate_experiment_name``), checked
        here so that a name it refuses stops the sweep before anything starts."""
        if value is None:
            return value
        # Imported only when a name is given: importing mlflow takes seconds.
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import _validate_experiment_name

        try:
            _validate_experiment_name(value)
        except MlflowException as error:
            raise ValueError(f"MLflow refuses this experiment name: {error.message}") from None
        return value


class StorageSpec(_SpecModel):
    """Where Tune and Train write results and checkpoints."""

    path: str = Field(
        "./ablate_runs",
        description="Local directory (made absolute against the current directory when the "
        "spec is loaded), a shared filesystem path every node sees, or a URI such as "
        "`s3://bucket/prefix`. The sweep writes to `<path>/<name>/`.",
    )


class RacingSpec(_SpecModel):
    """``replicates: {min: 2, max: 8}``: race the configurations (``ablate.rounds``)."""

    min: int = Field(
        2,
        ge=2,
        le=MAX_REPLICATES,
        description="Seeds every configuration runs first; at least 2, the fewest a paired "
        "comparison can test.",
    )
    max: int = Field(
        ...,
        ge=2,
        le=MAX_REPLICATES,
        description="Seeds a configuration may reach: after each round one more seed goes to "
        "every configuration the comparison with the best leaves undecided, until none is or "
        "they have `max`.",
    )


class ReportSpec(_SpecModel):
    """The sweep's own report figures and findings (``ablate.report``), beside the paper's."""

    figures: list[str] = Field(
        default_factory=list,
        description="Figures the report draws besides the registered ones (each of those is "
        "drawn whenever the sweep varies what it shows: `ablate/report/figures.py`). "
        "`module.path:factory`, your own: a function `(results: ablate.report.SweepResults, "
        "metric: str) -> matplotlib.figure.Figure | None` drawn once per report as "
        "`report/figures/<module_path_factory>.png` and `.svg`, or an "
        "`ablate.report.FigureKind`. Rebuild with more: `python -m entrypoints.report "
        "--figure NAME`.",
    )
    findings: list[str] = Field(
        default_factory=list,
        description="Findings `summary.md` checks after the paper's (`ablate/report/findings.py`"
        "). `module.path:factory`, your own: a function `(rows, varying_keys, metric, mode) -> "
        "ablate.report.Finding`. Each name is checked when the spec is read (a registered one "
        "must exist) and each plugin imported at preflight (exit status 2 at "
        "`report.findings[i]`); the sweep's parent MLflow run records both lists, so that "
        "`python -m entrypoints.report` rebuilds the same report (`--finding NAME` adds one).",
    )


class SweepSpec(_SpecModel):
    """The top level of a spec file (plus the trial-config sections, documented below)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        # A directory name (255 bytes on common filesystems) and the default MLflow experiment
        # (at most 500 characters).
        max_length=255,
        description="Sweep name: letters, digits, `_`, `.`, `-` (at most 255). Results go to "
        "`<storage.path>/<name>/`; an existing directory needs `--resume`.",
    )
    description: str = Field("", description="Free text: what the sweep asks.")
    recipe: str | None = Field(
        None,
        description="A named base configuration (`ablate/recipes.py`): "
        f"{', '.join(RECIPE_NAMES)}. The base config is the schema's defaults <- the recipe "
        "<- this file's sections <- `--set`.",
    )
    space: dict[str, ParamValues] = Field(
        default_factory=dict,
        description="Dotted trial-config key -> values (one of the value kinds below). Keys "
        "are crossed in file order, the first varying slowest.",
    )
    together: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Configurations of keys that vary jointly, e.g. "
        "`[{train.batch_size: 256, train.epochs: 100}, ...]`; crossed with `space`. Entries may "
        "set different keys.",
    )
    replicates: Annotated[int, Field(ge=1, le=MAX_REPLICATES)] | RacingSpec = Field(
        1,
        description="Run every configuration with K seeds: `train.seed` = base seed + replicate "
        f"index, 1 <= K <= {MAX_REPLICATES}. The summary reports mean ± std over replicates. "
        f"A sweep plans at most {MAX_TRIALS:,} trials (configurations x replicates), checked "
        "before any configuration is expanded. Raising K (or adding grid values) and passing "
        "`--resume` runs only the new trials. `{min: 2, max: 8}` (2 <= min <= max <= "
        f"{MAX_REPLICATES}; min defaults to 2) races the configurations "
        "(irace's rule, López-Ibáñez et al. 2016): every one runs `min` seeds, then rounds add "
        "one seed to each configuration still undecided against the best (paired t, Holm, as "
        "the report decides) until none is or it has `max` (grid/random, scheduler fifo).",
    )
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @property
    def racing(self) -> RacingSpec | None:
        """The racing bounds (``replicates: {min, max}``), None for a fixed count."""
        return self.replicates if isinstance(self.replicates, RacingSpec) else None

    @property
    def min_replicates(self) -> int:
        """Seeds every configuration is planned with from the start."""
        racing = self.racing
        return racing.min if racing is not None else int(self.replicates)  # type: ignore[arg-type]

    @property
    def max_replicates(self) -> int:
        """Seeds a configuration may reach (racing: ``max``)."""
        racing = self.racing
        return racing.max if racing is not None else int(self.replicates)  # type: ignore[arg-type]


SPEC_KEYS: tuple[str, ...] = tuple(SweepSpec.model_fields)
TOP_LEVEL_KEYS: tuple[str, ...] = SPEC_KEYS + CONFIG_SECTIONS


# ----------------------------------------------------------------------------- the plan


@dataclass
class SweepPlan:
    """A validated spec: the base config, every trial and where results go.

    ``trials`` holds one ``ablate.trialrecord.PlannedTrial`` per trial (grid and random), in
    run order; with a searcher that proposes trials (optuna, a plugin) it is empty and
    ``sampled`` holds the distributions. ``base`` is the resolved base configuration as JSON
    (what every trial's values are merged into), ``base_config`` the same, validated.
    """

    source: str
    spec: SweepSpec
    base: dict[str, Any]
    base_config: TrialConfig
    trials: list[PlannedTrial]
    sampled: dict[str, ParamValues] = field(default_factory=dict)
    text: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def storage_path(self) -> str:
        return self.spec.storage.path

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def train_storage_path(self) -> str:
        """Ray Train runs live in ``<experiment_dir>/train/<trial_id>``."""
        return f"{self.experiment_dir}/train"

    @property
    def metric(self) -> str:
        return self.spec.scheduler.metric

    @property
    def mode(self) -> str:
        return self.spec.scheduler.mode

    @property
    def proposes(self) -> bool:
        """Whether the searcher proposes trials at run time (optuna, a plugin) rather than
        handing out the planned ``trials`` (``ablate.searchers``)."""
        return SEARCHERS.get(self.spec.algorithm.name).meta["expands"] is None

    @property
    def early_stopping(self) -> bool:
        """Whether the scheduler may stop trials before their last epoch (asha, a plugin)."""
        return bool(SCHEDULERS.get(self.spec.scheduler.name).meta["early_stopping"])

    @property
    def num_trials(self) -> int:
        if self.proposes:
            return self.spec.algorithm.num_samples
        return len(self.trials)

    @property
    def varying_keys(self) -> list[str]:
        """Every key that varies across trials, in spec order (``train.seed`` last)."""
        keys = list(self.spec.space)
        for entry in self.spec.together:
            keys += [k for k in entry if k not in keys]
        return keys

    def configs(self) -> list[TrialConfig]:
        """The config of each planned trial (the base config when trials are proposed)."""
        return [t.config for t in self.trials] or [self.base_config]

    def max_epochs(self) -> int:
        epochs = [c.train.epochs for c in self.configs()]
        if "train.epochs" in self.sampled:
            pv = self.sampled["train.epochs"]
            epochs += [int(v) for v in (pv.randint or pv.choice or pv.uniform or [])]
        return max(epochs)

    def configurations(self) -> list[dict[str, Any]]:
        """The distinct varying values of the planned trials, in run order (one entry per
        configuration, whatever its replicates)."""
        seen: dict[str, dict[str, Any]] = {}
        for trial in self.trials:
            seen.setdefault(planned_key(trial.varying, 0), trial.varying)
        return list(seen.values())

    def with_trials(self, trials: Sequence[PlannedTrial]) -> SweepPlan:
        """This plan holding ``trials`` instead (an extended or raced sweep's trials so far,
        or one round's)."""
        return dataclasses.replace(self, trials=list(trials))

    def plan_json(self) -> str:
        """The planned trials as JSON (``plan.json`` of a sweep; ``--resume`` compares it)."""
        plan = {
            "sweep": self.name,
            "algorithm": self.spec.algorithm.model_dump(),
            "scheduler": self.spec.scheduler.model_dump(),
            "trials": [t.param() for t in self.trials],
            "sampled": {k: v.model_dump(exclude_none=True) for k, v in self.sampled.items()},
            "base": self.base if not self.trials else None,
        }
        return json.dumps(plan, indent=1, sort_keys=True)

    def trial(self, varying: dict[str, Any], replicate: int = 0) -> PlannedTrial:
        """One trial: base + ``varying`` + the replicate's seed, validated once. Raises
        ``SpecError`` (naming the configuration) when the schema refuses it."""
        return _planned_trial(self.base, varying, replicate, self.source, self.spec)


def _merged(base: dict[str, Any], varying: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(base)
    for key, value in varying.items():
        set_dotted(config, key, copy.deepcopy(value))
    return config


# ----------------------------------------------------------------------------- loading


def load_sweep(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepPlan:
    """Read, override, expand and validate the spec at ``path``.

    Raises ``SpecError`` for a file that cannot be read, is larger than ``MAX_SPEC_BYTES`` or
    is not UTF-8 text, and for every problem ``parse_sweep`` finds."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            # Read one byte past the limit, so that a huge file (or /dev/zero) is never read whole.
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError(source, "", f"cannot read the spec: {error.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            source,
            "",
            f"the spec is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec lists values, not "
            "data: sweep fewer values, or split it into several sweeps",
        )
    try:
        # Universal newlines, as text-mode reading gives.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as error:
        raise SpecError(
            source, "", f"not UTF-8 text (byte {error.start}): save the spec as UTF-8"
        ) from None
    return parse_sweep(text, source=source, overrides=overrides)


def parse_sweep(text: str, *, source: str = "<spec>", overrides: Sequence[str] = ()) -> SweepPlan:
    """``load_sweep`` for YAML text already in memory."""
    raw = _read_yaml(text, source)
    for override in overrides:
        _apply_override(raw, override, source)
    return build_sweep(raw, source=source, text=text, overrides=overrides)


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives one key twice. PyYAML keeps the last value and silently drops the
    first; a spec refuses it instead. ``key`` is the key as written, ``path`` its dotted path
    (``train.epochs``, ``together[0].model.head``); ``first`` and ``second`` are the marks
    (0-based line and column) of its two occurrences."""

    def __init__(self, key: str, path: str, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(
            context=f"the key {path!r} is given first",
            context_mark=first,
            problem="and again",
            problem_mark=second,
        )
        self.key = key
        self.path = path
        self.first = first
        self.second = second

    def where(self) -> str:
        """``lines 3 and 7``, or ``line 1, columns 2 and 15`` when both share a line."""
        a, b = self.first, self.second
        if a.line == b.line:
            return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
        return f"lines {a.line + 1} and {b.line + 1}"


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build Python objects) that also reads YAML 1.2
    floats: PyYAML follows YAML 1.1, where ``1e-1`` and ``1.0e3`` (no dot, or no exponent
    sign) are strings; here they are the floats a person means. A key given twice in one
    mapping, at any depth, raises ``DuplicateKeyError`` (PyYAML would keep the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node)
        return super().construct_document(node)

    def _check_unique_keys(self, root: yaml.Node) -> None:
        # Iterative, and each node once: aliases share nodes, and an anchor may be referenced
        # inside itself.
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
                continue
            if not isinstance(node, yaml.MappingNode):
                continue
            first_mark: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, by design
                    stack.append((value_node, path))
                    continue
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                dotted = f"{path}.{name}" if path else name
                stack.append((value_node, dotted))
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                # Compare keys as YAML reads them: `1` and `1.0`, `yes` and `true` are one key.
                key = self.construct_object(key_node)
                if key in first_mark:
                    raise DuplicateKeyError(name, dotted, first_mark[key], key_node.start_mark)
                first_mark[key] = key_node.start_mark


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with ``SpecLoader``: safe loading, YAML 1.2 floats."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = safe_load(text)
    except DuplicateKeyError as error:
        raise SpecError(source, error.path, _duplicate_message(error)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(source, "", f"malformed YAML at {where}{problem}") from None
    if raw is None:
        raise SpecError(source, "", "the spec is empty; it needs at least `name:`")
    if not isinstance(raw, dict):
        raise SpecError(
            source, "", f"expected a mapping of keys at the top, got {type(raw).__name__}"
        )
    return raw


def _duplicate_message(error: DuplicateKeyError) -> str:
    return (
        f"duplicate key {error.key!r} at {error.where()}: YAML would keep "
        "the second value and silently drop the first; give the key once"
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; values are YAML scalars, lists or
    mappings. Raises ``SpecError`` for text without ``=``, a value that is not YAML, or a
    mapping value that gives a key twice."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError("--set", text, "expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        parsed = safe_load(value) if value.strip() else None
    except DuplicateKeyError as error:
        raise SpecError(
            "--set", f"{key}.{error.path}", f"in the value: {_duplicate_message(error)}"
        ) from None
    except yaml.YAMLError as error:
        raise SpecError("--set", key, f"value {value!r} is not valid YAML: {error}") from None
    return key, parsed


def _apply_override(raw: dict[str, Any], text: str, source: str) -> None:
    key, value = parse_override(text)
    head, _, rest = key.partition(".")
    if head not in TOP_LEVEL_KEYS:
        message = _unknown_key(head, TOP_LEVEL_KEYS, "at the top level")
        raise SpecError(f"--set {key}", head, message)
    if head in ("space", "together") and rest:
        if head == "together":
            raise SpecError(f"--set {key}", key, "set `together` as a whole: --set together=[...]")
        if raw.get("space") is None:
            raw["space"] = {}
        space = raw["space"]
        if not isinstance(space, dict):
            raise SpecError(source, "space", "expected a mapping of dotted keys")
        space[rest] = value  # the rest is one dotted trial-config key
        return
    if not rest:
        raw[head] = value
        return
    try:
        set_dotted(raw, key, value)
    except (KeyError, AttributeError):
        raise SpecError(f"--set {key}", key, "a parent of this key is not a section") from None


def build_sweep(
    raw: dict[str, Any], *, source: str, text: str = "", overrides: Sequence[str] = ()
) -> SweepPlan:
    """Validate a parsed spec mapping and expand it into a ``SweepPlan``."""
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise SpecError(
                source, str(key), _unknown_key(str(key), TOP_LEVEL_KEYS, "at the top level")
            )

    base_raw = {k: raw[k] for k in CONFIG_SECTIONS if k in raw and raw[k] is not None}
    for section, value in base_raw.items():
        if not isinstance(value, dict):
            raise SpecError(
                source, section, f"expected a mapping (a config section), got {value!r}"
            )
    if raw.get("recipe") is not None:
        try:
            recipe = get_recipe(str(raw["recipe"]))
        except UnknownRecipe as error:
            raise SpecError(source, "recipe", str(error)) from None
        base_raw = merge_sections(recipe.overrides, base_raw)
    try:
        base_config = TrialConfig.model_validate(base_raw)
    except ValidationError as error:
        raise _schema_error(source, error, prefix="") from None
    base = base_config.model_dump(mode="json")

    spec_raw = {k: raw[k] for k in SPEC_KEYS if k in raw}
    if "name" not in spec_raw:
        raise SpecError(source, "name", "missing: every sweep needs a `name:`")
    if isinstance(spec_raw.get("space"), dict):
        for key, value in spec_raw["space"].items():
            if not isinstance(value, dict):
                raise SpecError(
                    source,
                    f"space.{key}",
                    f"expected one of {{{', '.join(f'{k}: ...' for k in PARAM_KINDS)}}}, "
                    f"got {value!r}",
                )
    try:
        spec = SweepSpec.model_validate(spec_raw)
    except ValidationError as error:
        raise _spec_model_error(source, error) from None

    spec.storage.path = absolute_storage_path(spec.storage.path)
    _check_report(spec, source)
    _check_overrides_not_swept(spec, overrides, source)
    _check_racing(spec, source)
    _check_plan_size(spec, source)
    sampled = _check_space(spec, base, source)
    expands = _expands(spec)
    if expands is None:
        _check_proposing(spec, source)
        trials: list[PlannedTrial] = []
        _validate_sampled_corners(spec, base, sampled, source)
    else:
        if expands == "grid" and spec.algorithm.num_samples != 1:
            raise SpecError(
                source,
                "algorithm.num_samples",
                "grid runs every configuration once; use `replicates: K` to repeat them",
            )
        if expands == "grid" and sampled:
            key = next(iter(sampled))
            raise SpecError(
                source,
                f"space.{key}",
                f"{sampled[key].kind()} needs `algorithm: {{name: random}}` or optuna; "
                "grid only enumerates `grid`, `choice` and `op_pairs`",
            )
        trials = _expand(spec, base, sampled, source)
    sweep = SweepPlan(
        source=source,
        spec=spec,
        base=base,
        base_config=base_config,
        trials=trials,
        sampled=sampled,
        text=text,
        overrides=tuple(overrides),
    )
    _check_scheduler(sweep, source)
    return sweep


def _expands(spec: SweepSpec) -> str | None:
    """How the plan enumerates trials (``"grid"``, ``"random"``), or None when the searcher
    proposes them at run time (``ablate.searchers.SEARCHERS``' ``expands``)."""
    return SEARCHERS.get(spec.algorithm.name).meta["expands"]


def absolute_storage_path(path: str) -> str:
    """Local paths become absolute (workers and resumed drivers see the same place); URIs stay."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _check_report(spec: SweepSpec, source: str) -> None:
    """Each name of ``report.figures`` / ``report.findings``: a registered figure or finding
    (did-you-mean otherwise) or spelled ``module.path:factory``, listed once. Raises
    ``SpecError`` at ``report.figures[i]``. A plugin is imported at preflight
    (``ablate.preflight.check_report``), not here: the report's modules (matplotlib, scipy)
    take seconds to import, so only a registered name listed here imports them. The report is
    built from the sweep's MLflow runs: names given with ``tracking.enabled: false`` are refused
    rather than never drawn."""
    for field_name in ("figures", "findings"):
        names = getattr(spec.report, field_name)
        if names and not spec.tracking.enabled:
            raise SpecError(
                source,
                f"report.{field_name}",
                "the report is built from the sweep's MLflow runs, and tracking.enabled is "
                "false: no report is written. Set tracking.enabled: true, or remove "
                f"report.{field_name}",
            )
        seen: set[str] = set()
        for index, name in enumerate(names):
            where = f"report.{field_name}[{index}]"
            if name in seen:
                raise SpecError(source, where, f"{name!r} is listed twice")
            seen.add(name)
            if is_plugin_name(name):
                continue
            from ablate.report import FIGURES, FINDINGS  # imported only for a registered name

            registry = FIGURES if field_name == "figures" else FINDINGS
            if name not in registry.names():
                raise SpecError(source, where, str(registry.unknown(name)))


def _check_racing(spec: SweepSpec, source: str) -> None:
    """``replicates: {min, max}``: min <= max, trials the plan enumerates (grid, random) and a
    scheduler that runs every trial to its end (a race compares final values)."""
    racing = spec.racing
    if racing is None:
        return
    if racing.min > racing.max:
        raise SpecError(
            source,
            "replicates.min",
            f"{racing.min} exceeds replicates.max={racing.max}; racing starts every "
            "configuration with min seeds and stops at max",
        )
    if _expands(spec) is None:
        raise SpecError(
            source,
            "replicates",
            f"racing adds seeds to planned configurations; {spec.algorithm.name} proposes its "
            "own: use algorithm grid or random",
        )
    if SCHEDULERS.get(spec.scheduler.name).meta["early_stopping"]:
        raise SpecError(
            source,
            "scheduler.name",
            f"racing compares configurations on their final {spec.scheduler.metric}; "
            f"{spec.scheduler.name} stops trials early: use scheduler fifo with racing, or a "
            "fixed `replicates: K`",
        )


def _check_overrides_not_swept(spec: SweepSpec, overrides: Sequence[str], source: str) -> None:
    swept = set(spec.space) | {k for entry in spec.together for k in entry}
    for text in overrides:
        key, _ = parse_override(text)
        if key in swept:
            raise SpecError(
                f"--set {key}",
                key,
                f"{key} is swept by the spec, so a base value would be ignored; override the "
                f"sweep instead, e.g. --set 'space.{key}={{grid: [...]}}'",
            )


def planned_trials(spec: SweepSpec) -> tuple[int, list[tuple[str, int]]]:
    """How many trials ``spec`` plans, counted without expanding anything, and its factors
    (``[("space.model.head", 2), ..., ("replicates", 3)]``): each enumerated key of ``space``
    (``grid``; ``choice`` under grid; ``op_pairs``: n + n(n-1)), the ``together`` entries,
    ``algorithm.num_samples`` (random) and ``replicates``. A searcher that proposes trials
    (optuna, a plugin): ``num_samples``."""
    expands = _expands(spec)
    if expands is None:
        return spec.algorithm.num_samples, [("algorithm.num_samples", spec.algorithm.num_samples)]
    factors: list[tuple[str, int]] = []
    for key, values in spec.space.items():
        kinds = [k for k in PARAM_KINDS if getattr(values, k) is not None]
        kind = kinds[0] if kinds else None
        if kind in ("grid", "op_pairs") or (kind == "choice" and expands == "grid"):
            n = len(getattr(values, kind))
            factors.append((f"space.{key}", n * n if kind == "op_pairs" else n))
    if spec.together:
        factors.append(("together", len(spec.together)))
    if expands == "random":
        factors.append(("algorithm.num_samples", spec.algorithm.num_samples))
    factors.append(("replicates", spec.max_replicates))
    return math.prod(n for _, n in factors), factors


def _check_plan_size(spec: SweepSpec, source: str) -> None:
    """At most ``MAX_TRIALS`` trials, checked on the product of the plan's factors before
    any configuration is expanded or validated (each costs time and memory). Raises
    ``SpecError`` at the largest factor's key, listing every factor."""
    total, factors = planned_trials(spec)
    if total <= MAX_TRIALS:
        return
    largest = max(factors, key=lambda factor: factor[1])[0]
    shown = " x ".join(f"{n:,} ({key})" for key, n in factors)
    raise SpecError(
        source,
        largest,
        f"the sweep would plan {total:,} trials = {shown}; valid: 1 to {MAX_TRIALS:,} trials "
        "a sweep. Shrink a grid, the replicates or num_samples, or split the study into "
        "several sweeps",
    )


def _check_space(spec: SweepSpec, base: dict[str, Any], source: str) -> dict[str, ParamValues]:
    """Check every swept key and value; return the sampled (non-enumerated) entries."""
    sampled: dict[str, ParamValues] = {}
    for key, values in spec.space.items():
        where = f"space.{key}"
        schema_field(key, source, where)
        kinds = [k for k in PARAM_KINDS if getattr(values, k) is not None]
        if len(kinds) != 1:
            raise SpecError(
                source,
                where,
                f"give exactly one of {', '.join(PARAM_KINDS)} (got {', '.join(kinds) or 'none'})",
            )
        kind = kinds[0]
        if kind in ("grid", "choice", "op_pairs") and not getattr(values, kind):
            raise SpecError(source, f"{where}.{kind}", "is empty; give at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(values, kind)
            if lo > hi:
                raise SpecError(
                    source, f"{where}.{kind}", f"lo > hi in [{lo}, {hi}]; give [lo, hi]"
                )
            if kind == "loguniform" and lo <= 0:
                raise SpecError(source, f"{where}.{kind}", f"needs 0 < lo, got [{lo}, {hi}]")
        if kind == "op_pairs":
            _check_op_names(values.op_pairs or [], source, f"{where}.op_pairs")
        if kind in _SAMPLED or (kind == "choice" and _expands(spec) != "grid"):
            sampled[key] = values
        for index, value in enumerate(_values_to_check(values)):
            check_value(base, key, value, source, f"{where}.{kind}[{index}]")
    for index, entry in enumerate(spec.together):
        if not entry:
            raise SpecError(source, f"together[{index}]", "is empty; give dotted keys and values")
        for key, value in entry.items():
            where = f"together[{index}].{key}"
            schema_field(key, source, where)
            if key in spec.space:
                raise SpecError(source, where, f"{key} is also in `space`; keep it in one place")
            check_value(base, key, value, source, where)
    return sampled


def _values_to_check(values: ParamValues) -> list[Any]:
    kind = values.kind()
    if kind in ("grid", "choice"):
        return list(getattr(values, kind))
    if kind == "op_pairs":
        return op_pairs(values.op_pairs or [])
    lo, hi = getattr(values, kind)
    if kind == "randint":
        return [int(lo), int(hi)]
    return [float(lo), float(hi)]


def _check_op_names(names: Iterable[str], source: str, where: str, unique: bool = True) -> None:
    seen: set[str] = set()
    for name in names:
        try:  # a registered op, or a plugin op that imports and fits (ablate.ops)
            OPS.validate(name)
        except (ValueError, TypeError) as error:
            raise SpecError(source, where, str(error)) from None
        if unique and name in seen:
            raise SpecError(source, where, f"{name!r} is listed twice")
        seen.add(name)


def op_pairs(ops: Sequence[str]) -> list[list[str]]:
    """Every single op, then every ordered pair of different ops (Chen et al. 2020, Fig. 5).

    ``len(result) == n + n * (n - 1)``; the pair ``[a, b]`` applies ``a`` then ``b``.
    """
    singles = [[op] for op in ops]
    pairs = [[a, b] for a in ops for b in ops if a != b]
    return singles + pairs


def _check_proposing(spec: SweepSpec, source: str) -> None:
    """The rules of a searcher that proposes one configuration per trial (optuna, a plugin)."""
    name = spec.algorithm.name
    for key, values in spec.space.items():
        if values.kind() in _ENUMERATED:
            raise SpecError(
                source,
                f"space.{key}.{values.kind()}",
                f"{name} proposes one configuration per trial; use `choice` for categorical "
                "values, or algorithm grid/random to enumerate",
            )
    if spec.together:
        raise SpecError(source, "together", f"is not supported with {name}; use grid or random")
    if spec.replicates != 1:
        raise SpecError(
            source,
            "replicates",
            f"{name} proposes a new configuration per trial; repeat the best ones with a grid "
            "sweep and replicates afterwards",
        )
    if not spec.space:
        raise SpecError(source, "space", f"{name} needs at least one swept key")


def _validate_sampled_corners(
    spec: SweepSpec, base: dict[str, Any], sampled: dict[str, ParamValues], source: str
) -> None:
    """The searcher draws at run time: validate the configuration at each range's lo and hi."""
    lows = {k: _values_to_check(v)[0] for k, v in sampled.items()}
    highs = {k: _values_to_check(v)[-1] for k, v in sampled.items()}
    for corner in (lows, highs):
        _planned_trial(base, corner, 0, source, spec)


def _expand(
    spec: SweepSpec, base: dict[str, Any], sampled: dict[str, ParamValues], source: str
) -> list[PlannedTrial]:
    """Every trial, validated, in run order.

    Replicates outermost (a partial sweep already covers every configuration once), except
    under a scheduler that judges configurations (``asha``) with ``replicates > 1``: then
    configuration-major (a configuration's replicates next to each other), because
    ``ReplicateASHA`` judges a configuration's seeds together at each rung and needs them to
    run at the same time.
    """
    axes: list[tuple[str, list[Any]]] = []
    for key, values in spec.space.items():
        if key in sampled:
            continue
        kind = values.kind()
        axes.append(
            (key, op_pairs(values.op_pairs or []) if kind == "op_pairs" else getattr(values, kind))
        )
    together = spec.together or [{}]
    grid: list[dict[str, Any]] = []
    for combo in itertools.product(*(values for _, values in axes)):
        for entry in together:
            grid.append({**dict(zip((k for k, _ in axes), combo, strict=True)), **entry})
    rng = np.random.default_rng(spec.algorithm.seed)
    samples = spec.algorithm.num_samples if _expands(spec) == "random" else 1
    configurations: list[dict[str, Any]] = []
    for _ in range(samples):
        for point in grid:
            drawn = {key: draw(values, rng) for key, values in sampled.items()}
            configurations.append(_in_spec_order({**point, **drawn}, spec))
    replicates = spec.min_replicates
    order = [(r, varying) for r in range(replicates) for varying in configurations]
    by_configuration = SCHEDULERS.get(spec.scheduler.name).meta["by_configuration"]
    if by_configuration and replicates > 1:
        order = [(r, varying) for varying in configurations for r in range(replicates)]
    return [_planned_trial(base, varying, r, source, spec) for r, varying in order]


def _in_spec_order(varying: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
    order = list(spec.space) + [k for e in spec.together for k in e]
    return {k: varying[k] for k in sorted(varying, key=order.index)}


def draw(values: ParamValues, rng: np.random.Generator) -> Any:
    """One value of a sampled entry (``random`` algorithm)."""
    kind = values.kind()
    if kind == "choice":
        options = values.choice or []
        return copy.deepcopy(options[int(rng.integers(len(options)))])
    lo, hi = getattr(values, kind)
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(int(lo), int(hi) + 1))


def _planned_trial(
    base: dict[str, Any], varying: dict[str, Any], replicate: int, source: str, spec: SweepSpec
) -> PlannedTrial:
    """``base`` <- ``varying`` <- the replicate's seed, validated once as a ``TrialConfig``.
    Raises ``SpecError`` naming the key and the configuration when the schema refuses it."""
    config = _merged(base, varying)
    config["train"]["seed"] = int(config["train"]["seed"]) + replicate
    try:
        resolved = TrialConfig.model_validate(config)
    except ValidationError as error:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in varying.items()) or "the base"
        raise _schema_error(source, error, prefix="", context=f" (configuration {shown})") from None
    gpus = resolved.resources.gpus_per_worker
    if gpus > 1 and not float(gpus).is_integer():
        key = (
            "space.resources.gpus_per_worker"
            if "resources.gpus_per_worker" in varying
            else ("resources.gpus_per_worker")
        )
        raise SpecError(
            source, key, f"{gpus} GPUs per worker: Ray takes fractions below 1 or whole numbers"
        )
    return PlannedTrial(resolved, typed_varying(varying, resolved), replicate, spec.name)


def typed_varying(varying: dict[str, Any], resolved: TrialConfig) -> dict[str, Any]:
    """``varying`` with each value as the schema validated it, read from the ``resolved``
    trial config (as JSON: ``pydantic_core.to_jsonable_python``): ``"1e-1"`` (PyYAML's
    string) becomes ``0.1`` for a float key, ``3`` becomes ``3.0``, a tuple a list. Trial
    names, MLflow params and the report then see one type per key. A preset op list keeps its
    name (``simclr``), as the spec gave it."""
    typed = {}
    for key, value in varying.items():
        keep = key in (OPS_KEY, "augment.base") and str(value) in AUGMENTATION_PRESETS
        if keep:
            typed[key] = copy.deepcopy(value)
            continue
        node: Any = resolved
        for part in key.split("."):
            node = getattr(node, part)
        typed[key] = to_jsonable_python(node)
    return typed


def _check_scheduler(sweep: SweepPlan, source: str) -> None:
    """A scheduler that compares trials at rungs (asha): the first rung is within the epochs,
    and the kNN monitor has run by then."""
    scheduler = sweep.spec.scheduler
    if not SCHEDULERS.get(scheduler.name).meta["rungs"]:
        return
    max_t = scheduler.max_t or sweep.max_epochs()
    if scheduler.grace_period > max_t:
        raise SpecError(
            source,
            "scheduler.grace_period",
            f"{scheduler.grace_period} exceeds max_t={max_t} epochs; no trial could be stopped",
        )
    every = max(c.eval.eval_every for c in sweep.configs())
    if every > scheduler.grace_period:
        raise SpecError(
            source,
            "eval.eval_every",
            f"ASHA compares {scheduler.metric} at epoch {scheduler.grace_period} "
            f"(scheduler.grace_period), but the kNN monitor first runs at epoch {every}; set "
            "eval.eval_every <= grace_period",
        )


# ----------------------------------------------------------------------------- schema walking


def section_model(annotation: Any, members: bool = False) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (``X``, ``X | None``), else None. A union
    of a model with another kind of value (``replicates``: a count or racing bounds) is a
    value, not a section, unless ``members``: then its model member."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    models = [m for m in (section_model(a, members) for a in args) if m is not None]
    if models and (members or len(models) == len(args)):
        return models[0]
    return None


def schema_field(dotted: str, source: str = "<spec>", where: str | None = None) -> Any:
    """The pydantic field of trial-config key ``dotted``; unknown keys raise with a hint."""
    where = where or dotted
    model: type[BaseModel] | None = TrialConfig
    parts = dotted.split(".")
    info = None
    for depth, part in enumerate(parts):
        if model is None:
            parent = ".".join(parts[:depth])
            raise SpecError(
                source, where, f"{parent} is a value, not a section; it has no {part!r}"
            )
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth])
            raise SpecError(
                source,
                where,
                _unknown_key(
                    part, tuple(fields), f"in {prefix}" if prefix else "among the config sections"
                ),
            )
        info = fields[part]
        model = section_model(info.annotation)
    return info


def check_value(base: dict[str, Any], key: str, value: Any, source: str, where: str) -> None:
    """Validate ``base`` with ``key = value`` alone, reporting problems at ``where``."""
    if key == "augment.ops" or key == "augment.base":
        ops = value
        if isinstance(value, str):
            ops = [] if value in AUGMENTATION_PRESETS else value.split("+")
        if isinstance(ops, list):
            _check_op_names([str(o) for o in ops], source, where, unique=False)
    try:
        TrialConfig.model_validate(_merged(base, {key: value}))
    except ValidationError as error:
        issues = [e for e in error.errors() if _dotted(e["loc"]).startswith(key)] or error.errors()
        issue = issues[0]
        raise SpecError(
            source,
            where,
            f"{format_value(value)!s} does not fit {key}: {_describe(issue, TrialConfig)}",
        ) from None


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _describe(issue: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic issue in words; a value out of range also gets the field's valid range,
    read from ``model`` (the schema the issue's ``loc`` is relative to)."""
    message = issue["msg"].removeprefix("Value error, ")
    if issue["type"] in _RANGE_ERRORS:
        valid = valid_range(model, issue["loc"])
        if valid is not None:
            message = f"{message}; valid: {valid}"
    if issue["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", issue.get("ctx", {}).get("expected", ""))
        hint = difflib.get_close_matches(str(issue.get("input")), expected, n=1)
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{issue.get('input')!r} is not valid{did} Valid: {', '.join(expected)}"
    value = issue.get("input")
    if isinstance(value, bool):  # as the YAML spells it
        return f"{message} (got {str(value).lower()})"
    if isinstance(value, (str, int, float)):
        return f"{message} (got {value!r})"
    return message


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def valid_range(model: type[BaseModel], loc: Sequence[Any]) -> str | None:
    """The bounds of the field at ``loc`` in ``model`` as text (``1 <= train.epochs <= 10,000``,
    ``0 < loss.temperature``), from its ``Field(ge=..., le=...)``; None when ``loc`` is not a
    field (an element of a list, a key of ``space``) or the field has no bounds."""
    info = None
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        info = current.model_fields[part]
        current = section_model(info.annotation, members=True)
    if info is None:
        return None
    lower = upper = ""
    bounds = list(info.metadata)
    for member in typing.get_args(info.annotation):  # a union's bounded member (replicates)
        if typing.get_origin(member) is Annotated:
            for meta in member.__metadata__:
                bounds += getattr(meta, "metadata", [meta])
    for bound in bounds:
        for attr, template in (("ge", "{} <= "), ("gt", "{} < ")):
            if getattr(bound, attr, None) is not None:
                lower = template.format(_number(getattr(bound, attr)))
        for attr, template in (("le", " <= {}"), ("lt", " < {}")):
            if getattr(bound, attr, None) is not None:
                upper = template.format(_number(getattr(bound, attr)))
    if not (lower or upper):
        return None
    return f"{lower}{_dotted(loc)}{upper}"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _schema_error(
    source: str, error: ValidationError, *, prefix: str, context: str = ""
) -> SpecError:
    issue = error.errors()[0]
    loc = [str(p) for p in issue["loc"]]
    key = prefix + ".".join(loc)
    if issue["type"] == "extra_forbidden":
        model: type[BaseModel] = TrialConfig
        for part in loc[:-1]:
            sub = (
                section_model(model.model_fields[part].annotation)
                if part in model.model_fields
                else None
            )
            if sub is None:
                break
            model = sub
        scope = ".".join(loc[:-1])
        return SpecError(
            source,
            key,
            _unknown_key(loc[-1], tuple(model.model_fields), f"in {scope}") + context,
        )
    return SpecError(source, key or "(config)", _describe(issue, TrialConfig) + context)


def _spec_model_error(source: str, error: ValidationError) -> SpecError:
    issue = error.errors()[0]
    if issue["loc"][:1] == ("replicates",) and len(issue["loc"]) > 1:
        # Of the union's members (a count, or racing bounds), the one the value was written as.
        racing = isinstance(issue["input"], dict) or any(
            isinstance(i["input"], dict) for i in error.errors()
        )
        member = [i for i in error.errors() if (i["loc"][1] == RacingSpec.__name__) == racing] or [
            issue
        ]
        issue = {**member[0], "loc": ("replicates", *member[0]["loc"][2:])}
    loc = [str(p) for p in issue["loc"]]
    # `space` keys contain dots: keep them as one segment of the path.
    key = ".".join(loc)
    if issue["type"] == "extra_forbidden":
        model: type[BaseModel] = SweepSpec
        for part in loc[:-1]:
            info = model.model_fields.get(part)
            sub = section_model(info.annotation, members=True) if info is not None else None
            if sub is not None:
                model = sub
        scope = ".".join(loc[:-1]) or "the top level"
        message = _unknown_key(loc[-1], tuple(model.model_fields), f"in {scope}")
        return SpecError(source, key, message)
    return SpecError(source, key, _describe(issue, SweepSpec))


def _unknown_key(key: str, valid: Sequence[str], scope: str) -> str:
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    did = f"did you mean {hint[0]!r}? " if hint else ""
    return f"unknown key {key!r} {scope}; {did}valid: {', '.join(valid)}"


# ----------------------------------------------------------------------------- resources


def trial_resources(config: TrialConfig) -> dict[str, float]:
    """The worker group of one trial: workers, CPUs and GPUs in total and per worker."""
    res = config.resources
    workers = int(res.num_workers)
    return {
        "workers": workers,
        "cpus_per_worker": float(res.cpus_per_worker),
        "gpus_per_worker": float(res.gpus_per_worker),
        "cpus": workers * float(res.cpus_per_worker),
        "gpus": workers * float(res.gpus_per_worker),
    }
