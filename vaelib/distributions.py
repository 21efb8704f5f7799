r"""The model's three distributions, as ``torch.distributions`` objects, and how vaelib draws from and scores them.

A VAE is three distributions (chapter 3): the prior :math:`p(z)`, the likelihood :math:`p_\theta(x|z)` and
the posterior approximation :math:`q_\phi(z|x)`. :class:`vaelib.VAE` returns each as a
``torch.distributions.Distribution`` (chapter 2 teaches that API), and every function of vaelib is
written against those objects only. The defaults are three small classes of this module, which compute
what the book derives with vaelib's own overflow-proof formulas:

* :class:`DiagonalNormal` :math:`\mathcal{N}(\mu, \operatorname{diag} e^{\log\sigma^2})`, kept in the
  ``(mu, logvar)`` parameters the encoder outputs (also the Gaussian likelihood, with one learned
  ``obs_logvar``);
* :class:`StandardNormal` :math:`\mathcal{N}(0, I)`, the default prior;
* :class:`BernoulliLogits`, independent Bernoulli pixels from logits.

Each has an event shape of one dimension (``(z_dim,)`` or ``(x_dim,)``) and draws with a caller's
``torch.Generator``. Their KL divergences are registered with ``torch.distributions.kl_divergence``
(closed forms of :mod:`vaelib.kl`), also against ``Independent(Normal)`` and ``MultivariateNormal``.

Any other ``Distribution`` works too: :func:`draw` draws from it reproducibly with a generator, and
:func:`kl` returns ``None`` where no closed form is registered, so that the caller estimates the KL by
Monte Carlo instead.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torch.distributions import (Categorical, Distribution, Independent, MultivariateNormal, Normal, constraints,
                                 register_kl)
from torch.distributions import kl_divergence

from ._validate import _is_binary, check_count, check_float, check_generator, check_int, check_tensor
from .densities import LOG_2PI, _log_normal
from .kl import _gaussian_kl, _kl_normal

_Shape = Sequence[int] | torch.Size


def _check_shape(name: str, shape: object) -> torch.Size:
    """``shape`` as a ``torch.Size``: a sequence of integers ``>= 0`` (a ``TypeError``/``ValueError`` naming it)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a sequence of sizes such as (4,), got {type(shape).__name__}")
    return torch.Size(check_int(f"{name}[{i}]", n, minimum=0) for i, n in enumerate(shape))


def _broadcast(a: Sequence[int], b: Sequence[int]) -> torch.Size | None:
    """The broadcast of two shapes, or ``None`` if they do not broadcast (plain Python: this runs every step)."""
    if a == b:
        return torch.Size(a)
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return torch.Size(reversed(out))


def _check_distribution(name: str, dist: object) -> Distribution:
    if not isinstance(dist, Distribution):
        raise TypeError(f"{name} must be a torch.distributions.Distribution, got {type(dist).__name__}")
    return dist


def _check_float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _loc_and(name: str, loc: Tensor, other: Tensor) -> torch.Size:
    """The full shape of a distribution with location ``loc`` (the event its last dimension) and a second
    parameter ``other`` (named ``name``) of the same dtype that broadcasts against it without widening the
    event; a ``TypeError``/``ValueError`` otherwise."""
    _check_float_tensor("loc", loc)
    _check_float_tensor(name, other)
    if other.dtype != loc.dtype:
        raise TypeError(f"{name} must have loc's dtype {loc.dtype}, got {other.dtype}")
    if loc.dim() < 1:
        raise ValueError("loc must have at least one dimension (the event)")
    shape = _broadcast(loc.shape, other.shape)
    if shape is None:
        raise ValueError(f"{name} {tuple(other.shape)} does not broadcast with loc {tuple(loc.shape)}")
    if shape[-1] != loc.shape[-1]:
        raise ValueError(f"{name} {tuple(other.shape)} must not widen the event of loc {tuple(loc.shape)}")
    return shape


def _expand_shape(d: Distribution, batch_shape: object) -> torch.Size:
    """``batch_shape`` checked, and that ``d``'s batch shape broadcasts to it."""
    shape = _check_shape("batch_shape", batch_shape)
    if _broadcast(d.batch_shape, shape) != shape:
        raise ValueError(f"batch_shape {tuple(shape)} is not a broadcast of the batch shape {tuple(d.batch_shape)}") from None
    return shape


