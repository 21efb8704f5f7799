r"""Learned priors and the aggregate posterior (chapter 10): "ELBO surgery" and the priors that fill the hole.

Averaged over a data set :math:`\{x_n\}_{n=1}^N`, the ELBO's KL term splits in two (Hoffman & Johnson 2016):

.. math:: \frac1N \sum_n D_{\mathrm{KL}}\bigl(q(z|x_n) \,\|\, p(z)\bigr)
          = I_q(x; z) + D_{\mathrm{KL}}\bigl(q(z) \,\|\, p(z)\bigr),
          \qquad q(z) = \frac1N \sum_n q(z|x_n),

where :math:`I_q(x; z) = \frac1N\sum_n \mathbb{E}_{q(z|x_n)}[\log q(z|x_n) - \log q(z)]` is the mutual information
between the index of an image and its code under :math:`q` (at most :math:`\log N`). The second term is the
only part a prior can change: the prior that minimises it is the *aggregate posterior* :math:`q(z)` itself.
:func:`elbo_surgery` measures both terms; :class:`MixturePrior` and :class:`VampPrior` (Tomczak & Welling
2018) are learned priors, modules to pass as ``VAE(..., prior=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from ._validate import check_count, check_generator, check_int, check_tensor
from .distributions import DiagonalNormal, draw, kl, log_prob
from .model import VAE, check_data_support, run_posterior, run_prior


class MixturePrior(nn.Module):
    r"""A learned mixture of ``n_components`` diagonal Gaussians,
    :math:`p(z) = \sum_k \pi_k \mathcal{N}(z; m_k, \operatorname{diag} s_k^2)`, as a ``MixtureSameFamily``.

    Means start at seeded draws of :math:`\mathcal{N}(0, I)`, variances at 1 and weights equal.

    Args:
        z_dim: latent dimension.
        n_components: number of components :math:`K`.
        seed: seeds the initial means.
    """

    def __init__(self, z_dim: int, n_components: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.z_dim = check_int("z_dim", z_dim)
        self.n_components = check_int("n_components", n_components)
        g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        self.means = nn.Parameter(torch.randn(n_components, z_dim, generator=g))
        self.logvars = nn.Parameter(torch.zeros(n_components, z_dim))
        self.logits = nn.Parameter(torch.zeros(n_components))

    def forward(self, c: Any = None) -> MixtureSameFamily:
        components = Independent(Normal(self.means, (0.5 * self.logvars).exp()), 1)
        return MixtureSameFamily(Categorical(logits=self.logits), components)


class VampPrior(nn.Module):
    r"""The VampPrior (Tomczak & Welling 2018): the encoder's posterior at ``n_pseudo`` learned pseudo-inputs,
    mixed with equal weights, :math:`p(z) = \frac1K \sum_k q_\phi(z|u_k)`.

    It is the aggregate posterior :math:`q(z)` of a learned data set of :math:`K` images: the optimal prior of
    the module's text, approximated with :math:`K \ll N` components that share the encoder's parameters.
    The pseudo-inputs :math:`u_k = \operatorname{sigmoid}(a_k)` lie in :math:`(0, 1)^D`, like grey images.

    Args:
        encoder: the VAE's encoder module (the same object as ``VAE(encoder=...)``, so that the two share
            parameters); it must return ``(mu, logvar)`` or a diagonal Gaussian.
        x_dim: data dimension :math:`D`.
        n_pseudo: number of pseudo-inputs :math:`K`.
        init: ``(n_pseudo, x_dim)`` images in :math:`[0, 1]` to start from (e.g. training images), or ``None``
            for seeded noise around grey 0.5.
        seed: seeds the noise of the default start.
    """

    def __init__(self, encoder: nn.Module, x_dim: int, n_pseudo: int = 50, init: Tensor | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        self.encoder = encoder
        self.x_dim = check_int("x_dim", x_dim)
        self.n_pseudo = check_int("n_pseudo", n_pseudo)
        seed = check_int("seed", seed, minimum=0)
        if init is None:
            g = torch.Generator().manual_seed(seed)
            start = 0.5 + 0.05 * torch.randn(n_pseudo, x_dim, generator=g)
        else:
            start = check_tensor("init", init, ndim=2)
            if tuple(start.shape) != (n_pseudo, x_dim):
                raise ValueError(f"init must have shape {(n_pseudo, x_dim)}, got {tuple(start.shape)}")
            if bool(((start < 0) | (start > 1)).any()):
                raise ValueError("init must lie in [0, 1] (grey images)")
        start = start.clamp(0.01, 0.99)
        self.pseudo_logits = nn.Parameter(torch.log(start) - torch.log1p(-start))

    @property
    def pseudo_inputs(self) -> Tensor:
        """The pseudo-inputs :math:`u_k`, ``(n_pseudo, x_dim)`` in :math:`(0, 1)`."""
        return torch.sigmoid(self.pseudo_logits)

    def forward(self, c: Any = None) -> MixtureSameFamily:
        out = self.encoder(self.pseudo_inputs)
        if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out):
            mu, logvar = out
            scale = (0.5 * logvar).exp()
        elif isinstance(out, DiagonalNormal):
            mu, scale = out.loc, out.scale.expand_as(out.loc)
        elif (isinstance(out, Independent) and type(out.base_dist) is Normal
              and out.reinterpreted_batch_ndims == 1):
            mu, scale = out.base_dist.loc, out.base_dist.scale
        elif type(out) is Normal and out.event_shape == ():
            mu, scale = out.loc, out.scale
        else:
            raise TypeError(f"the VampPrior needs an encoder that returns (mu, logvar) or a diagonal Gaussian; "
                            f"this one returned {type(out).__name__}")
        weights = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)
        return MixtureSameFamily(Categorical(logits=weights), Independent(Normal(mu, scale), 1))


@dataclass(frozen=True)
class Surgery:
    r"""The two parts of the average KL term (see :func:`elbo_surgery`), in nats, each with its standard error.

    Attributes:
        average_kl: :math:`\frac1N\sum_n D_{\mathrm{KL}}(q(z|x_n)\,\|\,p(z))`, Monte Carlo.
        average_kl_exact: the same in closed form (``None`` when the pair has none).
        mutual_information: :math:`I_q(x; z)`.
        marginal_kl: :math:`D_{\mathrm{KL}}(q(z)\,\|\,p(z))`, the aggregate posterior's distance from the prior.
        n: the number of images :math:`N` (:math:`I_q \le \log N`).
        *_se: standard errors of the three Monte Carlo estimates (over images and draws).
    """

    average_kl: float
    average_kl_se: float
    average_kl_exact: float | None
    mutual_information: float
    mutual_information_se: float
    marginal_kl: float
    marginal_kl_se: float
    n: int


@torch.no_grad()
def elbo_surgery(model: VAE, x: Tensor, n_samples: int = 10, generator: torch.Generator | None = None,
                 chunk: int = 250) -> Surgery:
    r"""Measure :math:`I_q(x; z)` and :math:`D_{\mathrm{KL}}(q(z)\,\|\,p(z))` on the images ``x`` ``(N, x_dim)``.

    Draws ``n_samples`` codes :math:`z \sim q(z|x_n)` per image and scores each under every image's
    posterior, so :math:`\log q(z) = \operatorname{logsumexp}_m \log q(z|x_m) - \log N` is exact for the
    mixture over the given images (no density is estimated). The three averages

    .. math:: \overline{\log q(z|x_n) - \log p(z)}, \quad \overline{\log q(z|x_n) - \log q(z)}, \quad
              \overline{\log q(z) - \log p(z)}

    estimate the average KL, :math:`I_q` and the marginal KL; their standard errors treat the ``N`` images'
    averages as independent. :math:`N^2` posterior evaluations per draw: keep ``N`` to a few thousand.

    Args:
        model: a :class:`vaelib.VAE` (any posterior with ``log_prob``, any prior).
        x: ``(N, x_dim)`` images, ``N >= 2``.
        n_samples: draws per image.
        generator: seeded generator for the draws.
        chunk: images whose draws are scored at once (memory only).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"x must hold at least 2 images, got {n}")
    n_samples = check_count("n_samples", n_samples, per_item=n * model.z_dim)
    chunk = check_int("chunk", chunk)
    check_generator("generator", generator)
    check_data_support(model, x)
    q = run_posterior(model, x)
    prior = run_prior(model, None, n)
    z = draw(q, (n_samples,), generator)                         # (S, N, d)
    log_q_own = log_prob(q, z)                                     # (S, N): log q(z|x_n) at its own draws
    log_p = log_prob(prior, z)                                     # (S, N)
    log_q_agg = torch.empty_like(log_p)
    for start in range(0, n, chunk):
        zc = z[:, start:start + chunk].unsqueeze(-2)               # (S, c, 1, d) against the batch (N,)
        log_q_all = log_prob(q, zc)                                # (S, c, N): log q(z_s | x_m)
        log_q_agg[:, start:start + chunk] = torch.logsumexp(log_q_all, -1) - math.log(n)
    exact = kl(q, prior)

    def mean_se(v: Tensor) -> tuple[float, float]:
        per_image = v.double().mean(0)
        return per_image.mean().item(), (per_image.std() / math.sqrt(n)).item()

    avg, avg_se = mean_se(log_q_own - log_p)
    mi, mi_se = mean_se(log_q_own - log_q_agg)
    marg, marg_se = mean_se(log_q_agg - log_p)
    return Surgery(avg, avg_se, None if exact is None else exact.double().mean().item(), mi, mi_se, marg,
                   marg_se, n)
