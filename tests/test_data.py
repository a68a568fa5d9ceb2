"""Tests of fedsim.data's sources: the loaders (loaders, cifar_batches, image_folder) on tiny
synthesised files, load_source, validate_dataset, build_dataset, real shared data."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fedsim.config import DatasetConfig, SourceConfig
from fedsim.data.cifar_batches import load_cifar
from fedsim.data.dataset_checks import validate_dataset
from fedsim.data.datasets import build_dataset
from fedsim.data.image_folder import load_image_folder
from fedsim.data.loaders import (
    FORMATS,
    default_data_root,
    load_idx,
    load_npz,
    load_sklearn_digits,
)
from fedsim.data.sources import load_source
from fedsim.errors import ConfigError, DataError

# --------------------------------------------------------------------------- helpers


def shared_file(relative: str) -> Path:
    """Path of a file of the shared data folder, or skip the test naming the missing file."""
    path = default_data_root() / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} not found (../shared/data)")
    return path


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez_compressed(path, x=x, y=y)
    return path


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def cifar_rows(x_hwc: np.ndarray) -> np.ndarray:
    """N×32×32×3 images as CIFAR rows: the R, G and B planes one after the other."""
    return x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), 3072)


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def digits_config(**overrides: Any) -> DatasetConfig:
    """The embedded 8×8 digits as the only source, with DatasetConfig overrides."""
    return DatasetConfig(
        sources=[SourceConfig(name="digits", format="sklearn_digits")], **overrides
    )


# --------------------------------------------------------------------------- npz


def test_load_npz_round_trips_grey_and_labels_become_int64(tmp_path: Path) -> None:
    x = random_images(5, (4, 3))
    y = np.array([0, 1, 2, 1, 0], dtype=np.int32)
    path = write_npz(tmp_path / "grey.npz", x, y)

    got_x, got_y = load_npz(path)

    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, [0, 1, 2, 1, 0])
    assert got_x.dtype == np.uint8
    assert got_y.dtype == np.int64


def test_load_npz_round_trips_rgb(tmp_path: Path) -> None:
    x = random_images(3, (2, 2, 3))
    path = write_npz(tmp_path / "rgb.npz", x, np.array([2, 0, 1]))

    got_x, _ = load_npz(path)

    np.testing.assert_array_equal(got_x, x)


def test_load_npz_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")

    with pytest.raises(DataError, match=r"broken\.npz") as info:
        load_npz(path)

    assert "\n" not in str(info.value)


def test_load_npz_missing_key_names_key_and_found_keys(tmp_path: Path) -> None:
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=random_images(2, (2, 2)), labels=np.array([0, 1]))

    with pytest.raises(DataError, match=r"nolabels.npz: missing array 'y' \(found: x, labels\)"):
        load_npz(path)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 2, 2), np.uint8), np.array([0, 1]), "x has 3 samples but y has 2"),
        (np.zeros((2, 2, 2), np.uint8), np.array([0, -1]), "labels must be >= 0, found -1"),
        (np.zeros((2, 2, 2), np.float32), np.array([0, 1]), "x must be uint8"),
        (np.zeros((2, 2, 2, 4), np.uint8), np.array([0, 1]), r"N×H×W or N×H×W×3"),
        (np.zeros((2, 2, 2), np.uint8), np.array([0.0, 1.0]), "integer class indices"),
    ],
)
def test_load_npz_rejects_inconsistent_arrays(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    path = write_npz(tmp_path / "bad.npz", x, y)

    with pytest.raises(DataError, match=message) as info:
        load_npz(path)

    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_load_idx_round_trips(tmp_path: Path, compress: bool) -> None:
    x = random_images(4, (3, 5))
    y = np.array([9, 0, 3, 3], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    images = write_idx(tmp_path / f"images-idx3-ubyte{suffix}", x, compress)
    labels = write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", y, compress)

    got_x, got_y = load_idx(images, labels)

    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, [9, 0, 3, 3])
    assert got_y.dtype == np.int64


def test_load_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "img-idx3", random_images(3, (2, 2)), compress=False)
    labels = write_idx(tmp_path / "lab-idx1", np.array([1, 2]), compress=False)

    with pytest.raises(DataError, match=r"3 images but .*lab-idx1 holds 2 labels"):
        load_idx(images, labels)


def test_load_idx_truncated_file_is_reported(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "img-idx3", random_images(3, (2, 2)), compress=False)
    images.write_bytes(images.read_bytes()[:-1])
    labels = write_idx(tmp_path / "lab-idx1", np.array([1, 2, 3]), compress=False)

    with pytest.raises(DataError, match=r"img-idx3: header says shape \(3, 2, 2\)"):
        load_idx(images, labels)


def test_load_idx_swapped_files_are_reported(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "img-idx3", random_images(2, (2, 2)), compress=False)
    labels = write_idx(tmp_path / "lab-idx1", np.array([1, 2]), compress=False)

    with pytest.raises(DataError, match="lab-idx1: expected images"):
        load_idx(labels, images)


# --------------------------------------------------------------------------- cifar


def test_load_cifar10_converts_planes_and_concatenates_batches(tmp_path: Path) -> None:
    first = random_images(3, (32, 32, 3), 1)
    second = random_images(2, (32, 32, 3), 2)
    test = random_images(2, (32, 32, 3), 3)
    write_pickle(tmp_path / "data_batch_1", {b"data": cifar_rows(first), b"labels": [0, 1, 2]})
    write_pickle(tmp_path / "data_batch_2", {b"data": cifar_rows(second), b"labels": [3, 4]})
    write_pickle(tmp_path / "test_batch", {b"data": cifar_rows(test), b"labels": [5, 6]})

    train_x, train_y = load_cifar(tmp_path, "train")
    test_x, test_y = load_cifar(tmp_path, "test")

    np.testing.assert_array_equal(train_x, np.concatenate([first, second]))
    np.testing.assert_array_equal(train_y, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(test_x, test)
    np.testing.assert_array_equal(test_y, [5, 6])
    assert train_x.shape == (5, 32, 32, 3)


def test_load_cifar_reads_red_plane_first(tmp_path: Path) -> None:
    rows = np.zeros((1, 3072), dtype=np.uint8)
    rows[0, :1024] = 200  # red plane
    rows[0, 2048:] = 50  # blue plane
    write_pickle(tmp_path / "test_batch", {b"data": rows, b"labels": [0]})

    x, _ = load_cifar(tmp_path, "test")

    assert x[0, 7, 9].tolist() == [200, 0, 50]


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train = random_images(2, (32, 32, 3), 4)
    batch = {"data": cifar_rows(train), "fine_labels": [42, 99], "coarse_labels": [1, 2]}
    write_pickle(tmp_path / "train", batch, protocol=5)
    write_pickle(tmp_path / "test", batch, protocol=4)

    x, y = load_cifar(tmp_path, "train")

    np.testing.assert_array_equal(x, train)
    np.testing.assert_array_equal(y, [42, 99])


def test_load_cifar_missing_key_is_named(tmp_path: Path) -> None:
    write_pickle(tmp_path / "test_batch", {b"data": cifar_rows(random_images(1, (32, 32, 3)))})

    with pytest.raises(DataError, match="test_batch: missing key 'labels'"):
        load_cifar(tmp_path, "test")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_load_cifar_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    write_pickle(tmp_path / "test_batch", {b"data": _Exploit(), b"labels": [0]})

    with pytest.raises(DataError, match="test_batch: not a CIFAR python batch"):
        load_cifar(tmp_path, "test")


def test_load_cifar_unrecognised_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a CIFAR batches directory"):
        load_cifar(tmp_path, "train")


# --------------------------------------------------------------------------- image folder


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_load_image_folder_grey_round_trip_with_sorted_classes(tmp_path: Path) -> None:
    images = random_images(3, (4, 5))
    save_png(tmp_path / "zebra" / "a.png", images[0])
    save_png(tmp_path / "ant" / "b.png", images[1])
    save_png(tmp_path / "ant" / "a.png", images[2])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")

    x, y = load_image_folder(tmp_path)

    assert x.shape == (3, 4, 5)
    np.testing.assert_array_equal(x, images[[2, 1, 0]])  # ant/a, ant/b, zebra/a
    np.testing.assert_array_equal(y, [0, 0, 1])


def test_load_image_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    colour = random_images(1, (3, 3, 3))[0]
    grey = random_images(1, (3, 3))[0]
    save_png(tmp_path / "a" / "colour.png", colour)
    save_png(tmp_path / "b" / "grey.png", grey)

    x, y = load_image_folder(tmp_path)

    assert x.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(x[0], colour)
    np.testing.assert_array_equal(x[1], np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(y, [0, 1])


def test_load_image_folder_mismatched_sizes_names_files(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "small.png", random_images(1, (4, 4))[0])
    save_png(tmp_path / "b" / "large.png", random_images(1, (6, 8))[0])

    with pytest.raises(DataError, match=r"4x4 in .*small.png, 8x6 in .*large.png"):
        load_image_folder(tmp_path)


def test_load_image_folder_resizes_when_size_given(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "small.png", np.full((4, 4), 100, np.uint8))
    save_png(tmp_path / "b" / "large.png", np.full((6, 8), 30, np.uint8))

    x, _ = load_image_folder(tmp_path, size=5)

    assert x.shape == (2, 5, 5)
    assert set(np.unique(x[0])) == {100}  # a constant image stays constant under Lanczos
    assert set(np.unique(x[1])) == {30}


def test_load_image_folder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "good.png", random_images(1, (4, 4))[0])
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG garbage")

    with pytest.raises(DataError, match=r"bad\.png: cannot be read as an image"):
        load_image_folder(tmp_path)


# --------------------------------------------------------------------------- sklearn digits


def test_load_sklearn_digits_scales_0_16_to_0_255() -> None:
    x, y = load_sklearn_digits()

    assert x.shape == (1797, 8, 8)
    assert x.dtype == np.uint8
    assert y.dtype == np.int64
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    expected_levels = {round(v * 255 / 16) for v in range(17)}  # 0, 16, 32, 48, ..., 255
    assert set(np.unique(x).tolist()) <= expected_levels
    assert x.max() == 255


def test_bundled_digits_file_equals_scikit_learns_loader() -> None:
    from sklearn.datasets import load_digits

    from fedsim.data.loaders import _bundled_digits

    table = _bundled_digits()
    assert table is not None, "scikit-learn's digits.csv.gz was not found"
    d = load_digits()
    np.testing.assert_array_equal(table[:, :64], d.data)
    np.testing.assert_array_equal(table[:, 64].astype(np.int64), d.target)


def test_load_sklearn_digits_matches_shared_copy() -> None:
    path = shared_file("sklearn_digits/digits.npz")
    with np.load(path) as raw:
        raw_x, raw_y = raw["x"], raw["y"]

    x, y = load_sklearn_digits()

    np.testing.assert_array_equal(x, np.rint(raw_x * (255 / 16)).astype(np.uint8))
    np.testing.assert_array_equal(y, raw_y)


# --------------------------------------------------------------------------- load_source


def test_load_source_missing_file_message(tmp_path: Path) -> None:
    src = SourceConfig(name="mnist", format="npz", train="nowhere/train.npz")

    with pytest.raises(DataError) as info:
        load_source(src, tmp_path, key="dataset.sources[2]")

    expected = f"dataset.sources[2].train: file not found: {tmp_path / 'nowhere' / 'train.npz'}"
    assert str(info.value) == expected


def test_load_source_resolves_relative_paths_and_reads_test_split(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_npz(tmp_path / "sub" / "tr.npz", random_images(4, (2, 2)), np.array([0, 1, 0, 1]))
    write_npz(tmp_path / "sub" / "te.npz", random_images(2, (2, 2)), np.array([1, 0]))
    src = SourceConfig(name="toy", format="npz", train="sub/tr.npz", test="sub/te.npz")

    raw = load_source(src, tmp_path)

    assert raw.name == "toy"
    assert raw.train_x.shape == (4, 2, 2)
    assert raw.test_y is not None
    assert raw.test_y.tolist() == [1, 0]


def test_load_source_unknown_format_lists_allowed(tmp_path: Path) -> None:
    src = SourceConfig(name="x", format="hdf5", train="a.h5")

    with pytest.raises(DataError, match="format: unknown 'hdf5'") as info:
        load_source(src, tmp_path, key="dataset.sources[0]")

    assert all(fmt in str(info.value) for fmt in FORMATS)


def test_load_source_corrupt_npz_names_key_and_file(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"\x00" * 64)
    src = SourceConfig(name="x", format="npz", train="bad.npz")

    with pytest.raises(DataError, match=r"^dataset.sources\[0\].train: .*bad.npz"):
        load_source(src, tmp_path, key="dataset.sources[0]")


def test_load_source_idx_missing_labels_file_names_labels_key(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", random_images(2, (2, 2)), compress=False)
    src = SourceConfig(name="m", format="idx", train="img", train_labels="lab")

    with pytest.raises(DataError, match=r"^dataset.sources\[0\].train_labels: file not found"):
        load_source(src, tmp_path, key="dataset.sources[0]")


def test_load_source_image_folder_classes_must_match(tmp_path: Path) -> None:
    save_png(tmp_path / "train" / "cat" / "a.png", random_images(1, (2, 2))[0])
    save_png(tmp_path / "train" / "dog" / "a.png", random_images(1, (2, 2))[0])
    save_png(tmp_path / "test" / "dog" / "a.png", random_images(1, (2, 2))[0])
    src = SourceConfig(name="pets", format="image_folder", train="train", test="test")

    with pytest.raises(DataError, match="labels would not match"):
        load_source(src, tmp_path, key="dataset.sources[0]")


def test_load_source_cifar_directory(tmp_path: Path) -> None:
    images = random_images(2, (32, 32, 3))
    write_pickle(tmp_path / "data_batch_1", {b"data": cifar_rows(images), b"labels": [1, 0]})
    write_pickle(tmp_path / "test_batch", {b"data": cifar_rows(images[:1]), b"labels": [1]})
    src = SourceConfig(name="c10", format="cifar", train=str(tmp_path), test=str(tmp_path))

    raw = load_source(src, Path("/unused"))

    np.testing.assert_array_equal(raw.train_x, images)
    assert raw.test_x is not None
    assert raw.test_x.shape == (1, 32, 32, 3)


# --------------------------------------------------------------------------- data root


def test_default_data_root_prefers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_DATA", "/somewhere/data")

    assert default_data_root() == Path("/somewhere/data")


def test_default_data_root_is_shared_data_next_to_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSIM_DATA", raising=False)
    repo_root = Path(__file__).resolve().parent.parent

    assert default_data_root() == repo_root.parent / "shared" / "data"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (digits_config(test_fraction=1.5), "dataset.test_fraction: must be in [0, 1), got 1.5"),
        (digits_config(channels=2), "dataset.channels: must be 0 (native), 1 (grey) or 3"),
        (digits_config(image_size=-1), "dataset.image_size: must be >= 0"),
        (DatasetConfig(sources=[]), "dataset.sources: must list at least one source"),
        (
            DatasetConfig(sources=[SourceConfig(fraction=0.0)]),
            "dataset.sources[0].fraction: must be in (0, 1], got 0.0",
        ),
        (
            DatasetConfig(sources=[SourceConfig(max_samples=-5)]),
            "dataset.sources[0].max_samples: must be >= 0",
        ),
        (
            DatasetConfig(sources=[SourceConfig(name="a"), SourceConfig(name="a")]),
            "dataset.sources[1].name: duplicate 'a'",
        ),
        (
            DatasetConfig(sources=[SourceConfig(format="csv")]),
            "dataset.sources[0].format: unknown 'csv' (allowed: sklearn_digits, npz",
        ),
        (
            DatasetConfig(sources=[SourceConfig(format="npz")]),
            "dataset.sources[0].train: required for format 'npz'",
        ),
        (
            DatasetConfig(sources=[SourceConfig(format="idx", train="img")]),
            "dataset.sources[0].train_labels: required for format 'idx'",
        ),
    ],
)
def test_validate_dataset_names_key_and_value(cfg: DatasetConfig, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_dataset(cfg)

    assert str(info.value).startswith(message)


def test_validate_dataset_accepts_defaults() -> None:
    validate_dataset(DatasetConfig())  # must not raise


# --------------------------------------------------------------------------- build_dataset


def test_build_digits_shapes_classes_and_stratified_test_carve() -> None:
    ds = build_dataset(digits_config(), seed=0)

    per_class = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    expected_test = [round(0.2 * n) for n in per_class]
    assert torch.bincount(ds.test_y).tolist() == expected_test
    assert len(ds.train_y) == 1797 - sum(expected_test)
    assert ds.train_x.shape == (len(ds.train_y), 1, 8, 8)
    assert ds.train_x.dtype == torch.float32
    assert ds.train_y.dtype == torch.int64
    assert ds.input_shape == (1, 8, 8)
    assert ds.num_classes == 10
    assert ds.domains == ["digits"]
    assert ds.train_domain.unique().tolist() == [0]


def test_build_normalises_training_data_to_zero_mean_unit_std() -> None:
    ds = build_dataset(digits_config(), seed=0)

    assert ds.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert ds.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    pixels = ds.denormalize(ds.train_x) * 255  # back to the uint8 grid
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)


def test_build_normalisation_uses_training_mean_and_population_std(tmp_path: Path) -> None:
    x = np.array([[[0, 51], [102, 255]]], dtype=np.uint8).repeat(2, axis=0)  # 0, .2, .4, 1
    write_npz(tmp_path / "t.npz", x, np.array([0, 1]))
    src = SourceConfig(name="t", format="npz", train="t.npz", test="t.npz")

    ds = build_dataset(DatasetConfig(sources=[src], data_root=str(tmp_path)), seed=0)

    assert ds.mean.tolist() == pytest.approx([0.4])
    assert ds.std.tolist() == pytest.approx([0.14**0.5])  # sqrt(mean of .16, .04, 0, .36)
    expected = [(v - 0.4) / 0.14**0.5 for v in (0.0, 0.2, 0.4, 1.0)]
    assert ds.test_x[1].flatten().tolist() == pytest.approx(expected, abs=1e-5)


def test_build_without_normalisation_gives_pixels_over_255(tmp_path: Path) -> None:
    x = np.array([[[0, 51], [102, 255]]], dtype=np.uint8).repeat(2, axis=0)
    write_npz(tmp_path / "t.npz", x, np.array([0, 1]))
    cfg = DatasetConfig(
        sources=[SourceConfig(name="t", format="npz", train="t.npz", test="t.npz")],
        data_root=str(tmp_path),
        normalize=False,
    )

    ds = build_dataset(cfg, seed=0)

    assert ds.train_x[0, 0].flatten().tolist() == pytest.approx([0.0, 0.2, 0.4, 1.0])
    assert ds.normalized is False
    assert ds.mean.tolist() == [0.0]  # the identity, so x * std + mean is always the pixel image
    assert ds.std.tolist() == [1.0]


def test_build_is_deterministic_for_a_seed_and_carve_changes_with_seed() -> None:
    first = build_dataset(digits_config(), seed=7)
    again = build_dataset(digits_config(), seed=7)
    other = build_dataset(digits_config(), seed=8)

    assert torch.equal(first.train_x, again.train_x)
    assert torch.equal(first.test_y, again.test_y)
    assert not torch.equal(first.test_x, other.test_x)
    assert torch.bincount(first.test_y).tolist() == torch.bincount(other.test_y).tolist()


def test_build_honours_fraction_and_max_samples_without_moving_the_test_set() -> None:
    full = build_dataset(digits_config(normalize=False), seed=0)
    cfg = digits_config(normalize=False)  # so that test pixels do not depend on train stats
    cfg.sources[0].fraction = 0.5
    half = build_dataset(cfg, seed=0)
    cfg.sources[0].max_samples = 100
    capped = build_dataset(cfg, seed=0)

    assert len(half.train_y) == round(0.5 * len(full.train_y))
    assert len(capped.train_y) == 100
    assert torch.equal(half.test_x, full.test_x)
    assert torch.equal(capped.test_y, full.test_y)


def test_build_channels_and_resize(tmp_path: Path) -> None:
    red = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    write_npz(tmp_path / "red.npz", red, np.array([0, 1]))
    grey = np.full((2, 8, 8), 51, dtype=np.uint8)
    write_npz(tmp_path / "grey.npz", grey, np.array([1, 2]))
    sources = [
        SourceConfig(name="red", format="npz", train="red.npz", test="red.npz"),
        SourceConfig(name="grey", format="npz", train="grey.npz", test="grey.npz"),
    ]

    as_grey = build_dataset(
        DatasetConfig(
            sources=sources, data_root=str(tmp_path), image_size=2, channels=1, normalize=False
        ),
        seed=0,
    )
    as_rgb = build_dataset(
        DatasetConfig(
            sources=sources, data_root=str(tmp_path), image_size=6, channels=3, normalize=False
        ),
        seed=0,
    )

    assert as_grey.train_x.shape == (4, 1, 2, 2)
    assert as_grey.train_x[0].flatten().tolist() == pytest.approx([0.299] * 4)  # BT.601 luma
    assert as_grey.train_x[2].flatten().tolist() == pytest.approx([0.2] * 4)
    assert as_rgb.train_x.shape == (4, 3, 6, 6)
    assert as_rgb.train_x[3].flatten().tolist() == pytest.approx([0.2] * 108)
    assert as_rgb.num_classes == 3
    assert as_rgb.train_domain.tolist() == [0, 0, 1, 1]
    assert as_rgb.domains == ["red", "grey"]


def test_build_mismatched_sizes_lists_them(tmp_path: Path) -> None:
    write_npz(tmp_path / "a.npz", random_images(2, (4, 4)), np.array([0, 1]))
    write_npz(tmp_path / "b.npz", random_images(2, (6, 6)), np.array([0, 1]))
    sources = [
        SourceConfig(name="small", format="npz", train="a.npz", test="a.npz"),
        SourceConfig(name="large", format="npz", train="b.npz", test="b.npz"),
    ]

    with pytest.raises(DataError, match=r"small train 4x4.*large train 6x6.*dataset.image_size"):
        build_dataset(DatasetConfig(sources=sources, data_root=str(tmp_path)), seed=0)


def test_build_mismatched_channels_asks_for_dataset_channels(tmp_path: Path) -> None:
    write_npz(tmp_path / "a.npz", random_images(2, (4, 4)), np.array([0, 1]))
    write_npz(tmp_path / "b.npz", random_images(2, (4, 4, 3)), np.array([0, 1]))
    sources = [
        SourceConfig(name="grey", format="npz", train="a.npz"),
        SourceConfig(name="rgb", format="npz", train="b.npz"),
    ]

    with pytest.raises(DataError, match=r"^dataset.channels: .*grey: 1, rgb: 3"):
        build_dataset(DatasetConfig(sources=sources, data_root=str(tmp_path)), seed=0)


def test_build_missing_file_reports_source_index(tmp_path: Path) -> None:
    sources = [SourceConfig(name="d"), SourceConfig(name="m", format="npz", train="none.npz")]

    with pytest.raises(DataError, match=r"^dataset.sources\[1\].train: file not found: "):
        build_dataset(DatasetConfig(sources=sources, data_root=str(tmp_path)), seed=0)


# --------------------------------------------------------------------------- real data

REAL_FILES = [
    (
        "digits/mnist_train.npz",
        (60000, 28, 28),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ),
    (
        "digits/mnist_test.npz",
        (10000, 28, 28),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
    ("digits/usps_train.npz", (7291, 16, 16), [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]),
    ("digits/usps_test.npz", (2007, 16, 16), [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]),
    ("digits/mnistm_train.npz", (7440, 32, 32, 3), [744] * 10),
    ("digits/mnistm_test.npz", (2000, 32, 32, 3), [200] * 10),
    ("cifar10/cifar10_train.npz", (7500, 32, 32, 3), [750] * 10),
    ("cifar10/cifar10_test.npz", (1500, 32, 32, 3), [150] * 10),
    (
        "office_caltech10/amazon_train.npz",
        (766, 32, 32, 3),
        [74, 66, 75, 79, 80, 80, 79, 80, 75, 78],
    ),
    (
        "office_caltech10/caltech10_train.npz",
        (898, 32, 32, 3),
        [121, 88, 80, 110, 68, 102, 106, 75, 70, 78],
    ),
    ("office_caltech10/dslr_train.npz", (126, 32, 32, 3), [10, 17, 10, 10, 8, 19, 18, 10, 6, 18]),
    ("office_caltech10/webcam_test.npz", (58, 32, 32, 3), [6, 4, 6, 5, 5, 6, 9, 6, 5, 6]),
    ("pacs/art_painting_train.npz", (1638, 32, 32, 3), [303, 204, 228, 147, 161, 236, 359]),
    ("pacs/cartoon_test.npz", (469, 32, 32, 3), [78, 91, 69, 27, 65, 58, 81]),
    ("pacs/photo_train.npz", (1337, 32, 32, 3), [151, 162, 146, 149, 159, 224, 346]),
    ("pacs/sketch_train.npz", (3143, 32, 32, 3), [618, 592, 602, 486, 653, 64, 128]),
]


@pytest.mark.parametrize(
    ("relative", "shape", "class_counts"), REAL_FILES, ids=[r[0] for r in REAL_FILES]
)
def test_real_npz_files_match_readme(
    relative: str, shape: tuple[int, ...], class_counts: list[int]
) -> None:
    path = shared_file(relative)

    x, y = load_npz(path)

    assert x.shape == shape
    assert np.bincount(y).tolist() == class_counts


def test_real_mnist_build_has_the_classic_statistics() -> None:
    train = shared_file("digits/mnist_train.npz")
    test = shared_file("digits/mnist_test.npz")
    src = SourceConfig(name="mnist", format="npz", train=str(train), test=str(test))

    ds = build_dataset(DatasetConfig(sources=[src]), seed=0)

    assert ds.train_x.shape == (60000, 1, 28, 28)
    assert ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.mean.item() == pytest.approx(0.1307, abs=1e-4)  # the well-known MNIST mean/std
    assert ds.std.item() == pytest.approx(0.3081, abs=1e-4)


def test_real_digits_multi_source_build() -> None:
    names = ("mnist", "usps", "mnistm")
    for name in names:
        shared_file(f"digits/{name}_train.npz")
        shared_file(f"digits/{name}_test.npz")
    sources = [
        SourceConfig(
            name=name,
            format="npz",
            train=f"digits/{name}_train.npz",
            test=f"digits/{name}_test.npz",
            max_samples=1000,
        )
        for name in names
    ]
    cfg = DatasetConfig(sources=sources, image_size=32, channels=3)

    ds = build_dataset(cfg, seed=0)

    assert ds.input_shape == (3, 32, 32)
    assert ds.train_x.shape == (3000, 3, 32, 32)
    assert ds.test_x.shape == (10000 + 2007 + 2000, 3, 32, 32)
    assert ds.domains == list(names)
    assert torch.bincount(ds.train_domain).tolist() == [1000, 1000, 1000]
    assert torch.bincount(ds.test_domain).tolist() == [10000, 2007, 2000]
    assert ds.num_classes == 10
    assert ds.train_x.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0.0] * 3, abs=1e-4)


def test_real_office_domains_without_test_files_are_carved() -> None:
    for domain in ("amazon", "caltech10", "dslr", "webcam"):
        shared_file(f"office_caltech10/{domain}_train.npz")
    sources = [
        SourceConfig(name=d, format="npz", train=f"office_caltech10/{d}_train.npz")
        for d in ("amazon", "caltech10", "dslr", "webcam")
    ]

    ds = build_dataset(DatasetConfig(sources=sources, test_fraction=0.25), seed=3)

    assert ds.input_shape == (3, 32, 32)
    assert len(ds.train_y) + len(ds.test_y) == 766 + 898 + 126 + 237
    dslr_test = ds.test_y[ds.test_domain == 2]
    expected = [round(0.25 * n) for n in [10, 17, 10, 10, 8, 19, 18, 10, 6, 18]]
    assert torch.bincount(dslr_test, minlength=10).tolist() == expected
