"""The sweep spec: one YAML file that fully defines an ablation, validated before anything runs.

A spec names the sweep, gives a partial trial config (the sections of
``ablate.config.TrialConfig``: ``data``, ``model``, ``augment``, ``loss``, ``optim``, ``train``,
``eval``, ``resources``) and says what varies: ``space`` (dotted key -> values), ``together``
(keys that vary jointly) and ``replicates`` (seeds). ``load_sweep`` reads the file, applies
``--set`` overrides, expands every configuration, validates each one against the trial schema
and returns a ``Sweep``: the resolved plan that ``ablate.sweep`` runs. Every problem raises
``SpecError(file, dotted key, message)``.

This module imports no Ray (``--dry-run`` never starts or imports it). ``render_reference``
writes ``docs/search_space.md`` from the pydantic models below, so the reference cannot drift.
"""

from __future__ import annotations

import copy
import difflib
import glob
import itertools
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablate.config import AUGMENTATION_OPS, AUGMENTATION_PRESETS, TrialConfig, set_dotted

#: The trial-config sections a spec may set at its top level (the base configuration).
CONFIG_SECTIONS: tuple[str, ...] = tuple(TrialConfig.model_fields)

#: Metrics reported every epoch that may rank trials and drive ASHA / Optuna. Never a test-split
#: metric (that would select on the test set) and never the contrastive loss (not comparable
#: across temperatures, heads or batch sizes).
RANKING_METRICS: tuple[str, ...] = ("val/knn_top1", "val/online_top1")

#: Final-epoch metrics shown next to the ranking metric in the summary (mean ± std).
SUMMARY_METRICS: tuple[str, ...] = (
    "val/probe_top1",
    "val/probe_top5",
    "test/probe_top1",
    "test/knn_top1",
)

#: Training-set sizes of the named datasets, for the ``--dry-run`` compute estimate.
KNOWN_TRAIN_SIZES: dict[str, int] = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000}

PARAM_KINDS: tuple[str, ...] = ("grid", "choice", "uniform", "loguniform", "randint", "op_pairs")
_ENUMERATED = ("grid", "op_pairs")
_SAMPLED = ("uniform", "loguniform", "randint")


class SpecError(ValueError):
    """A spec problem a person can fix: which file, which dotted key, what was expected."""

    def __init__(self, file: str | os.PathLike[str], key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


# ----------------------------------------------------------------------------- YAML schema


class _SpecModel(BaseModel):
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

    name: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="grid: every combination of `grid`/`choice`/`op_pairs`/`together`; random: "
        "`num_samples` draws of the distributions, each crossed with the grid; optuna: "
        "`num_samples` trials proposed by Optuna's TPE sampler (distributions and `choice` only).",
    )
    num_samples: int = Field(
        1, ge=1, description="random and optuna: how many configurations to draw (grid: keep 1)."
    )
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="Upper bound on trials running at once; the sweep also caps it by what the "
        "cluster's CPUs/GPUs can hold (workers x per-worker resources of one trial).",
    )
    seed: int = Field(0, description="Seed of the random draws and of Optuna's sampler.")


class SchedulerSpec(_SpecModel):
    """Early stopping (ASHA) or none (fifo). Also names the ranking metric of the summary."""

    name: Literal["fifo", "asha"] = Field(
        "fifo", description="fifo: every trial runs all its epochs; asha: successive halving."
    )
    metric: str = Field(
        "val/knn_top1",
        description=f"Ranking metric, reported every epoch: one of {', '.join(RANKING_METRICS)}.",
    )
    mode: Literal["max", "min"] = Field("max", description="max for accuracies.")
    grace_period: int = Field(1, ge=1, description="asha: epochs before a trial can be stopped.")
    reduction_factor: float = Field(
        2.0, gt=1.0, description="asha: keep the best 1/reduction_factor at each rung."
    )
    max_t: int | None = Field(
        None, ge=1, description="asha: last rung, in epochs; default: the largest `train.epochs`."
    )

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
    experiment: str | None = Field(None, description="MLflow experiment; default: the sweep name.")


class StorageSpec(_SpecModel):
    """Where Tune and Train write results and checkpoints."""

    path: str = Field(
        "./ablate_runs",
        description="Local directory (made absolute against the current directory when the "
        "spec is loaded), a shared filesystem path every node sees, or a URI such as "
        "`s3://bucket/prefix`. The sweep writes to `<path>/<name>/`.",
    )


