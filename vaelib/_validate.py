"""Input validation shared by the public API.

Every public function of :mod:`vaelib` checks its arguments here, so a wrong shape, dtype, a NaN or a
non-positive count ends in a clear ``TypeError``/``ValueError`` that names the argument, never in a crash
deep inside PyTorch or a silent wrong number.
"""

from __future__ import annotations

import numbers
import os

import torch
from torch import Tensor

#: The floating-point dtypes vaelib computes in (float8 types and the like have too few operations).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The largest count or seed accepted: PyTorch stores both as 64-bit integers.
INT_MAX = 2**63 - 1
#: The most numbers one tensor that a count asks for may hold (2**34 float32 numbers are 64 GiB, beyond
#: any machine this library is for): a larger count is refused before anything is allocated.
MAX_ELEMENTS = 2**34


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | tuple[int, ...] | None = None,
    last_dim: int | None = None,
    finite: bool = True,
    nonempty: bool = True,
) -> Tensor:
    """Return ``x`` if it is a floating-point tensor of the expected rank; raise otherwise.

    Args:
        name: the argument's name, used in the error message.
        x: the value to check.
        ndim: the allowed number(s) of dimensions.
        last_dim: the required size of the last dimension.
        finite: reject NaN and infinite entries.
        nonempty: reject tensors with no elements.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: it has a shape but no values")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and (x.dim() == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and x.numel() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` (non-empty) is finite: one pass over the data.

    ``torch.aminmax`` propagates NaN, and a tensor without NaN is finite exactly when its minimum and
    maximum are; on a large tensor this is about 20x cheaper than ``torch.isfinite(x).all()``, which
    allocates a boolean copy.
    """
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_binary(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` unless every entry of ``x`` is 0 or 1 (the support of a Bernoulli)."""
    if not _is_binary(x):
        raise ValueError(
            f"{name} must be binary (0 or 1) for a Bernoulli likelihood; got values in "
            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]. Binarise grey levels first "
            "(vaelib.data.binarize) or use likelihood='gaussian'."
        )


def in_unit_interval(x: Tensor) -> bool:
    """Whether every entry of ``x`` lies in [0, 1] (one pass; ``False`` if any is NaN)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool((lo >= 0) & (hi <= 1))


def _is_binary(x: Tensor) -> bool:
    """Whether every entry of ``x`` is 0 or 1: inside [0, 1] and equal to its rounding (two cheap passes)."""
    return in_unit_interval(x) and torch.equal(x, x.round())


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int = INT_MAX) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_count(name: str, value: object, per_item: int, *, minimum: int = 1, maximum: int = INT_MAX) -> int:
    """:func:`check_int`, and ``value * per_item`` numbers must fit in :data:`MAX_ELEMENTS`."""
    value = check_int(name, value, minimum=minimum, maximum=maximum)
    if value * max(per_item, 1) > MAX_ELEMENTS:
        raise ValueError(
            f"{name}={value} would need a tensor of {value * per_item:.3g} numbers, more than any machine "
            f"holds (the limit is {MAX_ELEMENTS:.3g})"
        )
    return value


def check_float(
    name: str, value: object, *, minimum: float | None = None, strict: bool = False
) -> float:
    """Return ``value`` as a finite ``float``, optionally bounded below; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the largest float, such as 10**400
        raise ValueError(f"{name} must be finite, got an integer too large for a float") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {v}")
    return v


def check_generator(name: str, generator: object) -> torch.Generator | None:
    """Return ``generator`` if it is ``None`` or a ``torch.Generator``; raise otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_path(name: str, value: object) -> str:
    """Return ``value`` as a ``str`` if it is a ``str`` or ``os.PathLike`` path; raise ``TypeError`` otherwise.

    An ``int`` is rejected: ``open`` would take it for a file descriptor and read (and close) that.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike path, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str path, got {type(path).__name__}")
    return path


def check_device(device: object) -> torch.device:
    """``device`` as a ``torch.device`` that holds data here (a ``str`` or a device, never a dtype)."""
    if isinstance(device, torch.dtype) or not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a str such as 'cpu', got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device: {err}") from err
    if device.type == "meta":
        raise ValueError("device 'meta' holds shapes but no values: moving a model there would erase it")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # e.g. CUDA asked for on a machine without it
        raise ValueError(f"device {str(device)!r} is not available here: {str(err).splitlines()[0]}") from err
    return device
