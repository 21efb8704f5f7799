"""Log-densities of the two likelihoods the book uses: Gaussian and Bernoulli.

Both sum over the last dimension, so a per-pixel density becomes a per-example log-likelihood in nats,
as in chapter 4 (the reconstruction term is a sum over pixels, not a mean).

Both are computed in the inputs' dtype (float16/bfloat16 in float32) over its whole finite range: for
finite inputs the result is never NaN, it is finite whenever the exact value is representable, and it
is the infinity of the right sign when the exact value overflows. The one exception is documented in
:func:`log_normal` (a difference ``x - mu`` that itself overflows).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import check_binary, check_tensor

LOG_2PI = math.log(2.0 * math.pi)


# --- shapes ------------------------------------------------------------------------------------------


def _shape_list(tensors: dict[str, Tensor]) -> str:
    return ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())


def _check_summed_broadcast(data: str, **tensors: Tensor) -> torch.Size:
    """The broadcast shape of ``tensors``, whose last dimension must be the data's (``tensors[data]``).

    Leading dimensions broadcast as usual (one result per broadcast index); the summed last dimension
    must not be broadcast *onto* the data: a parameter's last dimension is 1 (or absent) or the data's.
    Raises ``ValueError`` naming every argument and its shape otherwise.
    """
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError as err:
        raise ValueError(
            f"{', '.join(tensors)} must broadcast together, got shapes {_shape_list(tensors)}"
        ) from err
    d = tensors[data].shape[-1]
    if shape[-1] != d:
        raise ValueError(
            f"the summed last dimension of {data} must not be broadcast: got {_shape_list(tensors)}, "
            f"which broadcast to {tuple(shape)} and would sum {shape[-1]} coordinates of a {d}-dimensional "
            f"{data}; each parameter's last dimension must be " + (f"1 or {d}" if d != 1 else "1")
        )
    return shape


# --- overflow-free pieces shared with vaelib.kl ---------------------------------------------------------


def _compute_dtype(*tensors: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype to compute in, dtype of the result): the promoted dtype, half precisions computed in float32.

    float16's exponent range is too narrow for the clamping argument of :func:`_standardised`.
    """
    out = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return (torch.float32 if out in (torch.float16, torch.bfloat16) else out), out


