"""The sweep spec: shipped YAMLs, expansion, overrides, validation errors, the reference page."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path

import pytest

from ablate import data
from ablate.config import FIGURE5_OPS
from ablate.dryrun import describe_plan, estimate_compute, steps_per_epoch
from ablate.reference import render_reference
from ablate.spec import SpecError, SweepPlan, load_sweep, op_pairs, parse_sweep
from entrypoints.sweep import main

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"

#: Shipped spec -> planned trials (configurations x replicates; optuna: num_samples).
SHIPPED = {
    "quickstart.yaml": 6,
    "simclr_fig5_augmentations.yaml": 49,
    "simclr_fig8_projection_head.yaml": 45,
    "simclr_fig9_batch_epochs.yaml": 20,
    "simclr_temperature.yaml": 32,
}


def sweep_of(text: str, *overrides: str) -> SweepPlan:
    return parse_sweep(textwrap.dedent(text), source="t.yaml", overrides=overrides)


def error_of(text: str, *overrides: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        sweep_of(text, *overrides)
    return caught.value


# ----------------------------------------------------------------------------- shipped specs


def test_every_shipped_spec_is_listed():
    assert sorted(p.name for p in SPACES.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_validates_and_dry_run_counts_trials(name, capsys):
    assert main([str(SPACES / name), "--dry-run"]) == 0
    out = capsys.readouterr().out
    expected = SHIPPED[name]
    assert load_sweep(SPACES / name).num_trials == expected
    assert f"{expected} trials" in out
    assert "worker-CPU-epochs" in out


def test_figure5_matrix_is_singles_then_ordered_pairs():
    sweep = load_sweep(SPACES / "simclr_fig5_augmentations.yaml")
    ops = [t.varying["augment.ops"] for t in sweep.trials]
    assert ops[:7] == [[op] for op in FIGURE5_OPS]
    pairs = ops[7:]
    assert len(pairs) == 42 and len({tuple(p) for p in pairs}) == 42
    assert ["crop", "color"] in pairs and ["color", "crop"] in pairs
    assert all(a != b for a, b in pairs)
    # The paper's protocol: transformations on one branch, identity on the other.
    assert all(t.config.augment.mode == "asymmetric" for t in sweep.trials)
    assert all(t.config.augment.base == [] for t in sweep.trials)


def test_op_pairs_counts():
    assert len(op_pairs(FIGURE5_OPS)) == 49
    assert op_pairs(["a", "b"]) == [["a"], ["b"], ["a", "b"], ["b", "a"]]


def test_figure8_lists_the_none_head_once_per_seed():
    sweep = load_sweep(SPACES / "simclr_fig8_projection_head.yaml")
    heads = [t.varying["model.head"] for t in sweep.trials]
    assert heads.count("none") == 3  # one configuration x 3 replicates
    assert heads.count("linear") == heads.count("nonlinear") == 21


def test_cifar_specs_use_the_papers_cifar_settings():
    for name in SHIPPED:
        if name == "quickstart.yaml":
            continue
        sweep = load_sweep(SPACES / name)
        from ablate.recipes import RECIPES  # the sweeps' base is the recipe they name

        optim = RECIPES[sweep.spec.recipe].overrides["optim"]
        for config in sweep.configs():
            assert config.augment.color.strength == 0.5
            assert "blur" not in config.augment.ops or name.startswith("simclr_fig5")
            assert config.optim.name == optim["name"]
            assert config.optim.weight_decay == optim["weight_decay"]
            assert config.model.stem == "cifar"
            assert config.resources.gpus_per_worker > 0


def test_quickstart_is_a_small_cpu_miniature_of_figures_5_and_8():
    sweep = load_sweep(SPACES / "quickstart.yaml")
    assert sweep.num_trials == 6
    varying = [(tuple(t.varying["augment.ops"]), t.varying["model.head"]) for t in sweep.trials]
    assert {ops for ops, _ in varying} == {("crop",), ("color",), ("crop", "color")}
    assert {head for _, head in varying} == {"linear", "nonlinear"}
    # Every trial runs to the end: crop + colour starts slowly here and ASHA would stop it.
    assert sweep.spec.scheduler.name == "fifo"
    for config in sweep.configs():
        assert config.data.name == "synthetic"
        assert config.resources.gpus_per_worker == 0
        assert config.model.width <= 16


# ----------------------------------------------------------------------------- expansion


BASE = """
name: t
train: {epochs: 3, batch_size: 64, seed: 10}
"""


def test_space_is_crossed_with_together_and_replicates_get_seeds():
    sweep = sweep_of(
        BASE
        + """
