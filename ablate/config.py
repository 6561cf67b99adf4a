"""The trial config schema: the single source of defaults.

A *trial config* fully describes one SimCLR pretraining run plus its evaluation. It is a
typed, validated pydantic model; its ``resolved`` form (``TrialConfig.model_dump()``) is a
plain nested dict that can be logged, diffed and re-run: ``TrialConfig.model_validate(d)``
rebuilds the same run.

Every field carries its default here and nowhere else. The sweep spec (``ablate.spec``)
overrides fields by dotted path (``model.head``, ``train.batch_size``, ``augment.ops``).
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ablate import encoders, losses, ops
from ablate.data.sources import SOURCES
from ablate.registry import Registry, is_plugin_name

#: The built-in augmentation ops (``ablate.ops.OPS``): the paper's Figure 5 plus horizontal flip
#: (crop's usual companion) and grayscale. ``augment.ops`` also takes ``module.path:attr`` ops.
AUGMENTATION_OPS: tuple[str, ...] = ops.BUILTIN
#: The seven ops that the paper's Figure 5 pairs with each other.
FIGURE5_OPS: tuple[str, ...] = ops.FIGURE5
#: Named compositions. ``simclr`` is the ImageNet pipeline; the paper drops blur on CIFAR-10.
AUGMENTATION_PRESETS: dict[str, tuple[str, ...]] = ops.PRESETS

# Upper bounds of the sizes a spec may ask for. Each is far above any SimCLR ablation (the
# paper's largest: 8192-image batches, 3200 epochs, a 4x-wide ResNet-50, i.e. width 256) and
# far below what would exhaust memory while the plan is built or the data generated, so an
# absurd value (a typo, a billion) is refused by the schema before anything is allocated.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_STEPS_PER_EPOCH = 10_000_000
#: ``data.limit_train`` / ``data.limit_test``: rows of a source (ImageNet-21k has 14 million).
MAX_ROWS = 100_000_000
#: ``data.num_train`` / ``data.num_test`` of the synthetic source.
MAX_SYNTHETIC_IMAGES = 1_000_000
#: The synthetic images of both splits as uint8 arrays (``(num_train + num_test) x side² x 3``).
MAX_SYNTHETIC_BYTES = 8 * 2**30
#: ``data.image_size`` and ``data.synthetic_size``, in pixels.
MAX_IMAGE_SIDE = 1024
MAX_WIDTH = 512
#: ``model.vit.dim`` (ViT-H: 1280) and ``model.vit.depth`` / ``heads`` (ViT-H: 32 / 16).
MAX_VIT_DIM = 4096
MAX_VIT_DEPTH = 64
MAX_OUT_DIM = 8192
MAX_HIDDEN_DIM = 16_384
MAX_KNN_K = 10_000
MAX_PROBE_ITERATIONS = 100_000
MAX_WORKERS = 1024
MAX_CPUS_PER_WORKER = 1024.0
MAX_GPUS_PER_WORKER = 64.0
#: Seeds: numpy's and Optuna's generators take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


def _names_in(registry: Registry[Any]) -> Callable[[str], str]:
    """A field validator: ``name`` when ``registry`` knows it (or its plugin imports and fits).

    The registry's ``TypeError`` (a plugin that does not fit its axis) becomes a ``ValueError``,
    which pydantic reports at the field's dotted key like any other invalid value.
    """

    def validate(name: str) -> str:
        try:
            return registry.validate(name)
        except TypeError as error:
            raise ValueError(str(error)) from None

    return validate


#: An op of ``augment.ops`` / ``augment.base``: a registered name or ``module.path:attr``.
OpName = Annotated[str, AfterValidator(_names_in(ops.OPS))]


class ConfigurationError(ValueError):
    """A trial config the schema accepts but that cannot run as configured, e.g. a batch larger
    than its pretraining set (``ablate.data.check_batch``). Deterministic: a retry would fail
    the same way, so it is reported, never retried. The message starts with the dotted key
    (``train.batch_size: ...``), which ``key`` returns."""

    @property
    def key(self) -> str:
        return str(self).partition(": ")[0]


@functools.cache
def _number_kind(annotation: Any) -> str | None:
    """What a numeric field takes, for its error message: "an integer" or "a number" when
    ``annotation`` holds int or float (``int | None``, ``tuple[float, float]``, ``list[int]``,
    ``Annotated[...]``) and no bool; None for any other field."""
    found: set[type] = set()
    stack = [annotation]
    while stack:
        node = stack.pop()
        if isinstance(node, type) and issubclass(node, BaseModel):
            continue
        if typing.get_origin(node) is Literal:
            found.update(type(arg) for arg in typing.get_args(node))
            continue
        if node in (int, float, bool):
            found.add(node)
        stack.extend(typing.get_args(node))
    if bool in found or not found & {int, float}:
        return None
    return "an integer" if float not in found else "a number"


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


class TypedModel(BaseModel):
    """Numbers are numbers: a boolean given for an int or float field (``replicates: true``,
    ``--set train.epochs=yes``, an element of ``[0.5, true]``) raises instead of being read as
    1 or 0, as pydantic's lax mode would. Ints given for float fields stay valid
    (``temperature: 1``). Infinity and NaN are refused too. Base of every schema model (the
    trial config's sections here, the spec's in ``ablate.spec``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None or not _holds_bool(value):
            return value
        kind = _number_kind(cls.model_fields[info.field_name].annotation)
        if kind is not None:
            raise ValueError(f"a boolean (true/false) is not a number; give {kind}")
        return value


class StrictModel(TypedModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data


class DataConfig(StrictModel):
    """Where images come from and how they are split (see ``ablate.data``)."""

    name: Annotated[str, AfterValidator(_names_in(SOURCES))] = Field(
        "synthetic",
        description="Image source: synthetic shapes (no download), torchvision sets, an image "
        "folder, Parquet files, or your own as module.path:factory (ablate.data.sources).",
    )
    root: str | None = Field(
        None, description="torchvision datasets and image_folder: the root directory."
    )
    download: bool = Field(
        True, description="torchvision datasets: download when the files are missing."
    )
    train_path: str | None = Field(
        None, description="parquet: a file, directory or glob holding the training rows."
    )
    test_path: str | None = Field(
        None, description="parquet: the test rows (omit when a split column is used)."
    )
    image_column: str = Field("image", description="parquet: the column of encoded image bytes.")
    label_column: str = Field("label", description="parquet: the integer label column.")
    split_column: str | None = Field(
        None, description="parquet: a column whose values 'train'/'test' split one source."
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=MAX_IMAGE_SIDE,
        description="Resize every image to this side (required for mixed sizes), 8 to "
        f"{MAX_IMAGE_SIDE} px.",
    )
    limit_train: int | None = Field(
        None, ge=1, le=MAX_ROWS, description=f"Use only the first N train rows (N <= {MAX_ROWS:,})."
    )
    limit_test: int | None = Field(
        None, ge=1, le=MAX_ROWS, description=f"Use only the first N test rows (N <= {MAX_ROWS:,})."
    )
    # synthetic source
    num_train: int = Field(
        2048,
        ge=8,
        le=MAX_SYNTHETIC_IMAGES,
        description=f"synthetic: training images, 8 to {MAX_SYNTHETIC_IMAGES:,}; with `num_test` "
        f"and the image side, at most {MAX_SYNTHETIC_BYTES // 2**30} GiB of pixels "
        "((num_train + num_test) x side² x 3 bytes).",
    )
    num_test: int = Field(
        512,
        ge=8,
        le=MAX_SYNTHETIC_IMAGES,
        description=f"synthetic: test images, 8 to {MAX_SYNTHETIC_IMAGES:,}.",
    )
    num_classes: int = Field(4, ge=2, le=8, description="synthetic: classes (one shape each).")
    synthetic_size: int = Field(
        32,
        ge=8,
        le=MAX_IMAGE_SIDE,
        description=f"synthetic: image side in pixels, 8 to {MAX_IMAGE_SIDE}.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the synthetic images and of every split."
    )
    # splits
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Class-balanced share of train held out for ranking."
    )
    labelled_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="Class-balanced labelled subset for fine-tuning."
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="Normalisation mean; computed from the training images when unset."
    )
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None,
        description="Normalisation std; computed from the training images when unset (a "
        "channel's computed std is floored at 1/255, with a warning).",
    )

    @model_validator(mode="after")
    def _synthetic_fits_memory(self) -> DataConfig:
        if self.name != "synthetic":
            return self
        side = max(self.synthetic_size, self.image_size or 0)
        images = self.num_train + self.num_test
        needed = images * side * side * 3
        if needed > MAX_SYNTHETIC_BYTES:
            raise ValueError(
                f"data.num_train + data.num_test = {images:,} synthetic images of {side}x{side} "
                f"px (data.synthetic_size / data.image_size) take {needed / 2**30:,.1f} GiB; the "
                f"limit is {MAX_SYNTHETIC_BYTES // 2**30} GiB ((num_train + num_test) x side² x "
                f"3 bytes <= {MAX_SYNTHETIC_BYTES:,}): fewer or smaller images"
            )
        return self