class SweepSpec(_SpecModel):
    """The top level of a spec file (plus the trial-config sections, documented below)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Sweep name: letters, digits, `_`, `.`, `-`. Results go to "
        "`<storage.path>/<name>/`; an existing directory needs `--resume`.",
    )
    description: str = Field("", description="Free text: what the sweep asks.")
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
    replicates: int = Field(
        1,
        ge=1,
        description="Run every configuration with K seeds: `train.seed` = base seed + replicate "
        "index. The summary reports mean ± std over replicates.",
    )
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)


SPEC_KEYS: tuple[str, ...] = tuple(SweepSpec.model_fields)
TOP_LEVEL_KEYS: tuple[str, ...] = SPEC_KEYS + CONFIG_SECTIONS


# ----------------------------------------------------------------------------- the plan


@dataclass
class Sweep:
    """A validated spec: the base config, every trial's parameters and where results go.

    ``trials`` holds one Tune param dict per trial (grid and random), in run order:
    ``{"config": resolved TrialConfig dict, "varying": {dotted: value}, "replicate": r,
    "sweep": name}``. With ``optuna`` it is empty and ``sampled`` holds the distributions.
    """

    source: str
    spec: SweepSpec
    base: dict[str, Any]
    trials: list[dict[str, Any]]
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
    def num_trials(self) -> int:
        if self.spec.algorithm.name == "optuna":
            return self.spec.algorithm.num_samples
        return len(self.trials)

    @property
    def varying_keys(self) -> list[str]:
        """Every key that varies across trials, in spec order (``train.seed`` last)."""
        keys = list(self.spec.space)
        for entry in self.spec.together:
            keys += [k for k in entry if k not in keys]
        return keys

    def configs(self) -> list[dict[str, Any]]:
        """The resolved config of each planned trial (the base config under optuna)."""
        return [t["config"] for t in self.trials] or [self.base]

    def max_epochs(self) -> int:
        epochs = [c["train"]["epochs"] for c in self.configs()]
        if "train.epochs" in self.sampled:
            pv = self.sampled["train.epochs"]
            epochs += [int(v) for v in (pv.randint or pv.choice or pv.uniform or [])]
        return max(epochs)

    def make_param(self, varying: dict[str, Any], replicate: int = 0) -> dict[str, Any]:
        """The Tune param dict of one trial: base + ``varying`` + replicate seed, resolved."""
        config = _merged(self.base, varying)
        config["train"]["seed"] = int(config["train"]["seed"]) + replicate
        resolved = TrialConfig.model_validate(config).model_dump(mode="json")
        return {
            "config": resolved,
            "varying": dict(varying),
            "replicate": replicate,
            "sweep": self.name,
        }


def _merged(base: dict[str, Any], varying: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(base)
    for key, value in varying.items():
        set_dotted(config, key, copy.deepcopy(value))
    return config


# ----------------------------------------------------------------------------- loading


def load_sweep(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Sweep:
    """Read, override, expand and validate the spec at ``path`` (raises ``SpecError``)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SpecError(source, "", f"cannot read the spec: {error.strerror}") from None
    return parse_sweep(text, source=source, overrides=overrides)


def parse_sweep(text: str, *, source: str = "<spec>", overrides: Sequence[str] = ()) -> Sweep:
    """``load_sweep`` for YAML text already in memory."""
    raw = _read_yaml(text, source)
    for override in overrides:
        _apply_override(raw, override, source)
    return build_sweep(raw, source=source, text=text, overrides=overrides)


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
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


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; values are YAML scalars or lists."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError("--set", text, "expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
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
) -> Sweep:
    """Validate a parsed spec mapping and expand it into a ``Sweep``."""
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
    try:
        base = TrialConfig.model_validate(base_raw).model_dump(mode="json")
    except ValidationError as error:
        raise _schema_error(source, error, prefix="") from None

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
    _check_overrides_not_swept(spec, overrides, source)
    sampled = _check_space(spec, base, source)
    if spec.algorithm.name == "optuna":
        _check_optuna(spec, source)
        trials: list[dict[str, Any]] = []
        _validate_sampled_corners(spec, base, sampled, source)
    else:
        if spec.algorithm.name == "grid" and spec.algorithm.num_samples != 1:
            raise SpecError(
                source,
                "algorithm.num_samples",
                "grid runs every configuration once; use `replicates: K` to repeat them",
            )
        if spec.algorithm.name == "grid" and sampled:
            key = next(iter(sampled))
            raise SpecError(
                source,
                f"space.{key}",
                f"{sampled[key].kind()} needs `algorithm: {{name: random}}` or optuna; "
                "grid only enumerates `grid`, `choice` and `op_pairs`",
            )
        trials = _expand(spec, base, sampled, source)
    sweep = Sweep(
        source=source,
        spec=spec,
        base=base,
        trials=trials,
        sampled=sampled,
        text=text,
        overrides=tuple(overrides),
    )
    _check_scheduler(sweep, source)
    return sweep


