"""The checker behind :mod:`vaelib.exercises`: exercises, their hidden cases, and the verdict."""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

#: Every registered exercise, by name.
_REGISTRY: dict[str, "Exercise"] = {}


@dataclass(frozen=True)
class Case:
    """One hidden case: the arguments given to the learner's function and the expected result.

    Attributes:
        description: what the learner is told about the case when it fails: its shapes, dtype and
            kind ("a batch of 5 points in 3 dimensions, float64"), never the values.
        args: positional arguments for the learner's function (tensors are copied before each call,
            so an answer that modifies its inputs in place cannot spoil later cases).
        expected: the reference result: a number, a tensor, or a tuple of them.
        kwargs: keyword arguments for the learner's function.
    """

    description: str
    args: tuple = ()
    expected: Any = None
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Exercise:
    """A self-checking exercise.

    Attributes:
        name: the name passed to :func:`check`, e.g. ``"ch3-gaussian-elbo"``.
        title: one line that says what is asked, shown by :func:`describe`.
        answer: what the learner writes, e.g. ``"a function gaussian_elbo(x, mu, log_var)"``.
        kind: ``"function"`` (the answer is called on each case) or ``"number"`` (the answer is one
            number, compared with the single case's ``expected``).
        cases: builds the hidden cases (deterministic: it seeds its own generator).
        atol, rtol: a result passes when ``|result - expected| <= atol + rtol * |expected|``
            everywhere.
    """

    name: str
    title: str
    answer: str
    kind: Literal["function", "number"]
    cases: Callable[[], list[Case]]
    atol: float = 1e-6
    rtol: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"Exercise: name must be a non-empty string without spaces, got {self.name!r}")
        if not callable(self.cases):
            raise TypeError(f"Exercise {self.name!r}: cases must be a function that returns the cases")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (self.atol, self.rtol)):
            raise TypeError(f"Exercise {self.name!r}: atol and rtol must be finite numbers")
        if self.kind not in ("function", "number"):
            raise ValueError(f"Exercise {self.name!r}: kind must be 'function' or 'number'")
        if self.atol < 0 or self.rtol < 0 or (self.atol == 0 and self.rtol == 0):
            raise ValueError(f"Exercise {self.name!r}: atol and rtol must be >= 0, one of them > 0")