# ----------------------------------------------------------------------------- model


class ViTConfig(StrictModel):
    """The Vision Transformer of ``model.arch: vit_tiny`` (Dosovitskiy et al., 2021); defaults:
    ViT-Ti (DeiT) with 4-px patches, an 8 x 8 grid on 32-px images."""

    patch_size: int = Field(
        4,
        ge=1,
        le=MAX_IMAGE_SIDE,
        description="Side of the square patches in pixels; must divide the image side.",
    )
    dim: int = Field(
        192,
        ge=4,
        le=MAX_VIT_DIM,
        description=f"Token width, a multiple of 4 and of `heads`, 4 to {MAX_VIT_DIM}; h's width.",
    )
    depth: int = Field(12, ge=1, le=MAX_VIT_DEPTH, description="Transformer blocks.")
    heads: int = Field(3, ge=1, le=MAX_VIT_DEPTH, description="Attention heads of each block.")
    mlp_ratio: float = Field(
        4.0, gt=0.0, le=16.0, description="Hidden width of each block's MLP, in units of `dim`."
    )
    pool: Literal["cls", "mean"] = Field(
        "cls", description="h: the [CLS] token (the paper's) or the mean of the patch tokens."
    )

    @model_validator(mode="after")
    def _dim_fits(self) -> ViTConfig:
        if self.dim % 4 or self.dim % self.heads:
            raise ValueError(
                f"model.vit.dim={self.dim} must be a multiple of 4 (its sine-cosine position "
                f"embedding) and of model.vit.heads={self.heads}"
            )
        return self


