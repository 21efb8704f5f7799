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
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence

from ._validate import check_float, check_generator, check_int, check_tensor
from .densities import LOG_2PI


def _check_float_dtype(dtype: object) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")


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
        _check_float_dtype(dtype)
        W = torch.randn((x_dim, z_dim), generator=generator, dtype=dtype)
        b = torch.randn((x_dim,), generator=generator, dtype=dtype)
        return cls(W, b, sigma)

    @classmethod
    def from_vae(cls, model: object, dtype: torch.dtype = torch.float64) -> "LinearGaussian":
        r"""The generative model of a linear Gaussian VAE, as a :class:`LinearGaussian`.

        A :class:`vaelib.VAE` with ``hidden=()`` and ``likelihood="gaussian"`` has the prior
        :math:`\mathcal{N}(0, I)` and the decoder :math:`p_\theta(x|z) = \mathcal{N}(x;\, Wz + b,\, \sigma^2 I)`
        with ``W``, ``b`` its decoder's single linear layer and :math:`\sigma^2 = \exp(\text{obs_logvar})`:
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
        r""":math:`\log p(x|z) = \log\mathcal{N}(x; Wz+b, \sigma^2 I)`.

        Args:
            x: ``(n, D)``.
            z: ``(..., n, d)``, or ``(..., d)`` broadcastable against ``x``'s batch.

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
        resid = x - (z @ self.W.T + self.b)
        return -0.5 * (
            self.x_dim * (LOG_2PI + 2 * math.log(self.sigma)) + resid.pow(2).sum(-1) / self.sigma**2
        )

    def _check_dtype(self, name: str, t: Tensor) -> None:
        if t.dtype != self.W.dtype:
            raise TypeError(f"{name} must have the model's dtype {self.W.dtype}, got {t.dtype}")

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
        self._check_dtype("q_mean", q_mean)
        self._check_dtype("q_cov", q_cov)
        tol = torch.finfo(q_cov.dtype).eps ** 0.5 * float(q_cov.detach().abs().max())
        L, info = torch.linalg.cholesky_ex(q_cov)
        if float((q_cov - q_cov.mT).detach().abs().max()) > tol or bool((info != 0).any()):
            raise ValueError("q_cov must be symmetric positive definite")
        s2 = self.sigma**2
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
        proposal: ``None`` (the prior) or a ``MultivariateNormal`` over ``z`` with batch shape ``()`` or
            ``(n,)``, such as ``model.posterior(x)``; sampled as :math:`z = \mu + L\epsilon` with the
            ``generator``.
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

    Maximises :meth:`LinearGaussian.elbo` (eq. ``eq-elbo`` of chapter 3) over :math:`m` and a factor
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
