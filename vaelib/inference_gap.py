r"""The inference gap (chapter 7): the best Gaussian for each image, fitted with the decoder fixed.

The encoder of a VAE *amortises* inference: one network maps every image to its
:math:`q_\phi(z|x)` (``model.posterior(x)``; by default
:math:`\mathcal{N}(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))`). To see what that
costs, chapter 7 fits a Gaussian to each image separately, maximising that image's ELBO over the Gaussian's
own parameters while the decoder stays fixed (Cremer, Li & Duvenaud 2018):

.. math:: q^*(z|x) = \arg\max_{q \in \mathcal{Q}} \mathcal{L}[q; x], \qquad
          \mathcal{L}[q; x] = \mathbb{E}_{q}\bigl[\log p_\theta(x|z) + \log p(z)\bigr] + \mathcal{H}[q]

A :class:`Gaussian` is written as the reparameterisation of chapter 5, :math:`z = \mu + L\epsilon` with
:math:`\epsilon \sim \mathcal{N}(0, I)` and :math:`L` lower triangular with positive diagonal
:math:`\sigma`: diagonal (:math:`L = \operatorname{diag}\sigma`) or full covariance (:math:`\Sigma = LL^\top`).
By the change of variables (eq. ``change-of-variables`` of chapter 5)
:math:`\log q(z) = \log\mathcal{N}(\epsilon; 0, I) - \sum_j \log\sigma_j`, and the entropy is exact,
:math:`\mathcal{H}[q] = \tfrac d2 \log(2\pi e) + \sum_j \log\sigma_j`.

:func:`fit_gaussian` runs Adam on a Monte Carlo estimate of :math:`\sum_n \mathcal{L}[q_n; x_n]` (the images
are independent, so one optimiser serves them all); :func:`gaussian_elbo` and :func:`gaussian_log_likelihood`
score the result with fresh draws. Every model goes through its own ``likelihood`` and ``prior``
(:class:`vaelib.VAE`), so a decoder of your own, a learned prior, a Gaussian likelihood and float64 work
the same way. (The module was called ``vaelib.posterior`` before the model gained its ``posterior``
method.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torch.distributions import Independent, MultivariateNormal, Normal

from ._validate import check_count, check_float, check_generator, check_int, check_tensor
from .distributions import DiagonalNormal, draw, log_prob
from .model import VAE, check_data_support, run_likelihood, run_posterior, run_prior

Covariance = str  # "diagonal" or "full"


@dataclass
class Gaussian:
    r"""One Gaussian per example, :math:`z = \mu + L\epsilon`: ``mu`` ``(n, d)``, ``log_std`` ``(n, d)``
    (the log of :math:`L`'s diagonal), and ``lower`` ``(n, d, d)`` (its strictly lower part; ``None`` for a
    diagonal Gaussian; entries on and above the diagonal are ignored)."""

    mu: Tensor
    log_std: Tensor
    lower: Tensor | None = None

    @property
    def scale_tril(self) -> Tensor:
        """:math:`L` ``(n, d, d)``: lower triangular with diagonal ``exp(log_std)``."""
        diag = torch.diag_embed(self.log_std.exp())
        return diag if self.lower is None else diag + self.lower.tril(-1)

    def _check_eps(self, eps: object) -> Tensor:
        eps = check_tensor("eps", eps, ndim=3)
        if eps.shape[1:] != self.mu.shape:
            raise ValueError(f"eps must have shape (S, {self.mu.shape[0]}, {self.mu.shape[1]}), got {tuple(eps.shape)}")
        return eps

    def rsample(self, eps: Tensor) -> Tensor:
        r""":math:`z = \mu + L\epsilon` for ``eps`` ``(S, n, d)``: differentiable in the parameters."""
        eps = self._check_eps(eps)
        if self.lower is None:
            return self.mu + self.log_std.exp() * eps
        return self.mu + torch.einsum("nij,snj->sni", self.scale_tril, eps)

    def log_prob_of(self, eps: Tensor) -> Tensor:
        r""":math:`\log q(z)` ``(S, n)`` at :math:`z = \mu + L\epsilon`, by the change of variables."""
        eps = self._check_eps(eps)
        return -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1) - self.log_std.sum(-1)

    def entropy(self) -> Tensor:
        r""":math:`\mathcal{H}[q] = \tfrac d2\log(2\pi e) + \sum_j \log\sigma_j`, ``(n,)``, exact."""
        d = self.mu.shape[-1]
        return 0.5 * d * math.log(2 * math.pi * math.e) + self.log_std.sum(-1)

    def detach(self) -> "Gaussian":
        """The same Gaussian, detached from any graph."""
        lower = None if self.lower is None else self.lower.detach()
        return Gaussian(self.mu.detach(), self.log_std.detach(), lower)


def encoder_gaussian(model: VAE, x: Tensor) -> Gaussian:
    r"""The encoder's :math:`q_\phi(z|x)` (``model.posterior(x)``) for each row of ``x``, as a :class:`Gaussian`.

    The posterior must be Gaussian: the default :class:`vaelib.distributions.DiagonalNormal`, an
    ``Independent(Normal)`` or a ``MultivariateNormal`` (whose Cholesky factor gives ``lower``).

    Raises:
        TypeError: the posterior is of another family (pass ``init=`` to :func:`fit_gaussian` instead).
    """
    _check_model(model)
    x = model.check_x(x)
    with torch.no_grad():
        q = run_posterior(model, x)
    if isinstance(q, DiagonalNormal):
        return Gaussian(q.loc, 0.5 * q.logvar.expand_as(q.loc))
    if isinstance(q, Independent) and q.reinterpreted_batch_ndims == 1 and type(q.base_dist) is Normal:
        return Gaussian(q.base_dist.loc, q.base_dist.scale.log())
    if isinstance(q, MultivariateNormal):
        tril = q.scale_tril
        return Gaussian(q.loc, torch.diagonal(tril, dim1=-2, dim2=-1).log(), tril.tril(-1))
    raise TypeError(
        f"{type(model).__name__}.posterior returned a {type(q).__name__}, not a Gaussian: pass init= (a "
        "vaelib.inference_gap.Gaussian) to start from"
    )


def fit_gaussian(
    model: VAE,
    x: Tensor,
    *,
    covariance: Covariance = "diagonal",
    init: Gaussian | None = None,
    steps: int = 300,
    n_samples: int = 4,
    lr: float = 0.02,
    seed: int = 0,
) -> Gaussian:
    r"""The best Gaussian :math:`q^*(z|x_n)` for each image ``x`` ``(n, x_dim)``, with the decoder fixed.

    Maximises :math:`\sum_n \mathcal{L}[q_n; x_n]` (the ELBO, with its entropy exact and its expectation
    estimated from ``n_samples`` reparameterised draws per image and step) by ``steps`` of Adam whose
    learning rate falls from ``lr`` to 0 on a cosine schedule. The model's parameters are not changed and
    receive no gradient.

    Args:
        model: a :class:`vaelib.VAE` (any decoder).
        x: data ``(n, x_dim)``.
        covariance: ``"diagonal"`` (the encoder's family) or ``"full"`` (:math:`L` lower triangular).
        init: the starting Gaussians (default: the encoder's :math:`q_\phi(z|x)`, with :math:`L`'s off-diagonal
            part 0); a diagonal ``init`` starts a full fit with zero correlations.
        steps: Adam steps.
        n_samples: draws of :math:`\epsilon` per image and step.
        lr: Adam's initial learning rate.
        seed: seeds the draws.

    Returns:
        The fitted :class:`Gaussian` (detached).
    """
    _check_model(model)
    x = model.check_x(x)
    if covariance not in ("diagonal", "full"):
        raise ValueError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")
    steps = check_int("steps", steps)
    n_samples = check_count("n_samples", n_samples, per_item=x.shape[0] * (model.x_dim + model.z_dim))
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    seed = check_int("seed", seed, minimum=0)
    check_data_support(model, x)
    start = encoder_gaussian(model, x) if init is None else _check_gaussian(model, x, init, "init")
    n, d = start.mu.shape
    mu = start.mu.detach().clone().requires_grad_()
    log_std = start.log_std.detach().clone().requires_grad_()
    params = [mu, log_std]
    lower = None
    if covariance == "full":
        lower = (torch.zeros(n, d, d, dtype=mu.dtype, device=mu.device) if start.lower is None
                 else start.lower.detach().tril(-1).clone()).requires_grad_()
        params.append(lower)
    q = Gaussian(mu, log_std, lower)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    g = torch.Generator(device=mu.device).manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # the decoder is fixed: no gradient flows into (or accumulates in) the model
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # also when the caller is inside torch.no_grad()
            for _ in range(steps):
                eps = torch.randn((n_samples, n, d), generator=g, dtype=mu.dtype, device=mu.device)
                objective = _log_joint(model, x, q.rsample(eps)).mean(0) + q.entropy()
                optimizer.zero_grad()
                (-objective.sum()).backward()
                optimizer.step()
                schedule.step()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    result = q.detach()
    if not all(bool(torch.isfinite(t).all()) for t in (result.mu, result.log_std)):
        raise FloatingPointError("fit_gaussian diverged (non-finite parameters): lower lr or raise n_samples")
    return result


def gaussian_elbo(
    model: VAE, x: Tensor, q: Gaussian, n_samples: int = 1000, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""The ELBO :math:`\mathcal{L}[q_n; x_n]` of each image under its Gaussian, and its standard error.

    Estimated with ``n_samples`` fresh draws per image (the entropy exact). Returns ``(elbo, se)``, each
    ``(n,)``: the mean over the draws and its standard error (their standard deviation over
    :math:`\sqrt{S}`). Differentiable in ``q``'s tensors and the model's parameters (a training loss);
    to score only, call it under ``torch.no_grad()``, which saves the memory of the graph.
    """
    x, q, n_samples = _check_scoring(model, x, q, "n_samples", n_samples, generator)
    values = torch.cat([_log_joint(model, x, q.rsample(eps)) for eps in _draws(q, n_samples, generator)])
    values = values + q.entropy()
    return values.mean(0), values.std(0) / math.sqrt(n_samples)


def gaussian_log_likelihood(
    model: VAE, x: Tensor, q: Gaussian, k: int = 1000, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""The importance-weighted bound :math:`\mathcal{L}_K` with the Gaussians ``q`` as proposals.

    Returns ``(estimate, se)``, each ``(n,)``: one draw of :math:`\log \frac1K \sum_k w_k`,
    :math:`w = p_\theta(x, z)/q(z)`, and the delta-method standard error
    :math:`\sqrt{(\overline{w^2}/\bar w^{\,2} - 1)/K}` computed from the same weights (reliable when the
    weights are not heavy-tailed, that is when ``q`` is close to the posterior). Differentiable, as
    :func:`gaussian_elbo`.
    """
    x, q, k = _check_scoring(model, x, q, "k", k, generator)
    log_w = torch.cat([_log_joint(model, x, q.rsample(eps)) - q.log_prob_of(eps)
                       for eps in _draws(q, k, generator)])
    estimate = torch.logsumexp(log_w, 0) - math.log(k)
    w = (log_w - log_w.max(0).values).exp()  # rescaled: the ratio below is scale-free
    relative_variance = (w.pow(2).mean(0) / w.mean(0).pow(2) - 1).clamp_min(0)
    return estimate, (relative_variance / k).sqrt()


def moment_gaussian(model: VAE, x: Tensor, n_samples: int = 1000, generator: torch.Generator | None = None) -> Gaussian:
    r"""The full-covariance Gaussian with the mean and covariance of ``n_samples`` draws of ``model.posterior(x)``,
    for each row of ``x``: a start for :func:`fit_gaussian` when the encoder is not Gaussian (a flow, a
    hierarchy)."""
    _check_model(model)
    x = model.check_x(x)
    n_samples = check_count("n_samples", n_samples, per_item=x.shape[0] * model.z_dim, minimum=2)
    check_generator("generator", generator)
    with torch.no_grad():
        z = draw(run_posterior(model, x), (n_samples,), generator)           # (S, n, d)
        mu = z.mean(0)
        centred = (z - mu).transpose(0, 1)                                   # (n, S, d)
        cov = centred.transpose(1, 2) @ centred / (n_samples - 1)
        cov = cov + 1e-6 * torch.eye(model.z_dim, dtype=z.dtype, device=z.device)
        tril = torch.linalg.cholesky(cov)
    return Gaussian(mu, torch.diagonal(tril, dim1=-2, dim2=-1).log(), tril.tril(-1))


def _mean_se(v: Tensor) -> tuple[float, float]:
    """Mean of the entries of ``v`` and its standard error, ``v.std() / sqrt(n)`` (independent entries; for a
    paired difference, pass the per-item differences)."""
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


@dataclass(frozen=True)
class GapReport:
    r"""Chapter 7's decomposition of the ELBO's gap on a set of images, each entry ``(n,)`` per image with its
    standard error (see :func:`gap_decomposition`). All in nats.

    Attributes:
        elbo, elbo_se: the encoder's ELBO :math:`\mathcal{L}[q_\phi]`.
        best, best_se: :math:`\mathcal{L}[q^*]`, the best Gaussian of ``family`` fitted to each image.
        log_p, log_p_se: :math:`\mathcal{L}_K` with the best full-covariance Gaussian as the proposal, an
            estimate of :math:`\log p_\theta(x)` (a lower bound in expectation).
        family: ``"diagonal"`` or ``"full"``: the Gaussian family :math:`q^*` was fitted in.
        k: the number of importance samples of ``log_p``.
    """

    elbo: Tensor
    elbo_se: Tensor
    best: Tensor
    best_se: Tensor
    log_p: Tensor
    log_p_se: Tensor
    family: str
    k: int

    @property
    def amortisation(self) -> tuple[float, float]:
        r""":math:`\mathcal{L}[q^*] - \mathcal{L}[q_\phi]`, mean over the images and its standard error (the
        spread over images; the Monte Carlo error of each image's estimate is far smaller). Negative when
        the encoder beats every Gaussian of the family (a flow)."""
        return _mean_se(self.best - self.elbo)

    @property
    def approximation(self) -> tuple[float, float]:
        r""":math:`\log p_\theta(x) - \mathcal{L}[q^*]`: what no Gaussian of the family fits."""
        return _mean_se(self.log_p - self.best)

    @property
    def total(self) -> tuple[float, float]:
        r""":math:`\log p_\theta(x) - \mathcal{L}[q_\phi]`: the whole gap of the encoder."""
        return _mean_se(self.log_p - self.elbo)


def gap_decomposition(
    model: VAE, x: Tensor, *, family: Covariance = "diagonal", steps: int = 300, k: int = 2000,
    n_samples: int = 1000, seed: int = 0,
) -> GapReport:
    r"""Chapter 7's decomposition for ``model`` on the images ``x``: encoder, best Gaussian, :math:`\log p`.

    Fits :math:`q^*` of ``family`` to each image (:func:`fit_gaussian`: the diagonal fit runs ``steps`` Adam steps,
    the full-covariance fit starts from it and runs ``2 * steps``), the best full-covariance
    Gaussian (the same fit when ``family="full"``) as the proposal of :math:`\mathcal{L}_K`, and scores
    the encoder, :math:`q^*` and :math:`\log p` with fresh draws. A Gaussian encoder is the start of the fits;
    any other (a flow) starts from its moments (:func:`moment_gaussian`). Everything is seeded by ``seed``.

    Args:
        model: a :class:`vaelib.VAE`.
        x: images ``(n, x_dim)``, ``n >= 2``.
        family: ``"diagonal"`` or ``"full"``: the family of :math:`q^*` that defines the amortisation gap (the
            encoder's own family for a Gaussian encoder).
        steps: Adam steps of the diagonal fit (the full fit runs ``2 * steps``).
        k: importance samples of :math:`\log p`.
        n_samples: draws that score each ELBO.
        seed: seeds every draw.
    """
    _check_model(model)
    x = model.check_x(x)
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 images, got {x.shape[0]}")
    if family not in ("diagonal", "full"):
        raise ValueError(f"family must be 'diagonal' or 'full', got {family!r}")
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    try:
        start = encoder_gaussian(model, x)
    except TypeError:
        start = moment_gaussian(model, x, generator=g)
    q_diag = fit_gaussian(model, x, init=Gaussian(start.mu, start.log_std), steps=steps, seed=seed + 1)
    q_full = fit_gaussian(model, x, covariance="full", init=q_diag, steps=2 * steps, seed=seed + 2)
    best = q_diag if family == "diagonal" else q_full
    with torch.no_grad():
        q = run_posterior(model, x)
        values = torch.cat([_log_joint(model, x, z) - log_prob(q, z)        # (S, n): one ELBO term per draw
                            for z in (draw(q, (min(_CHUNK, n_samples - s),), g)
                                      for s in range(0, n_samples, _CHUNK))])
        elbo, elbo_se = values.mean(0), values.std(0) / math.sqrt(n_samples)
        best_elbo, best_se = gaussian_elbo(model, x, best, n_samples=n_samples, generator=g)
        log_p, log_p_se = gaussian_log_likelihood(model, x, q_full, k=k, generator=g)
    return GapReport(elbo, elbo_se, best_elbo, best_se, log_p, log_p_se, family, k)


# --- helpers -----------------------------------------------------------------------------------------
_CHUNK = 100  # draws decoded at once in the scoring functions


def _log_joint(model: VAE, x: Tensor, z: Tensor) -> Tensor:
    r""":math:`\log p_\theta(x|z) + \log p(z)`, ``(S, n)``, for ``z`` ``(S, n, d)``: the model's likelihood and prior."""
    return log_prob(run_likelihood(model, z), x) + log_prob(run_prior(model, None, x.shape[0]), z)


def _draws(q: Gaussian, total: int, generator: torch.Generator | None) -> list[Tensor]:
    r"""The standard normal draws of :math:`\epsilon`, ``_CHUNK`` at a time. (A list, not a generator: a
    generator suspended inside ``torch.no_grad()`` would leave grad mode off in its caller.)"""
    n, d = q.mu.shape
    return [torch.randn((min(_CHUNK, total - start), n, d), generator=generator, dtype=q.mu.dtype, device=q.mu.device)
            for start in range(0, total, _CHUNK)]


def _check_scoring(model: VAE, x: Tensor, q: Gaussian, count_name: str, count: int,
                   generator: torch.Generator | None) -> tuple[Tensor, Gaussian, int]:
    """The arguments of :func:`gaussian_elbo` and :func:`gaussian_log_likelihood`, checked: ``(x, q, count)``."""
    _check_model(model)
    x = model.check_x(x)
    q = _check_gaussian(model, x, q)
    count = check_count(count_name, count, per_item=x.shape[0] * (model.x_dim + model.z_dim), minimum=2)
    check_generator("generator", generator)
    check_data_support(model, x)
    return x, q, count


def _check_model(model: VAE) -> None:
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")


def _check_gaussian(model: VAE, x: Tensor, q: Gaussian, name: str = "q") -> Gaussian:
    if not isinstance(q, Gaussian):
        raise TypeError(f"{name} must be a vaelib.inference_gap.Gaussian, got {type(q).__name__}")
    want = (x.shape[0], model.z_dim)
    for part, t in (("mu", q.mu), ("log_std", q.log_std)):
        check_tensor(f"{name}.{part}", t, ndim=2)
        if tuple(t.shape) != want:
            raise ValueError(f"{name}.{part} has shape {tuple(t.shape)}; expected {want} for x of {x.shape[0]} rows")
        if t.dtype != x.dtype:
            raise TypeError(f"{name}.{part} has dtype {t.dtype}; expected the data's {x.dtype}")
    if q.lower is not None:
        check_tensor(f"{name}.lower", q.lower, ndim=3)
        if tuple(q.lower.shape) != (*want, model.z_dim):
            raise ValueError(f"{name}.lower has shape {tuple(q.lower.shape)}; expected {(*want, model.z_dim)}")
        if q.lower.dtype != x.dtype:
            raise TypeError(f"{name}.lower has dtype {q.lower.dtype}; expected the data's {x.dtype}")
    return q