class ModelConfig(StrictModel):
    """Encoder and projection head (the axis of the paper's Figure 8)."""

    arch: Annotated[str, AfterValidator(_names_in(encoders.ENCODERS))] = Field(
        "resnet18",
        description="Encoder f(.); h is its pooled output. One of "
        f"{encoders.ENCODERS.valid_text()} (a factory of an encoder with `feat_dim`).",
    )
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar",
        description="ResNets: cifar: 3x3 stride-1 conv1, no max-pool (paper's CIFAR appendix).",
    )
    width: int = Field(
        64,
        ge=4,
        le=MAX_WIDTH,
        description=f"Base width of the ResNet (64 in torchvision), 4 to {MAX_WIDTH}.",
    )
    pretrained: bool = Field(
        False, description="ResNets: load torchvision ImageNet weights (width 64)."
    )
    vit: ViTConfig = Field(default_factory=ViTConfig)
    head: Literal["none", "linear", "nonlinear"] = Field(
        "nonlinear",
        description="Projection head g(.): none (z = h), linear, or nonlinear (one hidden ReLU "
        "layer), the paper's Figure 8.",
    )
    out_dim: int = Field(
        128,
        ge=1,
        le=MAX_OUT_DIM,
        description=f"Output dimension of a linear/nonlinear head, 1 to {MAX_OUT_DIM}.",
    )
    hidden_dim: int | None = Field(
        None,
        ge=1,
        le=MAX_HIDDEN_DIM,
        description="Hidden width of the nonlinear head, 1 to "
        f"{MAX_HIDDEN_DIM}; default: width of h.",
    )
    sync_batchnorm: bool = Field(False, description="Global BatchNorm across workers.")

    @model_validator(mode="after")
    def _pretrained_exists(self) -> ModelConfig:
        if self.pretrained and not encoders.ENCODERS.get(self.arch).meta.get("pretrained"):
            with_weights = [e.name for e in encoders.ENCODERS if e.meta.get("pretrained")]
            raise ValueError(
                f"model.pretrained=true: model.arch={self.arch} has no ImageNet weights (those "
                f"with weights: {', '.join(with_weights)}); set model.pretrained=false"
            )
        return self


