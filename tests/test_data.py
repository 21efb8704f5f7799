"""vaelib.data: the bundled digits, stratified splits, binarisation, and the IDX reader."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelib.data import Digits, binarize, load_digits_8x8, load_idx, load_mnist, read_idx


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(), load_mnist(binarize_test=False)


def _counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


# --- the bundled MNIST digits ---------------------------------------------------------------------


def test_load_mnist_sizes_stratification_and_ranges(mnist):
    (train, test), _ = mnist
    assert (len(train), len(test)) == (4000, 1000)
    assert train.image_shape == test.image_shape == (28, 28)
    assert train.images.shape == (4000, 784) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    assert _counts(train.labels) == [400] * 10
    assert _counts(test.labels) == [100] * 10
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert bool(((train.images > 0) & (train.images < 1)).any())  # grey levels kept for training
    assert bool(((test.images == 0) | (test.images == 1)).all())  # the test set is binary
    assert bool((train.labels[:50] != train.labels[0]).any())  # shuffled, not sorted by label


def test_load_mnist_is_deterministic_and_its_parts_disjoint(mnist):
    (train, test), (train_grey, test_grey) = mnist
    again_train, again_test = load_mnist()
    assert torch.equal(train.images, again_train.images) and torch.equal(test.images, again_test.images)
    assert torch.equal(train.labels, again_train.labels)
    # binarize_test=False: the same split, with the test images' grey levels.
    assert torch.equal(train.images, train_grey.images) and torch.equal(test.labels, test_grey.labels)
    assert bool(((test_grey.images > 0) & (test_grey.images < 1)).any())
    # The binary test image is a draw from the grey one: 0 where the grey level is 0, 1 where it is 1.
    assert bool((test.images[test_grey.images == 0] == 0).all())
    assert bool((test.images[test_grey.images == 1] == 1).all())
    # On average, a binary pixel is 1 with probability its grey level.
    grey = test_grey.images[(test_grey.images > 0) & (test_grey.images < 1)].double()
    ones = test.images[(test_grey.images > 0) & (test_grey.images < 1)].double()
    assert abs(float(ones.mean() - grey.mean())) < 4 * math.sqrt(float((grey * (1 - grey)).sum())) / grey.numel()
    # No training image is a test image (the 5,000 bundled images are all distinct).
    seen = {row.numpy().tobytes() for row in train_grey.images}
    assert not any(row.numpy().tobytes() in seen for row in test_grey.images)


def test_load_digits_8x8():
    digits = load_digits_8x8()
    assert len(digits) == 1797 and digits.image_shape == (8, 8) and digits.x_dim == 64
    assert float(digits.images.min()) == 0.0 and float(digits.images.max()) == 1.0
    assert sorted(torch.unique(digits.labels).tolist()) == list(range(10))


# --- Digits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_second", [1, 17, 50, 99])
def test_split_is_stratified_disjoint_and_complete(n_second):
    counts = [30, 50, 20]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    images = torch.zeros(100, 4)
    images[:, 0] = torch.arange(100) / 100.0  # the row index, recoverable exactly
    d = Digits(images, labels, (2, 2))
    first, second = d.split(n_second, seed=3)
    assert len(second) == n_second and len(first) == 100 - n_second
    idx_first = torch.round(first.images[:, 0] * 100).long()
    idx_second = torch.round(second.images[:, 0] * 100).long()
    assert set(idx_first.tolist()).isdisjoint(idx_second.tolist())
    assert sorted(idx_first.tolist() + idx_second.tolist()) == list(range(100))
    assert torch.equal(first.labels, labels[idx_first]) and torch.equal(second.labels, labels[idx_second])
    # Each class contributes its share, rounded (largest remainder): within one image of exact.
    for k, c in enumerate(counts):
        assert abs(int((second.labels == k).sum()) - c * n_second / 100) < 1
    # The same seed gives the same split, another seed another one.
    again = d.split(n_second, seed=3)[1]
    assert torch.equal(again.images, second.images)
    if 1 < n_second < 99:
        assert not torch.equal(d.split(n_second, seed=4)[1].images, second.images)


def test_subset_and_binarized_keep_labels_and_shape():
    d = Digits(torch.full((6, 4), 0.5), torch.arange(6), (2, 2))
    sub = d.subset(slice(1, 3))
    assert torch.equal(sub.labels, torch.tensor([1, 2])) and sub.image_shape == (2, 2)
    b = d.binarized(torch.Generator().manual_seed(0))
    assert torch.equal(b.labels, d.labels) and b.image_shape == d.image_shape
    assert bool(((b.images == 0) | (b.images == 1)).all())


def test_digits_validates_its_fields():
    with pytest.raises(ValueError, match="labels must have shape"):
        Digits(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="image_shape"):
        Digits(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), (2, 3))
    with pytest.raises(ValueError, match="image_shape"):
        Digits(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), (4,))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        Digits(torch.full((3, 4), 2.0), torch.zeros(3, dtype=torch.long), (2, 2))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        Digits(torch.zeros(3, 4), [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="n_second must be smaller than 3"):
        Digits(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), (2, 2)).split(3)


# --- binarize ------------------------------------------------------------------------------------------


def test_binarize_draws_bernoulli_pixels():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(20_000, 1)
    b = binarize(p, torch.Generator().manual_seed(0))
    assert b.shape == p.shape and b.dtype == p.dtype
    assert bool(((b == 0) | (b == 1)).all())
    assert bool((b[:, 0] == 0).all()) and bool((b[:, 4] == 1).all())
    freq = b.double().mean(0)
    se = torch.sqrt(p[0].double() * (1 - p[0].double()) / 20_000)
    assert bool(((freq - p[0].double()).abs() <= 4 * se).all())
    assert torch.equal(b, binarize(p, torch.Generator().manual_seed(0)))


def test_binarize_rejects_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match="images must be grey levels"):
        binarize(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="images contains NaN"):
        binarize(torch.tensor([[0.5, math.nan]]))


# --- IDX files -------------------------------------------------------------------------------------------

_CODES = {np.uint8: 0x08, np.int8: 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(_CODES))
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = _write(tmp_path / ("a.idx.gz" if gz else "a.idx"), _idx_bytes(array, _CODES[dtype]), gz)
    got = read_idx(path)
    assert got.shape == (3, 4, 5)
    assert got.dtype.isnative and got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, array)
    assert read_idx(str(path)).shape == (3, 4, 5)  # a str path works as well as a Path


def _bad_files() -> dict[str, tuple[bytes, str]]:
    good = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)
    return {
        "nonzero first bytes": (b"\x01" + good[1:], "not an IDX file"),
        "unknown type code": (good[:2] + b"\x07" + good[3:], "not an IDX file"),
        "zero dimensions": (good[:3] + b"\x00" + good[4:], "not an IDX file"),
        "empty file": (b"", "not an IDX file"),
        "truncated header": (good[:9], "truncated IDX header"),
        "truncated data": (good[:-1], "truncated"),
        "trailing bytes": (good + b"\x00", "longer than its header says"),
        "huge header sizes": (bytes([0, 0, 8, 4]) + struct.pack(">IIII", *[65536] * 4), "truncated"),
    }


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", list(_bad_files()))
def test_read_idx_rejects_malformed_files(tmp_path, case, gz):
    data, message = _bad_files()[case]
    path = _write(tmp_path / "bad.idx", data, gz)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_rejects_a_corrupt_gzip(tmp_path):
    data = gzip.compress(_idx_bytes(np.zeros((10, 10), dtype=np.uint8), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(path)


def test_read_idx_refuses_a_file_descriptor():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_idx(0)  # open(0) would read standard input


def _mnist_like(tmp_path: Path, n_images: int, n_labels: int, gz: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n_images, 3, 2), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n_labels,), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    return (
        _write(tmp_path / f"images-idx3-ubyte{suffix}", _idx_bytes(images, 0x08), gz),
        _write(tmp_path / f"labels-idx1-ubyte{suffix}", _idx_bytes(labels, 0x08), gz),
    )


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_builds_digits(tmp_path, gz):
    images_path, labels_path = _mnist_like(tmp_path, 5, 5, gz)
    d = load_idx(images_path, labels_path)
    raw_images, raw_labels = read_idx(images_path), read_idx(labels_path)
    assert d.image_shape == (3, 2) and len(d) == 5
    torch.testing.assert_close(d.images, torch.from_numpy(raw_images.reshape(5, 6) / 255.0).float())
    assert torch.equal(d.labels, torch.from_numpy(raw_labels.astype(np.int64)))


def test_load_idx_rejects_mismatched_or_wrong_files(tmp_path):
    images_path, labels_path = _mnist_like(tmp_path, 5, 4)
    with pytest.raises(ValueError, match="5 images .* but 4 labels"):
        load_idx(images_path, labels_path)
    with pytest.raises(ValueError, match="expected a 1-D label file"):
        load_idx(images_path, images_path)
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_idx(labels_path, labels_path)
    floats = _write(tmp_path / "f.idx", _idx_bytes(np.zeros((2, 2, 2), dtype=">f4"), 0x0D), False)
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_idx(floats, labels_path)
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "missing", labels_path)


def test_binarize_draws_only_the_grey_pixels():
    from vaelib.data import _Binarizer

    p = torch.tensor([[0.0, 1.0, 0.25, 0.0], [0.75, 0.0, 1.0, 0.5]])
    b = _Binarizer(p)
    assert b.grey.tolist() == [2, 4, 7] and not b.is_binary and _Binarizer((p > 0.5).float()).is_binary
    first = b(torch.Generator().manual_seed(0))
    certain = torch.tensor([[True, True, False, True], [False, True, True, False]])
    assert torch.equal(first[certain], p[certain])  # pixels at 0 or 1 need no draw
    again = b(torch.Generator().manual_seed(1), previous=first.clone())
    assert torch.equal(again[certain], p[certain])
    assert torch.equal(p, torch.tensor([[0.0, 1.0, 0.25, 0.0], [0.75, 0.0, 1.0, 0.5]]))  # input untouched
    # The same generator state gives the same draws, whether into a new tensor or a previous one.
    assert torch.equal(b(torch.Generator().manual_seed(5)), b(torch.Generator().manual_seed(5), previous=first))
