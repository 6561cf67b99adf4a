"""Named recipes: they reach the trial config, sit under a sweep's own sections, are named in
the dry-run and by errors; the fidelity benchmark runs end to end; the paper sweeps run
anywhere (no path of this project's machines, no dataset needed for a dry-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.config import TrialConfig
from ablate.dryrun import describe_plan
from ablate.recipes import RECIPES, get_recipe
from ablate.spec import SpecError, load_sweep, parse_sweep
from ablate.vocabulary import FINAL_METRICS
from entrypoints import sweep as sweep_entry

ROOT = Path(__file__).resolve().parents[1]
PAPER_SWEEPS = sorted((ROOT / "search_spaces").glob("simclr_*.yaml"))

SPEC = """
name: recipe_test
recipe: lightly_cifar10
data: {name: synthetic, num_train: 1024, num_test: 16}
loss: {temperature: 0.2}
space:
  model.head: {grid: [linear, nonlinear]}
"""


def test_recipe_values_reach_every_trial_config() -> None:
    plan = parse_sweep(SPEC)
    lightly = RECIPES["lightly_cifar10"].overrides
    for trial in plan.trials:
        config = trial.config
        assert config.optim.name == "sgd"
        assert config.optim.base_lr == lightly["optim"]["base_lr"] == 0.12
        assert config.optim.weight_decay == 5e-4
        assert config.optim.warmup_epochs == 0
        assert config.train.batch_size == 512
        assert config.augment.color.strength == 0.5
    # Without the recipe the same spec gets the schema's defaults (LARS).
    plain = parse_sweep(SPEC.replace("recipe: lightly_cifar10\n", ""))
    assert plain.base["optim"]["name"] == "lars"


def test_yaml_sections_and_set_override_the_recipe() -> None:
    plan = parse_sweep(SPEC, overrides=["optim.base_lr=0.5", "train.batch_size=64"])
    assert plan.base["loss"]["temperature"] == 0.2  # the YAML's section beats the recipe's 0.5
    assert plan.base["optim"]["base_lr"] == 0.5  # --set beats both
    assert plan.base["train"]["batch_size"] == 64
    assert plan.base["optim"]["weight_decay"] == 5e-4  # untouched recipe values stay
    # --set can also choose the recipe itself.
    solo = parse_sweep(SPEC, overrides=["recipe=solo_learn_cifar"])
    assert solo.base["model"]["hidden_dim"] == 2048
    assert solo.base["loss"]["temperature"] == 0.2


def test_unknown_recipe_exits_2_with_the_valid_names(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("lightly_cifar10", "lightly_cifar"))
    with pytest.raises(SpecError) as error:
        load_sweep(path)
    assert error.value.key == "recipe"
    assert sweep_entry.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'lightly_cifar'; did you mean 'lightly_cifar10'?" in err
    assert all(name in err for name in RECIPES)


def test_dry_run_names_the_recipe(tmp_path, capsys) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    assert sweep_entry.main([str(path), "--dry-run", "--storage-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recipe: lightly_cifar10 (lightly CIFAR-10 benchmark" in out
    plain = parse_sweep(SPEC.replace("recipe: lightly_cifar10\n", ""))
    assert "recipe: none" in describe_plan(plain)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_validates_and_says_where_it_comes_from(name: str) -> None:
    recipe = get_recipe(name)
    config = TrialConfig.model_validate(recipe.overrides)  # extra="forbid": no unknown key
    assert config.model.stem == "cifar" and config.model.arch == "resnet18"
    assert set(recipe.overrides) <= {"model", "augment", "loss", "optim", "train", "eval"}
    assert "blur" not in config.augment.ops  # every CIFAR recipe leaves out blur
    assert recipe.source and recipe.published and recipe.protocol
    assert recipe.metric in FINAL_METRICS
    if recipe.published_top1 is not None:
        assert 0.5 < recipe.published_top1 < 1.0 and recipe.published_epochs


@pytest.mark.parametrize("path", PAPER_SWEEPS, ids=lambda p: p.name)
def test_paper_sweeps_run_anywhere(path: Path, tmp_path) -> None:
    plan = load_sweep(path, overrides=[f"storage.path={tmp_path}"])
    assert plan.spec.recipe in RECIPES
    data = plan.base["data"]
    assert data["name"] == "cifar10" and data["download"] is True
    assert not Path(data["root"]).is_absolute()  # no path of this project's machines
    text = describe_plan(plan)  # no dataset present: the dry-run still works
    assert f"recipe: {plan.spec.recipe}" in text
    assert not (tmp_path / "data").exists()


def test_fidelity_runs_end_to_end_and_ends_with_json() -> None:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "fidelity.py"),
        *("--data", "synthetic", "--epochs", "1", "--images", "128", "--test-images", "32"),
        *("--width", "8", "--batch", "32", "--eval-every", "1", "--threads", "1"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "published" in done.stdout and "84.8%" in done.stdout  # lightly's number beside
    result = json.loads(lines[-1])
    assert result["benchmark"] == "fidelity" and result["recipe"] == "lightly_cifar10"
    assert result["epochs"] == 1 and len(result["evaluations"]) == 1
    final = result["final"]
    for key in ("knn_top1", "online_top1", "probe_top1"):
        assert 0.0 <= final[key] <= 1.0
    assert result["published_top1"] == 0.848
