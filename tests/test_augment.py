"""Batched augmentations: per-op contracts, torchvision parity, composition and two views."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from pydantic import ValidationError

from ablate import augment, ops
from ablate.augment import (
    AugmentOp,
    build_ops,
    build_pipeline,
    normalize,
    sample_crop_boxes,
    to_float,
)
from ablate.config import AUGMENTATION_OPS, AugmentConfig, CropParams, RotateParams

SIDE = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: The built-in ops by name, as the pipeline loads them from the registry.
OPS = {name: ops.load(name) for name in AUGMENTATION_OPS}


def images(batch: int = 8, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Random, non-symmetric, non-constant RGB images in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, SIDE, SIDE, generator=g) * 0.9 + 0.05
    return x.to(device)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def params_with(name: str, **update: float) -> object:
    return getattr(AugmentConfig(), name).model_copy(update=update)


def always(name: str) -> object:
    """The op's params with every random application switched on (and nothing extra)."""
    if name == "color":
        return params_with("color", p=1.0, grayscale_p=0.0)
    if name == "blur":  # sigma near 0.1 is (correctly) almost the identity
        return params_with("blur", p=1.0, sigma=(0.5, 2.0))
    return params_with(name, p=1.0)


def never(name: str) -> object:
    if name == "color":
        return params_with("color", p=0.0, grayscale_p=0.0)
    return params_with(name, p=0.0)


def test_registry_loads_each_builtin_with_its_config_section() -> None:
    assert ops.OPS.names() == AUGMENTATION_OPS
    for name, op in OPS.items():
        assert isinstance(op, AugmentOp) and op is getattr(augment, name)
        assert op.name == name == ops.OPS.get(name).meta["section"]
        assert isinstance(getattr(AugmentConfig(), name), op.params_type)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_op_keeps_shape_dtype_device_and_range(name: str, device: str) -> None:
    x = images(device=device)
    out = OPS[name](x, gen(device=device), always(name))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Default params too (p < 1 for some ops).
    out = OPS[name](x, gen(1, device=device))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_p0_is_exact_identity_and_input_untouched(name: str) -> None:
    x = images()
    before = x.clone()
    out = OPS[name](x, gen(), never(name))
    assert torch.equal(out, before)
    assert torch.equal(x, before)  # ops never modify their input


@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_p1_changes_every_input(name: str) -> None:
    x = images(batch=16)
    before = x.clone()
    out = OPS[name](x, gen(), always(name))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.all(), f"{name}: unchanged samples {(~changed).nonzero().flatten().tolist()}"
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_same_seed_same_output_other_seed_differs(name: str) -> None:
    x = images(batch=16)
    params = params_with(name, p=0.5)
    first = OPS[name](x, gen(7), params)
    again = OPS[name](x, gen(7), params)
    other = OPS[name](x, gen(8), params)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_samples_of_a_batch_get_their_own_parameters(name: str) -> None:
    # One image repeated: any difference between outputs comes from per-sample draws.
    x = images(batch=1).expand(32, -1, -1, -1).contiguous()
    params = params_with(name, p=0.5) if name in ("grayscale", "sobel") else None
    out = OPS[name](x, gen(), params)
    distinct = {tuple(row.flatten().round(decimals=5).tolist()) for row in out}
    assert len(distinct) > 1
    if name in ("crop", "color", "cutout", "noise"):  # continuous draws, applied to (nearly) all
        assert len(distinct) >= 16


@pytest.mark.parametrize("name", AUGMENTATION_OPS)
def test_where_path_equals_row_subset_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator code path (compute all rows, then select) gives the CPU path's result."""
    x = images(batch=16)
    params = params_with(name, p=0.5)
    subset = OPS[name](x, gen(3), params)
    monkeypatch.setattr(augment, "_use_row_subsets", lambda device: False)
    selected = OPS[name](x, gen(3), params)
    torch.testing.assert_close(selected, subset, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- crop


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.3, 0.5), (0.9, 1.0)])
def test_crop_boxes_respect_scale_ratio_and_bounds(scale: tuple[float, float]) -> None:
    params = CropParams(scale=scale)
    height, width = 32, 24
    boxes = sample_crop_boxes(4096, height, width, params, gen())
    top, left, box_h, box_w = boxes.unbind(1)
    area = box_h * box_w / (height * width)
    assert area.min() >= scale[0] - 1e-5 and area.max() <= scale[1] + 1e-5
    ratio = box_w / box_h
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert top.min() >= 0 and left.min() >= 0
    assert (top + box_h).max() <= height + 1e-4 and (left + box_w).max() <= width + 1e-4
    # The draws spread over the range, not a constant.
    assert area.std() > 0.05 * (scale[1] - scale[0])


