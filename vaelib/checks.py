"""The book's self-checks as one-line statements, and the numbers its prose quotes.

Every identity a chapter states is checked where it is computed. A check reads as the claim it makes::

    holds("ch3-residual", residual.abs().max(), below=1e-12)     # eq. (3.4) to rounding
    close("ch5-mean", estimate, exact, atol=4 * se)              # within four standard errors
    record("ch3", gap=gap, rho=rho)                              # numbers for the prose: "ch3-gap", ...
    record("fig", em=fig)                                        # a figure, "fig-em", shown where placed

Each call does two things in one line: it **asserts** (a failure raises :class:`CheckFailed`, an
``AssertionError`` that names the check, the value and the bound, so the chapter stops there), and
it **records** the measured value, and the margin by which it passed, under the check's name, so
that the text can quote them (with the ``glue:text`` role, e.g. the key ``ch3-residual`` and
``ch3-residual-margin``). Recording uses ``myst_nb.glue`` when the code runs in a Jupyter kernel
with myst-nb installed (the book's build, ``make lab``) and is skipped otherwise (plain Python, the
tests), where only the assertion matters.

The functions return the measured number, so a check can also be used in an expression.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["CheckFailed", "close", "holds", "record"]


class CheckFailed(AssertionError):
    """A self-check of the book did not hold. The message names the check and the numbers."""


class _Checked(float):
    """The number a check measured; a notebook shows it as the statement that held.

    A plain float in every computation (``repr``, ``str`` and formatting are float's), but when it is
    the last line of a cell, Jupyter displays the check, e.g. ``ch3-residual: 8.9e-16 < 1e-10, holds``,
    instead of a bare number.
    """

    statement: str

    def __new__(cls, value: float, statement: str) -> "_Checked":
        self = super().__new__(cls, value)
        self.statement = statement
        return self

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's text/plain
        printer.text(self.statement)


def _number(name: str, what: str, value: object) -> float:
    """``value`` as a Python float: a real number, or a tensor holding exactly one."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        if hasattr(value, "item") and hasattr(value, "size") and getattr(value, "size", 0) == 1:
            return float(value.item())  # a NumPy scalar or one-element array
        raise TypeError(
            f"{name}: {what} must be a real number or a one-element tensor, got {type(value).__name__}"
        )
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name}: {what} must be one number, got a tensor of shape {tuple(value.shape)}; "
                "reduce it first (for example .abs().max())"
            )
        if value.is_complex():
            raise TypeError(f"{name}: {what} must be real, got a complex tensor")
        return float(value.detach().cpu().item())
    return float(value)


def _check_name(name: object, arg: str = "name") -> str:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"a check's {arg} must be a non-empty string without spaces, got {name!r}")
    return name