# ----------------------------------------------------------------------------- augmentation


class CropParams(StrictModel):
    """Random resized crop: area scale and aspect ratio, then resize back to the input size."""

    p: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Probability of applying the op (each `*.p` below likewise).",
    )
    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="Area fraction range of the random resized crop."
    )
    ratio: tuple[float, float] = Field(
        (3.0 / 4.0, 4.0 / 3.0), description="Aspect-ratio range of the crop."
    )

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < lo <= hi, got {list(value)}")
        return value


class FlipParams(StrictModel):
    p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a horizontal flip.")


class ColorParams(StrictModel):
    """Color distortion of strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s) with p, then grayscale."""

    strength: float = Field(
        1.0, ge=0.0, description="Colour distortion strength s (1.0 ImageNet, 0.5 CIFAR-10)."
    )
    p: float = Field(0.8, ge=0.0, le=1.0, description="Probability of colour jitter.")
    grayscale_p: float = Field(
        0.2, ge=0.0, le=1.0, description="Probability of random grayscale inside colour distortion."
    )


class GrayscaleParams(StrictModel):
    p: float = Field(
        1.0, ge=0.0, le=1.0, description="Probability of the stand-alone grayscale op."
    )


class CutoutParams(StrictModel):
    """Zero a random square whose side is ``size`` times the image side."""

    p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of cutout.")
    size: tuple[float, float] = Field(
        (0.25, 0.5), description="Side range of the zeroed square, as a fraction of the image side."
    )


class SobelParams(StrictModel):
    p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of Sobel filtering.")


class NoiseParams(StrictModel):
    """Additive gaussian noise with a per-sample std drawn from ``std`` (pixel range [0, 1])."""

    p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of gaussian noise.")
    std: tuple[float, float] = Field(
        (0.05, 0.2), description="Range of the noise std (pixel range [0, 1])."
    )


class BlurParams(StrictModel):
    """Gaussian blur, kernel ``kernel_fraction`` of the side, sigma drawn from ``sigma``."""

    p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of gaussian blur.")
    sigma: tuple[float, float] = Field((0.1, 2.0), description="Range of the blur sigma.")
    kernel_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="Kernel side as a fraction of the image side."
    )


