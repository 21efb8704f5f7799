r"""A tractable latent-variable model: the linear-Gaussian model, and probabilistic PCA.

.. math:: z \sim \mathcal{N}(0, I_d), \qquad x \mid z \sim \mathcal{N}(Wz + b, \sigma^2 I_D)

Everything the book needs is known in closed form here, so every approximation can be checked against
the exact answer (chapters 1–3):

* evidence :math:`p(x) = \mathcal{N}(x;\, b,\, WW^\top + \sigma^2 I)`,
* posterior :math:`p(z|x) = \mathcal{N}\bigl(M^{-1}W^\top(x-b)/\sigma^2,\; M^{-1}\bigr)`,
  :math:`M = I + W^\top W/\sigma^2`,
* the ELBO of any Gaussian :math:`q(z) = \mathcal{N}(m, S)`.

Use ``float64`` tensors when checking identities "to floating-point precision".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from ._validate import check_float, check_generator, check_int, check_tensor
from .densities import LOG_2PI


class LinearGaussian:
    r"""The linear-Gaussian latent-variable model :math:`p(x, z) = \mathcal{N}(x; Wz+b, \sigma^2 I)\,\mathcal{N}(z; 0, I)`.

    Args:
        W: loading matrix, ``(D, d)``.
        b: offset, ``(D,)``.
        sigma: observation noise standard deviation :math:`\sigma > 0`.
    """

    def __init__(self, W: Tensor, b: Tensor, sigma: float) -> None:
        check_tensor("W", W, ndim=2)
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
        """A model with standard-normal ``W`` and ``b`` (seeded by ``generator``)."""
        x_dim, z_dim = check_int("x_dim", x_dim), check_int("z_dim", z_dim)
        check_generator("generator", generator)
        W = torch.randn((x_dim, z_dim), generator=generator, dtype=dtype)
        b = torch.randn((x_dim,), generator=generator, dtype=dtype)
        return cls(W, b, sigma)

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
        r""":math:`\log p(x|z) = \log\mathcal{N}(x; Wz+b, \sigma^2 I)`.

        Args:
            x: ``(n, D)``.
            z: ``(..., n, d)``, or ``(..., d)`` broadcastable against ``x``'s batch.

        Returns:
            ``(..., n)``.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        check_tensor("z", z, last_dim=self.z_dim)
        resid = x - (z @ self.W.T + self.b)
        return -0.5 * (
            self.x_dim * (LOG_2PI + 2 * math.log(self.sigma)) + resid.pow(2).sum(-1) / self.sigma**2
        )

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(x, z) = \log p(x|z) + \log p(z)`; shapes as :meth:`log_likelihood`."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    # --- exact inference ----------------------------------------------------------------------
    def marginal(self) -> MultivariateNormal:
        r"""The evidence distribution :math:`p(x) = \mathcal{N}(b, WW^\top + \sigma^2 I)`."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, dtype=self.W.dtype)
        return MultivariateNormal(self.b, covariance_matrix=cov)

    def log_evidence(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x)` per row of ``x: (n, D)``; returns ``(n,)``.

        Uses the matrix-determinant lemma and Woodbury identity through the ``d × d`` matrix
        :math:`M = I + W^\top W/\sigma^2`, so it costs :math:`O(nDd + d^3)`, not :math:`O(D^3)`.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        s2 = self.sigma**2
        M = torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        L = torch.linalg.cholesky(M)
        resid = x - self.b
        proj = torch.cholesky_solve((resid @ self.W).T, L).T  # M^{-1} W^T r, (n, d)
        quad = (resid.pow(2).sum(-1) - (resid @ self.W * proj).sum(-1) / s2) / s2
        logdet = 2 * torch.log(torch.diagonal(L)).sum() + self.x_dim * math.log(s2)
        return -0.5 * (self.x_dim * LOG_2PI + logdet + quad)

    def posterior(self, x: Tensor) -> MultivariateNormal:
        r"""Exact posterior :math:`p(z|x)` for each row of ``x: (n, D)``: a batch of ``n`` Gaussians.

        Mean :math:`M^{-1}W^\top(x-b)/\sigma^2`, covariance :math:`M^{-1}` (the same for every ``x``).
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        s2 = self.sigma**2
        M = torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(M)
        cov = 0.5 * (cov + cov.T)
        mean = (x - self.b) @ self.W @ cov / s2
        return MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[0], -1, -1))

    def elbo(self, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
        r"""Exact ELBO :math:`\mathbb{E}_q[\log p(x,z)] + \mathbb{H}[q]` of a Gaussian :math:`q = \mathcal{N}(m, S)`.

        .. math:: \mathcal{L} = \log\mathcal{N}(x; Wm+b, \sigma^2 I) - \frac{\operatorname{tr}(W S W^\top)}{2\sigma^2}
                  - \tfrac12\bigl(\|m\|^2 + \operatorname{tr} S\bigr) + \tfrac12\log\det S + \tfrac{d}{2}

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
        s2 = self.sigma**2
        L = torch.linalg.cholesky(q_cov)  # raises if q_cov is not positive definite
        logdet_S = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        tr_S = torch.diagonal(q_cov, dim1=-2, dim2=-1).sum(-1)
        tr_WSW = (self.W @ q_cov * self.W).sum((-2, -1))  # tr(W S W^T) = sum((W S) * W)
        expected_log_lik = self.log_likelihood(x, q_mean) - tr_WSW / (2 * s2)
        expected_log_prior = -0.5 * (self.z_dim * LOG_2PI + q_mean.pow(2).sum(-1) + tr_S)
        entropy = 0.5 * (self.z_dim * (1 + LOG_2PI) + logdet_S)
        return expected_log_lik + expected_log_prior + entropy


def ppca(x: Tensor, z_dim: int) -> LinearGaussian:
    r"""Maximum-likelihood probabilistic PCA (Tipping & Bishop 1999), in closed form.

    With the sample mean :math:`\bar x`, the sample covariance's eigenvalues
    :math:`\lambda_1 \ge \dots \ge \lambda_D` and eigenvectors :math:`U`,

    .. math:: b = \bar x, \qquad \sigma^2 = \frac{1}{D-d}\sum_{j>d}\lambda_j, \qquad
              W = U_d\,(\Lambda_d - \sigma^2 I)^{1/2}

    (unique up to a rotation of the latent space). ``ppca(x, d).log_evidence(x).sum()`` is the maximum
    log-likelihood any linear-Gaussian model with ``d`` latent dimensions attains on ``x``.

    Args:
        x: data, ``(n, D)`` with ``n >= 2`` and ``z_dim < D``.
        z_dim: latent dimension ``d``.
    """
    check_tensor("x", x, ndim=2)
    z_dim = check_int("z_dim", z_dim)
    n, D = x.shape
    if n < 2:
        raise ValueError(f"x must have at least 2 rows, got {n}")
    if z_dim >= D:
        raise ValueError(f"z_dim must be smaller than the data dimension {D}, got {z_dim}")
    b = x.mean(0)
    cov = (x - b).T @ (x - b) / n
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[z_dim:].mean()
    if sigma2 <= 0:
        raise ValueError("the data lie in a subspace of dimension <= z_dim; sigma^2 would be 0")
    W = evecs[:, :z_dim] * torch.sqrt(torch.clamp(evals[:z_dim] - sigma2, min=0.0))
    return LinearGaussian(W, b, math.sqrt(float(sigma2)))