def _default_validate(validate_args: bool | None) -> bool:
    return Distribution._validate_args if validate_args is None else bool(validate_args)


class _Vaelib(Distribution):
    """What vaelib's own distributions share: parameters are never validated at construction (they come
    from networks, on the training hot path); ``log_prob`` checks its argument's support unless
    ``validate_args=False`` (or ``torch.distributions.Distribution.set_default_validate_args(False)``)."""

    arg_constraints: dict = {}

    def __init__(self, batch_shape: torch.Size, event_shape: torch.Size, validate_args: bool | None) -> None:
        super().__init__(batch_shape, event_shape, validate_args=False)
        self._validate_args = _default_validate(validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        _check_value(self, value)
        if self._validate_args:
            self._validate_sample(value)
        return self._log_prob(value)

    def _log_prob(self, value: Tensor) -> Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def sample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def _draw_shape(self, sample_shape: object, generator: object) -> torch.Size:
        check_generator("generator", generator)
        return self._extended_shape(_check_shape("sample_shape", sample_shape))


class DiagonalNormal(_Vaelib):
    r"""A Gaussian with diagonal covariance, :math:`\mathcal{N}(\mu, \operatorname{diag}\sigma^2)`, in the
    parameters ``(loc, logvar)`` (:math:`\log\sigma^2`) that the book's encoder outputs.

    The event is the last dimension; ``logvar`` broadcasts against ``loc`` (a scalar ``logvar`` is one
    variance for every coordinate, as the Gaussian likelihood's ``obs_logvar``).

    * ``rsample`` is the reparameterisation of chapter 5, :math:`z = \mu + e^{\log\sigma^2/2}\odot\epsilon`,
      drawn with the caller's ``generator``;
    * :meth:`log_prob` is :func:`vaelib.log_normal` (never NaN, overflow-proof);
    * ``kl_divergence`` to :class:`StandardNormal` is :func:`vaelib.gaussian_kl`, to another diagonal
      Gaussian :func:`vaelib.kl_normal`.
    """

    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, loc: Tensor, logvar: Tensor, validate_args: bool | None = None) -> None:
        shape = _loc_and("logvar", loc, logvar)
        self.loc, self.logvar = loc, logvar
        super().__init__(shape[:-1], shape[-1:], validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def mode(self) -> Tensor:
        return self.mean

    @property
    def variance(self) -> Tensor:
        return torch.exp(self.logvar).expand(self.batch_shape + self.event_shape)

    @property
    def scale(self) -> Tensor:
        r""":math:`\sigma = e^{\log\sigma^2/2}`, broadcast to the full shape."""
        return torch.exp(0.5 * self.logvar).expand(self.batch_shape + self.event_shape)

    def expand(self, batch_shape: _Shape, _instance: object = None) -> "DiagonalNormal":
        shape = _expand_shape(self, batch_shape) + self.event_shape
        return DiagonalNormal(self.loc.expand(shape), self.logvar.expand(shape), self._validate_args)

    def rsample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = self._draw_shape(sample_shape, generator)
        eps = torch.randn(shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + torch.exp(0.5 * self.logvar) * eps

    def _log_prob(self, value: Tensor) -> Tensor:
        return _log_normal(value, self.loc, self.logvar)

    def entropy(self) -> Tensor:
        d = self.event_shape[0]
        logvar = self.logvar.expand(self.batch_shape + self.event_shape)
        return 0.5 * d * (1.0 + LOG_2PI) + 0.5 * logvar.sum(-1)


class StandardNormal(_Vaelib):
    r"""The standard normal :math:`\mathcal{N}(0, I)` over ``size`` coordinates: the default prior.

    Args:
        size: the event size ``d`` (``z_dim``).
        dtype, device: of its draws and densities.
        batch_shape: leading shape (default ``()``: one prior for every example).
    """

    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 batch_shape: _Shape = torch.Size(), validate_args: bool | None = None) -> None:
        size = check_int("size", size)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        from ._validate import check_device

        # A torch.device is taken as it is (a model's own, on every training step); anything else is checked.
        self.device = (torch.device("cpu") if device is None else device if isinstance(device, torch.device)
                       else check_device(device))
        super().__init__(_check_shape("batch_shape", batch_shape), torch.Size([size]), validate_args)

    @property
    def loc(self) -> Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, dtype=self.dtype, device=self.device)

    @property
    def logvar(self) -> Tensor:
        return self.loc

    mean = loc
    mode = loc

    @property
    def variance(self) -> Tensor:
        return torch.ones(self.batch_shape + self.event_shape, dtype=self.dtype, device=self.device)

    stddev = variance
    scale = variance

    def expand(self, batch_shape: _Shape, _instance: object = None) -> "StandardNormal":
        return StandardNormal(self.event_shape[0], self.dtype, self.device, _expand_shape(self, batch_shape),
                              self._validate_args)

    def rsample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = self._draw_shape(sample_shape, generator)
        return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)

    def _log_prob(self, value: Tensor) -> Tensor:
        zero = value.new_zeros(())
        out = _log_normal(value, zero, zero)
        return out if self.batch_shape == () else out.expand(_broadcast(out.shape, self.batch_shape))

    def entropy(self) -> Tensor:
        d = self.event_shape[0]
        return torch.full(self.batch_shape, 0.5 * d * (1.0 + LOG_2PI), dtype=self.dtype, device=self.device)