def _values(name: str, what: str, value: object) -> torch.Tensor:
    """``value`` (a real number, a real tensor, or a NumPy array) as a CPU tensor of at least float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=torch.float64)
    elif hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        t = torch.as_tensor(value)
    else:
        raise TypeError(f"{name}: {what} must be a real number, a tensor or an array, "
                        f"got {type(value).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: {what} must be real numbers, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name}: {what} is empty")
    return t.cpu()


def _glue(name: str, value: Any) -> None:
    """Record ``value`` under ``name`` for the prose (myst-nb's glue, only inside a kernel)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with any Jupyter
        return
    if get_ipython() is None:
        return
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue(name, value, display=False)


def holds(name: str, value: object, *, below: float | None = None,
          above: float | None = None) -> float:
    """Assert that a measured number lies strictly below ``below`` and/or above ``above``.

    Records the value as ``name`` and the margin as ``name + "-margin"``: ``below / value`` (how many
    times smaller than the bound the value is; infinite for 0) or ``value / above``; with both bounds,
    the smaller of the two. A NaN never holds.

    Args:
        name: the check's name (the glue key), e.g. ``"ch3-residual"``.
        value: the measured number (a float, or a one-element tensor, e.g. ``err.abs().max()``).
        below: the value must be ``< below``.
        above: the value must be ``> above``.

    Returns:
        The value, as a float.

    Raises:
        CheckFailed: when the value is not within the bounds.
        ValueError, TypeError: for a value that is not one real number, or no bound.
    """
    name = _check_name(name)
    if below is None and above is None:
        raise ValueError(f"{name}: give a bound, below= and/or above=")
    x = _number(name, "the value", value)
    margins = []
    if below is not None:
        b = _number(name, "below", below)
        if math.isnan(b):
            raise ValueError(f"{name}: below must be a number, got NaN")
        if not x < b:
            raise CheckFailed(f"{name}: {x:.6g} is not below {b:.6g}")
        margins.append(math.inf if x <= 0 <= b else b / x if x > 0 else x / b)
    if above is not None:
        a = _number(name, "above", above)
        if math.isnan(a):
            raise ValueError(f"{name}: above must be a number, got NaN")
        if not x > a:
            raise CheckFailed(f"{name}: {x:.6g} is not above {a:.6g}")
        margins.append(math.inf if a == 0 or (a < 0 <= x) else x / a if a > 0 else a / x)
    _glue(name, x)
    _glue(f"{name}-margin", min(margins))
    low = "" if above is None else f"{float(above):.3g} < "
    high = "" if below is None else f" < {float(below):.3g}"
    return _Checked(x, f"{name}: {low}{x:.3g}{high}, holds")


def close(name: str, actual: object, expected: object, *, atol: float = 0.0,
          rtol: float = 0.0) -> float:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` everywhere (as ``torch.isclose``).

    ``actual`` and ``expected`` may be numbers or tensors of shapes that broadcast. Records the largest
    absolute difference as ``name`` and, as ``name + "-margin"``, the smallest ratio of the allowed
    difference to the difference found (infinite when they are equal). NaNs never compare equal.

    Returns:
        The largest absolute difference, as a float.

    Raises:
        CheckFailed: naming the worst element, its two values and the tolerance.
    """
    name = _check_name(name)
    tol_a = _number(name, "atol", atol)
    tol_r = _number(name, "rtol", rtol)
    if not (math.isfinite(tol_a) and math.isfinite(tol_r)) or tol_a < 0 or tol_r < 0 \
            or (tol_a == 0 and tol_r == 0):
        raise ValueError(f"{name}: atol and rtol must be finite and >= 0, and one of them > 0")
    a = _values(name, "actual", actual)
    e = _values(name, "expected", expected)
    dtype = torch.promote_types(torch.promote_types(a.dtype, e.dtype), torch.float32)
    try:
        a, e = torch.broadcast_tensors(a.to(dtype), e.to(dtype))
    except RuntimeError:
        raise ValueError(f"{name}: the shapes of actual {tuple(a.shape)} and expected "
                         f"{tuple(e.shape)} do not broadcast") from None
    diff = (a - e).abs()
    allowed = tol_a + tol_r * e.abs()
    bad = ~(diff <= allowed)  # NaN differences are bad
    if bad.any():
        i = int(torch.nonzero(bad.reshape(-1))[0])
        index = tuple(int(t) for t in torch.unravel_index(torch.tensor(i), a.shape))
        where = "" if a.numel() == 1 else f" at index {index}"
        raise CheckFailed(
            f"{name}: {a.reshape(-1)[i].item():.10g} differs from {e.reshape(-1)[i].item():.10g}"
            f"{where} by {diff.reshape(-1)[i].item():.3g}, more than {allowed.reshape(-1)[i].item():.3g}"
            f" ({int(bad.sum())} of {a.numel()} elements outside)"
        )
    worst = diff.max().item()
    ratio = torch.where(diff > 0, allowed / diff, torch.full_like(diff, math.inf))
    _glue(name, worst)
    _glue(f"{name}-margin", ratio.min().item())
    tolerance = " + ".join(
        part for part, v in ((f"{tol_a:.3g}", tol_a), (f"{tol_r:.3g} x |expected|", tol_r)) if v
    )
    return _Checked(worst, f"{name}: largest difference {worst:.3g} <= {tolerance}, holds")


def record(prefix: str, /, *, sep: str = "-", **values: object) -> None:
    """Record numbers (and figures) for the prose: ``record("ch3", gap=g)`` records ``"ch3-gap"``.

    Each keyword becomes ``prefix + "-" + key``, with the key's underscores written as hyphens, so
    ``record("fig", em=fig)`` is ``"fig-em"`` and ``record("ch3", kl_end=k)`` is ``"ch3-kl-end"``.
    ``sep="_"`` joins with underscores instead and keeps the key's (``record("base", sep="_",
    elbo_se=s)`` is ``"base_elbo_se"``), for names that other pages already quote.
    One-element tensors become floats; a matplotlib figure is recorded without being shown and then
    closed (so it appears once, where the text places it). Other values (strings, HTML) are recorded as
    they are.
    """
    prefix = _check_name(prefix, "prefix")
    if sep not in ("-", "_"):
        raise ValueError(f"record({prefix!r}): sep must be '-' or '_', got {sep!r}")
    if not values:
        raise ValueError(f"record({prefix!r}): give at least one value, e.g. record({prefix!r}, gap=g)")
    for key, value in values.items():
        name = f"{prefix}{sep}{key.replace('_', sep)}"
        if isinstance(value, bool):
            pass
        elif isinstance(value, numbers.Integral) or (
            isinstance(value, torch.Tensor) and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool
        ):
            value = int(_number(name, "the value", value))
        elif isinstance(value, (numbers.Real, torch.Tensor)):
            value = _number(name, "the value", value)
        _glue(name, value)
        if type(value).__module__.startswith("matplotlib") and hasattr(value, "savefig"):
            import matplotlib.pyplot as plt

            plt.close(value)