@dataclass(frozen=True)
class Verdict:
    """The checker's reply. True when every case passed; its text is shown as the cell's output.

    Attributes:
        passed: every hidden case passed.
        attempted: False while the answer is still the placeholder (``...``).
        message: what the learner reads.
        failed_case: the 1-based index of the first failing case (None when none failed).
    """

    passed: bool
    attempted: bool
    message: str
    failed_case: int | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the registry (each chapter module calls this); names must be unique."""
    if not isinstance(exercise, Exercise):
        raise TypeError(f"register expects an Exercise, got {type(exercise).__name__}")
    if exercise.name in _REGISTRY:
        raise ValueError(f"an exercise named {exercise.name!r} is already registered")
    _REGISTRY[exercise.name] = exercise
    return exercise


def names() -> list[str]:
    """The names of all exercises, sorted by chapter, then name."""

    def key(name: str) -> tuple:
        head = name.split("-", 1)[0]
        digits = "".join(c for c in head if c.isdigit())
        return (int(digits) if digits else 10**6, name)

    return sorted(_REGISTRY, key=key)


def _get(name: object) -> Exercise:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"no exercise named {name!r}; the exercises are: {', '.join(names())}"
        )
    return _REGISTRY[name]


def describe(name: str) -> str:
    """What an exercise asks for and how its answer is checked."""
    ex = _get(name)
    with torch.enable_grad():  # a case's reference may differentiate; restored on exit
        cases = ex.cases()
    return (
        f"{ex.name}: {ex.title}\nAnswer: {ex.answer}.\nChecked on {len(cases)} hidden case(s) "
        f"to within an absolute {ex.atol:g} plus a relative {ex.rtol:g}."
    )


def _copy_args(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple, dict)):
        return copy.deepcopy(value)
    return value


def _flatten(value: Any) -> list[Any] | None:
    """A result as a list of leaves (numbers or tensors); None when it is neither."""
    if isinstance(value, (tuple, list)):
        out: list[Any] = []
        for v in value:
            leaves = _flatten(v)
            if leaves is None:
                return None
            out.extend(leaves)
        return out
    if isinstance(value, torch.Tensor) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
    ):
        return [value]
    if hasattr(value, "__array__"):  # NumPy
        return [torch.as_tensor(value)]
    return None


def _describe_type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _compare(ex: Exercise, got: Any, expected: Any) -> str | None:
    """None when ``got`` matches ``expected``; otherwise what is wrong, without the expected values."""
    want = _flatten(expected)
    have = _flatten(got)
    assert want is not None, f"exercise {ex.name}: a case's expected value is not numeric"
    if have is None:
        return f"expected numbers or tensors, got {_describe_type(got)}"
    if len(have) != len(want):
        return f"expected {len(want)} result(s), got {len(have)}"
    worst_excess, worst_text = 0.0, None
    for k, (h, w) in enumerate(zip(have, want)):
        label = "" if len(want) == 1 else f"result {k + 1}: "
        w_t = torch.as_tensor(w, dtype=torch.float64)
        if isinstance(h, torch.Tensor) and h.requires_grad:
            h = h.detach()
        try:
            h_t = torch.as_tensor(h).detach().to("cpu", torch.float64)
        except (TypeError, RuntimeError) as err:
            return f"{label}could not read the result as numbers ({err})"
        if tuple(h_t.shape) != tuple(w_t.shape):
            return f"{label}expected shape {tuple(w_t.shape)}, got {tuple(h_t.shape)}"
        if h_t.numel() == 0:
            continue
        if not torch.isfinite(h_t).all() and not torch.equal(
            torch.isfinite(h_t), torch.isfinite(w_t)
        ):
            return f"{label}the result holds NaN or infinite values"
        diff = (h_t - w_t).abs().nan_to_num(0.0)
        allowed = ex.atol + ex.rtol * w_t.abs().nan_to_num(0.0)
        if (diff > allowed).any():
            excess = (diff / allowed).max().item()
            if excess > worst_excess:
                # Relative, not absolute: an answer off by a factor (a missing 1/2) is off by
                # exactly the expected value, which the verdict must not show.
                bad = diff > allowed
                size = w_t.abs().nan_to_num(0.0)[bad]
                worst_excess = excess
                if (size > 0).all():
                    rel = (diff[bad] / size).max().item()
                    how = f"off by up to {100 * rel:.3g}% of the expected value's size"
                else:
                    how = f"off by up to {diff[bad].max().item():.3g} (absolute)"
                worst_text = f"{label}{how}; allowed: {ex.atol:g} + {ex.rtol:g} x |expected|"
    return worst_text


def _relative_band(got: float, want: float) -> str:
    rel = abs(got - want) / abs(want) if want != 0 else math.inf
    for bound in (0.01, 0.1, 0.5):
        if rel <= bound:
            return f"within {bound:.0%} of the answer, but not within the tolerance"
    return "more than 50% away from the answer"


def check(name: str, answer: Any) -> Verdict:
    """Check a learner's answer to the exercise ``name``; returns the :class:`Verdict` (shown as text).

    Args:
        name: the exercise, as the chapter names it (see :func:`names`).
        answer: the learner's function (``kind="function"``) or number (``kind="number"``).

    Returns:
        A verdict: passed, or the first failing case, what it was like and by how much it failed; or
        "not answered yet" for the placeholder. It never contains the expected values.

    It runs with autograd on (some references and answers differentiate) and restores the
    caller's grad mode on return.

    Raises:
        ValueError: for an unknown exercise name.
    """
    with torch.enable_grad():
        return _check(name, answer)


def _check(name: str, answer: Any) -> Verdict:
    """:func:`check` with grad mode on."""
    ex = _get(name)
    cases = ex.cases()
    pending = Verdict(
        False, False,
        f"{ex.name}: not answered yet. Write {ex.answer} in place of the `...`, "
        "then run this cell again.",
    )
    if answer is None or answer is Ellipsis:
        return pending
    if ex.kind == "number":
        leaves = _flatten(answer)
        if leaves is None or len(leaves) != 1 or (
            isinstance(leaves[0], torch.Tensor) and leaves[0].numel() != 1
        ):
            return Verdict(False, True, f"{ex.name}: expected one number, got {_describe_type(answer)}", 1)
        got = float(torch.as_tensor(leaves[0]).item())
        want = float(torch.as_tensor(cases[0].expected).item())
        if not math.isfinite(got):
            return Verdict(False, True, f"{ex.name}: {got} is not a finite number", 1)
        if abs(got - want) <= ex.atol + ex.rtol * abs(want):
            return Verdict(True, True, f"{ex.name}: correct.")
        return Verdict(False, True, f"{ex.name}: not yet: your number is {_relative_band(got, want)}.", 1)

    if not callable(answer):
        return Verdict(False, True, f"{ex.name}: expected {ex.answer}, got {_describe_type(answer)}", 1)
    for i, case in enumerate(cases, start=1):
        where = f"case {i} of {len(cases)} ({case.description})"
        args = tuple(_copy_args(a) for a in case.args)
        kwargs = {k: _copy_args(v) for k, v in case.kwargs.items()}
        try:
            got = answer(*args, **kwargs)
        except NotImplementedError:
            return pending
        except Exception as err:  # the learner's code failed: say how, not where we are
            return Verdict(False, True, f"{ex.name}: {where} raised {type(err).__name__}: {err}", i)
        if got is None or got is Ellipsis:
            if i == 1:
                return pending
            return Verdict(False, True, f"{ex.name}: {where} returned None", i)
        problem = _compare(ex, got, case.expected)
        if problem is not None:
            return Verdict(False, True, f"{ex.name}: not yet. {where}: {problem}.", i)
    return Verdict(True, True, f"{ex.name}: correct. All {len(cases)} hidden cases pass.")