class BernoulliLogits(_Vaelib):
    r"""Independent Bernoulli pixels with logits :math:`o` (the event is the last dimension):
    :math:`\log p(x) = x \cdot o - \sum_j \operatorname{softplus}(o_j)` (chapter 4), for binary ``x``.

    :meth:`log_prob` refuses grey levels (unless ``validate_args=False``): a Bernoulli density of a grey
    level is no likelihood at all (chapter 4).
    """

    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, logits: Tensor, validate_args: bool | None = None) -> None:
        _check_float_tensor("logits", logits)
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the event)")
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def expand(self, batch_shape: _Shape, _instance: object = None) -> "BernoulliLogits":
        return BernoulliLogits(self.logits.expand(_expand_shape(self, batch_shape) + self.event_shape),
                               self._validate_args)

    def _validate_sample(self, value: Tensor) -> None:
        if not _is_binary(value):
            raise ValueError("the value must be binary (0 or 1) for a Bernoulli likelihood")

    def _log_prob(self, value: Tensor) -> Tensor:
        out = self.logits
        # The dot product never materialises x * logits: with many samples of z (importance sampling) a
        # batched matrix-vector product is fastest, with one (training) a row-wise vecdot.
        if out.dim() > 2 and out.shape[0] > 1 and value.shape == out.shape[-2:]:
            x_dot_logits = torch.einsum("...bj,bj->...b", out, value)
        else:
            x_dot_logits = torch.linalg.vecdot(out, value)
        return x_dot_logits - torch.nn.functional.softplus(out, threshold=40.0).sum(-1)

    def rsample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError("a Bernoulli has no reparameterised sample (its draws are discrete)")

    def sample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = self._draw_shape(sample_shape, generator)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape), generator=generator)

    def entropy(self) -> Tensor:
        o = self.logits
        return (torch.nn.functional.softplus(o) - o * torch.sigmoid(o)).sum(-1)