def absolute_storage_path(path: str) -> str:
    """Local paths become absolute (workers and resumed drivers see the same place); URIs stay."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def check_storage_path(sweep: Sweep) -> None:
    """A local ``storage.path`` must be (or be creatable as) a directory this user can write.

    Checked without creating anything; URIs (``s3://``, ...) are left to their first write.
    """
    path = sweep.storage_path
    if "://" in path:
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SpecError(
            sweep.source,
            "storage.path",
            f"{path} cannot be created: {existing} is a file, not a directory; give another "
            "--storage-path (or storage.path in the spec)",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(
            sweep.source,
            "storage.path",
            f"{path} is not writable: this user cannot create or write in {existing}; give "
            "another --storage-path (or storage.path in the spec)",
        )


def check_data_sources(sweep: Sweep) -> None:
    """The local files named by each planned configuration's ``data`` section exist.

    Parquet paths (a file, a directory or a glob) and image-folder roots are looked up; the
    files are read later, once, by the sweep driver. URIs and torchvision datasets (which may
    download) are not checked here.
    """
    seen: set[str] = set()
    for config in sweep.configs():
        data = config["data"]
        key = json.dumps(data, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if data["name"] == "parquet":
            if not data.get("train_path"):
                raise SpecError(
                    sweep.source,
                    "data.train_path",
                    "data.name=parquet needs data.train_path (a Parquet file, directory or glob)",
                )
            for field_name in ("train_path", "test_path"):
                value = data.get(field_name)
                if value and "://" not in value and not _local_path_matches(value):
                    raise SpecError(
                        sweep.source,
                        f"data.{field_name}",
                        f"{value!r} does not exist (expected a Parquet file, a directory of "
                        "them or a glob)",
                    )
        elif data["name"] == "image_folder":
            root = data.get("root")
            layout = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
            if not root:
                raise SpecError(
                    sweep.source, "data.root", f"data.name=image_folder needs it ({layout})"
                )
            if "://" not in root and not Path(root).expanduser().is_dir():
                raise SpecError(
                    sweep.source, "data.root", f"directory {root!r} does not exist ({layout})"
                )


def _local_path_matches(path: str) -> bool:
    expanded = os.path.expanduser(path)
    if any(ch in path for ch in "*?["):
        return bool(glob.glob(expanded, recursive=True))
    return os.path.exists(expanded)


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
        if kind in _SAMPLED or (kind == "choice" and spec.algorithm.name != "grid"):
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
        if name not in AUGMENTATION_OPS:
            hint = difflib.get_close_matches(str(name), AUGMENTATION_OPS, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise SpecError(
                source,
                where,
                f"unknown augmentation {name!r}{did} Valid: {', '.join(AUGMENTATION_OPS)}",
            )
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


def _check_optuna(spec: SweepSpec, source: str) -> None:
    for key, values in spec.space.items():
        if values.kind() in _ENUMERATED:
            raise SpecError(
                source,
                f"space.{key}.{values.kind()}",
                "optuna proposes one configuration per trial; use `choice` for categorical "
                "values, or algorithm grid/random to enumerate",
            )
    if spec.together:
        raise SpecError(source, "together", "is not supported with optuna; use grid or random")
    if spec.replicates != 1:
        raise SpecError(
            source,
            "replicates",
            "optuna proposes a new configuration per trial; repeat the best ones with a grid "
            "sweep and replicates afterwards",
        )
    if not spec.space:
        raise SpecError(source, "space", "optuna needs at least one swept key")


def _validate_sampled_corners(
    spec: SweepSpec, base: dict[str, Any], sampled: dict[str, ParamValues], source: str
) -> None:
    """Optuna draws at run time: validate the configuration at each range's lo and hi."""
    lows = {k: _values_to_check(v)[0] for k, v in sampled.items()}
    highs = {k: _values_to_check(v)[-1] for k, v in sampled.items()}
    for corner in (lows, highs):
        _validate_config(base, corner, 0, source, spec)


def _expand(
    spec: SweepSpec, base: dict[str, Any], sampled: dict[str, ParamValues], source: str
) -> list[dict[str, Any]]:
    """Every trial's param dict, validated; replicates outermost so a partial sweep already
    covers every configuration once."""
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
    samples = spec.algorithm.num_samples if spec.algorithm.name == "random" else 1
    configurations: list[dict[str, Any]] = []
    for _ in range(samples):
        for point in grid:
            drawn = {key: draw(values, rng) for key, values in sampled.items()}
            configurations.append(_ordered({**point, **drawn}, spec))
    trials = []
    for replicate in range(spec.replicates):
        for varying in configurations:
            trials.append(_validate_config(base, varying, replicate, source, spec))
    return trials


def _ordered(varying: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
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


def _validate_config(
    base: dict[str, Any], varying: dict[str, Any], replicate: int, source: str, spec: SweepSpec
) -> dict[str, Any]:
    config = _merged(base, varying)
    config["train"]["seed"] = int(config["train"]["seed"]) + replicate
    try:
        resolved = TrialConfig.model_validate(config).model_dump(mode="json")
    except ValidationError as error:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in varying.items()) or "the base"
        raise _schema_error(source, error, prefix="", context=f" (configuration {shown})") from None
    gpus = resolved["resources"]["gpus_per_worker"]
    if gpus > 1 and not float(gpus).is_integer():
        key = (
            "space.resources.gpus_per_worker"
            if "resources.gpus_per_worker" in varying
            else ("resources.gpus_per_worker")
        )
        raise SpecError(
            source, key, f"{gpus} GPUs per worker: Ray takes fractions below 1 or whole numbers"
        )
    return {
        "config": resolved,
        "varying": dict(varying),
        "replicate": replicate,
        "sweep": spec.name,
    }


def _check_scheduler(sweep: Sweep, source: str) -> None:
    scheduler = sweep.spec.scheduler
    if scheduler.name != "asha":
        return
    max_t = scheduler.max_t or sweep.max_epochs()
    if scheduler.grace_period > max_t:
        raise SpecError(
            source,
            "scheduler.grace_period",
            f"{scheduler.grace_period} exceeds max_t={max_t} epochs; no trial could be stopped",
        )
    every = max(int(c["eval"]["eval_every"]) for c in sweep.configs())
    if every > scheduler.grace_period:
        raise SpecError(
            source,
            "eval.eval_every",
            f"ASHA compares {scheduler.metric} at epoch {scheduler.grace_period} "
            f"(scheduler.grace_period), but the kNN monitor first runs at epoch {every}; set "
            "eval.eval_every <= grace_period",
        )


# ----------------------------------------------------------------------------- schema walking


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
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
        model = _model_of(info.annotation)
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
            source, where, f"{format_value(value)!s} does not fit {key}: {_describe(issue)}"
        ) from None


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _describe(issue: dict[str, Any]) -> str:
    message = issue["msg"].removeprefix("Value error, ")
    if issue["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", issue.get("ctx", {}).get("expected", ""))
        hint = difflib.get_close_matches(str(issue.get("input")), expected, n=1)
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{issue.get('input')!r} is not valid{did} Valid: {', '.join(expected)}"
    value = issue.get("input")
    if isinstance(value, (str, int, float, bool)) and not isinstance(value, dict):
        return f"{message} (got {value!r})"
    return message


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
                _model_of(model.model_fields[part].annotation)
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
    return SpecError(source, key or "(config)", _describe(issue) + context)


