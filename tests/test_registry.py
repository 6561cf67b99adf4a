"""ablate.registry itself, and the registries of ops, losses and encoders: names validated with a
did-you-mean, plugins named module.path:factory imported and checked, the schema torch-free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from ablate import encoders, losses, ops
from ablate.config import AUGMENTATION_OPS, FIGURE5_OPS, AugmentConfig, TrialConfig, resolve
from ablate.registry import (
    PluginImportError,
    Registry,
    UnknownComponentError,
    import_plugin,
    is_plugin_name,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway plugin modules (``write(name, source)``)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, source: str) -> str:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(module, None)
        return module

    return write


# ----------------------------------------------------------------------------- Registry


def test_unknown_name_says_closest_and_every_valid_name():
    registry: Registry[object] = Registry("widget", "a.widget")
    registry.add("sprocket", object(), "A sprocket.")
    registry.add("gear", object(), "A gear.")
    with pytest.raises(UnknownComponentError) as error:
        registry.get("sprockett")
    message = str(error.value)
    assert "unknown widget 'sprockett'; did you mean 'sprocket'?" in message
    assert "Valid: sprocket, gear, or a plugin as module.path:factory" in message
    assert isinstance(error.value, ValueError)
    assert "did you mean" not in str(registry.unknown("zzz"))


def test_duplicate_or_malformed_registration_is_refused():
    registry: Registry[object] = Registry("widget", "a.widget")
    registry.add("gear", object())
    with pytest.raises(ValueError, match="'gear' is registered twice"):
        registry.add("gear", object())
    with pytest.raises(ValueError, match="without ':'"):
        registry.add("a:b", object())


def test_plugin_import_errors_name_the_module_and_the_cause(plugin_dir):
    with pytest.raises(PluginImportError, match="cannot import module 'no_such_mod_x'"):
        import_plugin("no_such_mod_x:thing")
    plugin_dir("broken_mod", "raise RuntimeError('boom inside')\n")
    with pytest.raises(PluginImportError, match="RuntimeError: boom inside"):
        import_plugin("broken_mod:thing")
    plugin_dir("fine_mod", "def widget():\n    return 1\n")
    with pytest.raises(
        PluginImportError, match="no attribute 'widgt'; did you mean fine_mod:widget"
    ):
        import_plugin("fine_mod:widgt")
    assert import_plugin("fine_mod:widget")() == 1


def test_plugin_names_and_axes_without_plugins(plugin_dir):
    assert is_plugin_name("examples.my_op:solarize") and not is_plugin_name("color")
    assert not is_plugin_name("a:b:c") and not is_plugin_name(":x")
    closed: Registry[object] = Registry("searcher", "algorithm.name", plugins=False)
    closed.add("grid", object())
    plugin_dir("fine_mod2", "x = 1\n")
    with pytest.raises(UnknownComponentError):
        closed.get("fine_mod2:x")
    assert closed.valid_text() == "grid"


def test_check_hook_rejects_a_plugin_that_does_not_fit(plugin_dir):
    plugin_dir("numbers_mod", "seven = 7\n")

    def must_be_callable(name, component):
        if not callable(component):
            raise TypeError(f"{name} is not callable")
        raise AssertionError("unreachable in this test")

    registry: Registry[object] = Registry("widget", "a.widget", check=must_be_callable)
    with pytest.raises(TypeError, match="numbers_mod:seven is not callable"):
        registry.get("numbers_mod:seven")


# ----------------------------------------------------------------------------- the axes


def test_builtin_names_are_registered_in_order():
    assert ops.OPS.names() == AUGMENTATION_OPS
    assert set(FIGURE5_OPS) < set(AUGMENTATION_OPS)
    assert losses.LOSSES.names() == ("nt_xent", "nt_logistic", "margin_triplet")
    assert encoders.ENCODERS.names() == ("resnet18", "resnet34", "resnet50", "vit_tiny")
    for entry in (*ops.OPS, *losses.LOSSES, *encoders.ENCODERS):
        assert entry.description, entry.name  # the reference lists every one with a line


@pytest.mark.parametrize(
    ("section", "key", "bad", "hint"),
    [
        ("augment", "ops", ["crop", "colr"], "did you mean 'color'?"),
        ("loss", "name", "nt_xnet", "did you mean 'nt_xent'?"),
        ("model", "arch", "resnet19", "did you mean 'resnet18'?"),
        ("model", "arch", "vit_tiyn", "did you mean 'vit_tiny'?"),
    ],
)
def test_config_names_are_checked_against_the_registries(section, key, bad, hint):
    with pytest.raises(ValidationError) as error:
        TrialConfig.model_validate({section: {key: bad}})
    assert hint in str(error.value) and "module.path:factory" in str(error.value)


def test_the_schema_imports_no_torch():
    # The sweep driver validates every trial config; torch costs it seconds to import.
    code = "import sys, ablate.config, ablate.spec; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "False", done.stderr


PLUGINS = """
    import torch
    from pydantic import BaseModel, ConfigDict, Field
    from torch import nn


    class InvertParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        p: float = Field(1.0, ge=0.0, le=1.0)
        amount: float = Field(1.0, ge=0.0, le=1.0)


    def invert(x, generator, params):
        '''Blend towards the negative image.'''
        return x + params.amount * (1.0 - 2.0 * x)


    invert.params_model = InvertParams


    def plain(x, generator, params):
        return x.flip(-2)


    def bad_params(x, generator, params):
        return x


    bad_params.params_model = dict


    def cosine_loss(cfg):
        '''Negative cosine similarity of the pairs.'''

        class Loss(nn.Module):
            def forward(self, z1, z2):
                return -nn.functional.cosine_similarity(z1, z2).mean() / cfg.temperature

        return Loss()


    def tiny_net(cfg):
        '''A linear encoder.'''

        class Net(nn.Module):
            feat_dim = 5

            def __init__(self):
                super().__init__()
                self.fc = nn.LazyLinear(5)

            def forward(self, x):
                return self.fc(x.flatten(1))

        return Net()


    not_callable = 3