space:
  model.head: {grid: [linear, nonlinear]}
together:
  - {train.batch_size: 32, train.epochs: 2}
  - {train.batch_size: 128, optim.base_lr: 0.6}
replicates: 2
"""
    )
    assert sweep.num_trials == 2 * 2 * 2
    first = sweep.trials[0]
    assert first.varying == {"model.head": "linear", "train.batch_size": 32, "train.epochs": 2}
    assert first.config.train.epochs == 2
    assert sweep.trials[1].config.optim.base_lr == 0.6
    assert sweep.trials[1].config.train.epochs == 3  # the base where not set
    # Replicates outermost: every configuration once with seed 10, then with seed 11.
    assert [t.replicate for t in sweep.trials] == [0] * 4 + [1] * 4
    assert [t.config.train.seed for t in sweep.trials] == [10] * 4 + [11] * 4
    assert all(t.sweep == "t" for t in sweep.trials)
    # Tune's boundary: the param dict, the trial's one plain form (plan.json's entries).
    param = first.param()
    assert set(param) == {"config", "varying", "replicate", "sweep"}
    assert param["config"] == first.config.model_dump(mode="json")
    assert param["varying"] == first.varying and param["replicate"] == 0


def test_random_draws_are_seeded_and_within_ranges():
    text = (
        BASE
        + """
space:
  model.head: {grid: [linear, nonlinear]}
  optim.base_lr: {loguniform: [0.01, 1.0]}
  loss.temperature: {uniform: [0.1, 0.5]}
  model.out_dim: {randint: [16, 18]}
  augment.ops: {choice: [[crop], [crop, color]]}
algorithm: {name: random, num_samples: 20, seed: 3}
"""
    )
    one, two = sweep_of(text), sweep_of(text)
    assert one.num_trials == 40
    assert [t.varying for t in one.trials] == [t.varying for t in two.trials]
    other = sweep_of(text, "algorithm.seed=4")
    assert [t.varying for t in other.trials] != [t.varying for t in one.trials]
    lrs = [t.config.optim.base_lr for t in one.trials]
    assert all(0.01 <= v <= 1.0 for v in lrs)
    assert min(lrs) < 0.1  # log-uniform: a decade below the middle gets draws
    assert all(0.1 <= t.config.loss.temperature <= 0.5 for t in one.trials)
    dims = {t.config.model.out_dim for t in one.trials}
    assert dims == {16, 17, 18}  # randint is inclusive at both ends
    assert {tuple(t.config.augment.ops) for t in one.trials} == {
        ("crop",),
        ("crop", "color"),
    }


def test_grid_enumerates_choice():
    sweep = sweep_of(BASE + "space: {model.head: {choice: [linear, none]}}")
    assert [t.varying["model.head"] for t in sweep.trials] == ["linear", "none"]


def test_optuna_plans_no_trials_but_validates_the_range_ends():
    optuna = "\nalgorithm: {name: optuna}"
    sweep = sweep_of(
        BASE + "space: {optim.base_lr: {loguniform: [0.01, 1.0]}}" + optuna,
        "algorithm.num_samples=7",
    )
    assert sweep.trials == [] and sweep.num_trials == 7
    assert "7 trials proposed by Optuna" in describe_plan(sweep)
    trial = sweep.trial({"optim.base_lr": 0.05})
    assert trial.config.optim.base_lr == 0.05
    assert trial.varying == {"optim.base_lr": 0.05} and trial.replicate == 0
    with pytest.raises(SpecError, match=r"optim\.base_lr"):
        sweep.trial({"optim.base_lr": -1.0})
    error = error_of(BASE + "space: {train.epochs: {randint: [0, 4]}}" + optuna)
    assert error.key == "space.train.epochs.randint[0]"


def test_optuna_rejects_grids_together_and_replicates():
    assert error_of(BASE + "space: {model.head: {grid: [linear]}}\nalgorithm: {name: optuna}").key
    assert (
        error_of(
            BASE + "space: {optim.base_lr: {uniform: [0.1, 1]}}\nreplicates: 2\n"
            "algorithm: {name: optuna}"
        ).key
        == "replicates"
    )


def test_storage_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = sweep_of(BASE)
    assert sweep.storage_path == str(tmp_path / "ablate_runs")
    assert sweep.experiment_dir == str(tmp_path / "ablate_runs" / "t")
    assert sweep_of(BASE, "storage.path=s3://bucket/runs").experiment_dir == "s3://bucket/runs/t"


def test_compute_estimate_counts_steps_and_worker_epochs():
    sweep = sweep_of(
        """