def _spec_model_error(source: str, error: ValidationError) -> SpecError:
    issue = error.errors()[0]
    loc = [str(p) for p in issue["loc"]]
    # `space` keys contain dots: keep them as one segment of the path.
    key = ".".join(loc)
    if issue["type"] == "extra_forbidden":
        model: type[BaseModel] = SweepSpec
        for part in loc[:-1]:
            info = model.model_fields.get(part)
            sub = _model_of(info.annotation) if info is not None else None
            if sub is not None:
                model = sub
        scope = ".".join(loc[:-1]) or "the top level"
        message = _unknown_key(loc[-1], tuple(model.model_fields), f"in {scope}")
        return SpecError(source, key, message)
    return SpecError(source, key, _describe(issue))


def _unknown_key(key: str, valid: Sequence[str], scope: str) -> str:
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    did = f"did you mean {hint[0]!r}? " if hint else ""
    return f"unknown key {key!r} {scope}; {did}valid: {', '.join(valid)}"


# ----------------------------------------------------------------------------- presentation


def format_value(value: Any) -> str:
    """Short text of a varying value: op lists as ``crop+color``, floats to 4 significant."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "+".join(value) if value else "[]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def trial_resources(config: dict[str, Any]) -> dict[str, float]:
    """The worker group of one trial: workers, CPUs and GPUs in total and per worker."""
    res = config["resources"]
    workers = int(res["num_workers"])
    return {
        "workers": workers,
        "cpus_per_worker": float(res["cpus_per_worker"]),
        "gpus_per_worker": float(res["gpus_per_worker"]),
        "cpus": workers * float(res["cpus_per_worker"]),
        "gpus": workers * float(res["gpus_per_worker"]),
    }


def train_set_size(data: dict[str, Any]) -> int | None:
    """Training images before the validation split, when knowable without loading (or None)."""
    size: int | None
    if data["name"] == "synthetic":
        size = int(data["num_train"])
    elif data["name"] in KNOWN_TRAIN_SIZES:
        size = KNOWN_TRAIN_SIZES[data["name"]]
    elif data["name"] == "parquet" and data.get("train_path") and "://" not in data["train_path"]:
        size = _parquet_rows(data["train_path"])
    else:
        size = None
    if data.get("limit_train"):
        size = min(size, int(data["limit_train"])) if size else int(data["limit_train"])
    return size


def _parquet_rows(path: str) -> int | None:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(path))
    if not files:
        return None
    try:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in files)
    except (OSError, ValueError):
        return None


def steps_per_epoch(config: dict[str, Any]) -> int | None:
    """Optimiser steps of one epoch, as ``ablate.train`` computes them (None if unknown)."""
    size = train_set_size(config["data"])
    if size is None:
        return None
    pretrain = size - round(size * float(config["data"]["val_fraction"]))
    workers = int(config["resources"]["num_workers"])
    steps = (pretrain // workers) // (int(config["train"]["batch_size"]) // workers)
    cap = config["train"].get("steps_per_epoch")
    return min(steps, int(cap)) if cap else steps


def estimate_compute(sweep: Sweep) -> dict[str, Any]:
    """Upper bounds (every trial runs all its epochs): steps, images, worker-CPU/GPU-epochs."""
    per_trial = sweep.configs()
    multiplier = sweep.num_trials if sweep.spec.algorithm.name == "optuna" else 1
    epochs = steps = images = cpu_epochs = gpu_epochs = 0.0
    unknown = False
    for config in per_trial:
        n_epochs = int(config["train"]["epochs"])
        per_epoch = steps_per_epoch(config)
        res = trial_resources(config)
        epochs += n_epochs
        cpu_epochs += n_epochs * res["cpus"]
        gpu_epochs += n_epochs * res["gpus"]
        if per_epoch is None:
            unknown = True
        else:
            steps += n_epochs * per_epoch
            images += n_epochs * per_epoch * int(config["train"]["batch_size"])
    return {
        "trials": sweep.num_trials,
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


def describe_plan(sweep: Sweep) -> str:
    """The ``--dry-run`` text: the trial table, the resources and the estimated compute."""
    spec = sweep.spec
    description = " ".join(spec.description.split())
    lines = [
        f"sweep {sweep.name!r} from {sweep.source}",
        *([f"  {description}"] if description else []),
        f"  algorithm {spec.algorithm.name}, scheduler {spec.scheduler.name} "
        f"({spec.scheduler.metric}, {spec.scheduler.mode}), replicates {spec.replicates}",
        f"  results: {sweep.experiment_dir}",
        "",
    ]
    if spec.algorithm.name == "optuna":
        rows = [[k, v.kind(), format_value(getattr(v, v.kind()))] for k, v in sweep.sampled.items()]
        lines.append(f"{sweep.num_trials} trials proposed by Optuna (TPE) from:")
        lines.append(_table(["key", "kind", "values"], rows))
    else:
        keys = sweep.varying_keys
        header = ["#", *keys, "seed", "epochs", "steps/ep", "workers", "cpu/w", "gpu/w"]
        rows = []
        for index, trial in enumerate(sweep.trials):
            config, res = trial["config"], trial_resources(trial["config"])
            per_epoch = steps_per_epoch(config)
            rows.append(
                [
                    str(index),
                    *(
                        format_value(trial["varying"][k]) if k in trial["varying"] else "-"
                        for k in keys
                    ),
                    str(config["train"]["seed"]),
                    str(config["train"]["epochs"]),
                    "?" if per_epoch is None else str(per_epoch),
                    str(res["workers"]),
                    f"{res['cpus_per_worker']:g}",
                    f"{res['gpus_per_worker']:g}",
                ]
            )
        configurations = len(sweep.trials) // spec.replicates
        lines.append(
            f"{sweep.num_trials} trials = {configurations} configurations x "
            f"{spec.replicates} replicate(s)"
        )
        lines.append(_table(header, rows))
    compute = estimate_compute(sweep)
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


# ----------------------------------------------------------------------------- reference


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, Sequence):
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return f"mapping {_type_name(args[0])} -> {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float):
        return f"`{value:.6g}`"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "`[" + ", ".join(f"{v:.6g}" for v in value) + "]`"
    return f"`{json.dumps(value)}`"


def _model_rows(
    model: type[BaseModel], prefix: str, defaults: bool = True
) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        if sub is not None and sub is not ParamValues:
            rows += _model_rows(sub, f"{prefix}{name}.")
            continue
        rows.append(
            (
                f"`{prefix}{name}`",
                _type_name(info.annotation).removesuffix(" or null")
                if not defaults
                else (_type_name(info.annotation)),
                _default_text(info) if defaults else "-",
                " ".join((info.description or "").split()),
            )
        )
    return rows


def _rows_table(rows: list[tuple[str, str, str, str]]) -> str:
    out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    out += [f"| {k} | {t} | {d} | {m} |" for k, t, d, m in rows]
    return "\n".join(out)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split("\n\n")[0].split())


_REFERENCE_INTRO = """\
# Search-space reference

