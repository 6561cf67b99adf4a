"""A plan's own components (``module.path:factory`` ops, losses, encoders): checked at preflight,
importable on every Ray worker.

The trial-config schema already imports each plugin and checks its kind when the spec is
validated (``ablate.config`` via the registries of ``ablate.ops``, ``ablate.losses``,
``ablate.encoders``). :func:`check` goes one step further before anything runs: it builds each
plugin the way a worker will, from the first planned config that names it, and runs it once on
a tiny input (an op on two images, a loss on four embedding pairs with a backward pass, an
encoder on two images), so an op that is not batched, a loss that returns no scalar or an
encoder whose output is not ``(N, feat_dim)`` is a ``SpecError`` at its key (exit status 2).
It imports torch only when the plan names a plugin.

Every Ray worker imports the plugin's module again, so it must be importable there. Ray 2.60
already arranges it in the two common cases: a driver that starts or joins Ray as a plain
script puts its working directory on every worker's ``sys.path`` (the job config's
``py_driver_sys_path``, which Ray sets whenever the job has no ``working_dir``; local workers
also inherit the driver's ``PYTHONPATH``), and ``ray job submit --working-dir .`` ships that
directory to every node and puts it on the path. What Ray does not cover is a driver that joins
a multi-node cluster with ``--address`` from outside a job: the other nodes lack its files.
:func:`runtime_env` then returns ``{"py_modules": [...]}``, the top-level module or package
directory of each plugin that is not installed (not in site-packages), which Ray uploads and
puts on every worker's path; ``ablate.sweep.connect`` passes it to ``ray.init``. The sweep's own
report figures and findings (``report.figures`` / ``report.findings``) are not among them: the
report is written by the driver alone (``ablate.preflight.check_report`` imports them there).
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.config import TrialConfig, flatten
from ablate.registry import is_plugin_name
from ablate.spec import SpecError, SweepPlan

#: The trial-config keys that take a plugin, and the kind of component each names.
PLUGIN_KEYS: dict[str, str] = {
    "augment.ops": "op",
    "augment.base": "op",
    "loss.name": "loss",
    "model.arch": "encoder",
    "data.name": "source",
}
#: Ray's variable holding a submitted job's config (runtime env) for its driver process.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class PluginUse:
    """A plugin ``name`` that the plan puts at trial-config ``key``; ``config``: the first
    planned trial config naming it there (its sections build the plugin)."""

    name: str
    key: str
    config: TrialConfig


def _names_at(value: Any) -> Iterator[str]:
    """The plugin names in a value of a plugin key (one name, or a list of op names)."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if is_plugin_name(item):
            yield item


def plugin_uses(plan: SweepPlan) -> list[PluginUse]:
    """Every distinct (plugin, key) of ``plan``: in its planned configs and, for proposed
    trials (optuna, random), among the values its searcher may propose."""
    uses: dict[tuple[str, str], PluginUse] = {}
    configs = plan.configs()
    for config in configs:
        flat = flatten(config.model_dump(mode="json"))
        for key in PLUGIN_KEYS:
            for name in _names_at(flat.get(key)):
                uses.setdefault((name, key), PluginUse(name, key, config))
    for key, values in plan.sampled.items():
        if key not in PLUGIN_KEYS:
            continue
        for value in values.choice or values.grid or []:
            for name in _names_at(value):
                if (name, key) not in uses:
                    config = configs[0].model_copy(deep=True)
                    uses[(name, key)] = PluginUse(name, key, _with(config, key, value))
    return list(uses.values())


def _with(config: TrialConfig, key: str, value: Any) -> TrialConfig:
    section, field = key.split(".")
    return config.model_copy(
        update={section: getattr(config, section).model_copy(update={field: value})}
    )


# ----------------------------------------------------------------------------- preflight


def _side(config: TrialConfig) -> int:
    """The image side trials will see, where the config says it (else CIFAR's 32)."""
    data = config.data
    return data.image_size or (data.synthetic_size if data.name == "synthetic" else 32)