class _Grid(constraints.Constraint):
    """Values on the grid ``low + k * width``, ``k = 0 .. levels - 1`` (within a float's rounding)."""

    is_discrete = True
    event_dim = 1

    def __init__(self, levels: int, low: float, high: float) -> None:
        self.levels, self.low, self.high = levels, low, high
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        width = (self.high - self.low) / (self.levels - 1)
        k = (value - self.low) / width
        tol = 1e-4 if value.dtype in (torch.float16, torch.bfloat16) else 1e-5 * max(1.0, float(self.levels))
        ok = (k >= -tol) & (k <= self.levels - 1 + tol) & ((k - k.round()).abs() <= tol)
        return ok.all(-1)

    def __repr__(self) -> str:
        return f"Grid(levels={self.levels}, low={self.low:g}, high={self.high:g})"


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for :math:`a < b` (either may be infinite), without cancellation:
    in the upper tail the difference is taken as :math:`\Phi(-a) - \Phi(-b)`."""
    flip = (a + b) > 0  # both mostly in the upper tail: use the symmetry of the Gaussian
    hi = torch.where(flip, -a, b)
    lo = torch.where(flip, -b, a)
    log_hi = torch.special.log_ndtr(hi)
    d = torch.special.log_ndtr(lo) - log_hi  # <= 0
    # log(1 - e^d), stable on both sides of d = -log 2
    log1mexp = torch.where(d > -0.6931471805599453, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    return log_hi + log1mexp


class DiscretisedGaussian(_Vaelib):
    r"""A Gaussian rounded to a grid of ``levels`` values in ``[low, high]``: a likelihood for quantised
    data such as grey levels (chapter 12).

    The grid is :math:`v_k = \text{low} + k w`, :math:`w = (\text{high} - \text{low}) / (\text{levels} - 1)`.
    A value :math:`v_k` has the mass that :math:`\mathcal{N}(\mu, s^2)` puts on its bin
    :math:`[v_k - w/2, v_k + w/2]`; the two end bins reach to :math:`\mp\infty`, so the masses sum to one:

    .. math::

        P(x_j = v_k) = \Phi\Bigl(\frac{v_k + w/2 - \mu_j}{s_j}\Bigr) - \Phi\Bigl(\frac{v_k - w/2 - \mu_j}{s_j}\Bigr).

    Coordinates are independent; the event is the last dimension. :meth:`log_prob` is exact to the last
    digit in every tail (differences of ``log_ndtr``, never of probabilities); :meth:`sample` rounds a
    Gaussian draw to the nearest grid value, which has exactly these masses. A value off the grid is
    refused (unless ``validate_args=False``).

    Args:
        loc: :math:`\mu`, any real numbers (outside ``[low, high]`` too).
        scale: :math:`s > 0`, broadcasting against ``loc`` without widening its event.
        levels: the number of grid values (``>= 2``), 17 for scikit-learn's 8x8 digits.
        low, high: the grid's end points (``low < high``).
    """

    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, levels: int, low: float = -1.0, high: float = 1.0,
                 validate_args: bool | None = None) -> None:
        shape = _loc_and("scale", loc, scale)
        self.levels = check_int("levels", levels, minimum=2)
        self.low = check_float("low", low)
        self.high = check_float("high", high)
        if not self.low < self.high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        self.loc, self.scale = loc, scale
        self.width = (self.high - self.low) / (self.levels - 1)
        super().__init__(shape[:-1], shape[-1:], validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return _Grid(self.levels, self.low, self.high)

    @property
    def grid(self) -> Tensor:
        """The ``levels`` values, in ``loc``'s dtype and device."""
        return torch.linspace(self.low, self.high, self.levels, dtype=self.loc.dtype, device=self.loc.device)

    def _validate_sample(self, value: Tensor) -> None:
        if not bool(self.support.check(value).all()):
            raise ValueError(f"the value must lie on the grid of {self.levels} values in [{self.low:g}, {self.high:g}]")

    def expand(self, batch_shape: _Shape, _instance: object = None) -> "DiscretisedGaussian":
        shape = _expand_shape(self, batch_shape) + self.event_shape
        return DiscretisedGaussian(self.loc.expand(shape), self.scale.expand(shape), self.levels, self.low,
                                   self.high, self._validate_args)

    def _log_prob(self, value: Tensor) -> Tensor:
        half = 0.5 * self.width
        k = torch.round((value - self.low) / self.width)
        centre = self.low + k * self.width
        inf = torch.tensor(math.inf, dtype=value.dtype, device=value.device)
        upper = torch.where(k >= self.levels - 1, inf, (centre + half - self.loc) / self.scale)
        lower = torch.where(k <= 0, -inf, (centre - half - self.loc) / self.scale)
        return _log_diff_ndtr(lower, upper).sum(-1)

    @property
    def mean(self) -> Tensor:
        r"""The exact mean, :math:`\sum_k v_k P(v_k)` (not ``loc``: the end bins pull it inside the grid)."""
        grid = self.grid
        lp = self._log_masses()
        return (lp.exp() * grid).sum(-1)

    def _log_masses(self) -> Tensor:
        """``log P(x_j = v_k)`` for every ``k``: shape ``batch + event + (levels,)``."""
        grid = self.grid
        loc = self.loc.expand(self.batch_shape + self.event_shape).unsqueeze(-1)
        scale = self.scale.expand(self.batch_shape + self.event_shape).unsqueeze(-1)
        half = 0.5 * self.width
        inf = torch.tensor(math.inf, dtype=grid.dtype, device=grid.device)
        k = torch.arange(self.levels, device=grid.device)
        # The end bins' infinite bounds are put in after standardising (as in _log_prob): (-inf - loc) / scale
        # would give the gradient 0 * inf = NaN with respect to scale and loc.
        upper = torch.where(k == self.levels - 1, inf, (grid + half - loc) / scale)
        lower = torch.where(k == 0, -inf, (grid - half - loc) / scale)
        return _log_diff_ndtr(lower, upper)

    def sample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Draws on the grid: a Gaussian draw rounded to the nearest grid value (the end values take the
        tails), drawn with ``generator``; shape ``sample_shape + batch_shape + event_shape``."""
        shape = self._draw_shape(sample_shape, generator)
        with torch.no_grad():
            eps = torch.randn(shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
            k = torch.round((self.loc + self.scale * eps - self.low) / self.width).clamp(0, self.levels - 1)
            return self.low + k * self.width

    def rsample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError("a discretised Gaussian has no reparameterised sample (its draws are discrete)")


class Unflattened(Distribution):
    r"""A distribution of batch shape ``(n,)`` seen with batch shape ``batch_shape`` (``n`` its product).

    A decoder written for a plain batch of codes ``(n, z_dim)`` returns such a distribution; the library
    asks for ``(S, batch)`` (``S`` samples of ``z`` per example). ``log_prob`` broadcasts its argument to
    the full shape, flattens it, scores it, and restores the shape; draws and moments are reshaped.
    """

    arg_constraints: dict = {}

    def __init__(self, base: Distribution, batch_shape: _Shape) -> None:
        self.base = _check_distribution("base", base)
        batch_shape = _check_shape("batch_shape", batch_shape)
        if base.batch_shape != (math.prod(batch_shape),):
            raise ValueError(f"cannot view batch shape {tuple(base.batch_shape)} as {tuple(batch_shape)}")
        super().__init__(batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.base.support

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.base.has_rsample

    def _reshaped(self, t: Tensor, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return t.reshape(sample_shape + self.batch_shape + self.event_shape)

    @property
    def mean(self) -> Tensor:
        return self._reshaped(self.base.mean)

    @property
    def variance(self) -> Tensor:
        return self._reshaped(self.base.variance)

    def log_prob(self, value: Tensor) -> Tensor:
        _check_value(self, value)
        full = value.expand(torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape))
        lead = full.shape[: full.dim() - len(self.batch_shape) - len(self.event_shape)]
        flat = full.reshape(*lead, -1, *self.event_shape)
        return self.base.log_prob(flat).reshape(*lead, *self.batch_shape)

    def rsample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        sample_shape = _check_shape("sample_shape", sample_shape)
        return self._reshaped(draw(self.base, sample_shape, generator), sample_shape)

    def sample(self, sample_shape: _Shape = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        sample_shape = _check_shape("sample_shape", sample_shape)
        with torch.no_grad():
            return self._reshaped(draw(self.base, sample_shape, generator, reparameterized=False), sample_shape)


# --- drawing reproducibly, from any distribution ------------------------------------------------------

def draw(
    dist: Distribution,
    sample_shape: _Shape = torch.Size(),
    generator: torch.Generator | None = None,
    *,
    reparameterized: bool = True,
) -> Tensor:
    r"""``dist.rsample(sample_shape)`` (or ``sample`` with ``reparameterized=False``), drawn with ``generator``.

    vaelib's distributions draw with the generator directly. ``torch.distributions`` draw from PyTorch's
    global generator and take none, so for them the draw runs inside ``torch.random.fork_rng`` with the
    global generator seeded from ``generator`` (one 62-bit number taken from it): the same generator
    state gives the same draws, and the global generator's state is restored afterwards, even on an
    error. ``generator=None`` draws from the global generator, as PyTorch does.

    Raises:
        TypeError: ``reparameterized`` and the family has no ``rsample`` (its draws cannot carry a
            gradient; the ELBO's gradient needs them, chapter 5).
    """
    _check_distribution("dist", dist)
    sample_shape = _check_shape("sample_shape", sample_shape)
    check_generator("generator", generator)
    if not isinstance(reparameterized, bool):
        raise TypeError(f"reparameterized must be True or False, got {type(reparameterized).__name__}")
    if reparameterized and not dist.has_rsample:
        raise TypeError(
            f"{type(dist).__name__} has no reparameterised sample (has_rsample is False), so gradients cannot "
            "flow through its draws (chapter 5); use a family with rsample for the posterior, e.g. a "
            "Normal, MultivariateNormal or a TransformedDistribution of one"
        )
    if isinstance(dist, (_Vaelib, Unflattened)):
        return dist.rsample(sample_shape, generator) if reparameterized else dist.sample(sample_shape, generator)
    method = dist.rsample if reparameterized else dist.sample
    if generator is None:
        return method(sample_shape)
    device = generator.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return method(sample_shape)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.cuda.default_generators[index].manual_seed(seed)
        return method(sample_shape)


def log_prob(dist: Distribution, value: Tensor) -> Tensor:
    """``dist.log_prob(value)``; for vaelib's own distributions without the support check (for callers that
    checked their data once, such as the training loop)."""
    _check_distribution("dist", dist)
    _check_value(dist, value)
    return dist._log_prob(value) if isinstance(dist, _Vaelib) else dist.log_prob(value)


def _category_mean(dist: Distribution) -> Tensor | None:
    """The mean of a ``Categorical`` over its values ``0..K-1`` (seen through ``Independent`` and
    :class:`Unflattened`), :math:`\\sum_k k\\,p_k`, which torch leaves NaN; ``None`` for any other family."""
    if isinstance(dist, Categorical):
        probs = dist.probs
        return (probs * torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)).sum(-1)
    if isinstance(dist, Independent):
        return _category_mean(dist.base_dist)
    if isinstance(dist, Unflattened):
        inner = _category_mean(dist.base)
        return None if inner is None else dist._reshaped(inner)
    return None


def mean(dist: Distribution, generator: torch.Generator | None = None, n_samples: int = 1000) -> Tensor:
    """``dist.mean``; for a ``Categorical`` (a 256-way likelihood of grey levels) the mean of its values
    ``0..K-1``, not torch's NaN; where the family has no formula (a flow), the average of ``n_samples`` draws."""
    _check_distribution("dist", dist)
    check_generator("generator", generator)
    n_samples = check_count("n_samples", n_samples, per_item=max(1, math.prod(dist.batch_shape + dist.event_shape)))
    category_mean = _category_mean(dist)
    if category_mean is not None:
        return category_mean
    try:
        return dist.mean
    except NotImplementedError:
        with torch.no_grad():
            return draw(dist, (n_samples,), generator, reparameterized=False).mean(0)