def test_crop_of_the_full_box_is_identity_and_of_a_half_is_its_upsampling() -> None:
    x = images(batch=2)
    full = torch.tensor([[0.0, 0.0, SIDE, SIDE]] * 2)
    torch.testing.assert_close(augment.resized_crop(x, full), x, atol=1e-5, rtol=0)
    # Left half of the image, stretched to the whole width: torch's bilinear 2x upsampling of
    # that half, except at the right edge, where we sample the image beyond the box (a
    # continuous crop) and interpolate clamps to the half's last column.
    half = torch.tensor([[0.0, 0.0, SIDE, SIDE / 2]] * 2)
    expected = torch.nn.functional.interpolate(
        x[..., : SIDE // 2], size=(SIDE, SIDE), mode="bilinear", align_corners=False
    )
    ours = augment.resized_crop(x, half)
    torch.testing.assert_close(ours[..., :-1], expected[..., :-1], atol=1e-5, rtol=0)
    edge = 0.75 * x[..., SIDE // 2 - 1] + 0.25 * x[..., SIDE // 2]
    torch.testing.assert_close(ours[..., -1], edge, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- colour


def test_hue_matches_torchvision() -> None:
    x = images(batch=12)
    shift = torch.linspace(-0.5, 0.5, 12)
    ours = augment.adjust_hue(x, shift)
    theirs = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(12)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_color_jitter_matches_torchvision_per_sample_order() -> None:
    x = images(batch=24)
    factors, order, _, _ = augment.sample_color_params(24, AugmentConfig().color, gen(), x.device)
    jitter = torch.arange(24) % 5 != 0  # some samples left alone
    ours = augment.color_jitter(x, factors, order, jitter)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    expected = []
    for i in range(24):
        image = x[i]
        if jitter[i]:
            for op in order[i].tolist():
                image = ops[op](image, float(factors[i, op]))
        expected.append(image)
    torch.testing.assert_close(ours, torch.stack(expected), atol=2e-5, rtol=0)
    # Orders really differ between samples.
    assert len({tuple(row) for row in order.tolist()}) > 5


def test_color_factor_ranges_follow_strength() -> None:
    params = AugmentConfig(color={"strength": 0.5}).color
    factors, _, jitter, gray = augment.sample_color_params(4000, params, gen(), torch.device("cpu"))
    for column in range(3):
        assert factors[:, column].min() >= 0.6 - 1e-6 and factors[:, column].max() <= 1.4 + 1e-6
    assert factors[:, 3].abs().max() <= 0.1 + 1e-6
    assert abs(jitter.float().mean().item() - 0.8) < 0.03
    assert abs(gray.float().mean().item() - 0.2) < 0.03


def test_grayscale_makes_channels_equal() -> None:
    out = OPS["grayscale"](images(), gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    gray = OPS["color"](images(batch=32), gen(), params_with("color", p=0.0, grayscale_p=1.0))
    assert torch.equal(gray[:, 0], gray[:, 2])


# ----------------------------------------------------------------------------- the rest


def test_blur_matches_torchvision_and_both_kernels_paths_agree() -> None:
    x = images(batch=6)
    sigma = torch.linspace(0.1, 2.0, 6)
    for size in (3, 5, 9):
        kernels = augment.gaussian_kernels(sigma, size)
        shifted = augment._blur(x, kernels, grouped_conv=False)
        grouped = augment._blur(x, kernels, grouped_conv=True)
        theirs = torch.stack(
            [TF.gaussian_blur(x[i], [size, size], [float(sigma[i])] * 2) for i in range(6)]
        )
        torch.testing.assert_close(shifted, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(grouped, theirs, atol=1e-5, rtol=0)
    assert augment.blur_kernel_size(32, 0.1) == 3
    assert augment.blur_kernel_size(224, 0.1) == 23


def test_rotation_is_exactly_one_of_the_quarter_turns() -> None:
    x = images(batch=64)
    out = OPS["rotate"](x, gen())
    seen = set()
    for i in range(64):
        matches = [k for k in (0, 1, 2, 3) if torch.equal(out[i], torch.rot90(x[i], k, (-2, -1)))]
        assert len(matches) == 1 and matches[0] != 0
        seen.add(matches[0])
    assert seen == {1, 2, 3}
    only_half_turns = OPS["rotate"](x, gen(), RotateParams(angles=(180,)))
    torch.testing.assert_close(only_half_turns, torch.rot90(x, 2, (-2, -1)), atol=0, rtol=0)


def test_rotation_by_90_of_non_square_images_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="square"):
        OPS["rotate"](torch.rand(2, 3, 8, 12), gen())
    out = OPS["rotate"](torch.rand(2, 3, 8, 12), gen(), RotateParams(angles=(180,)))
    assert out.shape == (2, 3, 8, 12)


def test_sobel_of_a_constant_image_is_zero_and_edges_are_found() -> None:
    constant = torch.full((2, 3, SIDE, SIDE), 0.7)
    assert torch.equal(OPS["sobel"](constant, gen()), torch.zeros_like(constant))
    step = torch.zeros(1, 3, SIDE, SIDE)
    step[..., SIDE // 2 :] = 1.0
    edges = OPS["sobel"](step, gen())
    assert torch.equal(edges[:, 0], edges[:, 1])
    assert edges[0, 0, :, SIDE // 2].min() == 1.0 and edges[0, 0, :, :4].max() == 0.0


def test_cutout_zeroes_one_square_of_the_configured_size() -> None:
    x = images(batch=32)
    params = AugmentConfig(cutout={"size": (0.25, 0.25)}).cutout
    out = OPS["cutout"](x, gen(), params)
    zeroed = (out == 0).all(dim=1)  # (B, H, W), all channels zero
    assert (zeroed.flatten(1).sum(1) == 16).all()  # a 4x4 square at side 16
    rows, cols = zeroed.any(dim=2), zeroed.any(dim=1)
    assert (rows.sum(1) == 4).all() and (cols.sum(1) == 4).all()
    torch.testing.assert_close(
        out[~zeroed.unsqueeze(1).expand_as(out)], x[~zeroed.unsqueeze(1).expand_as(x)]
    )


def test_noise_std_follows_params() -> None:
    x = torch.full((64, 3, SIDE, SIDE), 0.5)
    params = AugmentConfig(noise={"std": (0.05, 0.05)}).noise
    out = OPS["noise"](x, gen(), params)
    assert abs((out - x).std().item() - 0.05) < 0.005


# ----------------------------------------------------------------------------- composition


def test_pipeline_is_built_from_names_in_order() -> None:
    cfg = AugmentConfig(ops=["rotate", "crop", "color"])
    compose = build_ops(cfg.ops, cfg)
    assert compose.names == ["rotate", "crop", "color"]
    x = images()
    # Same generator stream, applied by hand in that order.
    g = gen(5)
    by_hand = OPS["color"](OPS["crop"](OPS["rotate"](x, g, cfg.rotate), g, cfg.crop), g, cfg.color)
    torch.testing.assert_close(compose(x, gen(5)), by_hand, atol=1e-6, rtol=0)
    reversed_order = build_ops(["color", "crop", "rotate"], cfg)(x, gen(5))
    assert not torch.allclose(reversed_order, by_hand)


def test_crop_then_flip_runs_fused_and_equals_the_two_ops() -> None:
    """Compose mirrors the crop grid of flipped rows instead of flipping afterwards."""
    x = images(batch=32)
    fused = build_ops(["crop", "flip"])(x, gen(4))
    g = gen(4)
    separate = OPS["flip"](OPS["crop"](x, g), g)
    assert torch.equal(fused, separate)
    unflipped = build_ops(["crop"])(x, gen(4))
    flipped_rows = (fused != unflipped).flatten(1).any(dim=1)
    assert 4 < flipped_rows.sum() < 28  # flip p = 0.5


def test_presets_expand_and_unknown_names_are_clear_errors() -> None:
    assert build_ops(AugmentConfig(ops="simclr").ops).names == ["crop", "flip", "color", "blur"]
    assert AugmentConfig(ops="crop+cutout").ops == ["crop", "cutout"]
    with pytest.raises(ValidationError) as error:
        AugmentConfig(ops=["crop", "blurr"])
    assert "did you mean 'blur'?" in str(error.value) and "rotate" in str(error.value)
    assert "ops.1" in str(error.value)
    with pytest.raises(ValueError, match=r"unknown augmentation op 'blurr'.*rotate.*position 1"):
        build_ops(["crop", "blurr"])


def test_to_float_and_normalize() -> None:
    raw = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    x = to_float(raw)
    assert x.dtype == torch.float32 and torch.equal(x * 255, raw.float())
    out = normalize(x, MEAN, STD)
    expected = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(x, to_float(raw))  # normalize does not write into its input
    with pytest.raises(TypeError):
        to_float(raw.long())


@pytest.mark.parametrize("device", DEVICES)
def test_asymmetric_second_view_is_its_input(device: str) -> None:
    x = images(device=device)
    before = x.clone()
    cfg = AugmentConfig(ops=["crop", "color"], mode="asymmetric", normalize=False)
    first, second = build_pipeline(cfg, MEAN, STD)(x, gen(device=device))
    assert torch.equal(second, x)
    assert not torch.allclose(first, x)
    assert torch.equal(x, before)


def test_asymmetric_base_goes_to_both_views() -> None:
    x = images()
    cfg = AugmentConfig(ops=["color"], base=["rotate"], mode="asymmetric", normalize=False)
    first, second = build_pipeline(cfg, MEAN, STD)(x, gen())
    for i in range(len(x)):
        turns = [k for k in (1, 2, 3) if torch.equal(second[i], torch.rot90(x[i], k, (-2, -1)))]
        assert len(turns) == 1
    assert not torch.allclose(first, second)


def test_symmetric_views_differ_and_are_normalised() -> None:
    raw = (images(batch=16) * 255).to(torch.uint8)
    views = build_pipeline(AugmentConfig(ops="simclr"), MEAN, STD)
    first, second = views(raw, gen())
    assert first.shape == second.shape == raw.shape and first.dtype == torch.float32
    differs = (first - second).flatten(1).abs().amax(dim=1) > 1e-3
    assert differs.all()
    # Normalised: undoing the normalisation lands in [0, 1].
    std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    restored = first * std + mean
    assert restored.min() >= -1e-5 and restored.max() <= 1 + 1e-5
    # Reproducible, and the identity pipeline gives the normalised input twice.
    again = views(raw, gen())
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    plain = build_pipeline(AugmentConfig(ops="none"), MEAN, STD)(raw, gen())
    torch.testing.assert_close(plain[0], normalize(to_float(raw), MEAN, STD))
    torch.testing.assert_close(plain[1], plain[0])


def test_view_grid_png(tmp_path) -> None:
    x = images(batch=4)
    path = augment.save_view_grid([x, x.flip(-1)], tmp_path / "grid.png", ["a", "b"], "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crop_area_statistics_match_torchvision() -> None:
    """Our batched boxes and torchvision's get_params draw from the same distribution."""
    params = CropParams()
    ours = sample_crop_boxes(4000, 32, 32, params, gen())
    our_area = (ours[:, 2] * ours[:, 3] / 1024).mean().item()
    torch.manual_seed(0)
    import torchvision.transforms as T

    image = torch.zeros(3, 32, 32)
    areas = []
    for _ in range(4000):
        _, _, h, w = T.RandomResizedCrop.get_params(image, list(params.scale), list(params.ratio))
        areas.append(h * w / 1024)
    assert math.isclose(our_area, sum(areas) / len(areas), abs_tol=0.03)


def test_show_augment_entrypoint(tmp_path, capsys) -> None:
    from entrypoints.show_augment import main

    out = tmp_path / "grid.png"
    argv = ["--data", "synthetic", "--ops", "crop,color", "--mode", "asymmetric"]
    assert main([*argv, "--count", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--ops", "crop,blurr", "--out", str(tmp_path / "bad.png")]) == 2
    assert "blurr" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_cpu_chunking_does_not_change_the_views(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (images(batch=24) * 255).to(torch.uint8)
    views = build_pipeline(AugmentConfig(ops="simclr"), MEAN, STD)
    whole = views(raw, gen(2))
    monkeypatch.setattr(augment, "CPU_CHUNK_BYTES", 5 * 3 * SIDE * SIDE * 4)  # 5 rows
    chunked = views(raw, gen(2))
    for ours, theirs in zip(chunked, whole, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_a_cpu_generator() -> None:
    x = images(device="cuda")
    v1, v2 = build_pipeline(AugmentConfig(ops="simclr"), MEAN, STD)(x, gen())
    assert v1.device.type == "cuda" and v2.shape == x.shape