class RotateParams(StrictModel):
    """Rotation by a random multiple of 90 degrees, drawn from ``angles``."""

    p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of rotation.")
    angles: tuple[int, ...] = Field(
        (90, 180, 270), description="Angles (multiples of 90) to draw from."
    )

    @field_validator("angles")
    @classmethod
    def _multiples_of_90(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(a % 90 for a in value):
            raise ValueError(f"expected a non-empty list of multiples of 90, got {list(value)}")
        return value


class AugmentConfig(StrictModel):
    """The two-view augmentation pipeline (the axis of the paper's Figure 5).

    ``ops`` is an ordered list of op names or one preset name. In ``symmetric`` mode both views
    get ``base + ops`` independently; in ``asymmetric`` mode (the Figure 5 protocol) the first
    view gets ``base + ops`` and the second only ``base``.
    """

    ops: list[OpName] = Field(
        default_factory=lambda: list(AUGMENTATION_PRESETS["simclr_cifar"]),
        description="Ordered op names, or one preset: "
        + ", ".join(f"{name} ({', '.join(ops_) or 'no op'})" for name, ops_ in ops.PRESETS.items())
        + f"; `crop+color` spells a list. Ops: {ops.OPS.valid_text()} (see `augment.params`).",
    )
    mode: Literal["symmetric", "asymmetric"] = Field(
        "symmetric",
        description="symmetric: both views get base + ops; asymmetric (Figure 5): view 1 gets "
        "base + ops, view 2 only base.",
    )
    base: list[OpName] = Field(
        default_factory=list,
        description="Ops applied to both views before `ops` (asymmetric mode).",
    )
    normalize: bool = Field(True, description="Normalise views with the dataset mean/std.")
    crop: CropParams = Field(default_factory=CropParams)
    flip: FlipParams = Field(default_factory=FlipParams)
    color: ColorParams = Field(default_factory=ColorParams)
    grayscale: GrayscaleParams = Field(default_factory=GrayscaleParams)
    cutout: CutoutParams = Field(default_factory=CutoutParams)
    sobel: SobelParams = Field(default_factory=SobelParams)
    noise: NoiseParams = Field(default_factory=NoiseParams)
    blur: BlurParams = Field(default_factory=BlurParams)
    rotate: RotateParams = Field(default_factory=RotateParams)
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        validate_default=True,
        description="Parameters of plugin ops, keyed by the op's `module.path:attr`, validated "
        "by its `params_model` (every op of `ops`/`base` with a model gets its defaults filled "
        "in); built-in ops take theirs in the sections above.",
    )

    @field_validator("params")
    @classmethod
    def _plugin_params(cls, value: dict[str, dict[str, Any]], info: ValidationInfo) -> Any:
        named = (*info.data.get("ops", ()), *info.data.get("base", ()))
        used = [name for name in named if is_plugin_name(name)]
        resolved: dict[str, dict[str, Any]] = {}
        for name in [*value, *(n for n in used if n not in value)]:
            if name in ops.OPS.names():
                raise ValueError(
                    f"{name!r}: keys are plugin ops named module.path:attr; the parameters of "
                    f"the built-in {name!r} go in augment.{name}"
                )
            if not is_plugin_name(name):
                raise ValueError(f"augment.params: {ops.OPS.unknown(name)}")
            try:
                model = ops.params_model(_names_in(ops.OPS)(name))
            except ValueError as error:
                raise ValueError(f"{name!r}: {error}") from None
            given = value.get(name, {})
            if model is None:
                if given:
                    raise ValueError(f"{name!r} takes no parameters (no params_model), got {given}")
                if name in value:
                    resolved[name] = {}
                continue
            try:
                resolved[name] = model.model_validate(given).model_dump(mode="json")
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in error.errors()
                )
                raise ValueError(f"{name!r} ({model.__name__}): {problems}") from None
        return resolved

    @field_validator("ops", "base", mode="before")
    @classmethod
    def _expand_preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value in AUGMENTATION_PRESETS:
                return list(AUGMENTATION_PRESETS[value])
            if "+" in value:  # "crop+color", the spelling of run names and reports
                return value.split("+")
            return [value]
        return value


# ----------------------------------------------------------------------------- loss, optimiser


class LossConfig(StrictModel):
    """Contrastive objective (the paper's Table 2)."""

    name: Annotated[str, AfterValidator(_names_in(losses.LOSSES))] = Field(
        "nt_xent",
        description=f"The objective: {losses.LOSSES.valid_text()} (nt_xent is the paper's).",
    )
    temperature: float = Field(
        0.5, gt=0.0, description="Temperature tau of the cosine similarities."
    )
    margin: float = Field(0.5, ge=0.0, description="margin_triplet only.")


