"""Data sources: the registry of ``data.name`` and a user's own source, ``module.path:factory``,
flowing through loading, the cache, splits and normalisation like a built-in one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ablate.config import DataConfig
from ablate.data import (
    SOURCES,
    DataError,
    cache_key,
    channel_stats,
    check_sources,
    labelled_subset,
    load_dataset,
    split_sizes,
    train_class_counts,
    train_val_split,
)
from ablate.data.sources import source_entry

TESTS = Path(__file__).parent
STRIPES = "stripes_source:stripes"


@pytest.fixture(autouse=True)
def user_sources_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's module is importable from where the sweep runs (here: the tests folder)."""
    monkeypatch.syspath_prepend(str(TESTS))


def user_cfg(name: str = STRIPES, **fields) -> DataConfig:
    """A validated data config naming a user source; every other field keeps its default."""
    return DataConfig(name=name, **{"num_train": 60, "num_test": 24, **fields})


def unchecked_cfg(name: str, match: str) -> DataConfig:
    """A data config naming a source the schema refuses (the refusal, matching ``match``, is
    asserted here), built unvalidated so the data layer's own check can be tested too."""
    with pytest.raises(ValidationError, match=match):
        user_cfg(name)
    return DataConfig.model_construct(name=name, num_train=60, num_test=24)


# ----------------------------------------------------------------------------- registry


def test_every_built_in_source_is_registered_with_a_description() -> None:
    assert SOURCES.names() == (
        "cifar10",
        "cifar100",
        "stl10",
        "image_folder",
        "parquet",
        "synthetic",
    )
    assert all(entry.description and "\n" not in entry.description for entry in SOURCES)
    assert "`module.path:factory`" in SOURCES.describe()
    for name in SOURCES.names():
        assert SOURCES.validate(name) == name


def test_an_unknown_source_names_the_closest_and_the_valid_ones() -> None:
    with pytest.raises(DataError, match=r"^data\.name: unknown data source 'parqet'") as error:
        load_dataset(unchecked_cfg("parqet", "did you mean 'parquet'"))
    assert "did you mean 'parquet'?" in str(error.value) and "synthetic" in str(error.value)
    assert error.value.key == "data.name"


def test_a_user_source_that_does_not_import_is_reported_at_the_check() -> None:
    with pytest.raises(DataError, match="cannot import module 'no_such_module'") as error:
        check_sources(unchecked_cfg("no_such_module:stripes", "cannot import module"))
    assert error.value.key == "data.name"
    with pytest.raises(DataError, match="did you mean stripes_source:stripes"):
        check_sources(unchecked_cfg("stripes_source:stripe", "did you mean"))


# ----------------------------------------------------------------------------- a user source


def test_a_user_source_loads_splits_and_normalises_like_a_built_in(tmp_path: Path) -> None:
    import stripes_source

    cfg = user_cfg(seed=3)
    check_sources(cfg)  # imports and checks the factory, decodes nothing
    assert train_class_counts(cfg) is None and split_sizes(cfg) is None  # known only once loaded
    dataset = load_dataset(cfg)
    train_images, train_labels = stripes_source._stripes(60, 3, 0)
    np.testing.assert_array_equal(dataset.train.images, train_images)
    np.testing.assert_array_equal(dataset.train.labels, train_labels)
    assert dataset.train.labels.dtype == np.int64 and dataset.test.images.shape == (24, 12, 12, 3)
    assert dataset.class_names == stripes_source.CLASSES and dataset.name == STRIPES
    # Normalisation: the training images' own statistics, as for every source.
    mean, std = channel_stats(dataset.train.images)
    assert dataset.mean == mean and dataset.std == std
    # Splits: class-balanced, from the source's labels.
    train_idx, val_idx = train_val_split(dataset.train.labels, 0.1, cfg.seed)
    assert np.bincount(dataset.train.labels[val_idx]).tolist() == [2, 2, 2]
    assert len(train_idx) + len(val_idx) == 60
    subset = labelled_subset(dataset.train.labels, 0.5, cfg.seed)
    assert np.bincount(dataset.train.labels[subset]).tolist() == [10, 10, 10]
    # The generic data.* keys apply to a user's arrays too.
    shaped = load_dataset(user_cfg(seed=3, limit_train=9, image_size=16, std=(0.5, 0.5, 0.5)))
    assert shaped.train.images.shape == (9, 16, 16, 3) and shaped.test.images.shape[1:3] == (16, 16)
    np.testing.assert_array_equal(shaped.train.labels, train_labels[:9])
    assert shaped.std == (0.5, 0.5, 0.5)
    # The cache keeps its arrays like a built-in's: decoded once, memory-mapped read-only.
    cached = load_dataset(cfg, cache_dir=tmp_path)
    again = load_dataset(cfg, cache_dir=tmp_path)
    assert [p.name.startswith("stripes_source_stripes-") for p in tmp_path.iterdir()] == [True]
    assert isinstance(again.train.images, np.memmap) and not again.train.images.flags.writeable
    np.testing.assert_array_equal(cached.test.images, dataset.test.images)
    assert again.mean == dataset.mean and again.class_names == dataset.class_names


