"""Datasets: every source, the export round trip, splits, sharding, the cache and bad input."""

from __future__ import annotations

import io
import json
import pickle
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from ablate import data
from ablate.config import DataConfig
from ablate.data import (
    DataError,
    channel_stats,
    decode,
    export_parquet,
    labelled_subset,
    load_dataset,
    shard_indices,
    synthetic_images,
    train_val_split,
)
from ablate.data.cache import write_cache
from ablate.data.sources import parquet as parquet_source
from entrypoints import export_dataset

# ----------------------------------------------------------------------------- helpers


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_parquet(
    path: Path,
    images: list[bytes],
    labels: list[int],
    class_names: list[str] | None = None,
    extra: dict[str, list] | None = None,
    image_column: str = "image",
) -> Path:
    columns = {image_column: pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())}
    columns.update({k: pa.array(v) for k, v in (extra or {}).items()})
    table = pa.table(columns)
    if class_names is not None:
        table = table.replace_schema_metadata({"class_names": json.dumps(class_names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def parquet_cfg(train: Path | str, test: Path | str | None, **kw) -> DataConfig:
    return DataConfig(
        name="parquet", train_path=str(train), test_path=None if test is None else str(test), **kw
    )


@pytest.fixture
def parquet_set(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """train split over two files in train/, test in test.parquet; PNG so pixels are exact."""
    train = random_images(12, seed=1)
    test = random_images(5, seed=2)
    train_labels = np.arange(12) % 3
    test_labels = np.arange(5) % 3
    names = ["a", "b", "c"]
    for part, rows in enumerate((slice(0, 7), slice(7, 12))):
        write_parquet(
            tmp_path / "train" / f"part-{part}.parquet",
            [encode(im) for im in train[rows]],
            train_labels[rows].tolist(),
            names,
        )
    write_parquet(
        tmp_path / "test.parquet", [encode(im) for im in test], test_labels.tolist(), names
    )
    return tmp_path, train, train_labels, test, test_labels


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_same_seed_same_pixels_other_seed_differs() -> None:
    cfg = DataConfig(name="synthetic", num_train=64, num_test=16, num_classes=8, synthetic_size=16)
    first, again = load_dataset(cfg), load_dataset(cfg)
    other = load_dataset(cfg.model_copy(update={"seed": 1}))
    assert first.train.images.shape == (64, 16, 16, 3) and first.test.images.shape == (
        16,
        16,
        16,
        3,
    )
    assert first.train.images.dtype == np.uint8 and first.train.labels.dtype == np.int64
    np.testing.assert_array_equal(first.train.images, again.train.images)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)
    assert not np.array_equal(first.train.images, other.train.images)
    assert not np.array_equal(first.train.images[:16], first.test.images)  # splits differ
    assert first.class_names == list(data.SYNTHETIC_SHAPES)
    assert np.bincount(first.train.labels).tolist() == [8] * 8  # balanced


def test_synthetic_limit_is_a_prefix() -> None:
    full = synthetic_images(600, 24, 4, seed=3)
    head = synthetic_images(600, 24, 4, seed=3, rows=500)  # past the first render chunk
    np.testing.assert_array_equal(full.images[:500], head.images)
    np.testing.assert_array_equal(full.labels[:500], head.labels)
    limited = load_dataset(DataConfig(name="synthetic", num_train=600, limit_train=50, seed=3))
    assert len(limited.train) == 50


def _synthetic_parts(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value (N, H, W), border value (N,), foreground mask (N, H, W)) of synthetic images."""
    value = images.max(axis=-1).astype(np.int16)  # HSV value
    border = np.median(value[:, [0, -1], :].reshape(len(value), -1), axis=1)
    return value, border, np.abs(value - border[:, None, None]) > 64


def _eroded(mask: np.ndarray) -> np.ndarray:
    """``mask`` (N, H, W) without the pixels next to its edge (4-neighbourhood)."""
    out = mask.copy()
    for axis in (1, 2):
        out &= np.roll(mask, 1, axis) & np.roll(mask, -1, axis)
    return out


def test_synthetic_class_is_the_shape_and_colour_a_nuisance() -> None:
    arrays = synthetic_images(2000, 32, 8, seed=0)
    foreground = _synthetic_parts(arrays.images)[2]
    # Colour carries no class information: the class explains almost none of the variance of
    # the colour of the shapes or of their backgrounds (away from the anti-aliased edges).
    for part in (_eroded(foreground), _eroded(~foreground)):
        colour = (arrays.images * part[..., None]).sum(axis=(1, 2)) / part.sum(axis=(1, 2))[:, None]
        class_means = np.stack([colour[arrays.labels == c].mean(axis=0) for c in range(8)])
        explained = class_means[arrays.labels].var(axis=0) / colour.var(axis=0)
        assert explained.max() < 0.02, explained  # ~7 / 2000 when independent
    # The shape does: horizontal bars are wide, vertical bars tall, squares neither.
    height = foreground.any(axis=2).sum(axis=1)
    width = foreground.any(axis=1).sum(axis=1)
    aspect = width / np.maximum(height, 1)
    names = list(data.SYNTHETIC_SHAPES)
    assert (aspect[arrays.labels == names.index("bar_horizontal")] > 2).mean() > 0.95
    assert (aspect[arrays.labels == names.index("bar_vertical")] < 0.5).mean() > 0.95
    square = aspect[arrays.labels == names.index("square")]
    assert ((square > 0.8) & (square < 1.25)).mean() > 0.95
    # Position and scale vary; shapes take a good part of the image (35-75% of the side).
    side = np.maximum(width, height)[arrays.labels == names.index("circle")] / 32
    assert side.min() >= 0.3 and side.max() <= 0.8 and np.ptp(side) >= 0.25
    centre_x = (foreground * np.arange(32)).sum(axis=(1, 2)) / foreground.sum(axis=(1, 2))
    assert np.ptp(centre_x) >= 8
    # Colour varies per image, within one class too.
    circles = arrays.images[arrays.labels == names.index("circle")].astype(np.float64)
    assert circles.mean(axis=(1, 2)).std(axis=0).min() > 8


def test_synthetic_nothing_but_the_shape_identifies_an_image() -> None:
    images = synthetic_images(500, 32, 4, seed=1).images
    value, border, foreground = _synthetic_parts(images)
    # The shape is always the brighter part (no brightness-polarity bit) and lies inside.
    shape_value = (value * foreground).sum(axis=(1, 2)) / foreground.sum(axis=(1, 2))
    assert (shape_value > border + 64).all()
    assert not foreground[:, [0, -1], :].any() and not foreground[:, :, [0, -1]].any()
    # The background is flat up to i.i.d. pixel noise: no stripes or textures that would
    # survive cropping and colour distortion and identify the image.
    background = _eroded(~foreground)  # anti-aliased edge pixels do not count
    pixels = images.astype(np.float64)
    for i in range(len(images)):
        spread = pixels[i][background[i]].std(axis=0)
        assert spread.max() < 0.045 * 255, (i, spread)
    # Neighbouring background pixels are uncorrelated (the noise is i.i.d.).
    flat = (
        pixels[..., 1]
        - np.array([pixels[i, ..., 1][background[i]].mean() for i in range(500)])[:, None, None]
    )
    both = background[:, :, 1:] & background[:, :, :-1]
    correlation = np.corrcoef(flat[:, :, 1:][both], flat[:, :, :-1][both])[0, 1]
    assert abs(correlation) < 0.1


def test_channel_stats_match_float_computation() -> None:
    images = random_images(50, 8)
    mean, std = channel_stats(images, chunk=7)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)
    ds = load_dataset(DataConfig(name="synthetic", num_train=32, mean=(0.5, 0.5, 0.5)))
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == channel_stats(ds.train.images)[1]


# ----------------------------------------------------------------------------- image folder


def _image_folder(root: Path) -> dict[str, np.ndarray]:
    """train: cat = 20x20 red PNGs, dog = 24x24 grayscale PNGs; test: one of each."""
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    gray = np.full((24, 24), 90, np.uint8)
    for split, count in (("train", 3), ("test", 1)):
        for i in range(count):
            (root / split / "cat").mkdir(parents=True, exist_ok=True)
            (root / split / "dog").mkdir(parents=True, exist_ok=True)
            (root / split / "cat" / f"{i}.png").write_bytes(encode(red))
            (root / split / "dog" / f"{i}.PNG").write_bytes(encode(gray))
    return {"red": red, "gray": gray}


def test_image_folder_resizes_mixed_sizes_and_expands_grayscale(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    ds = load_dataset(DataConfig(name="image_folder", root=str(tmp_path), image_size=16))
    assert ds.class_names == ["cat", "dog"]
    assert ds.train.images.shape == (6, 16, 16, 3) and ds.test.images.shape == (2, 16, 16, 3)
    assert ds.train.labels.tolist() == [0, 1, 0, 1, 0, 1]  # classes interleaved
    cats, dogs = ds.train.images[ds.train.labels == 0], ds.train.images[ds.train.labels == 1]
    assert (cats[..., 0] == 255).all() and (cats[..., 1:] == 0).all()
    assert (dogs == 90).all()  # grayscale -> 3 equal channels
    limited = load_dataset(
        DataConfig(name="image_folder", root=str(tmp_path), image_size=16, limit_train=2)
    )
    assert limited.train.labels.tolist() == [0, 1]


def test_image_folder_mixed_sizes_without_image_size_names_both(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(name="image_folder", root=str(tmp_path)))
    message = str(error.value)
    assert "20x20" in message and "24x24" in message and "image_size" in message
    assert "cat/0.png" in message and "dog/0.PNG" in message


def test_image_folder_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name="image_folder", root=str(tmp_path / "nowhere")))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset(DataConfig(name="image_folder", root=str(tmp_path)))
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match=r"train/cat.*holds no images"):
        load_dataset(DataConfig(name="image_folder", root=str(tmp_path)))


def _pngs(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{value}_{i}.png").write_bytes(encode(np.full((8, 8, 3), value, np.uint8)))


def _two_class_folder(root: Path) -> Path:
    """ROOT/{train,test}/{cat,dog}: 2 train images a class (cat 10, dog 20), 1 test image."""
    for split, n in (("train", 2), ("test", 1)):
        _pngs(root / split / "cat", n, 10)
        _pngs(root / split / "dog", n, 20)
    return root


def test_image_folder_follows_symlinked_folders_and_files(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "ds")
    _pngs(tmp_path / "shared" / "cats", 3, 11)
    _pngs(tmp_path / "birds", 2, 30)
    (root / "train" / "cat" / "more").symlink_to(tmp_path / "shared" / "cats")  # a subfolder
    (root / "train" / "dog" / "linked.png").symlink_to(tmp_path / "shared" / "cats" / "11_0.png")
    (root / "train" / "bird").symlink_to(tmp_path / "birds")  # a class folder
    (root / "test" / "bird").symlink_to(tmp_path / "birds")
    cfg = DataConfig(name="image_folder", root=str(root))
    assert data.train_class_counts(cfg) == [2, 2 + 3, 2 + 1]  # bird, cat, dog
    ds = load_dataset(cfg)
    assert ds.class_names == ["bird", "cat", "dog"]
    cats = ds.train.images[ds.train.labels == 1][..., 0]
    assert sorted({int(v) for v in np.unique(cats)}) == [10, 11]
    assert (ds.train.images[ds.train.labels == 2][..., 0] == 11).any()  # the linked file
    assert ds.test.labels.tolist().count(0) == 2


def test_image_folder_reads_a_folder_linked_twice_once(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "ds")
    _pngs(tmp_path / "extra", 3, 11)
    (root / "train" / "cat" / "a").symlink_to(tmp_path / "extra")
    (root / "train" / "cat" / "b").symlink_to(tmp_path / "extra")
    (tmp_path / "extra" / "again").symlink_to(root / "train" / "cat" / "a")  # leads back to itself
    with pytest.raises(DataError, match="symbolic link loop"):
        data.train_class_counts(DataConfig(name="image_folder", root=str(root)))
    (tmp_path / "extra" / "again").unlink()
    assert data.train_class_counts(DataConfig(name="image_folder", root=str(root))) == [5, 2]


@pytest.mark.parametrize("target", [".", "..", "../..", "../../.."])
def test_image_folder_symlink_loop_is_an_error_not_an_endless_walk(
    tmp_path: Path, target: str
) -> None:
    root = _two_class_folder(tmp_path / "ds")
    link = root / "train" / "cat" / "loop"
    link.symlink_to(target)
    cfg = DataConfig(name="image_folder", root=str(root))
    with pytest.raises(DataError) as error:
        data.check_sources(cfg)
    assert str(error.value).startswith(f"data.root: {link}: symbolic link loop")
    assert error.value.key == "data.root"


@pytest.mark.parametrize("where", ["train/cat/gone.png", "train/cat/sub/gone.png", "test/gone"])
def test_image_folder_dangling_link_is_an_error_naming_it(tmp_path: Path, where: str) -> None:
    root = _two_class_folder(tmp_path / "ds")
    link = root / where
    link.parent.mkdir(parents=True, exist_ok=True)
    _pngs(link.parent, 1, 40)
    link.symlink_to(tmp_path / "deleted")
    cfg = DataConfig(name="image_folder", root=str(root))
    for check in (data.check_sources, load_dataset):
        with pytest.raises(DataError) as error:
            check(cfg)
        assert str(error.value).startswith(f"data.root: {link}: dangling symbolic link to")
        assert str(tmp_path / "deleted") in str(error.value)
    # A hidden dangling link (an editor's lock file, .#name) is skipped like any hidden file.
    link.unlink()
    (link.parent / ".#gone.png").symlink_to(tmp_path / "deleted")
    data.check_sources(cfg)


def test_image_folder_corrupt_file_is_named(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "1.PNG"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"train row 3 \(file .*dog/1\.PNG\).*cannot decode"):
        load_dataset(DataConfig(name="image_folder", root=str(tmp_path), image_size=16))


# ----------------------------------------------------------------------------- parquet


@pytest.mark.parametrize("form", ["dir", "glob", "file"])
def test_parquet_file_dir_and_glob(parquet_set, form: str) -> None:
    root, train, train_labels, test, test_labels = parquet_set
    train_path = {
        "dir": root / "train",
        "glob": str(root / "train" / "part-*.parquet"),
        "file": root / "train" / "part-0.parquet",
    }[form]
    ds = load_dataset(parquet_cfg(train_path, root / "test.parquet"))
    rows = 7 if form == "file" else 12
    np.testing.assert_array_equal(ds.train.images, train[:rows])
    np.testing.assert_array_equal(ds.train.labels, train_labels[:rows])
    np.testing.assert_array_equal(ds.test.images, test)
    np.testing.assert_array_equal(ds.test.labels, test_labels)
    assert ds.class_names == ["a", "b", "c"]
    limited = load_dataset(parquet_cfg(train_path, root / "test.parquet", limit_train=3))
    np.testing.assert_array_equal(limited.train.images, train[:3])


def test_parquet_hugging_face_struct_layout(tmp_path: Path) -> None:
    images = random_images(4, 8, seed=5)
    jpegs = [encode(im, "JPEG") for im in images]
    column = pa.array(
        [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(jpegs)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    hf = {
        "info": {
            "features": {
                "image": {"_type": "Image"},
                "label": {"_type": "ClassLabel", "names": ["x", "y"]},
            }
        }
    }
    table = pa.table({"image": column, "label": pa.array([0, 1, 1, 0], pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(table, tmp_path / "train.parquet")
    pq.write_table(table, tmp_path / "test.parquet")
    ds = load_dataset(parquet_cfg(tmp_path / "train.parquet", tmp_path / "test.parquet"))
    assert ds.class_names == ["x", "y"]
    expected = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs])
    np.testing.assert_array_equal(ds.train.images, expected)
    assert ds.train.labels.tolist() == [0, 1, 1, 0]


def test_parquet_split_column_and_default_class_names(tmp_path: Path) -> None:
    images = random_images(6, seed=7)
    split = ["train", "test", "train", "validation", "test", "train"]
    path = write_parquet(
        tmp_path / "all.parquet",
        [encode(im) for im in images],
        [0, 1, 2, 0, 1, 2],
        extra={"which": split},
        image_column="img",
    )
    ds = load_dataset(
        parquet_cfg(path, None, split_column="which", image_column="img", limit_test=1)
    )
    np.testing.assert_array_equal(ds.train.images, images[[0, 2, 5]])
    assert ds.train.labels.tolist() == [0, 2, 2] and ds.test.labels.tolist() == [1]
    np.testing.assert_array_equal(ds.test.images, images[[1]])
    assert ds.class_names == ["0", "1", "2"]  # no metadata: 0..max label
    with pytest.raises(DataError, match=r"no test rows.*holds \['train'\]"):
        only_train = write_parquet(
            tmp_path / "t.parquet", [encode(images[0])], [0], extra={"which": ["train"]}
        )
        load_dataset(parquet_cfg(only_train, None, split_column="which"))


def test_parquet_bad_inputs_name_file_row_and_columns(tmp_path: Path, parquet_set) -> None:
    root = parquet_set[0]
    test = root / "test.parquet"
    with pytest.raises(DataError, match=r"data.train_path: .*missing\.parquet.* does not exist"):
        load_dataset(parquet_cfg(root / "missing.parquet", test))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.* holds no \.parquet files"):
        load_dataset(parquet_cfg(root / "empty", test))
    with pytest.raises(DataError, match=r"no files match the glob"):
        load_dataset(parquet_cfg(str(root / "nope-*.parquet"), test))
    with pytest.raises(DataError, match=r"needs data.test_path"):
        load_dataset(parquet_cfg(root / "train", None))

    wrong = write_parquet(root / "wrong.parquet", [b"x"], [0], image_column="img")
    with pytest.raises(DataError) as error:
        load_dataset(parquet_cfg(wrong, test))
    message = str(error.value)
    assert str(wrong) in message and "'image' (data.image_column)" in message
    assert "['img', 'label']" in message

    good = [encode(im) for im in random_images(4)]
    corrupt = write_parquet(
        root / "corrupt.parquet", [*good[:2], b"\xff\xd8\xffjunk", good[3]], [0, 1, 0, 1]
    )
    with pytest.raises(DataError, match=rf"row 2 of {corrupt}: cannot decode image"):
        load_dataset(parquet_cfg(corrupt, test))

    mixed_images = [encode(random_images(1, 8)[0])] * 3 + [encode(random_images(1, 6)[0])]
    mixed = write_parquet(root / "mixed.parquet", mixed_images, [0, 1, 0, 1])
    with pytest.raises(DataError) as error:
        load_dataset(parquet_cfg(mixed, test))
    message = str(error.value)
    assert f"row 0 of {mixed} is 8x8" in message and f"row 3 of {mixed} is 6x6" in message
    resized = load_dataset(parquet_cfg(mixed, test, image_size=8))
    assert resized.train.images.shape == (4, 8, 8, 3)

    out_of_range = write_parquet(root / "range.parquet", good, [0, 1, 3, 1], ["a", "b", "c"])
    with pytest.raises(
        DataError,
        match=rf"row 2 of {out_of_range}: label 3 is out of range; "
        r"valid: 0\.\.2",
    ):
        load_dataset(parquet_cfg(out_of_range, test))
    negative = write_parquet(root / "neg.parquet", good, [0, -1, 0, 1])
    with pytest.raises(DataError, match=rf"row 1 of {negative}: label -1 is out of range"):
        load_dataset(parquet_cfg(negative, negative))

    not_parquet = root / "text.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(DataError, match=r"text\.parquet: not a readable Parquet file"):
        load_dataset(parquet_cfg(not_parquet, test))


# ----------------------------------------------------------------------------- torchvision


def _fake_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The exact torchvision on-disk format, 3 images per batch file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, 3).tolist()
        entry = {
            "batch_label": name,
            "labels": batch_labels,
            "data": batch.transpose(0, 3, 1, 2).reshape(3, -1),  # channel planes, row-major
            "filenames": [f"{name}_{i}.png" for i in range(3)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
        images.append(batch)
        labels.extend(batch_labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return np.concatenate(images), np.asarray(labels)


def test_cifar10_reads_torchvision_layout(tmp_path: Path) -> None:
    images, labels = _fake_cifar10(tmp_path)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    np.testing.assert_array_equal(ds.train.images, images[:15])
    np.testing.assert_array_equal(ds.train.labels, labels[:15])
    np.testing.assert_array_equal(ds.test.images, images[15:])
    assert ds.class_names == [f"class{i}" for i in range(10)]
    resized = load_dataset(
        DataConfig(name="cifar10", root=str(tmp_path), image_size=16, limit_test=2)
    )
    assert resized.train.images.shape == (15, 16, 16, 3) and len(resized.test) == 2


def test_cifar100_and_stl10_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    c100 = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for name in ("train", "test"):
        entry = {"data": c100.transpose(0, 3, 1, 2).reshape(4, -1), "fine_labels": [5, 99, 0, 1]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    ds = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), download=False))
    np.testing.assert_array_equal(ds.test.images, c100)
    assert ds.train.labels.tolist() == [5, 99, 0, 1] and len(ds.class_names) == 100

    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    stl_images = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    for split in ("train", "test"):
        # STL-10 binaries store each image column-major: (N, C, W, H); labels 1-based.
        (stl / f"{split}_X.bin").write_bytes(stl_images.transpose(0, 3, 2, 1).tobytes())
        (stl / f"{split}_y.bin").write_bytes(np.array([1, 10], np.uint8).tobytes())
    ds = load_dataset(DataConfig(name="stl10", root=str(tmp_path), download=False))
    np.testing.assert_array_equal(ds.train.images, stl_images)
    assert ds.test.labels.tolist() == [0, 9]


def test_torchvision_missing_files_name_files_root_and_alternatives(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    message = str(error.value)
    assert "cifar-10-batches-py/test_batch" in message and "data_batch_1" not in message
    assert str(tmp_path) in message and "data.download=false" in message
    assert "entrypoints.export_dataset" in message and "image_folder" in message


def test_torchvision_download_without_network_gives_offline_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    # Simulate a machine without network (never download 170 MB from a test machine that has it).
    monkeypatch.setattr(socket, "create_connection", no_network)
    root = tmp_path / "cifar"
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(name="cifar10", root=str(root), download=True))
    message = str(error.value)
    assert "www.cs.toronto.edu is unreachable" in message
    assert "cifar-10-batches-py/data_batch_1" in message and "data.name='parquet'" in message
    assert not root.exists()  # nothing half-downloaded


# ----------------------------------------------------------------------------- export


def test_export_round_trip_is_pixel_identical(tmp_path: Path) -> None:
    cfg = DataConfig(name="synthetic", num_train=70, num_test=20, num_classes=3, synthetic_size=16)
    source = load_dataset(cfg)
    written = export_parquet(source, tmp_path / "out", rows_per_group=16, shard_rows=50)
    assert [p.name for p in written["train"]] == ["part-00000.parquet", "part-00001.parquet"]
    meta = pq.ParquetFile(written["train"][0])
    assert meta.metadata.num_row_groups == 4 and meta.schema_arrow.field("label").type == pa.int64()
    back = load_dataset(parquet_cfg(tmp_path / "out" / "train", tmp_path / "out" / "test"))
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(back, split).images, getattr(source, split).images)
        np.testing.assert_array_equal(getattr(back, split).labels, getattr(source, split).labels)
    assert back.class_names == source.class_names and back.mean == source.mean
    with pytest.raises(DataError, match="not empty"):
        export_parquet(source, tmp_path / "out")


def test_export_entrypoint_refuses_non_empty_out(tmp_path: Path, capsys) -> None:
    out = tmp_path / "exported"
    argv = ["--source", "synthetic", "--num-train", "16", "--num-test", "8", "--out", str(out)]
    assert export_dataset.main(argv) == 0
    assert export_dataset.main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert export_dataset.main([*argv, "--overwrite", "--seed", "4"]) == 0
    back = load_dataset(parquet_cfg(out / "train", out / "test"))
    fresh = load_dataset(DataConfig(name="synthetic", num_train=16, num_test=8, seed=4))
    np.testing.assert_array_equal(back.train.images, fresh.train.images)
    assert (
        export_dataset.main(
            [
                "--source",
                "cifar10",
                "--root",
                str(tmp_path / "no"),
                "--no-download",
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "files missing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- splits


def test_shards_cover_the_set_without_overlap_and_reshuffle_per_epoch() -> None:
    n, world = 103, 4
    shards = [shard_indices(n, rank, world, epoch=0, seed=7) for rank in range(world)]
    assert {len(s) for s in shards} == {n // world}  # equal counts, remainder dropped
    together = np.concatenate(shards)
    assert len(np.unique(together)) == len(together) == (n // world) * world
    assert set(together) <= set(range(n))
    np.testing.assert_array_equal(shards[2], shard_indices(n, 2, world, epoch=0, seed=7))
    assert not np.array_equal(shards[0], shard_indices(n, 0, world, epoch=1, seed=7))
    assert not np.array_equal(shards[0], shard_indices(n, 0, world, epoch=0, seed=8))
    whole = shard_indices(n, 0, 1, epoch=3, seed=7)
    assert sorted(whole.tolist()) == list(range(n))  # one worker: every row, each epoch
    # over epochs the dropped remainder changes, so no row is left out for good
    seen = set().union(
        *(set(shard_indices(n, r, world, e, 7)) for r in range(world) for e in range(10))
    )
    assert seen == set(range(n))
    with pytest.raises(ValueError):
        shard_indices(n, 4, 4, 0, 0)


def test_labelled_subset_is_class_balanced_and_reproducible() -> None:
    labels = np.repeat(np.arange(5), [100, 100, 100, 100, 7])
    subset = labelled_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[subset]).tolist() == [10, 10, 10, 10, 1]  # >= 1 per class
    np.testing.assert_array_equal(subset, labelled_subset(labels, 0.1, seed=3))
    assert not np.array_equal(subset, labelled_subset(labels, 0.1, seed=4))
    assert len(np.unique(subset)) == len(subset)
    assert np.bincount(labels[labelled_subset(labels, 0.01, seed=0)]).tolist() == [1] * 5


def test_train_val_split_is_balanced_disjoint_and_complete() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [50, 50, 50, 30]))
    train_idx, val_idx = train_val_split(labels, 0.2, seed=1)
    assert np.bincount(labels[val_idx]).tolist() == [10, 10, 10, 6]
    assert not set(train_idx) & set(val_idx)
    assert sorted([*train_idx, *val_idx]) == list(range(len(labels)))
    again = train_val_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(val_idx, again[1])
    assert not np.array_equal(val_idx, train_val_split(labels, 0.2, seed=2)[1])


# ----------------------------------------------------------------------------- cache


def test_cache_returns_identical_memory_maps_without_decoding_again(
    parquet_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = parquet_set[0]
    cfg = parquet_cfg(root / "train", root / "test.parquet")
    plain = load_dataset(cfg)
    cache = tmp_path / "cache"
    first = load_dataset(cfg, cache_dir=cache)
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the arrays")

    # Parquet decodes through the name its module imported.
    monkeypatch.setattr(parquet_source, "decode_images", no_decoding)
    second = load_dataset(cfg, cache_dir=cache)
    for ds in (first, second):
        assert isinstance(ds.train.images, np.memmap) and not ds.train.images.flags.writeable
        np.testing.assert_array_equal(ds.train.images, plain.train.images)
        np.testing.assert_array_equal(ds.test.labels, plain.test.labels)
        assert ds.class_names == plain.class_names and ds.mean == plain.mean
    # A changed source file gets a new key (and so decodes again).
    write_parquet(
        root / "train" / "part-1.parquet", [encode(random_images(1)[0])], [2], ["a", "b", "c"]
    )
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(cfg, cache_dir=cache)
    monkeypatch.undo()
    changed = load_dataset(cfg, cache_dir=cache)
    assert len(changed.train) == 8 and len(list(cache.iterdir())) == 2


def test_cache_write_race_keeps_one_complete_entry(tmp_path: Path) -> None:
    cfg = DataConfig(name="synthetic", num_train=16, num_test=8)
    ds = load_dataset(cfg)
    entry = tmp_path / data.cache_key(cfg, [])
    for _ in range(2):  # the second writer finds the entry in place and discards its copy
        write_cache(entry, ds.train, ds.test, ds.class_names, ds.mean, ds.std, cfg)
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]
    np.testing.assert_array_equal(
        load_dataset(cfg, cache_dir=tmp_path).train.images, ds.train.images
    )


# ----------------------------------------------------------------------------- odd images
# Kinds of input reported against image loaders (issue 13): each through an image folder and a
# Parquet file, so both the torchvision decoder and the Pillow fallback see it.

#: 0, 257, 514, ..., 65535: 16-bit values whose 8-bit scaling is exactly 0..255.
RAMP16 = (np.arange(256, dtype=np.uint16) * 257)[None].repeat(4, axis=0)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of ``pixels`` (H, W) gray or (H, W, 2|3|4) gray+alpha/RGB/RGBA, uint16.

    Pillow writes only 16-bit grayscale PNGs; the PNG container is simple enough to write here.
    """
    pixels = np.asarray(pixels, dtype=">u2")
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def sixteen_bit_images() -> dict[str, tuple[bytes, str]]:
    """name -> (encoded ramp image, file suffix), every 16-bit layout a user may have."""
    opaque = np.full_like(RAMP16, 65535)
    gray_png = io.BytesIO()
    Image.fromarray(RAMP16).save(gray_png, format="PNG")  # Pillow mode I;16
    gray_tiff = io.BytesIO()
    Image.fromarray(RAMP16).save(gray_tiff, format="TIFF")  # not torchvision: Pillow decodes
    return {
        "gray_pillow": (gray_png.getvalue(), ".png"),
        "gray": (png16(RAMP16), ".png"),
        "gray_alpha": (png16(np.stack([RAMP16, opaque], -1)), ".png"),
        "rgb": (png16(np.stack([RAMP16] * 3, -1)), ".png"),
        "rgba": (png16(np.stack([RAMP16] * 3 + [opaque], -1)), ".png"),
        "gray_tiff": (gray_tiff.getvalue(), ".tif"),
    }


def one_class_folder(root: Path, files: dict[str, bytes]) -> DataConfig:
    """root/{train,test}/a/<name> for each file; the config that reads it."""
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (root / split / "a" / name).write_bytes(content)
    return DataConfig(name="image_folder", root=str(root))


def one_file_parquet(root: Path, images: list[bytes | None]) -> DataConfig:
    column = pa.array(images, pa.binary())
    table = pa.table({"image": column, "label": pa.array([0] * len(images), pa.int64())})
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "set.parquet")
    return parquet_cfg(root / "set.parquet", root / "set.parquet")


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    ramp8 = np.arange(256, dtype=np.uint8)
    for kind, (content, suffix) in sixteen_bit_images().items():
        folder = load_dataset(one_class_folder(tmp_path / kind / "folder", {f"x{suffix}": content}))
        loaded = {"folder": folder.train.images}
        if suffix == ".png":
            loaded["parquet"] = load_dataset(
                one_file_parquet(tmp_path / kind / "parquet", [content, content])
            ).train.images
            loaded["pillow"] = decode._decode_with_pillow(content)[None]  # no torchvision build
        for path, images in loaded.items():
            assert images.shape[1:] == (4, 256, 3), (kind, path)
            for image in images:
                for c in range(3):
                    assert (image[:, :, c] == ramp8).all(), (kind, path, image[0, :8, c])


def test_empty_image_bytes_name_the_file_or_row(tmp_path: Path) -> None:
    good = encode(random_images(1)[0])
    folder = one_class_folder(tmp_path / "folder", {"0.png": good, "1.png": b"", "2.png": good})
    with pytest.raises(DataError, match=r"train row 1 \(file .*a/1\.png\): empty image"):
        load_dataset(folder)
    first = one_class_folder(tmp_path / "first", {"0.png": b"", "1.png": good})
    with pytest.raises(DataError, match=r"train row 0 \(file .*a/0\.png\): empty image"):
        load_dataset(first)
    parquet = one_file_parquet(tmp_path / "parquet", [good, good, b"", good])
    with pytest.raises(DataError, match=rf"row 2 of {tmp_path / 'parquet'}/set.parquet: empty"):
        load_dataset(parquet)
    null = one_file_parquet(tmp_path / "null", [good, None])
    with pytest.raises(DataError, match=r"row 1 of .*set\.parquet: the image is null"):
        load_dataset(null)
    assert decode._decode_with_pillow(good).shape == (8, 8, 3)


def test_a_constant_channel_is_floored_not_divided_by_zero(tmp_path: Path) -> None:
    images = random_images(6, seed=7)
    images[..., 2] = 0  # blue is always 0: its std is 0
    cfg = one_file_parquet(tmp_path, [encode(im) for im in images])
    assert channel_stats(images)[1][2] == 0.0
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # computed, cached, read
        with pytest.warns(UserWarning, match=r"channel 2 \(blue\).*constant.*data\.std"):
            ds = load_dataset(cfg, cache_dir=cache_dir)
        assert ds.std[2] == data.STD_FLOOR and ds.std[:2] == channel_stats(images)[1][:2]
    from ablate.augment import normalize

    pixels = torch.from_numpy(np.array(ds.train.images)).permute(0, 3, 1, 2).float() / 255
    jittered = pixels.clone()
    jittered[:, 2] = 0.5  # colour jitter can move the constant channel
    for x in (pixels, jittered):
        out = normalize(x, ds.mean, ds.std)
        assert torch.isfinite(out).all()
    assert (normalize(pixels, ds.mean, ds.std)[:, 2] == 0).all()  # centred: mean 0 stays 0
    chosen = load_dataset(cfg.model_copy(update={"std": (0.2, 0.2, 0.5)}))
    assert chosen.std == (0.2, 0.2, 0.5)  # data.std overrides the floor, silently
    with pytest.raises(ValidationError, match=r"std\.2"):
        DataConfig(name="synthetic", std=(0.2, 0.2, 0.0))


def oriented_jpeg(orientation: int) -> bytes:
    """A 16x32 (HxW) JPEG, white top-left 8x8 block, stored with EXIF ``Orientation``."""
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_in_every_decode_path(tmp_path: Path) -> None:
    rotated = oriented_jpeg(6)  # displayed turned 90 degrees clockwise: 32x16, block top-right
    upright = oriented_jpeg(1)
    # two JPEGs per split: the first row is decoded alone, the rest in torchvision's batch call
    folder = load_dataset(
        one_class_folder(tmp_path / "folder", {"0.jpg": rotated, "1.jpg": rotated})
    )
    parquet = load_dataset(one_file_parquet(tmp_path / "parquet", [rotated, rotated, rotated]))
    pillow = decode._decode_with_pillow(rotated)[None]
    for name, images in (("folder", folder.train.images), ("parquet", parquet.train.images)):
        assert images.shape[1:] == (32, 16, 3), name
    for image in [*folder.train.images, *parquet.train.images, *pillow]:
        assert image[:8, 8:].min() > 200 and image[8:].max() < 60 and image[:8, :8].max() < 60
    plain = load_dataset(one_class_folder(tmp_path / "plain", {"0.jpg": upright}))
    assert plain.train.images.shape[1:] == (16, 32, 3)
    assert decode._decode_with_pillow(upright).shape == (16, 32, 3)