<!-- Generated by `python -m ablate.spec > docs/search_space.md`; edit ablate/spec.py and
ablate/config.py, not this file (tests/test_spec.py checks they agree). -->

A sweep is one YAML file. Its top level holds the sweep keys (name, space, algorithm, ...)
and, beside them, the trial-config sections (`data`, `model`, `augment`, `loss`, `optim`,
`train`, `eval`, `resources`) that form the *base configuration* every trial starts from.
Everything has a default except `name`. The file is read with `yaml.safe_load` and fully
validated, every expanded configuration included, before Ray starts; a problem exits with
status 2 and names the file, the dotted key and what was expected.

```yaml
name: head_by_ops                 # results in <storage.path>/head_by_ops/
description: projection head x augmentation composition
data: {name: synthetic, num_train: 1024, synthetic_size: 24}
model: {arch: resnet18, width: 8}
train: {epochs: 6, batch_size: 128}
space:
  augment.ops: {grid: [[crop], [crop, color], [crop, flip, color]]}
  model.head: {grid: [linear, nonlinear]}
replicates: 2                     # 3 x 2 configurations x 2 seeds = 12 trials
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
```

Run it with `python -m entrypoints.sweep SPEC.yaml [--set KEY=VALUE ...] [--dry-run]
[--resume] [--address ADDR] [--storage-path P]`, or on a cluster with
`ray job submit --working-dir . -- python -m entrypoints.sweep SPEC.yaml`.

