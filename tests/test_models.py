"""Encoders, projection heads and the SimCLR model."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torchvision
from torch import nn

from ablate.config import ModelConfig
from ablate.models import (
    ProjectionHead,
    SimCLRModel,
    build_encoder,
    build_head,
    build_model,
    convert_sync_batchnorm,
)


@pytest.mark.parametrize(
    ("arch", "width", "feat_dim"),
    [
        ("resnet18", 8, 64),
        ("resnet18", 64, 512),
        ("resnet34", 8, 64),
        ("resnet34", 64, 512),
        ("resnet50", 8, 256),
        ("resnet50", 64, 2048),
    ],
)
def test_feat_dim_and_output_shape(arch, width, feat_dim):
    encoder = build_encoder(ModelConfig(arch=arch, width=width)).eval()
    assert encoder.feat_dim == feat_dim
    with torch.no_grad():
        h = encoder(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, feat_dim)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_width_scales_every_torchvision_layer(arch):
    """Width 64 is torchvision's network (names and shapes); width 16 is it with /4 channels."""
    reference = getattr(torchvision.models, arch)().state_dict()
    reference = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    full = build_encoder(ModelConfig(arch=arch, stem="imagenet")).state_dict()
    assert {k: v.shape for k, v in full.items()} == reference

    narrow = build_encoder(ModelConfig(arch=arch, stem="imagenet", width=16)).state_dict()
    assert narrow.keys() == reference.keys()
    for key, shape in reference.items():
        if len(shape) == 0:  # BatchNorm's num_batches_tracked
            expected = shape
        elif len(shape) == 4:  # conv: (out, in, kh, kw); the image has 3 channels
            in_channels = 3 if key == "conv1.weight" else shape[1] // 4
            expected = torch.Size((shape[0] // 4, in_channels, *shape[2:]))
        else:
            expected = torch.Size((shape[0] // 4,))
        assert narrow[key].shape == expected, key


def test_cifar_stem_keeps_resolution_and_imagenet_stem_halves_it():
    x = torch.randn(2, 3, 32, 32)
    cifar = build_encoder(ModelConfig(stem="cifar", width=8))
    imagenet = build_encoder(ModelConfig(stem="imagenet", width=8))
    assert cifar.conv1(x).shape == (2, 8, 32, 32)
    assert cifar.conv1.kernel_size == (3, 3)
    assert cifar.maxpool(cifar.conv1(x)).shape == (2, 8, 32, 32)  # no max-pool
    assert imagenet.conv1(x).shape == (2, 8, 16, 16)
    assert imagenet.maxpool(imagenet.conv1(x)).shape == (2, 8, 8, 8)


def test_heads_output_shapes():
    h = torch.randn(4, 32)
    none = build_head(ModelConfig(head="none"), 32)
    assert none(h) is h
    assert none.out_dim == 32
    linear = build_head(ModelConfig(head="linear", out_dim=16), 32)
    assert linear(h).shape == (4, 16)
    assert [type(m) for m in linear.modules()] == [ProjectionHead, nn.Linear]
    nonlinear = build_head(ModelConfig(head="nonlinear", out_dim=16), 32)
    assert nonlinear(h).shape == (4, 16)
    first, bn, relu, last = nonlinear.layers
    assert (type(first), type(bn), type(relu), type(last)) == (
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    )
    assert first.out_features == 32  # hidden width = width of h by default
    hidden = build_head(ModelConfig(head="nonlinear", out_dim=16, hidden_dim=64), 32)
    assert hidden.layers[0].out_features == 64
    assert hidden(h).shape == (4, 16)


def test_simclr_model_returns_h_and_z():
    cfg = ModelConfig(arch="resnet18", width=8, head="nonlinear", out_dim=24)
    model = build_model(cfg)
    assert isinstance(model, SimCLRModel)
    h, z = model(torch.randn(3, 3, 32, 32))
    assert h.shape == (3, 64)
    assert z.shape == (3, 24)
    torch.testing.assert_close(z, model.head(h))
    h, z = build_model(cfg.model_copy(update={"head": "none"}))(torch.randn(3, 3, 16, 16))
    assert z is h


def test_pretrained_needs_width_64():
    with pytest.raises(ValueError, match=r"model.pretrained=true needs model.width=64"):
        build_encoder(ModelConfig(pretrained=True, width=32))


def test_pretrained_offline_fails_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # what an offline machine's resolver answers
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(RuntimeError) as info:
        build_encoder(ModelConfig(arch="resnet34", pretrained=True))
    message = str(info.value)
    expected_file = os.path.join(tmp_path, "hub", "checkpoints", "resnet34-b627a593.pth")
    assert "resnet34" in message
    assert "ResNet34_Weights.IMAGENET1K_V1" in message
    assert expected_file in message
    assert "model.pretrained=false" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pretrained_loads_the_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(3)
    source = torchvision.models.resnet18().state_dict()
    for value in source.values():  # make BatchNorm statistics distinguishable from a fresh init
        if value.is_floating_point():
            value.add_(0.01)
    torch.save(source, checkpoints / "resnet18-f37072fd.pth")

    encoder = build_encoder(ModelConfig(arch="resnet18", stem="imagenet", pretrained=True))
    loaded = encoder.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, source[key], msg=key)

    with pytest.warns(UserWarning, match="conv1"):
        cifar = build_encoder(ModelConfig(arch="resnet18", stem="cifar", pretrained=True))
    assert cifar.conv1.weight.shape == (64, 3, 3, 3)
    torch.testing.assert_close(cifar.layer4[1].bn2.running_var, source["layer4.1.bn2.running_var"])


def test_sync_batchnorm_is_a_no_op_without_several_workers():
    model = build_model(ModelConfig(width=8, sync_batchnorm=True))
    assert convert_sync_batchnorm(model, ModelConfig(sync_batchnorm=True)) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------- ViT and the protocol

TINY_VIT = {"patch_size": 4, "dim": 32, "depth": 2, "heads": 4}


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes_and_feat_dim(pool):
    from ablate.encoders import Encoder

    encoder = build_encoder(ModelConfig(arch="vit_tiny", vit={**TINY_VIT, "pool": pool})).eval()
    assert isinstance(encoder, Encoder) and encoder.feat_dim == 32
    with torch.no_grad():
        assert encoder(torch.randn(3, 3, 16, 16)).shape == (3, 32)
        assert encoder(torch.randn(2, 3, 32, 24)).shape == (2, 32)  # any side the patch divides
    with pytest.raises(ValueError, match=r"model.vit.patch_size=4 must divide.*18x18"):
        encoder(torch.randn(1, 3, 18, 18))


def test_vit_defaults_are_vit_tiny():
    from ablate.vit import ViTEncoder

    encoder = build_encoder(ModelConfig(arch="vit_tiny"))
    assert isinstance(encoder, ViTEncoder) and encoder.feat_dim == 192 and len(encoder.blocks) == 12
    # ViT-Ti: about 5.5 M parameters (DeiT's table: 5M, with its 16-px patches and 1000 classes)
    assert 5.2e6 < sum(p.numel() for p in encoder.parameters()) < 5.8e6


def test_vit_tokens_see_each_other_and_their_position():
    """Attention mixes patches (a change in one patch moves h) and the position embedding makes
    h depend on where a patch is (swapping two patches moves h)."""
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(arch="vit_tiny", vit=TINY_VIT)).eval()
    x = torch.rand(1, 3, 16, 16)
    changed, swapped = x.clone(), x.clone()
    changed[..., :4, :4] = 0.0
    swapped[..., :4, :4], swapped[..., 12:, 12:] = x[..., 12:, 12:], x[..., :4, :4]
    with torch.no_grad():
        h, h_changed, h_swapped = encoder(torch.cat([x, changed, swapped]))
    assert not torch.allclose(h, h_changed, atol=1e-5)
    assert not torch.allclose(h, h_swapped, atol=1e-5)


def test_vit_dim_must_fit_heads_and_the_position_embedding():
    with pytest.raises(ValueError, match=r"multiple of 4.*heads=3"):
        ModelConfig(arch="vit_tiny", vit={"dim": 32, "heads": 3})
    with pytest.raises(ValueError, match="multiple of 4"):
        ModelConfig(arch="vit_tiny", vit={"dim": 30, "heads": 2})


def test_vit_one_training_step_reaches_every_parameter():
    from ablate.augment import build_pipeline
    from ablate.config import AugmentConfig, LossConfig, OptimConfig
    from ablate.loss import build_loss
    from ablate.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="vit_tiny", vit=TINY_VIT, out_dim=16, head="nonlinear"))
    optimizer = build_optimizer(model, OptimConfig(name="adamw", base_lr=1e-3), batch_size=8)
    loss_fn = build_loss(LossConfig())
    views = build_pipeline(AugmentConfig(ops=["crop", "color"]), (0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    v1, v2 = views(images, torch.Generator().manual_seed(0))
    (_, z1), (_, z2) = model(v1), model(v2)
    loss = loss_fn(z1, z2)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    with torch.no_grad():
        assert loss_fn(model(v1)[1], model(v2)[1]) < loss  # the step lowered this batch's loss


def test_plugin_encoder_is_built_and_held_to_the_protocol(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_nets.py").write_text(
        "from torch import nn\n\n"
        "class Pool(nn.Module):\n"
        "    feat_dim = 3\n"
        "    def forward(self, x):\n"
        "        return x.mean(dim=(2, 3))\n\n"
        "def pooled(cfg):\n    return Pool()\n\n"
        "def featureless(cfg):\n    return nn.Flatten()\n"
    )
    model = build_model(ModelConfig(arch="user_nets:pooled", head="linear", out_dim=4))
    h, z = model(torch.rand(2, 3, 8, 8))
    assert h.shape == (2, 3) and z.shape == (2, 4)
    with pytest.raises(TypeError, match=r"not an encoder.*feat_dim"):
        build_encoder(ModelConfig(arch="user_nets:featureless"))


def test_vit_trains_and_evaluates_through_the_trial_worker(tmp_path):
    """The ViT in the real worker: one pretraining epoch, then the final kNN and linear probes
    on its features (no Ray: the worker's own functions, as the trial runs them)."""
    from ablate.config import TrialConfig
    from ablate.train import build_worker, final_evaluation, run_epoch

    config = TrialConfig.model_validate(
        {
            "data": {"num_train": 192, "num_test": 64, "synthetic_size": 16},
            "model": {"arch": "vit_tiny", "vit": TINY_VIT, "out_dim": 16},
            "augment": {"ops": ["crop", "color"]},
            "optim": {"name": "adamw", "base_lr": 1e-3, "warmup_epochs": 0},
            "train": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 3, "precision": "fp32"},
            "eval": {"knn_k": 5, "probe": {"max_iter": 5}},
        }
    )
    worker = build_worker(config, {"data_cache_dir": str(tmp_path)})
    assert worker.parts.model.encoder.feat_dim == 32
    result = run_epoch(worker, torch.Generator(), 1)
    assert result.diverged == "" and result.steps == 3 and result.loss_sum / result.steps > 0
    final = final_evaluation(worker)
    assert 0.0 <= final["test/knn_top1"] <= 1.0 and 0.0 <= final["test/probe_top1"] <= 1.0
