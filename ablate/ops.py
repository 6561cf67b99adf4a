"""Augmentation ops by name: the registry of the ``augment.ops`` axis (Chen et al., 2020, Fig. 5).

:data:`OPS` maps each op name a spec may put in ``augment.ops`` / ``augment.base`` to its
implementation and its parameter model. A built-in op is named by the import path of its
implementation in :mod:`ablate.augment` (``"ablate.augment:crop"``) and loaded on first use, so
that this module, and the trial-config schema that validates names against it, import no torch
(the sweep driver validates every trial config without it). Its parameters are its section of
``AugmentConfig`` (``augment.crop``, ``augment.color``, ...).

A user's op is named ``module.path:attr`` (``examples.my_op:solarize``). ``attr`` is a batched
op::

    op(x, generator, params) -> y

``x``: ``(B, C, H, W)`` float in [0, 1] on any device, never modified in place; ``generator``:
a ``torch.Generator`` on ``x``'s device, the op's only source of randomness; ``params``: an
instance of ``op.params_model`` (a pydantic model class, optional: without it ``params`` is
None); ``y``: a new ``(B, C, H, W)`` float tensor in [0, 1] on ``x``'s device. The op applies
to each sample independently. Its parameters are given under ``augment.params`` keyed by its
name (``augment.params: {"examples.my_op:solarize": {threshold: 0.5}}``) and validated by
``params_model``; the resolved config holds them with every default filled in. An instance of
:class:`ablate.augment.AugmentOp` (``sample``/``apply`` halves) is accepted as well, its
``params_type`` standing for ``params_model``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ablate.registry import Entry, Registry, import_plugin

#: Named compositions. ``simclr`` is the ImageNet pipeline; the paper drops blur on CIFAR-10.
PRESETS: dict[str, tuple[str, ...]] = {
    "simclr": ("crop", "flip", "color", "blur"),
    "simclr_cifar": ("crop", "flip", "color"),
    "none": (),
}


def _check_plugin(name: str, component: Any) -> Entry[Any]:
    """A plugin op must be callable; its ``params_model``, when given, a pydantic model class.

    Raises ``TypeError`` naming what is wrong and what an op looks like."""
    shape = (
        "an op is called as op(x (B, C, H, W) float in [0, 1], generator, params) -> (B, C, H, W)"
    )
    if isinstance(component, type) or not callable(component):
        raise TypeError(
            f"{name} is {type(component).__name__} {component!r}, not a batched op: {shape}"
        )
    params = getattr(component, "params_model", None)
    if params is None and all(hasattr(component, a) for a in ("sample", "apply", "params_type")):
        params = component.params_type  # an ablate.augment.AugmentOp
    if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(
            f"{name}.params_model is {params!r}; it must be a pydantic BaseModel class (the "
            "op's parameters, given under augment.params) or absent"
        )
    description = " ".join(((component.__doc__ or "").strip().split("\n\n") or [""])[0].split())
    return Entry(name, component, description, {"params": params}, plugin=True)


OPS: Registry[Any] = Registry("augmentation op", "augment.ops", check=_check_plugin)

for _name, _description in (
    ("crop", "Random resized crop (area `scale`, aspect `ratio`), resized back to the input."),
    ("flip", "Horizontal flip."),
    ("color", "Colour distortion of strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s), then grayscale."),
    ("grayscale", "Grayscale (luma copied to the three channels)."),
    ("cutout", "Zero a random square, its side a fraction `size` of the image side."),
    ("sobel", "Sobel gradient magnitude of the luma."),
    ("noise", "Additive gaussian noise, std drawn from `std`."),
    ("blur", "Gaussian blur, sigma drawn from `sigma`."),
    ("rotate", "Rotation by a random multiple of 90 degrees drawn from `angles`."),
):
    OPS.add(_name, f"ablate.augment:{_name}", _description, section=_name)

#: The built-in ops: the seven of the paper's Figure 5 plus horizontal flip and grayscale.
BUILTIN: tuple[str, ...] = OPS.names()
#: The seven ops that the paper's Figure 5 pairs with each other.
FIGURE5: tuple[str, ...] = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")


def params_model(name: str) -> type[BaseModel] | None:
    """The parameter model of the plugin op ``name`` (None: it takes none). Built-in ops keep
    their parameters in their own ``augment.<name>`` section; for them this is None too.
    Raises as :meth:`Registry.get` does."""
    return OPS.get(name).meta.get("params")


def load(name: str) -> Any:
    """The implementation of op ``name``: a built-in's object in :mod:`ablate.augment` (imported
    here, on first use) or the plugin's op. Raises as :meth:`Registry.get` does."""
    entry = OPS.get(name)
    return import_plugin(entry.component) if isinstance(entry.component, str) else entry.component