## Command-line overrides

`--set KEY=VALUE` (repeatable) changes the spec before validation. `VALUE` is parsed as YAML
(`--set train.epochs=5`, `--set 'augment.ops=[crop, color]'`, `--set replicates=3`). `KEY` is a
top-level key (`replicates`, `name`, `algorithm.num_samples`, `scheduler.grace_period`), a
base-config key (`train.epochs`, `data.num_train`), or `space.<dotted key>` to replace one swept
key (`--set 'space.model.head={grid: [linear]}'`). Setting a base key that the spec sweeps is an
error (the base value would be ignored). `--storage-path P` is `--set storage.path=P`.

## Values of a swept key

Keys of `space` are dotted trial-config keys (the tables further down). Each maps to exactly one
of:

"""

_REFERENCE_MIDDLE = """

`grid`, `choice` and `op_pairs` values and the ends of every range are validated against the
trial schema before the sweep starts, and so is every expanded configuration (grid, random).

## Replicates, seeds and ranking

`replicates: K` runs each configuration with `train.seed` = base seed + 0..K-1 and records the
replicate index. The summary groups trials by their varying values (the seed excluded) and ranks
groups by the mean of `scheduler.metric` at each trial's last epoch; groups whose trials all ran
every epoch rank above groups with an early-stopped or failed trial. Ranking never uses a
`test/` metric or the contrastive loss.