def check_op(use: PluginUse) -> None:
    """Run the op once, as the pipeline will, on two images of the trial's side; raise
    ``ValueError`` unless it returns a float tensor of the input's shape, in [0, 1], finite,
    and leaves its input untouched."""
    import torch

    from ablate.augment import build_ops

    side = _side(use.config)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = build_ops([use.name], use.config.augment)(x, torch.Generator().manual_seed(0))
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise ValueError(f"returned {out.dtype} values that are not all finite floats")
    if out.min() < -1e-6 or out.max() > 1 + 1e-6:
        raise ValueError(
            f"returned values in [{out.min():.3g}, {out.max():.3g}]; an op keeps [0, 1]"
        )
    if not torch.equal(x, before):
        raise ValueError("modified its input in place; an op returns a new tensor")


def check_loss(use: PluginUse) -> None:
    """Build the loss from the trial's ``loss`` section and compute it on four embedding pairs;
    raise ``ValueError`` unless it is a finite scalar that backpropagates."""
    import torch

    from ablate.loss import build_loss

    loss_fn = build_loss(use.config.loss)
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 8, generator=generator, requires_grad=True)
    z2 = torch.randn(4, 8, generator=generator)
    value = loss_fn(z1, z2)
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"loss(z1 (4, 8), z2 (4, 8)) returned {got}, not a scalar tensor")
    if not torch.isfinite(value):
        raise ValueError(f"loss(z1 (4, 8), z2 (4, 8)) = {value.item()}, not finite")
    value.backward()
    if z1.grad is None:
        raise ValueError("the loss does not backpropagate to z1 (no gradient)")


def check_encoder(use: PluginUse) -> None:
    """Build the encoder from the trial's ``model`` section and run two images of the trial's
    side through it; raise ``TypeError`` unless it satisfies ``ablate.encoders.Encoder``."""
    import torch

    from ablate.encoders import check_instance
    from ablate.models import build_encoder

    encoder = build_encoder(use.config.model).eval()
    side = _side(use.config)
    with torch.no_grad():
        images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        check_instance(use.name, encoder, images)


_CHECKS = {"op": check_op, "loss": check_loss, "encoder": check_encoder}


def check(plan: SweepPlan) -> None:
    """Build and run every plugin of ``plan`` once (see the module docstring). Raises
    ``SpecError`` at the plugin's key (``space.<key>`` when swept) naming the plugin and what
    went wrong."""
    for use in plugin_uses(plan):
        where = f"space.{use.key}" if use.key in plan.spec.space else use.key
        try:
            # A source has no check here: the driver's load in preflight runs its factory on
            # the real config and checks what it returns (ablate.data.sources.plugin).
            kind = PLUGIN_KEYS[use.key]
            if kind in _CHECKS:
                _CHECKS[kind](use)
        except Exception as error:  # whatever the user's code raises
            raise SpecError(
                plan.source,
                where,
                f"{use.name} ({PLUGIN_KEYS[use.key]}): {type(error).__name__}: {error}",
            ) from None


# ----------------------------------------------------------------------------- runtime env


def _installed_roots() -> list[Path]:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(site.getsitepackages())
    return [Path(r).resolve() for r in roots]


def module_location(module: str) -> Path | None:
    """The file or package directory of top-level ``module`` as this process imports it
    (None: a built-in or namespace-less module without a location)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve() if spec.origin else None


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the Ray job this driver runs in (``ray job submit``), else {}."""
    try:
        return json.loads(os.environ.get(JOB_CONFIG_VAR, "{}")).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def runtime_env(plan: SweepPlan, address: str | None) -> dict[str, Any]:
    """The additions to the job's runtime env that make ``plan``'s plugins importable on every
    worker: ``{}`` when Ray already does it (see the module docstring: a local Ray, a plugin
    inside a submitted job's working directory, an installed module), else
    ``{"py_modules": [top-level module file or package directory, ...]}``.

    ``address``: the cluster the driver joins (``--address``; ``$RAY_ADDRESS`` is read too);
    None starts a local Ray.
    """
    if not (address or os.environ.get("RAY_ADDRESS")):
        return {}
    job_env = _job_runtime_env()
    if job_env.get("py_modules"):
        return {}  # Ray refuses a second py_modules beside the job's own
    inside = Path.cwd().resolve() if job_env.get("working_dir") else None
    installed = _installed_roots()
    paths: list[str] = []
    for module in sorted({use.name.partition(":")[0].split(".")[0] for use in plugin_uses(plan)}):
        location = module_location(module)
        if location is None or any(location.is_relative_to(root) for root in installed):
            continue
        if inside is not None and location.is_relative_to(inside):
            continue
        paths.append(str(location))
    return {"py_modules": paths} if paths else {}
