"""The sweep spec: shipped YAMLs, expansion, overrides, validation errors, the reference page."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablate import data
from ablate.config import FIGURE5_OPS, DataConfig
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
    ops = [t["varying"]["augment.ops"] for t in sweep.trials]
    assert ops[:7] == [[op] for op in FIGURE5_OPS]
    pairs = ops[7:]
    assert len(pairs) == 42 and len({tuple(p) for p in pairs}) == 42
    assert ["crop", "color"] in pairs and ["color", "crop"] in pairs
    assert all(a != b for a, b in pairs)
    # The paper's protocol: transformations on one branch, identity on the other.
    assert all(t["config"]["augment"]["mode"] == "asymmetric" for t in sweep.trials)
    assert all(t["config"]["augment"]["base"] == [] for t in sweep.trials)


def test_op_pairs_counts():
    assert len(op_pairs(FIGURE5_OPS)) == 49
    assert op_pairs(["a", "b"]) == [["a"], ["b"], ["a", "b"], ["b", "a"]]


def test_figure8_lists_the_none_head_once_per_seed():
    sweep = load_sweep(SPACES / "simclr_fig8_projection_head.yaml")
    heads = [t["varying"]["model.head"] for t in sweep.trials]
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
            assert config["augment"]["color"]["strength"] == 0.5
            assert "blur" not in config["augment"]["ops"] or name.startswith("simclr_fig5")
            assert config["optim"]["name"] == optim["name"]
            assert config["optim"]["weight_decay"] == optim["weight_decay"]
            assert config["model"]["stem"] == "cifar"
            assert config["resources"]["gpus_per_worker"] > 0


def test_quickstart_is_a_small_cpu_miniature_of_figures_5_and_8():
    sweep = load_sweep(SPACES / "quickstart.yaml")
    assert sweep.num_trials == 6
    varying = [
        (tuple(t["varying"]["augment.ops"]), t["varying"]["model.head"]) for t in sweep.trials
    ]
    assert {ops for ops, _ in varying} == {("crop",), ("color",), ("crop", "color")}
    assert {head for _, head in varying} == {"linear", "nonlinear"}
    # Every trial runs to the end: crop + colour starts slowly here and ASHA would stop it.
    assert sweep.spec.scheduler.name == "fifo"
    for config in sweep.configs():
        assert config["data"]["name"] == "synthetic"
        assert config["resources"]["gpus_per_worker"] == 0
        assert config["model"]["width"] <= 16


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
    assert first["varying"] == {"model.head": "linear", "train.batch_size": 32, "train.epochs": 2}
    assert first["config"]["train"]["epochs"] == 2
    assert sweep.trials[1]["config"]["optim"]["base_lr"] == 0.6
    assert sweep.trials[1]["config"]["train"]["epochs"] == 3  # the base where not set
    # Replicates outermost: every configuration once with seed 10, then with seed 11.
    assert [t["replicate"] for t in sweep.trials] == [0] * 4 + [1] * 4
    assert [t["config"]["train"]["seed"] for t in sweep.trials] == [10] * 4 + [11] * 4
    assert all(t["sweep"] == "t" for t in sweep.trials)
    assert set(first) == {"config", "varying", "replicate", "sweep"}


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
    assert [t["varying"] for t in one.trials] == [t["varying"] for t in two.trials]
    other = sweep_of(text, "algorithm.seed=4")
    assert [t["varying"] for t in other.trials] != [t["varying"] for t in one.trials]
    lrs = [t["config"]["optim"]["base_lr"] for t in one.trials]
    assert all(0.01 <= v <= 1.0 for v in lrs)
    assert min(lrs) < 0.1  # log-uniform: a decade below the middle gets draws
    assert all(0.1 <= t["config"]["loss"]["temperature"] <= 0.5 for t in one.trials)
    dims = {t["config"]["model"]["out_dim"] for t in one.trials}
    assert dims == {16, 17, 18}  # randint is inclusive at both ends
    assert {tuple(t["config"]["augment"]["ops"]) for t in one.trials} == {
        ("crop",),
        ("crop", "color"),
    }


def test_grid_enumerates_choice():
    sweep = sweep_of(BASE + "space: {model.head: {choice: [linear, none]}}")
    assert [t["varying"]["model.head"] for t in sweep.trials] == ["linear", "none"]


def test_optuna_plans_no_trials_but_validates_the_range_ends():
    optuna = "\nalgorithm: {name: optuna}"
    sweep = sweep_of(
        BASE + "space: {optim.base_lr: {loguniform: [0.01, 1.0]}}" + optuna,
        "algorithm.num_samples=7",
    )
    assert sweep.trials == [] and sweep.num_trials == 7
    assert "7 trials proposed by Optuna" in describe_plan(sweep)
    param = sweep.make_param({"optim.base_lr": 0.05})
    assert param["config"]["optim"]["base_lr"] == 0.05
    assert param["varying"] == {"optim.base_lr": 0.05}
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
    config = plan.trials[0]["config"]
    cfg = DataConfig.model_validate(config["data"])
    labels = data.load_dataset(cfg).train.labels  # decoded, as a trial does
    train_idx, val_idx = data.train_val_split(labels, cfg.val_fraction, cfg.seed)
    assert data.split_sizes(cfg) == (len(train_idx), len(val_idx))
    workers, batch = config["resources"]["num_workers"], config["train"]["batch_size"]
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
    assert {t["varying"]["model.head"] for t in sweep.trials} == {"none"}
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