def as_event(dist: Distribution, event_size: int) -> Distribution:
    """``dist`` with one event dimension of ``event_size``: a family whose coordinates are its batch
    (``Normal(loc, scale)`` with ``loc`` ``(batch, event_size)``, ``Bernoulli(probs=...)``) is reinterpreted
    with ``Independent(dist, 1)``; any other is returned as it is."""
    _check_distribution("dist", dist)
    event_size = check_int("event_size", event_size)
    if dist.event_shape == () and dist.batch_shape[-1:] == (event_size,):
        return Independent(dist, 1)
    return dist


# --- KL divergences in closed form ---------------------------------------------------------------------

def kl(q: Distribution, p: Distribution) -> Tensor | None:
    r""":math:`D_{\mathrm{KL}}(q \,\|\, p)` in closed form, or ``None`` where ``torch.distributions`` has none
    registered (then estimate it by Monte Carlo, as :func:`vaelib.elbo` does).

    Raises:
        ValueError: ``q`` and ``p`` are over different event shapes, or their batch shapes do not broadcast.
    """
    _check_pair(q, p)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def _check_pair(q: object, p: object) -> None:
    _check_distribution("q", q)
    _check_distribution("p", p)
    if q.event_shape != p.event_shape:  # type: ignore[union-attr]
        raise ValueError(f"q and p must be over one event shape, got {tuple(q.event_shape)} and {tuple(p.event_shape)}")
    if _broadcast(q.batch_shape, p.batch_shape) is None:  # type: ignore[union-attr]
        raise ValueError(f"the batch shapes of q {tuple(q.batch_shape)} and p {tuple(p.batch_shape)} do not "
                         "broadcast")