class OptimConfig(StrictModel):
    """Optimiser and schedule: linear warmup then cosine decay, lr scaled by batch size."""

    name: Literal["lars", "sgd", "adamw"] = Field(
        "lars", description="lars (the paper's), sgd or adamw."
    )
    base_lr: float = Field(0.3, gt=0.0, description="Learning rate before scaling.")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(
        "linear", description="linear: base_lr*B/256; sqrt: base_lr*sqrt(B); none: base_lr."
    )
    weight_decay: float = Field(
        1e-6, ge=0.0, description="L2 weight decay (biases and BatchNorm excluded)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum of lars/sgd.")
    lars_eta: float = Field(1e-3, gt=0.0, description="LARS trust coefficient.")
    warmup_epochs: float = Field(
        10.0, ge=0.0, le=MAX_EPOCHS, description="Linear warmup; lasts min(warmup_epochs, epochs)."
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="adamw only.")


# ----------------------------------------------------------------------------- training


class FaultConfig(StrictModel):
    """Fault injection, to prove recovery paths (tests and drills); off by default."""

    raise_once_at_epoch: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="A worker raises once after this epoch's checkpoint."
    )
    kill_once_at_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Rank 0's worker process SIGKILLs itself once, after this epoch's "
        "checkpoint is registered (a real crash: Ray Train restarts the worker group from it).",
    )
    nan_loss_at_epoch: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="Make the loss NaN here."
    )
    stop_at_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Rank 0's worker process SIGSTOPs itself after this epoch's report (a hung "
        "worker: the stall watchdog, resources.stall_timeout_s, ends the trial).",
    )
    crash_at_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Rank 0's worker process SIGSEGVs itself as this epoch starts, in every "
        "worker group (a native crash that repeats: not retried a second time).",
    )
    raise_at_start: str | None = Field(
        None, description="Raise RuntimeError(text) before training (e.g. a simulated OOM)."
    )


class TrainConfig(StrictModel):
    epochs: int = Field(
        100,
        ge=1,
        le=MAX_EPOCHS,
        description=f"Pretraining epochs (ASHA's time unit), 1 to {MAX_EPOCHS:,}.",
    )
    batch_size: int = Field(
        256,
        ge=2,
        le=MAX_BATCH_SIZE,
        description=f"Global batch (all workers together), 2 to {MAX_BATCH_SIZE:,}.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seeds weights, augmentation and shuffling (0 to 2**32 - 1; replicate r "
        "runs with seed + r).",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with native bf16."
    )
    channels_last: bool = Field(
        True, description="Channels-last memory format (faster convolutions)."
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="torch.compile mode of the model (encoder + head; true = default, false = "
        "off). off: eager. default: Inductor kernels; on an H200 (ResNet-18, batch 512) it "
        "measured slower than eager (21.7 vs 17.7 ms a step). reduce-overhead: also replays "
        "the model's forward and backward as CUDA graphs; can pay only where a step is bound by "
        "kernel launches (small models or batches on a GPU), same as default on the CPU. "
        "max-autotune: also searches kernel configurations (minutes of compilation per trial). "
        "The augmentation (its torch.Generator), the loss and the optimiser run eagerly outside "
        "the graph, so no random draw is ever captured in a CUDA graph. No mode is measured to "
        "pay yet on the CPU.",
    )
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS_PER_EPOCH,
        description="Cap the steps of an epoch (quick experiments).",
    )
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between checkpoints.")
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, value: Any) -> Any:
        # Specs written before the modes existed say true / false.
        if isinstance(value, bool):
            return "default" if value else "off"
        return value


# ----------------------------------------------------------------------------- evaluation


class ProbeConfig(StrictModel):
    """Linear probe on frozen, cached encoder features."""

    solver: Literal["lbfgs", "sgd"] = Field(
        "lbfgs", description="Optimiser of the final linear probe."
    )
    max_iter: int = Field(
        100, ge=1, le=MAX_PROBE_ITERATIONS, description="L-BFGS iterations or SGD epochs."
    )
    weight_decay: float = Field(1e-3, ge=0.0, description="L2 penalty on the weights.")
    lr: float = Field(0.1, gt=0.0, description="sgd only.")
    batch_size: int = Field(1024, ge=1, le=MAX_BATCH_SIZE, description="sgd only.")
    standardize: bool = Field(True, description="Standardise features with train statistics.")
    epochs: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        default_factory=list, description="Extra pretraining epochs at which to probe."
    )


