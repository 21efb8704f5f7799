r"""A tractable latent-variable model: the linear-Gaussian model, and probabilistic PCA.

.. math:: z \sim \mathcal{N}(0, I_d), \qquad x \mid z \sim \mathcal{N}(Wz + b, \sigma_x^2 I_D)

Everything the book needs is known in closed form here, so every approximation can be checked against
the exact answer (chapters 1–3):

* evidence :math:`p(x) = \mathcal{N}(x;\, b,\, WW^\top + \sigma_x^2 I)`,
* posterior :math:`p(z|x) = \mathcal{N}\bigl(M^{-1}W^\top(x-b)/\sigma_x^2,\; M^{-1}\bigr)`,
  :math:`M = I + W^\top W/\sigma_x^2`,
* the ELBO of any Gaussian :math:`q(z) = \mathcal{N}(m, S)`.

Use ``float64`` tensors when checking identities "to floating-point precision". The exact quantities are
evaluated in ``float64`` for ``float32`` models too (and rounded once), stably for every
:math:`\sigma_x/\|W\|` (see :meth:`LinearGaussian.log_evidence` for the stated accuracy); ``float16`` and
``bfloat16`` are refused with a ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence

from ._validate import check_float, check_generator, check_int, check_tensor
from .densities import LOG_2PI


#: The dtypes the toy model computes in. Its linear algebra (QR, triangular solves, SVD) is not implemented
#: for ``float16``/``bfloat16``, and their 3 significant digits could not check anything "exactly".
SUPPORTED_DTYPES = (torch.float32, torch.float64)
_F64 = torch.float64


def _check_float_dtype(dtype: object, name: str = "dtype") -> None:
    if not isinstance(dtype, torch.dtype) or dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be torch.float32 or torch.float64, got {dtype!r}")


def _check_supported(name: str, t: Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype torch.float32 or torch.float64, got {t.dtype}")


# --- error-free transformations (for residuals that cancel) -----------------------------------------------
# x - b - W z is a difference of nearly equal numbers when x lies close to the plane {b + W z} (sigma much
# smaller than ||W||): evaluated naively, its rounding error eps * |x| is then large against the residual
# itself. Knuth's TwoSum and Dekker's TwoProduct give every rounding error of the sum and of the products
# exactly, so the residual comes out correctly rounded up to eps^2-size terms. Float64 only.

_SPLITTER = 2.0**27 + 1.0  # Veltkamp splitting of a float64 into two 26-bit halves


def _two_sum(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: Tensor) -> tuple[Tensor, Tensor]:
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def _exact_residual_pair(x: Tensor, b: Tensor, W: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """``x - b - z @ W.T`` as an unevaluated sum ``hi + lo`` (float64, broadcasting ``z: (..., d)`` against
    ``x: (..., D)``), exact up to a relative ``O(d eps^2)`` of the largest term."""
    s, err = _two_sum(x, -b)
    W_hi, W_lo = _split(W)
    z_hi, z_lo = _split(z)
    for j in range(W.shape[1]):
        zj, zh, zl = z[..., j : j + 1], z_hi[..., j : j + 1], z_lo[..., j : j + 1]
        wj, wh, wl = W[:, j], W_hi[:, j], W_lo[:, j]
        p = zj * wj
        p_err = ((zh * wh - p) + zh * wl + zl * wh) + zl * wl  # zj * wj = p + p_err exactly
        s, s_err = _two_sum(s, -p)
        err = err + (s_err - p_err)
    return s, err


def _exact_residual(x: Tensor, b: Tensor, W: Tensor, z: Tensor) -> Tensor:
    """``x - b - z @ W.T``, correctly rounded up to ``O(d eps^2)`` (see ``_exact_residual_pair``)."""
    s, err = _exact_residual_pair(x, b, W, z)
    return s + err


def _sum_pair(p: Tensor) -> tuple[Tensor, Tensor]:
    """``p.sum(-1)`` as ``hi + lo`` by pairwise TwoSum: exact up to ``O(log2(D) eps^2)`` of ``sum |p|``."""
    err = torch.zeros(p.shape[:-1], dtype=p.dtype)
    while p.shape[-1] > 1:
        if p.shape[-1] % 2:
            p = torch.cat([p, torch.zeros_like(p[..., :1])], -1)
        p, e = _two_sum(p[..., 0::2], p[..., 1::2])
        err = err + e.sum(-1)
    return p[..., 0], err


def _dot_pair(hi: Tensor, lo: Tensor, W: Tensor) -> Tensor:
    """``(hi + lo) @ W`` for rows ``(..., D)``, correctly rounded up to ``O(eps^2)`` of ``|hi| @ |W|``
    (Ogita, Rump and Oishi's Dot2, summed pairwise): accurate even when the dot products cancel."""
    h_hi, h_lo = _split(hi)
    W_hi, W_lo = _split(W)
    cols = []
    for j in range(W.shape[1]):
        wj, wh, wl = W[:, j], W_hi[:, j], W_lo[:, j]
        p = hi * wj
        p_err = ((h_hi * wh - p) + h_hi * wl + h_lo * wh) + h_lo * wl
        s, s_err = _sum_pair(p)
        cols.append(s + (s_err + p_err.sum(-1)))
    return torch.stack(cols, -1) + lo @ W


class _MarginalNormal(MultivariateNormal):
    r""":math:`\mathcal{N}(b, WW^\top + \sigma_x^2 I)` whose :meth:`log_prob` is :meth:`LinearGaussian.log_evidence`.

    Its ``scale_tril`` is built stably (see :meth:`LinearGaussian.marginal`), but even a correctly rounded
    ``D x D`` factor cannot carry :math:`\log p(x)` accurately when :math:`\sigma_x \ll \|W\|`: rounding its
    entries tilts the thin directions of the Gaussian by :math:`\epsilon`, which moves a point at distance
    :math:`\|x - b\|` by :math:`\epsilon\|x-b\| \gg \sigma_x` across them. So the density is evaluated from
    :math:`W, b, \sigma_x` themselves, to the accuracy stated in :meth:`LinearGaussian.log_evidence`.
    """

    _model: "LinearGaussian"

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        D = self._model.x_dim
        flat = value.reshape(-1, D)
        lp = self._model._log_evidence64(flat).reshape(value.shape[:-1])
        lp = lp.to(torch.promote_types(value.dtype, self.loc.dtype))
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def expand(self, batch_shape, _instance=None):  # noqa: ANN001, ANN201 (torch's signature)
        new = super().expand(batch_shape, _instance)
        new._model = self._model
        return new


class LinearGaussian:
    r"""The linear-Gaussian latent-variable model :math:`p(x, z) = \mathcal{N}(x; Wz+b, \sigma_x^2 I)\,\mathcal{N}(z; 0, I)`.

    Args:
        W: loading matrix, ``(D, d)``, ``float32`` or ``float64``.
        b: offset, ``(D,)``, the dtype of ``W``.
        sigma: observation noise standard deviation :math:`\sigma_x > 0` (the book's :math:`\sigma_x`).

    **Numerics.** The exact quantities (:meth:`log_evidence`, :meth:`marginal`, :meth:`posterior`,
    :meth:`elbo`, :meth:`log_likelihood`) are evaluated in ``float64`` whatever the model's dtype (a
    ``float32`` model is exactly the ``float64`` model with the same, representable, parameters) and
    rounded once to the result's dtype. None of them forms :math:`M = I + W^\top W/\sigma_x^2` or the
    Woodbury difference :math:`r^\top r/\sigma_x^2 - r^\top W M^{-1} W^\top r/\sigma_x^4`, which cancels
    catastrophically when :math:`\sigma_x \ll \|W\|`; see :meth:`log_evidence`.
    """

    def __init__(self, W: Tensor, b: Tensor, sigma: float) -> None:
        check_tensor("W", W, ndim=2)
        _check_supported("W", W)
        check_tensor("b", b, ndim=1)
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"b must have shape ({W.shape[0]},) to match W, got {tuple(b.shape)}")
        if b.dtype != W.dtype:
            raise TypeError(f"W and b must share a dtype, got {W.dtype} and {b.dtype}")
        self.W = W
        self.b = b
        self.sigma = check_float("sigma", sigma, minimum=0.0, strict=True)

    @classmethod
    def random(
        cls,
        x_dim: int,
        z_dim: int,
        sigma: float = 0.5,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> "LinearGaussian":
        """A model with standard-normal ``W`` and ``b`` (seeded by ``generator``); ``dtype`` float32 or float64."""
        x_dim, z_dim = check_int("x_dim", x_dim), check_int("z_dim", z_dim)
        check_generator("generator", generator)
        _check_float_dtype(dtype)
        W = torch.randn((x_dim, z_dim), generator=generator, dtype=dtype)
        b = torch.randn((x_dim,), generator=generator, dtype=dtype)
        return cls(W, b, sigma)

    @classmethod
    def from_vae(cls, model: object, dtype: torch.dtype = torch.float64) -> "LinearGaussian":
        r"""The generative model of a linear Gaussian VAE, as a :class:`LinearGaussian`.

        A :class:`vaelib.VAE` with ``hidden=()`` and ``likelihood="gaussian"`` has the prior
        :math:`\mathcal{N}(0, I)` and the decoder :math:`p_\theta(x|z) = \mathcal{N}(x;\, Wz + b,\, \sigma_x^2 I)`
        with ``W``, ``b`` its decoder's single linear layer and :math:`\sigma_x^2` the exponential of its
        learned log-variance ``obs_logvar``:
        exactly this model (:meth:`vaelib.VAE.linear_gaussian_parameters` reads them off). So its exact :math:`\log p(x)` (:meth:`log_evidence`) and the exact ELBO of
        its encoder's Gaussian :math:`q` (:meth:`elbo`) are known (chapter 3).

        Args:
            model: a linear Gaussian :class:`vaelib.VAE`.
            dtype: floating-point type of the returned model (``float64`` for exact checks).

        Returns:
            A copy of the decoder's parameters, detached from the autograd graph.
        """
        # Asked of the model, so that this ground floor of the library never imports vaelib.model.
        parameters = getattr(model, "linear_gaussian_parameters", None)
        if not callable(parameters):
            raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
        _check_float_dtype(dtype)
        W, b, obs_logvar = parameters()  # ValueError for a model that is not linear Gaussian
        W, b = (t.detach().to(dtype=dtype).clone() for t in (W, b))
        return cls(W, b, math.exp(0.5 * float(obs_logvar.detach())))

    @property
    def x_dim(self) -> int:
        """Data dimension ``D``."""
        return self.W.shape[0]

    @property
    def z_dim(self) -> int:
        """Latent dimension ``d``."""
        return self.W.shape[1]

    def __repr__(self) -> str:
        return f"LinearGaussian(x_dim={self.x_dim}, z_dim={self.z_dim}, sigma={self.sigma:g})"

    # --- the generative model ---------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs ``(x, z)`` from the joint: returns ``x: (n, D)`` and ``z: (n, d)``."""
        n = check_int("n", n)
        check_generator("generator", generator)
        z = torch.randn((n, self.z_dim), generator=generator, dtype=self.W.dtype)
        noise = torch.randn((n, self.x_dim), generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * noise, z

    def log_prior(self, z: Tensor) -> Tensor:
        r""":math:`\log p(z) = \log\mathcal{N}(z; 0, I)`, for ``z: (..., d)``; returns ``(...)``."""
        check_tensor("z", z, last_dim=self.z_dim)
        return -0.5 * (self.z_dim * LOG_2PI + z.pow(2).sum(-1))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(x|z) = \log\mathcal{N}(x; Wz+b, \sigma_x^2 I)`.

        The residual :math:`x - Wz - b` is evaluated naively when a bound on its rounding error shows that
        :math:`\|x - Wz - b\|^2` is accurate to a relative :math:`2^{-44}` (the usual case), and otherwise
        (``x`` close to the plane :math:`\{Wz + b\}`, relative to :math:`|x|`, as at the posterior when
        :math:`\sigma_x \ll \|W\|`) with exact products and compensated sums, correctly rounded.

        Args:
            x: ``(n, D)``.
            z: ``(..., n, d)``, or ``(..., d)`` broadcastable against ``x``'s batch, in the model's dtype.

        Returns:
            ``(..., n)``.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        check_tensor("z", z, last_dim=self.z_dim)
        self._check_dtype("z", z)
        try:
            torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
        except RuntimeError as err:
            raise ValueError(
                f"z must have shape (..., {x.shape[0]}, {self.z_dim}) or (..., {self.z_dim}) to match x, "
                f"got {tuple(z.shape)}"
            ) from err
        out = torch.promote_types(x.dtype, self.W.dtype)
        return self._log_likelihood64(x.to(_F64), z.to(_F64)).to(out)

    def _log_likelihood64(self, x: Tensor, z: Tensor) -> Tensor:
        W, b = self.W.to(_F64), self.b.to(_F64)
        resid = x - (z @ W.T + b)
        sq = resid.pow(2).sum(-1)
        # Each entry of resid is off by at most u (|x| + |b| + |W||z|), u = (d + 2) eps, so the rounding
        # error vector has norm <= B = u (||x|| + ||b|| + sum_j |z_j| ||W_j||) (triangle inequality: O(nd)
        # work, not O(nD)) and that of sq is <= 2 ||resid|| B + B^2.
        u = (self.z_dim + 2) * torch.finfo(_F64).eps
        with torch.no_grad():
            B = u * (torch.linalg.vector_norm(x, dim=-1) + torch.linalg.vector_norm(b)
                     + z.abs() @ torch.linalg.vector_norm(W, dim=0))
            err = 2 * sq.sqrt() * B + B.pow(2)
            exact_needed = bool((err > 2.0**-44 * sq).any())
        if exact_needed:
            sq = _exact_residual(x, b, W, z).pow(2).sum(-1)
        return -0.5 * (self.x_dim * (LOG_2PI + 2 * math.log(self.sigma)) + sq / self.sigma / self.sigma)

    def _check_dtype(self, name: str, t: Tensor) -> None:
        if t.dtype != self.W.dtype:
            raise TypeError(f"{name} must have the model's dtype {self.W.dtype}, got {t.dtype}")

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(x, z) = \log p(x|z) + \log p(z)`; shapes as :meth:`log_likelihood`."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    # --- exact inference ----------------------------------------------------------------------
    def _factor64(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(W, b, Q, R)`` in float64, with the thin QR factorisation :math:`AJ = QR` of

        .. math:: A = \begin{bmatrix} W \\ \sigma_x I_d \end{bmatrix} \in \mathbb{R}^{(D+d) \times d},
                  \qquad A^\top A = \sigma_x^2 M = W^\top W + \sigma_x^2 I,

        ``J`` the reversal of the columns (so that the posterior's scale factor comes out lower triangular)
        and ``diag(R) > 0``. :math:`A` has full column rank (its singular values are
        :math:`\sqrt{s_i(W)^2 + \sigma_x^2} \ge \sigma_x`) and condition number
        :math:`\kappa(A) \le \kappa(W)` for every :math:`\sigma_x`; ``W^T W`` is never formed.
        """
        W, b = self.W.to(_F64), self.b.to(_F64)
        d = self.z_dim
        A = torch.cat([W, self.sigma * torch.eye(d, dtype=_F64)], 0).flip(-1)
        Q, R = torch.linalg.qr(A)
        sign = torch.where(torch.diagonal(R).detach() < 0, -1.0, 1.0).to(_F64)
        return W, b, Q * sign, R * sign[:, None]

    def marginal(self) -> MultivariateNormal:
        r"""The evidence distribution :math:`p(x) = \mathcal{N}(b, WW^\top + \sigma_x^2 I)`.

        Its ``scale_tril`` :math:`L = R^\top` comes from the QR factorisation of
        :math:`[W^\top; \sigma_x I_D]`, a ``(d + D) x D`` matrix with :math:`R^\top R = WW^\top + \sigma_x^2 I`:
        backward stable, always positive definite, with no rounding of :math:`\sigma_x^2` against
        :math:`\|W\|^2` (``covariance_matrix`` is :math:`LL^\top`). Its ``log_prob`` is :meth:`log_evidence`
        (same accuracy), not the triangular solve with :math:`L`: a rounded ``D x D`` factor cannot carry
        :math:`\log p(x)` accurately when :math:`\sigma_x \ll \|W\|` (its error grows like
        :math:`\epsilon\|x - b\|/\sigma_x`). Sampling and ``entropy`` use :math:`L`.
        """
        W = self.W.to(_F64)
        B = torch.cat([W.T, self.sigma * torch.eye(self.x_dim, dtype=_F64)], 0)
        R = torch.linalg.qr(B, mode="r")[1]
        sign = torch.where(torch.diagonal(R).detach() < 0, -1.0, 1.0).to(_F64)
        dist = _MarginalNormal(self.b, scale_tril=(R * sign[:, None]).mT.to(self.W.dtype))
        dist._model = self
        return dist

    def log_evidence(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x) = \log\mathcal{N}(x; b, C)`, :math:`C = WW^\top + \sigma_x^2 I`, per row of ``x``.

        ``x: (n, D)``; returns ``(n,)``, in ``x``'s dtype promoted with the model's.

        **Formulation.** With :math:`r = x - b` and the QR factorisation :math:`A = [W; \sigma_x I_d] = QR`
        (up to a column reversal, ``_factor64``),

        .. math:: r^\top C^{-1} r &= \min_z \bigl(\|r - Wz\|^2 + \sigma_x^2\|z\|^2\bigr)/\sigma_x^2
                  = \|e\|^2/\sigma_x^2, \\
                  \log\det C &= 2(D - d)\log\sigma_x + 2\sum_i \log R_{ii},

        where :math:`e = [r; 0] - A m` is the residual of the ridge least-squares problem, :math:`m` its
        solution (the posterior mean). Every term is a sum of squares or of logarithms of positive numbers:
        nothing cancels, and no matrix whose condition grows with :math:`\|W\|/\sigma_x` or
        :math:`\sigma_x/\|W\|` is formed (:math:`\kappa(A) \le \kappa(W)`). The textbook form
        :math:`r^\top r/\sigma_x^2 - r^\top W M^{-1} W^\top r/\sigma_x^4` subtracts two numbers of size
        :math:`\|r\|^2/\sigma_x^2` to leave one of size :math:`D`: it is off by nats at
        :math:`\sigma_x/\|W\| = 10^{-8}` and by thousands of nats at :math:`10^{-10}`.

        The one unavoidable cancellation is :math:`r - Wm`, of size :math:`\sigma_x` when :math:`\|r\| \sim
        \|W\| \gg \sigma_x`. It is computed with exact products and compensated sums from the exact ``x``,
        ``b``, ``W`` (so that the computed :math:`m`'s own rounding is the only error left in it), and
        then projected off :math:`\operatorname{range}(A)` with :math:`Q`, which removes :math:`A(m -
        m_\star)`: the error left in :math:`e` is :math:`O(\epsilon\,\kappa(A)\|e\|)`.

        **Accuracy.** Let :math:`S = \tfrac12\bigl(D\log 2\pi + |\log\det C| + r^\top C^{-1}r\bigr) \ge
        |\log p(x)|` (the two are equal unless the terms cancel, so this is a relative error wherever
        :math:`\log p(x)` is not near 0), :math:`\epsilon = 2^{-52}` and :math:`\kappa = \kappa(A) =
        \sqrt{(s_{\max}(W)^2 + \sigma_x^2)/(s_{\min}(W)^2 + \sigma_x^2)} \le \kappa(W)`. For every
        :math:`\sigma_x/\|W\|` in :math:`[10^{-12}, 10^{12}]` (and beyond), for ``x`` near the model or far
        from it, against the exact value for the given inputs:

        * float64: :math:`|\text{error}| \le 4D\,\epsilon\,\kappa\, S`;
        * float32 (the same float64 computation, rounded once):
          :math:`|\text{error}| \le 2^{-24}|\log p(x)| + 4D\,\epsilon\,\kappa\, S`.

        Measured against 80-digit arithmetic (``tests/test_edges_toy.py``): at most
        :math:`4.4 \times 10^{-16} S` for standard-normal ``W`` (no visible growth with :math:`\kappa`),
        and :math:`2.7 \times 10^{-16}\kappa S` for ``W`` with :math:`\kappa(W)` up to :math:`10^8`. The
        factor :math:`\kappa` is the problem's own: when :math:`s_{\min}(W) \lesssim \sigma_x \ll
        s_{\max}(W)`, a one-ulp change of ``W`` moves :math:`\log p(x)` by about
        :math:`\epsilon\,s_{\max}/\sigma_x`. It costs :math:`O(nDd + Dd^2)`; no ``D x D`` matrix is formed.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        return self._log_evidence64(x).to(torch.promote_types(x.dtype, self.W.dtype))

    def _log_evidence64(self, x: Tensor) -> Tensor:
        x = x.to(_F64)
        W, b, Q, R = self._factor64()
        D, d, s = self.x_dim, self.z_dim, self.sigma
        m = self._posterior_mean64(x, W, b, R)
        e = torch.cat([_exact_residual(x, b, W, m), -s * m], -1)  # [r; 0] - A m, (n, D + d)
        e = e - (e @ Q) @ Q.T  # project off range(A): removes the rounding of m
        quad = (e / s).pow(2).sum(-1)
        logdet = 2 * (D - d) * math.log(s) + 2 * torch.log(torch.diagonal(R)).sum()
        return -0.5 * (D * LOG_2PI + logdet + quad)

    def _posterior_mean64(self, x: Tensor, W: Tensor, b: Tensor, R: Tensor) -> Tensor:
        r"""The posterior mean :math:`m = (A^\top A)^{-1}W^\top r` of each row of ``x``, ``(n, d)``, float64.

        By the corrected semi-normal equations (Björck): :math:`(A^\top A)^{-1} = JR^{-1}R^{-\top}J` applied
        to :math:`W^\top r`, then one correction with the gradient :math:`W^\top(r - Wm) - \sigma_x^2 m`, its
        residual and dot products computed exactly (they cancel: :math:`W^\top r` can be much smaller than
        :math:`|W|^\top|r|`). The least-squares form :math:`JR^{-1}Q^\top[r; 0]` would not do: when
        :math:`\sigma_x \gg \|W\|` the entries of :math:`Q`'s upper block are tiny and only absolutely
        accurate, and :math:`m` would lose its relative accuracy. Relative error :math:`O(\epsilon\,\kappa(A))`
        for every :math:`\sigma_x`.
        """

        def solve(g: Tensor) -> Tensor:  # (A^T A)^{-1} g for rows g
            y = torch.linalg.solve_triangular(R.mT, g.flip(-1).mT, upper=False)
            return torch.linalg.solve_triangular(R, y, upper=True).mT.flip(-1)

        m = solve((x - b) @ W)
        gradient = _dot_pair(*_exact_residual_pair(x, b, W, m), W) - self.sigma**2 * m  # W^T(r - Wm) - s^2 m
        return m + solve(gradient)

    def posterior(self, x: Tensor) -> MultivariateNormal:
        r"""Exact posterior :math:`p(z|x)` for each row of ``x: (n, D)``: a batch of ``n`` Gaussians.

        Mean :math:`M^{-1}W^\top(x-b)/\sigma_x^2`, covariance :math:`M^{-1}` (the same for every ``x``),
        :math:`M = I + W^\top W/\sigma_x^2`. Neither :math:`M` nor its inverse is formed: with
        :math:`A = [W; \sigma_x I]`, :math:`AJ = QR` (``_factor64``), the ``scale_tril`` is
        :math:`\sigma_x J R^{-1} J` (lower triangular, :math:`(\sigma_x JR^{-1}J)(\sigma_x JR^{-1}J)^\top =
        \sigma_x^2 (A^\top A)^{-1} = M^{-1}`) and the mean :math:`(A^\top A)^{-1}W^\top(x - b)` comes from the
        corrected semi-normal equations with an exactly computed residual. The mean is accurate to a
        relative :math:`O(\epsilon\,\kappa(A))` and the covariance to :math:`O(\epsilon\,\kappa(A)^2)`,
        :math:`\kappa(A) \le \kappa(W)`, for every :math:`\sigma_x/\|W\|` (measured against 80-digit
        arithmetic over :math:`[10^{-12}, 10^{12}]` with standard-normal ``W``: below :math:`4 \times
        10^{-16}` and :math:`4 \times 10^{-15}`). The distribution is in ``x``'s dtype promoted with the
        model's.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        out = torch.promote_types(x.dtype, self.W.dtype)
        W, b, _, R = self._factor64()
        mean = self._posterior_mean64(x.to(_F64), W, b, R)
        eye = torch.eye(self.z_dim, dtype=_F64)
        scale = self.sigma * torch.linalg.solve_triangular(R, eye, upper=True).flip(-1).flip(-2)
        return MultivariateNormal(mean.to(out), scale_tril=scale.to(out).expand(x.shape[0], -1, -1))

    def elbo(self, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
        r"""Exact ELBO :math:`\mathbb{E}_q[\log p(x,z)] + \mathbb{H}[q]` of a Gaussian :math:`q = \mathcal{N}(m, S)`.

        Implements eq. ``eq-elbo-linear-gaussian`` of chapter 3:

        .. math:: \mathcal{L} = \log\mathcal{N}(x; Wm+b, \sigma_x^2 I) - \frac{\operatorname{tr}(W S W^\top)}{2\sigma_x^2}
                  - \tfrac12\bigl(\|m\|^2 + \operatorname{tr} S\bigr) + \tfrac12\log\det S + \tfrac{d}{2}

        Evaluated in float64 with :math:`\operatorname{tr}(WSW^\top) = \|WL\|_F^2` (:math:`S = LL^\top`, a
        sum of squares) and the residual of :meth:`log_likelihood`.

        Args:
            x: ``(n, D)``.
            q_mean: ``(n, d)``.
            q_cov: ``(d, d)`` or ``(n, d, d)``, symmetric positive definite.

        Returns:
            ``(n,)``; equals :meth:`log_evidence` exactly when ``q`` is the posterior.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        check_tensor("q_mean", q_mean, ndim=2, last_dim=self.z_dim)
        check_tensor("q_cov", q_cov, ndim=(2, 3), last_dim=self.z_dim)
        if q_mean.shape[0] != x.shape[0]:
            raise ValueError(f"q_mean must have {x.shape[0]} rows to match x, got {q_mean.shape[0]}")
        if q_cov.shape[-2] != self.z_dim or (q_cov.dim() == 3 and q_cov.shape[0] != x.shape[0]):
            raise ValueError(f"q_cov must be ({self.z_dim}, {self.z_dim}) or (n, d, d), got {tuple(q_cov.shape)}")
        self._check_dtype("q_mean", q_mean)
        self._check_dtype("q_cov", q_cov)
        out = torch.promote_types(x.dtype, self.W.dtype)
        tol = torch.finfo(q_cov.dtype).eps ** 0.5 * float(q_cov.detach().abs().max())
        S = q_cov.to(_F64)
        L, info = torch.linalg.cholesky_ex(S)
        if float((q_cov - q_cov.mT).detach().abs().max()) > tol or bool((info != 0).any()):
            raise ValueError("q_cov must be symmetric positive definite")
        m, s2 = q_mean.to(_F64), self.sigma**2
        logdet_S = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        tr_S = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)
        tr_WSW = (self.W.to(_F64) @ L).pow(2).sum((-2, -1))  # tr(W S W^T) = ||W L||_F^2
        expected_log_lik = self._log_likelihood64(x.to(_F64), m) - tr_WSW / (2 * s2)
        expected_log_prior = -0.5 * (self.z_dim * LOG_2PI + m.pow(2).sum(-1) + tr_S)
        entropy = 0.5 * (self.z_dim * (1 + LOG_2PI) + logdet_S)
        return (expected_log_lik + expected_log_prior + entropy).to(out)


def ppca(x: Tensor, z_dim: int) -> LinearGaussian:
    r"""Maximum-likelihood probabilistic PCA (Tipping & Bishop 1999), in closed form.

    With the sample mean :math:`\bar x`, the sample covariance's eigenvalues
    :math:`\lambda_1 \ge \dots \ge \lambda_D` and eigenvectors :math:`U`,

    .. math:: b = \bar x, \qquad \sigma_x^2 = \frac{1}{D-d}\sum_{j>d}\lambda_j, \qquad
              W = U_d\,\bigl(\operatorname{diag}(\lambda_1, \dots, \lambda_d) - \sigma_x^2 I\bigr)^{1/2}

    (unique up to a rotation of the latent space). ``ppca(x, d).log_evidence(x).sum()`` is the maximum
    log-likelihood any linear-Gaussian model with ``d`` latent dimensions attains on ``x``.

    Computed in float64 from the SVD of the centred data :math:`X_c = USV^\top` (:math:`\lambda_j =
    s_j^2/n`), not from the eigenvalues of the covariance: the SVD resolves :math:`s_j` to
    :math:`O(\sqrt n\,\epsilon\, s_1)`, so small :math:`\lambda_j` to :math:`O(n\epsilon^2\lambda_1)`, where
    forming the covariance would leave them at :math:`O(\sqrt n\,\epsilon\lambda_1)`.

    **Degenerate data.** If the data lie in an affine subspace of dimension ``<= z_dim``, :math:`\sigma_x^2`
    would be 0; rounding leaves it at the level of rounding noise instead, and a model with that
    :math:`\sigma_x` would be meaningless. So ``ValueError`` is raised when

    .. math:: s_{d+1} \le \bigl(D\,\epsilon_x + \sqrt{n}\,\epsilon_{64}\bigr)\,\|X\|_F,

    :math:`\epsilon_x` the machine epsilon of ``x``'s dtype, :math:`\|X\|_F` the norm of the uncentred
    data (in eigenvalues: :math:`\lambda_{d+1} \le (D\epsilon_x + \sqrt n\,\epsilon_{64})^2
    (\operatorname{tr}\hat\Sigma + \|\bar x\|^2)`, a tolerance relative to the data's scale). Why these
    multiples: rounding data that lie exactly in a subspace moves each entry by at most
    :math:`\tfrac{\epsilon_x}2|x_{ij}|`, hence (Weyl) the residual singular values by at most
    :math:`\tfrac{\epsilon_x}2\|X\|_F`; data computed as a product :math:`ZA` with :math:`k \le d < D` terms per
    entry carry up to :math:`k` such roundings, which :math:`D\epsilon_x` covers; and the float64 centring
    and SVD of an ``n``-row matrix have a backward error that grows with ``n``, which
    :math:`\sqrt n\,\epsilon_{64}` covers. Measured noise floors of exactly degenerate data: at most
    :math:`0.4\,\epsilon_{32}\|X\|_F` for float32 data, and :math:`6\,\epsilon_{64}\|X\|_F` (about
    :math:`0.02\sqrt n\,\epsilon_{64}\|X\|_F` for large ``n``) for float64 data, a margin of at least 5
    below the tolerance. Data whose spread off the best ``z_dim``-dimensional subspace is larger are
    fitted, with :math:`\sigma_x^2` accurate to a relative :math:`O(\sqrt n\,\epsilon_{64}\, s_1/s_{d+1})`.

    Args:
        x: data, ``(n, D)``, float32 or float64, with ``n >= 2`` and ``z_dim < D``.
        z_dim: latent dimension ``d``.

    Returns:
        A :class:`LinearGaussian` in ``x``'s dtype.
    """
    check_tensor("x", x, ndim=2)
    _check_supported("x", x)
    z_dim = check_int("z_dim", z_dim)
    n, D = x.shape
    if n < 2:
        raise ValueError(f"x must have at least 2 rows, got {n}")
    if z_dim >= D:
        raise ValueError(f"z_dim must be smaller than the data dimension {D}, got {z_dim}")
    x64 = x.to(_F64)
    b = x64.mean(0)
    b = b + (x64 - b).mean(0)  # corrected two-pass mean
    xc = x64 - b
    _, s, Vh = torch.linalg.svd(xc, full_matrices=False)  # s descending, (min(n, D),)
    eps_x, eps_64 = torch.finfo(x.dtype).eps, torch.finfo(_F64).eps
    tol = (D * eps_x + math.sqrt(n) * eps_64) * float(torch.linalg.vector_norm(x64))
    if s.shape[0] <= z_dim or float(s[z_dim]) <= tol:
        spread = float(s[z_dim]) if s.shape[0] > z_dim else 0.0
        raise ValueError(
            f"the rows of x lie in an affine subspace of dimension <= z_dim={z_dim}, up to rounding: their "
            f"spread off the best {z_dim}-dimensional subspace (singular value {spread:.3g}) is within the "
            f"rounding level {tol:.3g} of {x.dtype} data of this size, so sigma^2 would be 0 or rounding noise "
            "(centre the data, or use float64, if they do vary)"
        )
    evals = torch.zeros(D, dtype=_F64)
    evals[: s.shape[0]] = s.pow(2) / n
    sigma2 = evals[z_dim:].mean()
    W = Vh[:z_dim].T * torch.sqrt(torch.clamp(evals[:z_dim] - sigma2, min=0.0))
    return LinearGaussian(W.to(x.dtype), b.to(x.dtype), math.sqrt(float(sigma2)))


# --- the evidence by brute force (chapter 1) ------------------------------------------------------

#: Largest number of floats in one ``(points, n, D)`` block built by the quadrature and Monte Carlo
#: functions below; they work in chunks of this size, so only the grid or sample count limits them.
CHUNK_ELEMENTS = 1 << 22


def _check_model_x(model: object, x: Tensor) -> LinearGaussian:
    if not isinstance(model, LinearGaussian):
        raise TypeError(f"model must be a vaelib.toy.LinearGaussian, got {type(model).__name__}")
    check_tensor("x", x, ndim=2, last_dim=model.x_dim)
    if x.dtype != model.W.dtype:
        raise TypeError(f"x must have the model's dtype {model.W.dtype}, got {x.dtype}")
    return model


def _grid_log_joint(
    model: LinearGaussian, x: Tensor, n_points: int, bound: float, max_points: int
) -> Iterator[tuple[Tensor, Tensor]]:
    r"""Yield ``(z, a)`` in chunks over the trapezoid grid: ``z: (c, d)`` and ``a: (c, n)``.

    ``a[g, i] = log w_g + log p(x_i, z_g)`` with the tensor-product trapezoid weight ``w_g``.
    """
    n_points = check_int("n_points", n_points, minimum=2)
    bound = check_float("bound", bound, minimum=0.0, strict=True)
    max_points = check_int("max_points", max_points)
    d = model.z_dim
    if d * math.log(n_points) > math.log(max_points):  # compare in logs: G**d may not fit an int64
        raise ValueError(
            f"a grid of n_points**z_dim = {n_points}**{d} points exceeds max_points={max_points}: "
            "quadrature cost grows exponentially with the latent dimension"
        )
    dtype = model.W.dtype
    nodes = torch.linspace(-bound, bound, n_points, dtype=dtype)
    h = 2.0 * bound / (n_points - 1)
    log_w1 = torch.full((n_points,), math.log(h), dtype=dtype)
    log_w1[0] = log_w1[-1] = math.log(h / 2)
    total = n_points**d
    chunk = max(1, CHUNK_ELEMENTS // (x.shape[0] * model.x_dim))
    strides = [n_points ** (d - 1 - k) for k in range(d)]
    for start in range(0, total, chunk):
        flat = torch.arange(start, min(start + chunk, total))
        idx = torch.stack([(flat // s) % n_points for s in strides], -1)  # (c, d) grid indices
        z = nodes[idx]
        yield z, log_w1[idx].sum(-1)[:, None] + model.log_joint(x, z[:, None, :])


@torch.no_grad()
def log_evidence_quadrature(
    model: LinearGaussian,
    x: Tensor,
    n_points: int = 201,
    bound: float = 8.0,
    max_points: int = 10**7,
) -> Tensor:
    r"""The evidence integral by brute force: the trapezoid rule on a grid over :math:`z`.

    Implements eq. ``eq-evidence`` of chapter 1 numerically,

    .. math:: \log p(x) = \log \int p(x|z)\,p(z)\,dz \approx
              \log \sum_{g} w_g\, p(x|z_g)\, p(z_g),

    on the tensor-product grid of ``n_points`` equally spaced nodes per axis on
    :math:`[-\text{bound}, \text{bound}]^d` with trapezoid weights :math:`w_g` (node spacing
    :math:`h`, halved at the ends, multiplied across axes), summed with log-sum-exp. For a smooth integrand
    that is negligible at the box's edges the trapezoid rule converges faster than any power of :math:`h`;
    choose ``bound`` so the box holds the posterior, and ``h`` a few times smaller than the
    posterior's smallest standard deviation. It costs ``n_points**d`` likelihood evaluations (the point
    of chapter 1), evaluated in chunks of bounded memory.

    Args:
        model: a :class:`LinearGaussian` (any ``z_dim``, but only small ones are affordable).
        x: data, ``(n, D)``, in the model's dtype.
        n_points: nodes per latent axis, ``G >= 2``.
        bound: half-width of the box, in prior standard deviations.
        max_points: refuse grids with more than this many points (``G**d``).

    Returns:
        ``(n,)``, in nats.
    """
    model = _check_model_x(model, x)
    parts = [torch.logsumexp(a, 0) for _, a in _grid_log_joint(model, x, n_points, bound, max_points)]
    return torch.logsumexp(torch.stack(parts), 0)


@torch.no_grad()
def posterior_moments_quadrature(
    model: LinearGaussian,
    x: Tensor,
    n_points: int = 201,
    bound: float = 8.0,
    max_points: int = 10**7,
) -> tuple[Tensor, Tensor]:
    r"""Mean and covariance of the posterior :math:`p(z|x)`, normalised on the quadrature grid.

    Bayes' theorem (eq. ``eq-bayes`` of chapter 1) on the grid of :func:`log_evidence_quadrature`:
    the posterior's mass at node :math:`z_g` is :math:`\pi_g = w_g\,p(x, z_g) / \sum_{g'} w_{g'}\,p(x, z_{g'})`, and

    .. math:: m = \sum_g \pi_g\, z_g, \qquad S = \sum_g \pi_g\, (z_g - m)(z_g - m)^\top.

    Args:
        model, x, n_points, bound, max_points: as :func:`log_evidence_quadrature`.

    Returns:
        ``(mean, cov)`` with shapes ``(n, d)`` and ``(n, d, d)``.
    """
    log_px = log_evidence_quadrature(model, x, n_points, bound, max_points)
    mean = torch.zeros(x.shape[0], model.z_dim, dtype=x.dtype)
    for z, a in _grid_log_joint(model, x, n_points, bound, max_points):
        mean += torch.exp(a - log_px).T @ z
    cov = torch.zeros(x.shape[0], model.z_dim, model.z_dim, dtype=x.dtype)
    for z, a in _grid_log_joint(model, x, n_points, bound, max_points):
        dz = z[:, None, :] - mean  # (c, n, d), centred for accuracy
        cov += torch.einsum("cn,cni,cnj->nij", torch.exp(a - log_px), dz, dz)
    return mean, cov


@torch.no_grad()
def log_importance_weights(
    model: LinearGaussian,
    x: Tensor,
    n_samples: int,
    proposal: MultivariateNormal | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Log importance weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q`.

    With no ``proposal``, :math:`q` is the prior :math:`p(z) = \mathcal{N}(0, I)` and
    :math:`\log w_s = \log p(x|z_s)` ("naive" Monte Carlo). Each row of ``x`` gets its own independent
    samples, so ``x.expand(R, -1)`` gives ``R`` independent repetitions for one observation.

    Args:
        model: a :class:`LinearGaussian`.
        x: data, ``(n, D)``, in the model's dtype.
        n_samples: number of samples ``S`` per row of ``x``.
        proposal: ``None`` (the prior) or a ``MultivariateNormal`` over ``z`` in the model's dtype, with
            batch shape ``()`` or ``(n,)``, such as ``model.posterior(x)``; sampled as
            :math:`z = \mu + L\epsilon` with the ``generator``.
        generator: seeded ``torch.Generator``.

    Returns:
        ``(S, n)``, in nats.
    """
    model = _check_model_x(model, x)
    n_samples = check_int("n_samples", n_samples)
    check_generator("generator", generator)
    if proposal is not None:
        if not isinstance(proposal, MultivariateNormal):
            raise TypeError(f"proposal must be a MultivariateNormal or None, got {type(proposal).__name__}")
        if proposal.event_shape != (model.z_dim,) or proposal.batch_shape not in ((), (x.shape[0],)):
            raise ValueError(
                f"proposal must have event shape ({model.z_dim},) and batch shape () or ({x.shape[0]},), "
                f"got {tuple(proposal.event_shape)} and {tuple(proposal.batch_shape)}"
            )
        if proposal.loc.dtype != x.dtype:
            raise TypeError(f"proposal must have the model's dtype {x.dtype}, got {proposal.loc.dtype}")
    n, d = x.shape[0], model.z_dim
    chunk = max(1, CHUNK_ELEMENTS // (n * model.x_dim))
    parts = []
    for start in range(0, n_samples, chunk):
        eps = torch.randn((min(chunk, n_samples - start), n, d), generator=generator, dtype=x.dtype)
        if proposal is None:
            parts.append(model.log_likelihood(x, eps))  # log p(z) - log q(z) = 0 exactly
        else:
            z = proposal.loc + (proposal.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
            parts.append(model.log_joint(x, z) - proposal.log_prob(z))
    return torch.cat(parts)


def log_evidence_importance(
    model: LinearGaussian,
    x: Tensor,
    n_samples: int,
    proposal: MultivariateNormal | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Monte Carlo estimate of :math:`\log p(x)` by importance sampling, with its standard error.

    .. math:: \log \hat p(x) = \log \frac1S \sum_{s=1}^S w_s, \qquad
              \operatorname{se} = \frac{\operatorname{sd}(w)}{\sqrt{S}\,\bar w},

    with the weights of :func:`log_importance_weights` (from the prior by default: eq. ``eq-mc-prior`` of
    chapter 1), computed with log-sum-exp. :math:`\hat p(x)` is unbiased for :math:`p(x)`;
    ``se`` is the delta-method standard error of :math:`\log\hat p(x)` in nats (its sample standard
    deviation ``sd`` uses ``S - 1``). It is itself an estimate, and an optimistic one when the weights are
    heavy-tailed, that is when the proposal rarely lands where the posterior is.

    Args:
        model, x, n_samples, proposal, generator: as :func:`log_importance_weights`, with ``S >= 2``.

    Returns:
        ``(log_px, se)``, each ``(n,)``, in nats.
    """
    n_samples = check_int("n_samples", n_samples, minimum=2)
    log_w = log_importance_weights(model, x, n_samples, proposal, generator)
    log_px = torch.logsumexp(log_w, 0) - math.log(n_samples)
    w = torch.exp(log_w - log_w.max(0).values)  # rescaled weights in (0, 1]
    se = w.std(0) / (math.sqrt(n_samples) * w.mean(0))
    return log_px, se


# --- fitting a Gaussian q by maximising the exact ELBO (chapter 3) -------------------------------


@dataclass(frozen=True)
class GaussianFit:
    r"""The result of :func:`fit_gaussian_q`: the fitted Gaussians and the optimisation's trace.

    Attributes:
        mean: the final means :math:`m`, ``(n, d)``.
        cov: the final covariances :math:`S`, ``(n, d, d)``.
        elbo: the exact ELBO of each row of ``x`` before every step and after the last,
            ``(steps + 1, n)``, in nats.
        kl: :math:`D_{\mathrm{KL}}(q \,\|\, p(z|x))` at the same iterates, ``(steps + 1, n)``, computed
            directly from the two Gaussians (not as ``log_evidence - elbo``, which would lose small values
            to cancellation).
    """

    mean: Tensor
    cov: Tensor
    elbo: Tensor
    kl: Tensor


def fit_gaussian_q(
    model: LinearGaussian,
    x: Tensor,
    *,
    full_covariance: bool = True,
    steps: int = 500,
    lr: float = 0.05,
) -> GaussianFit:
    r"""Fit :math:`q(z) = \mathcal{N}(m, S)` to each row of ``x`` by gradient ascent (Adam) on the exact ELBO.

    Maximises :meth:`LinearGaussian.elbo` (eq. ``eq-elbo-linear-gaussian`` of chapter 3) over :math:`m` and a factor
    :math:`L` of :math:`S = LL^\top`, starting from the prior :math:`q = \mathcal{N}(0, I)`. The diagonal
    of :math:`L` is the exponential of a free parameter, so :math:`S` stays positive definite.

    * ``full_covariance=True``: :math:`L` is lower triangular (a Cholesky factor), so the family holds the
      exact posterior and the KL can fall to 0.
    * ``full_covariance=False``: :math:`L` is diagonal (the mean-field family); on a correlated posterior
      the KL cannot fall below that of the best mean-field Gaussian.

    Args:
        model: a :class:`LinearGaussian`.
        x: observations ``(n, D)``, in the model's dtype; each row gets its own ``q``.
        full_covariance: full (``True``) or diagonal (``False``) covariance.
        steps: Adam steps (``>= 1``).
        lr: Adam's learning rate.
    """
    model = _check_model_x(model, x)
    steps = check_int("steps", steps)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    n, d = x.shape[0], model.z_dim
    posterior = model.posterior(x)
    mean = torch.zeros((n, d), dtype=x.dtype, requires_grad=True)
    log_diag = torch.zeros((n, d), dtype=x.dtype, requires_grad=True)
    lower = torch.zeros((n, d, d), dtype=x.dtype, requires_grad=full_covariance)
    params = [mean, log_diag, lower] if full_covariance else [mean, log_diag]
    optimizer = torch.optim.Adam(params, lr=lr)
    elbos, kls = [], []
    with torch.enable_grad():
        for step in range(steps + 1):
            L = torch.diag_embed(log_diag.exp()) + lower.tril(-1)
            cov = L @ L.mT
            elbo = model.elbo(x, mean, cov)
            elbos.append(elbo.detach())
            kls.append(kl_divergence(MultivariateNormal(mean.detach(), scale_tril=L.detach()), posterior))
            if step == steps:
                break
            optimizer.zero_grad()
            (-elbo.sum()).backward()
            optimizer.step()
    return GaussianFit(mean.detach(), cov.detach(), torch.stack(elbos), torch.stack(kls))