"""


def test_plugins_validate_through_the_config_and_resolve_round_trip(plugin_dir):
    plugin_dir("userbits", PLUGINS)
    config = TrialConfig.model_validate(
        {
            "augment": {"ops": ["crop", "userbits:invert", "userbits:plain"]},
            "loss": {"name": "userbits:cosine_loss"},
            "model": {"arch": "userbits:tiny_net"},
        }
    )
    resolved = resolve(config)
    # The resolved config holds the op's parameters with its defaults filled in, and re-runs.
    assert resolved["augment"]["params"] == {"userbits:invert": {"p": 1.0, "amount": 1.0}}
    assert TrialConfig.model_validate(resolved) == config
    assert resolve(TrialConfig.model_validate(resolved)) == resolved
    assert ops.OPS.get("userbits:invert").description == "Blend towards the negative image."
    assert ops.params_model("userbits:plain") is None


def test_plugin_op_params_are_validated_by_its_model(plugin_dir):
    plugin_dir("userbits2", PLUGINS)
    ok = AugmentConfig(ops=["userbits2:invert"], params={"userbits2:invert": {"amount": 0.5}})
    assert ok.params == {"userbits2:invert": {"p": 1.0, "amount": 0.5}}
    problems = [
        ({"userbits2:invert": {"amount": 2.0}}, "amount: Input should be less than or equal to 1"),
        ({"userbits2:invert": {"amont": 0.5}}, "amont: Extra inputs are not permitted"),
        ({"color": {"strength": 0.5}}, "go in augment.color"),
        ({"colr": {}}, "unknown augmentation op 'colr'; did you mean 'color'"),
        ({"userbits2:plain": {"x": 1}}, "takes no parameters"),
        ({"userbits2:nothing": {}}, "no attribute 'nothing'"),
    ]
    for params, text in problems:
        with pytest.raises(ValidationError, match=text):
            AugmentConfig(ops=["userbits2:invert"], params=params)


def test_plugins_that_do_not_fit_their_axis_are_named(plugin_dir):
    plugin_dir("userbits3", PLUGINS)
    cases = [
        ({"augment": {"ops": ["userbits3:not_callable"]}}, "augment.ops.0", "not a batched op"),
        ({"augment": {"ops": ["userbits3:bad_params"]}}, "augment.ops.0", "pydantic BaseModel"),
        ({"loss": {"name": "userbits3:not_callable"}}, "loss.name", "not a loss factory"),
        ({"model": {"arch": "userbits3:not_callable"}}, "model.arch", "not an encoder factory"),
        ({"model": {"arch": "userbits3:tiny_net", "pretrained": True}}, "model", "no ImageNet"),
    ]
    for raw, where, text in cases:
        with pytest.raises(ValidationError) as error:
            TrialConfig.model_validate(raw)
        assert where in str(error.value) and text in str(error.value), str(error.value)


def test_an_augment_op_named_by_path_takes_its_params_from_augment_params():
    from ablate.augment import build_ops
    from ablate.config import CropParams

    name = "ablate.augment:crop"  # the built-in crop, named as a plugin is
    assert ops.params_model(name) is CropParams
    cfg = AugmentConfig(ops=[name], params={name: {"scale": [0.2, 0.3]}})
    assert cfg.params[name]["scale"] == [0.2, 0.3]
    ((op, params),) = build_ops(cfg.ops, cfg).steps
    assert op is ops.load("crop") and params == CropParams(scale=(0.2, 0.3))