name: t
data: {name: synthetic, num_train: 1000, val_fraction: 0.1}
train: {epochs: 4, batch_size: 100}
resources: {num_workers: 2, cpus_per_worker: 1.5}
space: {model.head: {grid: [linear, nonlinear, none]}}
"""
    )
    compute = estimate_compute(sweep)
    # 900 pretraining images over 2 workers of 50 each: 9 steps per epoch.
    assert compute == {
        "trials": 3,
        "epochs": 12,
        "steps": 3 * 4 * 9,
        "images": 3 * 4 * 9 * 100,
        "worker_cpu_epochs": 3 * 4 * 2 * 1.5,
        "worker_gpu_epochs": 0.0,
    }
    capped = estimate_compute(sweep_of(BASE, "train.steps_per_epoch=2", "data.num_train=640"))
    assert capped["steps"] == 3 * 2


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # the quickstart: 4 classes of 512, 51 each held out (205 if rounded overall)
        ("data.num_train=1001", "data.num_classes=3", "data.val_fraction=0.15"),
        ("data.limit_train=333", "resources.num_workers=2"),
    ],
)
def test_dry_run_estimate_counts_the_trials_own_split(overrides):
    """The estimate's pretraining set is the one the trial's class-balanced split keeps."""
    plan = load_sweep(SPACES / "quickstart.yaml", overrides)
    config = plan.trials[0].config
    cfg = config.data
    labels = data.load_dataset(cfg).train.labels  # decoded, as a trial does
    train_idx, val_idx = data.train_val_split(labels, cfg.val_fraction, cfg.seed)
    assert data.split_sizes(cfg) == (len(train_idx), len(val_idx))
    workers, batch = config.resources.num_workers, config.train.batch_size
    expected = (len(train_idx) // workers) // (batch // workers)
    assert steps_per_epoch(config) == expected
    if not overrides:
        assert len(train_idx) == 1844
        assert estimate_compute(plan)["steps"] == 6 * 16 * expected


# ----------------------------------------------------------------------------- overrides


def test_overrides_set_base_and_spec_keys():
    sweep = sweep_of(
        BASE + "space: {model.head: {grid: [linear, nonlinear]}}",
        "train.epochs=5",
        "replicates=2",
        "augment.ops=[crop, color]",
        "space.model.head={grid: [none]}",
        "scheduler.name=asha",
    )
    assert sweep.base["train"]["epochs"] == 5
    assert sweep.base["augment"]["ops"] == ["crop", "color"]
    assert sweep.num_trials == 2
    assert {t.varying["model.head"] for t in sweep.trials} == {"none"}
    assert sweep.spec.scheduler.name == "asha"


def test_override_errors_name_the_key():
    assert "did you mean 'replicates'" in str(error_of(BASE, "replicate=2"))
    assert error_of(BASE, "train.epochs").key == "train.epochs"  # no '='
    swept = error_of(BASE + "space: {train.epochs: {grid: [1, 2]}}", "train.epochs=5")
    assert swept.key == "train.epochs" and "space.train.epochs" in swept.message


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("name: t\nmodel: {hed: linear}", "model.hed", ["did you mean 'head'"]),
        ("name: t\nreplicatse: 3", "replicatse", ["did you mean 'replicates'"]),
        ("name: t\nspace: {model.hed: {grid: [a]}}", "space.model.hed", ["'head'"]),
        ("name: t\nspace: {modle.head: {grid: [a]}}", "space.modle.head", ["'model'"]),
        ("name: t\nspace: {model.head: {grd: [a]}}", "space.model.head.grd", ["'grid'"]),
        (
            "name: t\nspace: {augment.ops: {grid: [[crop], [crop, colour]]}}",
            "space.augment.ops.grid[1]",
            ["'colour'", "did you mean 'color'", "crop, flip, color, grayscale"],
        ),
        (
            "name: t\nspace: {augment.ops: {op_pairs: [crop, jitter]}}",
            "space.augment.ops.op_pairs",
            ["'jitter'", "Valid: crop"],
        ),
        ("name: t\naugment: {ops: [crop, colr]}", "augment.ops.1", ["did you mean 'color'"]),
        ("name: t\nloss: {name: nt_xnet}", "loss.name", ["did you mean 'nt_xent'", "nt_logistic"]),
        (
            "name: t\nspace: {model.arch: {grid: [resnet18, vit_tiyn]}}",
            "space.model.arch.grid[1]",
            ["did you mean 'vit_tiny'", "resnet50, vit_tiny, or a plugin"],
        ),
        ("name: t\ntrain: {epochs: five}", "train.epochs", ["integer", "'five'"]),
        ("name: t\nreplicates: 0", "replicates", ["greater than or equal to 1"]),
        ("name: t\nspace: {model.head: {grid: []}}", "space.model.head.grid", ["empty"]),
        ("name: t\nspace: {model.head: linear}", "space.model.head", ["grid"]),
        (
            "name: t\nspace: {optim.base_lr: {uniform: [0.5, 0.1]}}\nalgorithm: {name: random}",
            "space.optim.base_lr.uniform",
            ["lo > hi"],
        ),
        (
            "name: t\nspace: {optim.base_lr: {loguniform: [0, 1]}}\nalgorithm: {name: random}",
            "space.optim.base_lr.loguniform",
            ["0 < lo"],
        ),
        (
            "name: t\nspace: {optim.base_lr: {uniform: [0.1, 1]}}",
            "space.optim.base_lr",
            ["random"],
        ),
        (
            "name: t\nspace: {model.head: {grid: [linear, nonlinaer]}}",
            "space.model.head.grid[1]",
            ["did you mean 'nonlinear'", "none, linear, nonlinear"],
        ),
        (
            "name: t\nresources: {num_workers: 2}\nspace: {train.batch_size: {grid: [64, 63]}}",
            "space.train.batch_size.grid[1]",
            ["divisible"],
        ),
        (
            "name: t\nresources: {num_workers: 2}\ntrain: {batch_size: 64}\n"
            "together: [{train.batch_size: 63}]",
            "together[0].train.batch_size",
            ["divisible"],
        ),
        ("name: t\nscheduler: {metric: test/probe_top1}", "scheduler.metric", ["test"]),
        ("name: t\nscheduler: {metric: train/loss}", "scheduler.metric", ["loss"]),
        ("name: t\nresources: {gpus_per_worker: 1.5}", "resources.gpus_per_worker", ["whole"]),
        ("name: a b", "name", ["pattern"]),
        ("description: no name", "name", ["missing"]),
        (
            "name: t\ntrain: {epochs: 2}\nscheduler: {name: asha, grace_period: 3}",
            "scheduler.grace_period",
            ["max_t"],
        ),
        ("name: t\nalgorithm: {num_samples: 4}", "algorithm.num_samples", ["replicates"]),
        (
            "name: t\ntrain: {epochs: 4}\neval: {eval_every: 2}\nscheduler: {name: asha}",
            "eval.eval_every",
            ["grace_period"],
        ),
    ],
)
def test_validation_errors_name_the_dotted_key(text, key, words):
    error = error_of(text)
    assert error.file == "t.yaml"
    assert error.key == key, str(error)
    for word in words:
        assert word in str(error), str(error)


def test_malformed_yaml_reports_line_and_column():
    error = error_of("name: t\nmodel:\n  head: [linear\n  width: 8\n")
    assert "malformed YAML at line" in error.message and "column" in error.message


def test_grid_values_failing_the_schema_are_caught_before_running():
    error = error_of("name: t\nspace: {train.epochs: {grid: [2, 0]}}")
    assert error.key == "space.train.epochs.grid[1]"
    assert "greater than or equal to 1" in error.message


def test_together_key_also_in_space_is_refused():
    error = error_of(
        "name: t\nspace: {model.head: {grid: [linear]}}\ntogether: [{model.head: none}]"
    )
    assert error.key == "together[0].model.head"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "path", "key", "where"),
    [
        (
            "name: t\ntrain:\n  epochs: 3\n  batch_size: 64\n  epochs: 5\n",
            "train.epochs",
            "epochs",
            "lines 3 and 5",
        ),
        ("name: t\nreplicates: 2\nname: u\n", "name", "name", "lines 1 and 3"),
        (
            "name: t\nspace:\n  model.head: {grid: [linear]}\n  model.head: {grid: [none]}\n",
            "space.model.head",
            "model.head",
            "lines 3 and 4",
        ),
        (
            "name: t\ntogether:\n  - {train.epochs: 1}\n  - {train.epochs: 1, train.epochs: 2}\n",
            "together[1].train.epochs",
            "train.epochs",
            "line 4, columns 6 and 23",
        ),
        # Keys compare as YAML reads them: 1 and 1.0 are one number.
        ("name: t\nmodel: {1: a, 1.0: b}\n", "model.1.0", "1.0", "line 2, columns 9 and 15"),
    ],
)
def test_a_key_given_twice_names_the_key_and_both_lines(text, path, key, where):
    error = error_of(text)
    assert error.key == path, str(error)
    assert f"duplicate key {key!r} at {where}:" in error.message, error.message
    assert "silently drop" in error.message


def test_a_key_given_twice_inside_a_set_value_is_refused():
    error = error_of(BASE, "space.model.head={grid: [linear], grid: [none]}")
    assert error.file == "--set"
    assert error.key == "space.model.head.grid"
    assert "duplicate key 'grid'" in error.message and "columns 2 and 18" in error.message


def test_merge_keys_and_aliases_are_not_duplicates():
    sweep = sweep_of(
        """
        name: t
        scheduler: &fifo {name: fifo, mode: max}
        train: {epochs: 2, batch_size: 64}
        eval: {eval_every: 1, probe: &probe {max_iter: 5}}
        algorithm: {<<: {name: grid, seed: 1}, seed: 2}
        """
    )
    # An explicit key overrides a merged one (YAML's merge, not a duplicate).
    assert sweep.spec.algorithm.seed == 2
    assert sweep.base["eval"]["probe"]["max_iter"] == 5


@pytest.mark.parametrize(
    ("line", "key", "kind"),
    [
        ("replicates: true", "replicates", "an integer"),
        ("algorithm: {name: random, num_samples: yes}", "algorithm.num_samples", "an integer"),
        ("train: {epochs: true}", "train.epochs", "an integer"),
        ("model: {width: false}", "model.width", "an integer"),
        ("loss: {temperature: true}", "loss.temperature", "a number"),
        ("augment: {crop: {scale: [0.2, true]}}", "augment.crop.scale", "a number"),
        ("data: {std: [0.2, 0.2, true]}", "data.std", "a number"),
        ("resources: {stall_timeout_s: true}", "resources.stall_timeout_s", "a number"),
        (
            "scheduler: {name: asha, reduction_factor: true}",
            "scheduler.reduction_factor",
            "a number",
        ),
        ("space: {train.epochs: {grid: [1, true]}}", "space.train.epochs.grid[1]", "an integer"),
        ("together: [{loss.temperature: false}]", "together[0].loss.temperature", "a number"),
        (
            "space: {train.epochs: {randint: [1, true]}}\nalgorithm: {name: random}",
            "space.train.epochs.randint",
            "an integer",
        ),
    ],
)
def test_a_boolean_is_not_a_number(line, key, kind):
    error = error_of(f"name: t\n{line}")
    assert error.key == key, str(error)
    assert f"a boolean (true/false) is not a number; give {kind}" in error.message


def test_a_boolean_override_is_refused_and_numbers_keep_their_types():
    error = error_of(BASE, "replicates=true")
    assert error.key == "replicates" and "(got true)" in error.message
    # An int for a float field is still a float; boolean fields still take booleans.
    sweep = sweep_of(BASE, "loss.temperature=1", "data.download=false", "train.compile=true")
    assert sweep.base["loss"]["temperature"] == 1.0
    assert isinstance(sweep.base["loss"]["temperature"], float)
    assert sweep.base["data"]["download"] is False
    assert sweep.base["train"]["compile"] == "default"


def test_infinity_and_nan_are_not_numbers_a_trial_can_use():
    assert error_of(BASE, "optim.base_lr=.inf").key == "optim.base_lr"
    assert error_of(BASE, "loss.temperature=.nan").key == "loss.temperature"


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("replicates=1000000000", "replicates", "1 <= replicates <= 100"),
        (
            "algorithm={name: random, num_samples: 1000000000}",
            "algorithm.num_samples",
            "1 <= algorithm.num_samples <= 10,000",
        ),
        ("train.epochs=1000000000", "train.epochs", "1 <= train.epochs <= 10,000"),
        ("train.batch_size=1000000000", "train.batch_size", "2 <= train.batch_size <= 65,536"),
        ("model.width=1000000", "model.width", "4 <= model.width <= 512"),
        ("model.out_dim=1000000000", "model.out_dim", "1 <= model.out_dim <= 8,192"),
        ("model.hidden_dim=1000000000", "model.hidden_dim", "1 <= model.hidden_dim <= 16,384"),
        ("data.num_train=3000000000", "data.num_train", "8 <= data.num_train <= 1,000,000"),
        ("data.num_test=3000000000", "data.num_test", "8 <= data.num_test <= 1,000,000"),
        ("data.synthetic_size=100000", "data.synthetic_size", "<= 1,024"),
        (
            "data.limit_train=10000000000",
            "data.limit_train",
            "1 <= data.limit_train <= 100,000,000",
        ),
        ("data.limit_test=10000000000", "data.limit_test", "<= 100,000,000"),
        ("data.image_size=100000", "data.image_size", "8 <= data.image_size <= 1,024"),
        ("train.seed=-1", "train.seed", "0 <= train.seed <= 4,294,967,295"),
        ("resources.num_workers=100000", "resources.num_workers", "<= 1,024"),
        ("eval.knn_k=1000000000", "eval.knn_k", "<= 10,000"),
    ],
)
def test_absurd_sizes_are_refused_with_the_valid_range(override, key, valid):
    error = error_of(BASE, override)
    assert error.key == key, str(error)
    assert f"valid: {valid}" in error.message or valid in error.message, error.message


def test_synthetic_images_are_bounded_by_their_bytes_before_any_is_made():
    # Each field within its range; together 1,000,008 images of 512 px would be 733 GiB.
    error = error_of(BASE, "data.num_train=1000000", "data.synthetic_size=512")
    assert error.key == "data"
    assert "data.num_train + data.num_test" in error.message
    assert "8 GiB" in error.message and "732.8 GiB" in error.message
    # The resized side counts too.
    assert error_of(BASE, "data.num_train=200000", "data.image_size=512").key == "data"
    # Other sources are not synthetic: their num_train is not read.
    sweep_of(BASE, "data={name: cifar10, num_train: 1000000, synthetic_size: 512}")


def test_every_integer_of_the_schema_has_an_upper_bound():
    """Each int field (a count, a size, an epoch, a seed) has ``le``. Lists of ints are not
    sizes (rotation angles; probe epochs bound each element; range ends are checked against
    the key they sweep)."""
    from ablate.config import TrialConfig
    from ablate.spec import SweepSpec, section_model

    def types_in(annotation):  # int | None -> {int, NoneType}; tuple[int, int] -> {tuple}
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            return set().union(*map(types_in, typing.get_args(annotation)))
        return {typing.get_origin(annotation) or annotation}

    def unbounded(model, prefix=""):
        for name, info in model.model_fields.items():
            sub = section_model(info.annotation)
            if sub is not None:
                yield from unbounded(sub, f"{prefix}{name}.")
            elif int in types_in(info.annotation) <= {int, type(None)} and not any(
                getattr(m, "le", None) is not None for m in info.metadata
            ):
                yield f"{prefix}{name}"

    assert list(unbounded(TrialConfig)) == []
    assert list(unbounded(SweepSpec)) == []


def test_the_plan_size_is_checked_before_any_configuration_is_expanded():
    seeds = list(range(101))
    error = error_of(BASE + f"space: {{train.seed: {{grid: {seeds}}}}}\nreplicates: 100")
    assert error.key == "space.train.seed"
    assert "10,100 trials = 101 (space.train.seed) x 100 (replicates)" in error.message
    assert "valid: 1 to 10,000 trials" in error.message
    # A grid value that fails the schema is not reached: the count comes first.
    late_bad = [*seeds[:-1], -1]
    error = error_of(BASE + f"space: {{train.seed: {{grid: {late_bad}}}}}\nreplicates: 100")
    assert error.key == "space.train.seed" and "trials" in error.message
    # op_pairs counts n + n(n-1), random multiplies by num_samples; 10,000 exactly is allowed.
    error = error_of(
        BASE
        + "space: {augment.ops: {op_pairs: [crop, color, blur]}, "
        + "optim.base_lr: {uniform: [0.1, 1]}}\n"
        + "algorithm: {name: random, num_samples: 1200}"
    )
    assert error.key == "algorithm.num_samples"
    assert "10,800 trials = 9 (space.augment.ops) x 1,200 (algorithm.num_samples)" in error.message


def test_planned_trials_counts_what_the_expansion_makes():
    from ablate.spec import planned_trials

    sweep = sweep_of(
        BASE
        + """
