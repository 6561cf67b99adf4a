"""Contrastive losses by name: the registry of the ``loss.name`` axis (SimCLR's Table 2).

Each entry is a factory ``factory(cfg: LossConfig) -> loss`` where ``loss`` is a
``torch.nn.Module`` called as ``loss(z1 (N, D), z2 (N, D)) -> scalar`` on the projections of
the two views of N images (see :mod:`ablate.loss`, which builds from this registry). The
built-ins import their implementation when called, so that this module, and the trial-config
schema that validates ``loss.name`` against it, import no torch.

A user's loss is named ``module.path:factory``; ``factory`` receives the whole ``loss`` section
(``temperature``, ``margin``) and returns such a module. It must hold no state the optimiser
should train unless that is intended: its parameters are not optimised (only the model's are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.registry import Entry, Registry

if TYPE_CHECKING:
    from torch import nn

    from ablate.config import LossConfig


def _check_plugin(name: str, component: Any) -> Entry[Any]:
    """A plugin loss must be a callable factory ``factory(cfg: LossConfig) -> nn.Module``."""
    if not callable(component):
        raise TypeError(
            f"{name} is {type(component).__name__} {component!r}, not a loss factory: a loss "
            "is factory(cfg: LossConfig) -> module called as loss(z1 (N, D), z2 (N, D)) -> scalar"
        )
    description = " ".join(((component.__doc__ or "").strip().split("\n\n") or [""])[0].split())
    return Entry(name, component, description, {}, plugin=True)


LOSSES: Registry[Any] = Registry("loss", "loss.name", check=_check_plugin)


@LOSSES.register("nt_xent", "NT-Xent, the paper's normalised temperature-scaled cross-entropy.")
def nt_xent(cfg: LossConfig) -> nn.Module:
    from ablate.loss import NTXentLoss

    return NTXentLoss(cfg.temperature)


@LOSSES.register("nt_logistic", "NT-Logistic: a sigmoid on temperature-scaled similarities.")
def nt_logistic(cfg: LossConfig) -> nn.Module:
    from ablate.loss import NTLogisticLoss

    return NTLogisticLoss(cfg.temperature)


@LOSSES.register("margin_triplet", "Margin triplet loss on cosine similarities (`margin`).")
def margin_triplet(cfg: LossConfig) -> nn.Module:
    from ablate.loss import MarginTripletLoss

    return MarginTripletLoss(cfg.margin)