def _check_value(dist: Distribution, value: object) -> None:
    """``value`` a tensor whose last dimension is ``dist``'s event size (when it has one) and whose shape
    broadcasts with the distribution's."""
    check_tensor("value", value, finite=False, nonempty=False)
    event = dist.event_shape
    if len(event) and (value.dim() < len(event) or value.shape[value.dim() - len(event):] != event):
        raise ValueError(f"value must end in the event shape {tuple(event)}, got shape {tuple(value.shape)}")
    if _broadcast(value.shape, dist.batch_shape + event) is None:
        raise ValueError(f"value of shape {tuple(value.shape)} does not broadcast with the batch and event shape "
                         f"{tuple(dist.batch_shape + event)}")


def _diagonal(d: Distribution) -> tuple[Tensor, Tensor] | None:
    """``(loc, logvar)`` of a diagonal Gaussian with one event dimension, or ``None`` for anything else."""
    if isinstance(d, DiagonalNormal):
        return d.loc, d.logvar
    if isinstance(d, StandardNormal):
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        return zero.expand(d.batch_shape + d.event_shape), zero.expand(d.batch_shape + d.event_shape)
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and type(d.base_dist) is Normal:
        return d.base_dist.loc, 2 * torch.log(d.base_dist.scale)
    return None


def kl_per_dimension(q: Distribution, p: Distribution) -> Tensor | None:
    r"""The KL of two diagonal Gaussians coordinate by coordinate, ``(..., d)`` (it sums to :func:`kl`), or
    ``None`` if either is not a diagonal Gaussian (the KL then does not split over coordinates)."""
    _check_pair(q, p)
    a, b = _diagonal(q), _diagonal(p)
    if a is None or b is None:
        return None
    mu_q, logvar_q = a
    if isinstance(p, StandardNormal):
        return _gaussian_kl(mu_q.unsqueeze(-1), logvar_q.expand_as(mu_q).unsqueeze(-1))
    shape = torch.broadcast_shapes(mu_q.shape, logvar_q.shape, b[0].shape, b[1].shape)
    mu_q, logvar_q = mu_q.expand(shape), logvar_q.expand(shape)
    return _kl_normal(mu_q.unsqueeze(-1), logvar_q.unsqueeze(-1), b[0].unsqueeze(-1), b[1].unsqueeze(-1))


