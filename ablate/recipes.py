"""Named recipes: complete, citable base configurations of SimCLR on CIFAR-10.

A recipe is a set of overrides on the ``TrialConfig`` defaults (``ablate.config``) that
reproduces one published CIFAR-10 setup, together with where it comes from, the number it
reached and how that number was measured. A sweep names one as its base with ``recipe: NAME``
at the top level of its YAML; its base config is then::

    TrialConfig defaults <- recipe overrides <- the YAML's sections <- --set

Recipes set the model, augmentation, loss, optimiser, batch, epochs and kNN monitor; never the
data source, the resources or the evaluation schedule, which belong to the sweep. What a
source does that this schema cannot express is listed in the recipe's ``deviations``.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from ablate.config import TrialConfig


@dataclass(frozen=True)
class Recipe:
    """One published configuration.

    ``overrides`` is a nested dict on the ``TrialConfig`` sections (``{"optim": {...}}``);
    ``published_top1`` is a fraction in [0, 1] (None when the source has no ResNet-18 figure),
    reached after ``published_epochs`` with the evaluation ``protocol``; ``metric`` names the
    ``ablate`` metric that measures the same thing (``test/knn_top1``, ``test/online_top1``,
    ``test/probe_top1``).
    """

    name: str
    title: str
    source: str  # repository + path (or paper + section) the values were read from
    published: str  # the published result, in words
    published_top1: float | None
    published_epochs: int | None
    protocol: str  # how the published number was measured
    metric: str  # the ablate metric closest to that protocol
    overrides: dict[str, Any]
    deviations: tuple[str, ...] = field(default_factory=tuple)

    def config(self) -> dict[str, Any]:
        """The resolved trial config of the recipe alone (defaults <- overrides)."""
        return TrialConfig.model_validate(self.overrides).model_dump(mode="json")


_CIFAR_RESNET18 = {"arch": "resnet18", "stem": "cifar", "width": 64}

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="simclr_paper_cifar",
            title="SimCLR paper, CIFAR-10 appendix (Chen et al. 2020, App. B.9)",
            source="Chen et al. 2020, 'A Simple Framework for Contrastive Learning of Visual "
            "Representations', Appendix B.9 (CIFAR-10); lr rule 0.3 x B/256 and 10 warmup "
            "epochs as the paper's Sec. 2.2 / App. B.1 and this project's shipped sweeps",
            published="94.0% linear evaluation with ResNet-50 (App. B.9); the paper gives no "
            "ResNet-18 figure",
            published_top1=None,
            published_epochs=None,
            protocol="offline linear classifier on frozen features (L2-regularised), last epoch",
            metric="test/probe_top1",
            overrides={
                "model": {**_CIFAR_RESNET18, "head": "nonlinear", "out_dim": 128},
                "augment": {"ops": ["crop", "flip", "color"], "color": {"strength": 0.5}},
                "loss": {"name": "nt_xent", "temperature": 0.5},
                "optim": {
                    "name": "lars",
                    "base_lr": 0.3,
                    "lr_scaling": "linear",
                    "weight_decay": 1e-6,
                    "momentum": 0.9,
                    "warmup_epochs": 10,
                },
                "train": {"batch_size": 512, "epochs": 100},
                "eval": {"knn_k": 200, "knn_temperature": 0.1},
            },
            deviations=(
                "The paper's B.9 grid also tries lr 0.5/1.0/1.5 and temperature 0.1/0.5/1.0; "
                "this recipe keeps lr 0.3 x B/256 as the shipped sweeps did.",
            ),
        ),
        Recipe(
            name="lightly_cifar10",
            title="lightly CIFAR-10 benchmark, SimCLR",
            source="lightly-ai/lightly docs/source/getting_started/benchmarks/"
            "cifar10_benchmark.py (SimCLRModel; results table updated 27.03.2023)",
            published="84.8% test kNN top-1 at 200 epochs, 87.9% at 800 (batch 512)",
            published_top1=0.848,
            published_epochs=200,
            protocol="weighted kNN (k=200, t=0.1) of test images against the training set, "
            "best epoch over training",
            metric="test/knn_top1",
            overrides={
                # SimCLRProjectionHead(512, 512, 128): hidden width = width of h (the default).
                "model": {**_CIFAR_RESNET18, "head": "nonlinear", "out_dim": 128},
                # SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
                "augment": {"ops": ["crop", "flip", "color"], "color": {"strength": 0.5}},
                "loss": {"name": "nt_xent", "temperature": 0.5},  # NTXentLoss() default
                # SGD(lr=6e-2 * B/128, momentum=0.9, weight_decay=5e-4) = 0.12 x B/256
                "optim": {
                    "name": "sgd",
                    "base_lr": 0.12,
                    "lr_scaling": "linear",
                    "weight_decay": 5e-4,
                    "momentum": 0.9,
                    "warmup_epochs": 0,
                },
                "train": {"batch_size": 512, "epochs": 200},
                "eval": {"knn_k": 200, "knn_temperature": 0.1},
            },
            deviations=(
                "lightly decays every parameter; ablate exempts BatchNorm and biases.",
                "lightly steps the cosine schedule once per epoch; ablate once per step.",
                "lightly normalises with ImageNet statistics; ablate with the dataset's.",
            ),
        ),
        Recipe(
            name="solo_learn_cifar",
            title="solo-learn CIFAR-10 SimCLR",
            source="vturrisi/solo-learn scripts/pretrain/cifar/simclr.sh (the bash recipe "
            "behind the README's CIFAR-10 table; the later simclr.yaml keeps lr 0.4, "
            "temperature 0.2 and the 2048 -> 256 projector but says weight_decay 1e-4)",
            published="90.74% online linear top-1 at 1000 epochs (batch 256)",
            published_top1=0.9074,
            published_epochs=1000,
            protocol="online linear classifier trained beside pretraining (detached features), "
            "evaluated on the test split, last epoch",
            metric="test/online_top1",
            overrides={
                "model": {
                    **_CIFAR_RESNET18,
                    "head": "nonlinear",
                    "hidden_dim": 2048,
                    "out_dim": 256,
                },
                # brightness/contrast/saturation 0.8, hue 0.2 = strength 1.0; no blur.
                "augment": {"ops": ["crop", "flip", "color"], "color": {"strength": 1.0}},
                "loss": {"name": "nt_xent", "temperature": 0.2},
                "optim": {
                    "name": "lars",
                    "base_lr": 0.4,
                    "lr_scaling": "linear",
                    "weight_decay": 1e-5,
                    "momentum": 0.9,
                    "lars_eta": 0.02,
                    "warmup_epochs": 10,
                },
                "train": {"batch_size": 256, "epochs": 1000},
                "eval": {"knn_k": 200, "knn_temperature": 0.1, "online_probe_lr": 0.1},
            },
            deviations=(
                "solo-learn clips the LARS trust ratio (clip_lr); ablate's LARS does not.",
                "solo-learn's online classifier sees augmented views; ablate's sees the "
                "first view's detached h, which is augmented alike.",
            ),
        ),
        Recipe(
            name="simclr_google_cifar",
            title="google-research/simclr README, CIFAR-10 single-GPU command",
            source="google-research/simclr README.md ('Pretraining': run.py "
            "--train_batch_size=512 --train_epochs=1000 --learning_rate=1.0 "
            "--weight_decay=1e-4 --temperature=0.5 --use_blur=False "
            "--color_jitter_strength=0.5 --resnet_depth=18)",
            published="about 91% linear evaluation at 1000 epochs (batch 512)",
            published_top1=0.91,
            published_epochs=1000,
            protocol="linear head fine-tuned on frozen features (momentum SGD, 100 epochs), "
            "test split, last epoch",
            metric="test/probe_top1",
            overrides={
                "model": {**_CIFAR_RESNET18, "head": "nonlinear", "out_dim": 128},
                "augment": {"ops": ["crop", "flip", "color"], "color": {"strength": 0.5}},
                "loss": {"name": "nt_xent", "temperature": 0.5},
                # learning_rate_scaling defaults to linear (lr x B/256), warmup 10 epochs.
                "optim": {
                    "name": "lars",
                    "base_lr": 1.0,
                    "lr_scaling": "linear",
                    "weight_decay": 1e-4,
                    "momentum": 0.9,
                    "warmup_epochs": 10,
                },
                "train": {"batch_size": 512, "epochs": 1000},
                "eval": {"knn_k": 200, "knn_temperature": 0.1},
            },
            deviations=(
                "The reference head has 3 layers with BatchNorm (SimCLRv2 code); ablate's "
                "nonlinear head has one hidden layer.",
                "The reference NT-Xent (objective.py add_contrastive_loss) is the batch mean of "
                "loss_a + loss_b, the sum of both directions: twice ablate's mean over the 2N "
                "views. Under LARS the trust ratio cancels the gradient's scale, so the update "
                "follows g + (wd/2) w: the reference behaves like half this recipe's weight "
                "decay (5e-5 here).",
                "The reference LARS (lars_optimizer.py) adds wd * w to the gradient first and "
                "takes trust = eta ||w|| / ||g + wd w||; ablate's (You et al. 2017, as "
                "solo-learn) takes eta ||w|| / (||g|| + wd ||w||), never larger (triangle "
                "inequality). On a ResNet-18 at wd 1e-4 the reference's is up to 0.6% larger "
                "at initialisation and up to 36% once ||g|| has shrunk 100-fold "
                "(benchmarks/lars_trust.py).",
            ),
        ),
    )
}

RECIPE_NAMES: tuple[str, ...] = tuple(RECIPES)


class UnknownRecipe(KeyError):
    """A recipe name that is not in ``RECIPES``; ``str()`` is the user-facing message."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; raises ``UnknownRecipe`` with a did-you-mean and the names."""
    if name in RECIPES:
        return RECIPES[name]
    hint = difflib.get_close_matches(str(name), RECIPE_NAMES, n=1)
    did = f"; did you mean {hint[0]!r}?" if hint else ""
    raise UnknownRecipe(f"unknown recipe {name!r}{did} valid: {', '.join(RECIPE_NAMES)}")


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """A new nested dict: ``base`` with ``top`` laid over it, section by section (``top``'s
    leaves win; lists are replaced, not concatenated)."""
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