space:
  model.head: {grid: [linear, nonlinear]}
  augment.ops: {op_pairs: [crop, color]}
together: [{train.epochs: 1}, {train.epochs: 2}, {train.epochs: 3}]
replicates: 2
"""
    )
    total, factors = planned_trials(sweep.spec)
    assert total == len(sweep.trials) == 2 * 4 * 3 * 2
    assert [k for k, _ in factors] == [
        "space.model.head",
        "space.augment.ops",
        "together",
        "replicates",
    ]


def test_a_spec_file_over_a_megabyte_is_refused_unread(tmp_path):
    from ablate.spec import MAX_SPEC_BYTES

    spec = tmp_path / "huge.yaml"
    spec.write_text("name: t\n# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecError, match="larger than 1024 KiB"):
        load_sweep(spec)
    spec.write_bytes(b"name: t\ndescription: \xff\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_sweep(spec)


# ----------------------------------------------------------------------------- entrypoint


def run_entrypoint(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.sweep", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: t\nspace: {augment.ops: {grid: [[crop, colour]]}}", "space.augment.ops.grid[0]"),
        ("name: t\nmodel: {hed: linear}", "model.hed"),
        (
            "name: t\nspace: {optim.base_lr: {uniform: [2, 1]}}\nalgorithm: {name: random}",
            "lo > hi",
        ),
    ],
)
def test_entrypoint_exits_2_with_the_key(tmp_path, text, key):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    done = run_entrypoint(str(spec), "--dry-run")
    assert done.returncode == 2, done.stderr
    assert str(spec) in done.stderr and key in done.stderr
    assert "Traceback" not in done.stderr


def test_entrypoint_bad_override_exits_2(tmp_path):
    done = run_entrypoint(str(SPACES / "quickstart.yaml"), "--set", "trian.epochs=3", "--dry-run")
    assert done.returncode == 2
    assert "did you mean 'train'" in done.stderr


def test_dry_run_imports_no_ray():
    code = (
        "import sys\n"
        "from entrypoints.sweep import main\n"
        f"assert main([{str(SPACES / 'quickstart.yaml')!r}, '--dry-run']) == 0\n"
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "6 trials" in done.stdout


# ----------------------------------------------------------------------------- reference


def test_reference_page_is_generated_from_the_schema():
    committed = (REPO / "docs" / "search_space.md").read_text()
    assert committed == render_reference(), (
        "docs/search_space.md is stale: python -m ablate.reference > docs/search_space.md"
    )


def test_reference_documents_every_field():
    rows = [line for line in render_reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 90
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3], f"undocumented: {cells[0]}"
    text = render_reference()
    for key in ("`train.epochs`", "`augment.ops`", "`scheduler.grace_period`", "`op_pairs`"):
        assert key in text