def _kl_diagonal(q: Distribution, p: Distribution) -> Tensor:
    if q.event_shape != p.event_shape:
        raise ValueError(f"q and p must be over one event shape, got {tuple(q.event_shape)} and {tuple(p.event_shape)}")
    a = _diagonal(q)
    if a is None:
        raise NotImplementedError  # not a diagonal Gaussian: no closed form here (Monte Carlo instead)
    mu_q, logvar_q = a
    if isinstance(p, StandardNormal) and p.batch_shape == ():
        return _gaussian_kl(mu_q, logvar_q.expand_as(mu_q))  # eq. kl-standard-normal of chapter 4
    b = _diagonal(p)
    if b is None:
        raise NotImplementedError
    shape = torch.broadcast_shapes(mu_q.shape, logvar_q.shape, b[0].shape, b[1].shape)
    return _kl_normal(mu_q.expand(shape), logvar_q.expand(shape), b[0], b[1])  # eq. kl-gaussians of chapter 2


for _q, _p in ((DiagonalNormal, StandardNormal), (DiagonalNormal, DiagonalNormal), (DiagonalNormal, Independent),
               (Independent, StandardNormal), (Independent, DiagonalNormal), (StandardNormal, StandardNormal),
               (StandardNormal, DiagonalNormal), (StandardNormal, Independent)):
    register_kl(_q, _p)(_kl_diagonal)


@register_kl(MultivariateNormal, StandardNormal)
def _kl_full_standard(q: MultivariateNormal, p: StandardNormal) -> Tensor:
    r""":math:`\tfrac12(\operatorname{tr}\Sigma + \mu^\top\mu - d - \log\det\Sigma)`, with :math:`\Sigma = LL^\top`."""
    scale_tril = q.scale_tril
    d = q.event_shape[0]
    trace = scale_tril.pow(2).sum((-2, -1))
    log_det = 2 * torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + q.loc.pow(2).sum(-1) - d - log_det)