## Optuna and early stopping

`algorithm: {name: optuna}` uses `ray.tune.search.optuna.OptunaSearch` (TPE). Trials that ASHA
stops early are reported to Optuna as *pruned* (not as completed with their early score), and
per-epoch values are reported with `step = epoch`, so the sampler learns only from trials that
ran to the end.

## Resources and concurrency

`resources` sets one trial's worker group: `num_workers` Ray Train workers, each reserving
`cpus_per_worker` CPUs and `gpus_per_worker` GPUs (fractions such as 0.5 pack two trials' workers
on one GPU; above 1, whole numbers). The Tune trial itself reserves no CPU or GPU, so it never
starves its own workers. Trials run at most `min(algorithm.max_concurrent_trials,
floor(cluster CPUs / (workers x cpus_per_worker)), floor(cluster GPUs / (workers x
gpus_per_worker)))` at a time. A worker that no node can hold is an error before any trial
starts.

## Storage and resuming

Results go to `<storage.path>/<name>/`: Tune's experiment state and per-trial results, each
trial's Ray Train run (checkpoints) in `train/<trial_id>/`, and `summary.json` at the end. On a
multi-node cluster use a filesystem every node mounts or an `s3://`/`gs://` URI. A sweep whose
directory exists is refused unless `--resume` is given, which continues it: finished trials are
kept, unfinished and errored trials continue from their latest checkpoint. `--resume` refuses a
spec (with its `--set` values) whose trials differ from the ones the sweep started with.

## Running on a cluster

`ray job submit --working-dir . -- python -m entrypoints.sweep SPEC.yaml` runs the sweep driver
on the cluster (it joins the cluster named by `$RAY_ADDRESS`; `--address` does the same from
anywhere). Set `storage.path` (or `--storage-path`) to a path every node mounts or an
`s3://`/`gs://` URI: the job's working directory is a temporary copy. The datasets named in the
spec must be readable from the driver, which decodes each distinct dataset once and shares it
with every trial through the object store. Without `--address`/`$RAY_ADDRESS` the sweep starts
a local Ray on 127.0.0.1 (with its dashboard on a free loopback port: Ray Train's placement-group
cleaner needs the state API, or one process per trial would outlive its trial).

"""


def render_reference() -> str:
    """The Markdown reference of the spec (``docs/search_space.md``), from the models above."""
    parts = [_REFERENCE_INTRO]
    parts.append(_rows_table(_model_rows(ParamValues, "", defaults=False)))
    parts.append(_REFERENCE_MIDDLE)
    parts.append("## Sweep keys\n\n" + _doc(SweepSpec) + "\n\n")
    parts.append(_rows_table(_model_rows(SweepSpec, "")) + "\n")
    parts.append("\n## Base configuration (trial-config sections)\n")
    for section, info in TrialConfig.model_fields.items():
        model = _model_of(info.annotation)
        assert model is not None
        parts.append(f"\n### `{section}`\n\n{_doc(model)}\n\n")
        parts.append(_rows_table(_model_rows(model, f"{section}.")) + "\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render_reference(), end="")