class SemiSupervisedConfig(StrictModel):
    """Fine-tune encoder + linear layer on a labelled fraction (the paper's 1%/10% result)."""

    enabled: bool = Field(
        False, description="Fine-tune on `data.labelled_fraction` after pretraining."
    )
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description="Fine-tuning epochs.")
    lr: float = Field(0.05, gt=0.0, description="Fine-tuning learning rate.")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE, description="Fine-tuning batch size.")


class EvalConfig(StrictModel):
    eval_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between kNN evaluations.")
    knn_k: int = Field(
        200,
        ge=1,
        le=MAX_KNN_K,
        description="Neighbours of the kNN monitor (val/knn_top1, the ranking metric).",
    )
    knn_temperature: float = Field(0.1, gt=0.0, description="Temperature of the kNN vote weights.")
    online_probe: bool = Field(True, description="Linear classifier on detached h during training.")
    online_probe_lr: float = Field(
        0.1, gt=0.0, description="Learning rate of the online linear probe."
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    semi_supervised: SemiSupervisedConfig = Field(default_factory=SemiSupervisedConfig)


# ----------------------------------------------------------------------------- resources


class ResourcesConfig(StrictModel):
    """The worker group of one trial."""

    num_workers: int = Field(
        1,
        ge=1,
        le=MAX_WORKERS,
        description="Ray Train workers (DDP processes) of one trial; the global batch is split "
        "over them.",
    )
    cpus_per_worker: float = Field(
        1.0,
        gt=0.0,
        le=MAX_CPUS_PER_WORKER,
        description="CPUs each worker reserves (also its torch threads).",
    )
    gpus_per_worker: float = Field(
        0.0, ge=0.0, le=MAX_GPUS_PER_WORKER, description="Fractions pack trials on one GPU."
    )
    stall_timeout_s: float = Field(
        600.0,
        gt=0.0,
        le=7 * 24 * 3600.0,
        description="Seconds without any sign of progress from a running trial's workers (a "
        "training step, an evaluation batch or an epoch's report) after which the trial ends "
        "failed with the reason 'stalled', its worker group is torn down and the sweep goes on.",
    )
    schedule_timeout_s: float = Field(
        900.0,
        gt=0.0,
        le=7 * 24 * 3600.0,
        description="Seconds a trial's worker group may wait for the cluster to hold it (its "
        "placement group) before the sweep says what holds the resources and ends with an "
        "error, instead of waiting forever.",
    )


# ----------------------------------------------------------------------------- trial


class TrialConfig(StrictModel):
    """Everything one trial needs; ``model_dump()`` is the resolved config that gets logged."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _batch_fits_workers(self) -> TrialConfig:
        workers = self.resources.num_workers
        if self.train.batch_size % workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must be divisible by "
                f"resources.num_workers={workers}"
            )
        if self.model.sync_batchnorm and workers > 1 and self.resources.gpus_per_worker == 0:
            raise ValueError(
                "model.sync_batchnorm=true with several workers needs GPU workers (torch's "
                "SyncBatchNorm has no CPU kernel): set resources.gpus_per_worker > 0 or "
                "model.sync_batchnorm=false"
            )
        return self


def resolve(config: dict[str, Any] | TrialConfig) -> dict[str, Any]:
    """Validate ``config`` and return the plain, JSON-able resolved dict (defaults filled)."""
    model = config if isinstance(config, TrialConfig) else TrialConfig.model_validate(config)
    return model.model_dump(mode="json")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"model.head": "nonlinear", ...}`` (lists and tuples kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def set_dotted(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``path="a.b"``, creating dicts on the way."""
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(f"{path}: {part!r} is not a section")
    node[leaf] = value