def test_editing_a_user_source_invalidates_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "edited_source.py"
    body = (
        "import numpy as np\n"
        "def make(cfg):\n"
        "    images = np.full((4, 8, 8, 3), {value}, np.uint8)\n"
        "    return (images, np.arange(4) % 2), (images, np.arange(4) % 2), ['a', 'b']\n"
    )
    module.write_text(body.format(value=10))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = user_cfg("edited_source:make")
    files = source_entry(cfg.name).component(cfg).files
    assert files == [module.resolve()]
    before = cache_key(cfg, files)
    assert before == cache_key(cfg, files)
    module.write_text(body.format(value=20))
    assert cache_key(cfg, files) != before
    # And every data.* key a factory may read is part of the key.
    assert cache_key(user_cfg("edited_source:make", root="/elsewhere"), files) != cache_key(
        cfg, files
    )
    assert cache_key(user_cfg("edited_source:make", val_fraction=0.2), files) == cache_key(
        cfg, files
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("not_a_function", r"source 'stripes_source:not_a_function' is a int, not callable"),
        ("two_arguments", r"has the signature \(cfg.*, extra.*\).*; it must take one argument"),
        ("float_images", r"returned train images of shape \(60, 12, 12, 3\) and dtype float64"),
        ("label_out_of_range", r": test row 5: label 3 is out of range; valid: 0\.\.2"),
        ("sizes_differ", r"train images of 12x12 \(HxW\) but test images of 8x8.*image_size"),
        ("two_values", r"returned a tuple of 2; expected factory\(cfg\) -> \(train, test"),
        ("raises", r"raised FileNotFoundError: no stripes under None"),
    ],
)
def test_a_user_source_that_breaks_the_contract_says_how(factory: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as error:
        name = f"stripes_source:{factory}"
        # What is wrong with the factory itself, the schema already refuses at data.name.
        refused = factory in ("not_a_function", "two_arguments")
        load_dataset(unchecked_cfg(name, message) if refused else user_cfg(name))
    assert error.value.key == "data.name"


def test_mismatched_sizes_are_fine_once_image_size_resizes_them() -> None:
    dataset = load_dataset(user_cfg("stripes_source:sizes_differ", image_size=8))
    assert dataset.train.images.shape[1:] == dataset.test.images.shape[1:] == (8, 8, 3)


def test_the_schema_accepts_a_user_source() -> None:
    assert DataConfig(name=STRIPES).name == STRIPES


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_trains_on_a_user_source_named_in_the_yaml(ray_cluster, tmp_path: Path) -> None:
    """``data.name: tests.stripes_source:stripes`` through the whole path: the schema, the
    driver's load, and every trial's worker (which validates the config, importing the module
    from the launch directory Ray puts on its path)."""
    from ablate.sweep import run_sweep

    repo = TESTS.parent
    done = run_sweep(
        repo / "search_spaces" / "quickstart.yaml",
        overrides=[
            "data.name=tests.stripes_source:stripes",
            "data.num_train=96",
            "data.num_test=24",
            "data.image_size=16",
            "train.batch_size=16",
            "train.steps_per_epoch=2",
            "train.epochs=1",
            "eval.knn_k=5",
            "eval.eval_every=1",
            "eval.probe.max_iter=5",
            "tracking.enabled=false",
            f"storage.path={tmp_path}",
            "space.augment.ops={grid: [[crop, color]]}",
            "space.model.head={grid: [linear]}",
        ],
    )
    (trial,) = done.trials
    assert trial["status"] == "completed", trial
    params = (tmp_path / "quickstart" / trial["trial_id"] / "params.json").read_text()
    assert '"name": "tests.stripes_source:stripes"' in params  # the trial's resolved config
    # Three stripe directions: the probe's chance level is 1/3, and its metrics exist.
    assert 0.0 <= trial["metrics"]["test/probe_top1"] <= 1.0