@functools.lru_cache(maxsize=None)
def _logvar_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Clamp bounds ``(lo, hi)`` for the log-variance inside :func:`_standardised`.

    ``exp(-lo/4) = e^floor(log max)`` is finite and ``exp(-hi/4) = e^-floor(-log tiny)`` is a normal
    number, so ``0 * e`` is never NaN and ``inf * e`` never NaN either. Clamping changes no representable
    result (float32: ``lo, hi = -352, 348``; float64: ``-2836, 2832``): below ``lo`` any nonzero
    difference, even the smallest subnormal, gives a standardised square beyond ``max`` (it is inf
    either way, ``e^(2*88 - 103.3)`` squared in float32); above ``hi`` the square of any finite
    difference, ``<= max^2 e^-hi``, is below the smallest subnormal (it is 0 either way).
    """
    fi = torch.finfo(dtype)
    return -4.0 * math.floor(math.log(fi.max)), 4.0 * math.floor(-math.log(fi.tiny))


def _standardised(a: Tensor, b: Tensor, logvar: Tensor, scale: float) -> Tensor:
    r"""``scale * (a - b) / sigma`` with :math:`\sigma = e^{\text{logvar}/2}`, ``scale`` a power of 2.

    Computed as ``((a - b) * e) * (e * scale)`` with ``e = exp(-logvar/4)`` (arguments clamped, see
    :func:`_logvar_bounds`): each factor stays in range where ``exp(-logvar/2)`` or
    ``exp(-logvar)`` would overflow or underflow, so the result is correct to a few ulps whenever it
    is representable, ``0`` when ``a == b`` (never ``0 * inf``), and overflows only when the exact
    value does. Only ``a - b`` itself can overflow (``|a - b| > max``): then the result is ``+-inf``.
    """
    lo, hi = _logvar_bounds(logvar.dtype)
    e = torch.exp(logvar.clamp(lo, hi) * -0.25)
    return (a - b) * e * (e * scale)


def _sum_scale(d: int) -> int:
    """The odd ``k >= 1`` with ``2^k >= d``: terms are summed scaled by ``2^-(k+1)`` (see :func:`_log_normal`)."""
    k = max(1, (max(d, 1) - 1).bit_length())
    return k if k % 2 else k + 1


# --- Gaussian ------------------------------------------------------------------------------------------


def log_normal(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    r"""Diagonal Gaussian log-density, summed over the last dimension.

    .. math:: \log \mathcal{N}(x; \mu, \operatorname{diag}\sigma^2)
              = -\tfrac12 \sum_j \bigl[\log 2\pi + \log\sigma_j^2 + (x_j-\mu_j)^2/\sigma_j^2\bigr]

    Shapes: ``x``, ``mu`` and ``logvar`` broadcast together, and the sum runs over the last dimension
    of the broadcast, which must be ``x``'s own: the last dimension of ``mu`` and ``logvar`` is ``D``
    or 1 (or they are 0-d), never a size-1 dimension of ``x`` stretched to ``D`` copies. Leading
    dimensions broadcast freely, in either direction: ``x`` ``(S, B, D)`` against ``mu`` ``(B, D)``,
    or points ``(G, 1, 1)`` against component means ``(K, 1)`` (one density per point and component,
    ``(G, K)``). Anything else is a ``ValueError`` naming all three shapes.

    Range: computed in the inputs' dtype as :math:`-2^k \sum_j [2^{-(k+1)}(\log 2\pi + \log\sigma_j^2)
    + (2^{-(k+1)/2} z_j)^2]`, :math:`z_j = (x_j - \mu_j)\, e^{-\log\sigma_j^2/4} e^{-\log\sigma_j^2/4}`,
    ``k`` odd with :math:`2^k \ge D` (exact power-of-2 scalings), so no intermediate overflows unless
    the exact result does. For finite inputs the result is finite, to a few ulps of the terms' sizes,
    whenever the exact value is representable (any log-variance in the dtype's range, e.g.
    :math:`\log\sigma^2 = -90` with ``x == mu`` gives exactly :math:`-\tfrac12(\log 2\pi - 90)`), and
    ``-inf``/``+inf`` when it overflows. The one limit: when :math:`|x_j - \mu_j|` itself exceeds the
    dtype's largest value (opposite signs, both beyond half of it) the result is ``-inf``; that is the
    exact value unless :math:`\sigma_j^2 > (x_j - \mu_j)^2 / \text{max}` (above ``max`` itself:
    :math:`\log\sigma^2 > 88.7` in float32, :math:`709.8` in float64). An infinite ``x`` gives ``-inf``.

    Args:
        x: points, ``(..., D)``; may be infinite.
        mu: means, finite, broadcastable with ``x`` as above.
        logvar: log-variances :math:`\log\sigma^2`, finite, broadcastable with ``x`` as above.

    Returns:
        The broadcast shape without its last dimension: one log-density in nats per point.
    """
    check_tensor("x", x, finite=False)
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the last one is summed over)")
    _check_summed_broadcast("x", x=x, mu=mu, logvar=logvar)
    return _log_normal(x, mu, logvar)


def _log_normal(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """:func:`log_normal` without input checks, for the training hot path.

    Every term is pre-scaled by ``2^-(k+1)``, ``2^k >= D``: a term whose exact value is representable
    stays so, and no partial sum of ``D`` such terms can overflow, so ``+inf`` and ``-inf`` partial
    sums (NaN) cannot meet. Big-tensor passes: one subtraction, two products, one ``addcmul``, the sum.
    """
    dtype, out_dtype = _compute_dtype(x, mu, logvar)
    x, mu, logvar = (t if t.dtype == dtype else t.to(dtype) for t in (x, mu, logvar))
    d = max(t.shape[-1] if t.dim() else 1 for t in (x, mu, logvar))
    k = _sum_scale(d)
    r = 2.0 ** (-(k + 1) // 2)  # r^2 = 2^-(k+1)
    zr = _standardised(x, mu, logvar, r)
    terms = torch.addcmul((logvar + LOG_2PI) * (r * r), zr, zr)
    return (terms.sum(-1) * -(2.0**k)).to(out_dtype)


# --- Bernoulli -----------------------------------------------------------------------------------------


def log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    r"""Bernoulli log-probability of binary ``x`` under ``logits``, summed over the last dimension.

    .. math:: \log p(x) &= \sum_j \bigl[x_j \log \pi_j + (1-x_j)\log(1-\pi_j)\bigr] \\
              &= -\sum_j \operatorname{softplus}\bigl((1 - 2x_j)\,\text{logit}_j\bigr),
              \quad \pi_j = \operatorname{sigmoid}(\text{logit}_j)

    Each term :math:`-\operatorname{softplus}(\pm\text{logit})` is computed to a few ulps of itself and
    is :math:`\le 0`, so the sum is accurate relative to the result for every finite logit (a logit of
    :math:`\pm 100` or :math:`\pm 10^{38}` included) and overflows to ``-inf`` only when the exact
    value does.

    Shapes: as in :func:`log_normal`: ``x`` and ``logits`` broadcast together, leading dimensions
    freely (data ``(B, D)`` against logits ``(S, B, D)`` of ``S`` samples of ``z`` gives ``(S, B)``),
    but the summed last dimension must be ``x``'s: ``logits``' last dimension is ``D`` or 1 (or it is
    0-d). Anything else is a ``ValueError`` naming both shapes.

    Args:
        x: binary observations, ``(..., D)``; grey levels are rejected.
        logits: finite, broadcastable with ``x`` as above.

    Returns:
        The broadcast shape without its last dimension: one log-probability in nats per example.
    """
    check_tensor("x", x)
    check_tensor("logits", logits)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the last one is summed over)")
    check_binary("x", x)
    _check_summed_broadcast("x", x=x, logits=logits)
    return _log_bernoulli(x, logits)


def _log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    r""":func:`log_bernoulli` without input checks, for the training hot path; ``x`` must be binary.

    :math:`u = (1 - 2x)\,l` is exactly :math:`\pm l`, and :math:`-\operatorname{softplus}(u)` is the
    per-pixel log-probability, a nonpositive term computed to a few ulps of itself: no two large sums
    (``x . l`` and ``sum softplus(l)``) that cancel, or overflow to ``inf - inf``, as in
    :math:`x\,l - \operatorname{softplus}(l)`.
    """
    # softplus(u) = u + log1p(exp(-u)) is returned as plain u above `threshold` (20 by default), an error
    # of up to e^-20 = 2e-9 per pixel; above 40 the dropped term, < 4.3e-18 u / 40, is below float64's
    # rounding of u.
    return -F.softplus(logits * torch.rsub(x, 1.0, alpha=2.0), threshold=40.0).sum(-1)
