"""A zoo of VAEs built from ``torch.distributions``: every vaelib function computes what the model's three
distributions say.

Nine models, each replacing one of the book's defaults the way a reader of chapter 2 would:

1. ``mog-prior``: a learned mixture-of-Gaussians prior (``MixtureSameFamily``), with a linear Gaussian decoder
   that has one learned scale per pixel, so that :math:`\\log p(x)` is known exactly (a Gaussian mixture);
2. ``full-cov``: a full-covariance Gaussian posterior (``MultivariateNormal(loc, scale_tril)``);
3. ``planar-flow``: a posterior that is a ``TransformedDistribution`` of a diagonal Gaussian by two planar
   flows (Rezende & Mohamed 2015), scored on its own draws through the transforms' cache;
4. ``categorical-256``: a 256-way categorical likelihood on grey levels 0..255;
5. ``pixel-variance``: a Gaussian likelihood whose decoder outputs a variance for every pixel;
6. ``two-level``: a top-down hierarchy :math:`z_2 \\to z_1 \\to x` with a prior :math:`p(z_2)p(z_1|z_2)` and a
   posterior :math:`q(z_2|x)q(z_1|z_2,x)` written as ``Distribution`` subclasses (KL by Monte Carlo);
7. ``conditional``: a conditional VAE on integer labels ``c`` (``encoder(x, c)``, ``decoder(z, c)``);
8. ``conditional-prior``: the same on one-hot labels, with a learned prior per class ``prior_module(c)``
   (a prior of batch shape ``(batch,)``);
9. ``pyro-style``: an encoder returning ``Normal(loc, scale)`` and a decoder returning ``Bernoulli(probs)``.

For each, the test computes what vaelib should compute in plain PyTorch, from the model's public
``posterior``, ``prior`` and ``likelihood`` (or its modules directly), with ``torch.distributions``' own
KL formulas, and compares: training (``fit`` against a plain autograd + Adam loop, for the ELBO, IWAE, DReG
and free bits), the ELBO's two terms, the importance-weighted bound and log-likelihood, sampling, saving and
loading, and continuing a run. Float64 throughout: both sides do the same arithmetic, in another order at
most (fused Adam against the for-loop one), so they agree to ~1e-15 relative per operation.

Random draws are matched as vaelib documents them (:func:`vaelib.distributions.draw`): vaelib's own
distributions (``DiagonalNormal``, ``StandardNormal``) draw with the run's generator directly; any other
``torch.distributions`` object draws with the global generator seeded, inside ``torch.random.fork_rng``,
by one number ``randint(0, 2**62)`` taken from the run's generator. :func:`vaelib.fit` on a tensor first
draws each epoch's order with ``torch.randperm(n, generator=g)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    constraints,
    kl_divergence,
)
from torch.distributions.transforms import Transform
from torch.utils.data import DataLoader, TensorDataset

import vaelib
from vaelib import VAE
from vaelib.distributions import BernoulliLogits, DiagonalNormal, StandardNormal
from vaelib.objectives import DReG, ELBO, IWAE

DT = torch.float64
X_DIM = 12
Z_DIM = 2
N = 32  # examples
BATCH = 8  # 4 batches per epoch
LR = 1e-2
N_CLASSES = 3
LEVELS = 256
Z1, Z2 = 2, 1  # the two-level model: z = (z1, z2), z_dim 3


def G(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(n_in: int, n_out: int, hidden: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


# --- the models' modules ------------------------------------------------------------------------------
class GaussianEncoder(nn.Module):
    """The book's kind of encoder: ``(mu, logvar)`` (its inputs multiplied by ``scale``)."""

    def __init__(self, x_dim: int, z_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.net, self.scale = _mlp(x_dim, 2 * z_dim), scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x * self.scale).chunk(2, dim=-1)
        return mu, logvar


class MixturePrior(nn.Module):
    """A learned mixture of ``k`` diagonal Gaussians: ``MixtureSameFamily(Categorical, Independent(Normal))``."""

    def __init__(self, z_dim: int, k: int = 3) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.randn(k, z_dim))
        self.log_scales = nn.Parameter(-0.3 + 0.1 * torch.randn(k, z_dim))
        self.logits = nn.Parameter(0.1 * torch.randn(k))

    def forward(self) -> Distribution:
        return MixtureSameFamily(Categorical(logits=self.logits),
                                 Independent(Normal(self.means, self.log_scales.exp()), 1))


class LinearGaussianDecoder(nn.Module):
    """:math:`p(x|z) = \\mathcal{N}(Wz + b, \\operatorname{diag} e^{2s})`, ``s`` one learned log-scale per pixel."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, x_dim)
        self.log_scale = nn.Parameter(torch.full((x_dim,), -0.5))

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Normal(self.linear(z), self.log_scale.exp()), 1)


class FullCovEncoder(nn.Module):
    """``MultivariateNormal(loc, scale_tril=L)``, ``L`` lower triangular with a positive diagonal."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = _mlp(x_dim, z_dim + z_dim * (z_dim + 1) // 2)

    def forward(self, x: Tensor) -> Distribution:
        out = self.net(x)
        d = self.z_dim
        loc, entries = out[:, :d], out[:, d:]
        rows, cols = torch.tril_indices(d, d)
        tril = x.new_zeros(x.shape[0], d, d)
        tril[:, rows, cols] = entries
        diag = F.softplus(torch.diagonal(tril, dim1=-2, dim2=-1)) + 1e-3
        scale_tril = tril.tril(-1) + torch.diag_embed(diag)
        return MultivariateNormal(loc, scale_tril=scale_tril)


class PlanarTransform(Transform):
    """One planar flow :math:`f(z) = z + \\hat u \\tanh(w^\\top z + b)` with the invertibility constraint on
    :math:`\\hat u`. Not inverted: with ``cache_size=1`` a ``TransformedDistribution`` scores its own draws
    from the cache."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = False

    def __init__(self, u: Tensor, w: Tensor, b: Tensor) -> None:
        super().__init__(cache_size=1)
        self.u, self.w, self.b = u, w, b

    def u_hat(self) -> Tensor:
        wu = (self.w * self.u).sum(-1)
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / self.w.pow(2).sum(-1)

    def _call(self, z: Tensor) -> Tensor:
        return z + self.u_hat() * torch.tanh((z * self.w).sum(-1, keepdim=True) + self.b)

    def log_abs_det_jacobian(self, z: Tensor, y: Tensor) -> Tensor:
        a = (z * self.w).sum(-1) + self.b
        psi_u = (1 - torch.tanh(a).pow(2)) * (self.w * self.u_hat()).sum(-1)
        return torch.log(torch.abs(1 + psi_u))


class PlanarFlowEncoder(nn.Module):
    """A diagonal Gaussian pushed through ``n_flows`` planar flows with learned (global) parameters."""

    def __init__(self, x_dim: int, z_dim: int, n_flows: int = 2) -> None:
        super().__init__()
        self.net = _mlp(x_dim, 2 * z_dim)
        self.u = nn.Parameter(0.7 * torch.randn(n_flows, z_dim))
        self.w = nn.Parameter(0.7 * torch.randn(n_flows, z_dim))
        self.b = nn.Parameter(0.3 * torch.randn(n_flows))

    def base(self, x: Tensor) -> Distribution:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)

    def flows(self) -> list[PlanarTransform]:
        return [PlanarTransform(self.u[i], self.w[i], self.b[i]) for i in range(self.u.shape[0])]

    def forward(self, x: Tensor) -> Distribution:
        return TransformedDistribution(self.base(x), self.flows())


class CategoricalDecoder(nn.Module):
    """``Independent(Categorical(logits (n, x_dim, 256)), 1)``: one 256-way categorical per pixel."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.net = _mlp(z_dim, x_dim * LEVELS)

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Categorical(logits=self.net(z).view(-1, self.x_dim, LEVELS)), 1)


class PixelVarianceDecoder(nn.Module):
    """``Independent(Normal(mean, scale), 1)`` with a mean and a scale for every pixel, both functions of z."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(z_dim, 8), nn.Tanh())
        self.mean = nn.Linear(8, x_dim)
        self.log_scale = nn.Linear(8, x_dim)

    def forward(self, z: Tensor) -> Distribution:
        h = self.body(z)
        return Independent(Normal(self.mean(h), torch.exp(self.log_scale(h) - 0.5)), 1)


def _std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def _normal_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


class TwoLevelPrior(Distribution):
    """:math:`p(z) = \\mathcal{N}(z_2; 0, 1)\\,\\mathcal{N}(z_1; \\mu(z_2), \\sigma^2(z_2))`, ``z = (z1, z2)``."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, cond: nn.Module, dtype: torch.dtype) -> None:
        self.cond, self.dtype = cond, dtype
        super().__init__(torch.Size(), torch.Size([Z1 + Z2]), validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        z2 = torch.randn(*sample_shape, Z2, dtype=self.dtype)
        mu1, logvar1 = self.cond(z2).chunk(2, dim=-1)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn_like(mu1)
        return torch.cat([z1, z2], -1)

    def log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., :Z1], z[..., Z1:]
        mu1, logvar1 = self.cond(z2).chunk(2, dim=-1)
        return _std_normal_log_prob(z2) + _normal_log_prob(z1, mu1, logvar1)


class TwoLevelPriorModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cond = nn.Linear(Z2, 2 * Z1)

    def forward(self) -> Distribution:
        return TwoLevelPrior(self.cond, self.cond.weight.dtype)


class TwoLevelPosterior(Distribution):
    """:math:`q(z|x) = \\mathcal{N}(z_2; \\mu_2(x), \\sigma_2^2(x))\\,
    \\mathcal{N}(z_1; \\mu_1(h, z_2), \\sigma_1^2(h, z_2))`, ``h`` the encoder's features of ``x``."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, h: Tensor, mu2: Tensor, logvar2: Tensor, cond: nn.Module) -> None:
        self.h, self.mu2, self.logvar2, self.cond = h, mu2, logvar2, cond
        super().__init__(h.shape[:1], torch.Size([Z1 + Z2]), validate_args=False)

    def _z1_params(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        h = self.h.expand(*z2.shape[:-1], self.h.shape[-1])
        mu1, logvar1 = self.cond(torch.cat([h, z2], -1)).chunk(2, dim=-1)
        return mu1, logvar1

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.mu2.shape
        z2 = self.mu2 + torch.exp(0.5 * self.logvar2) * torch.randn(shape, dtype=self.mu2.dtype)
        mu1, logvar1 = self._z1_params(z2)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn_like(mu1)
        return torch.cat([z1, z2], -1)

    def log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., :Z1], z[..., Z1:]
        mu1, logvar1 = self._z1_params(z2)
        return _normal_log_prob(z2, self.mu2, self.logvar2) + _normal_log_prob(z1, mu1, logvar1)


class TwoLevelEncoder(nn.Module):
    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, 8), nn.Tanh())
        self.top = nn.Linear(8, 2 * Z2)
        self.cond = nn.Linear(8 + Z2, 2 * Z1)

    def forward(self, x: Tensor) -> Distribution:
        h = self.body(x)
        mu2, logvar2 = self.top(h).chunk(2, dim=-1)
        return TwoLevelPosterior(h, mu2, logvar2, self.cond)


class TwoLevelDecoder(nn.Module):
    """Bernoulli logits from ``z1`` only (``z2`` reaches ``x`` through ``z1``)."""

    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.net = _mlp(Z1, x_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[..., :Z1])


def _onehot(c: Tensor, dtype: torch.dtype) -> Tensor:
    """Labels as one-hot rows: integer labels are encoded, float rows are taken as one-hot already."""
    return c.to(dtype) if c.is_floating_point() else F.one_hot(c, N_CLASSES).to(dtype)


class ConditionalEncoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.net = _mlp(x_dim + N_CLASSES, 2 * z_dim)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(torch.cat([x, _onehot(c, x.dtype)], -1)).chunk(2, dim=-1)
        return mu, logvar


class ConditionalDecoder(nn.Module):
    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.net = _mlp(z_dim + N_CLASSES, x_dim)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.net(torch.cat([z, _onehot(c, z.dtype)], -1))


class ConditionalPrior(nn.Module):
    """A learned prior per class, :math:`p(z|c) = \\mathcal{N}(m_c, \\operatorname{diag} e^{2 s_c})`: batch shape
    ``(batch,)``, one row per label."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(N_CLASSES, z_dim)
        self.log_scale = nn.Linear(N_CLASSES, z_dim)
        with torch.no_grad():
            self.log_scale.weight.mul_(0.2)  # scales near 1, as N(0, I)
            self.log_scale.bias.mul_(0.2)

    def forward(self, c: Tensor) -> Distribution:
        onehot = _onehot(c, self.loc.weight.dtype)
        return Independent(Normal(self.loc(onehot), torch.exp(self.log_scale(onehot))), 1)


class PyroEncoder(nn.Module):
    """As in Pyro's VAE tutorial: ``Normal(loc, scale)``, batch shape ``(b, z_dim)``, event shape ``()``."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, 8), nn.Softplus())
        self.loc, self.scale = nn.Linear(8, z_dim), nn.Linear(8, z_dim)

    def forward(self, x: Tensor) -> Distribution:
        h = self.body(x)
        return Normal(self.loc(h), F.softplus(self.scale(h)) + 1e-3)


class TorchExampleDecoder(nn.Module):
    """As in PyTorch's VAE example: pixel probabilities, here as ``Bernoulli(probs=...)`` ``(n, x_dim)``."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.net = _mlp(z_dim, x_dim)

    def forward(self, z: Tensor) -> Distribution:
        return Bernoulli(probs=torch.sigmoid(self.net(z)))


# --- the zoo ------------------------------------------------------------------------------------------
def _seeded(seed: int, make: Callable[[], VAE]) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().double()


def build_mog(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=GaussianEncoder(X_DIM, Z_DIM),
                                     decoder=LinearGaussianDecoder(Z_DIM, X_DIM), prior=MixturePrior(Z_DIM)))


def build_full_cov(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=FullCovEncoder(X_DIM, Z_DIM), decoder=_mlp(Z_DIM, X_DIM)))


def build_flow(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, likelihood="gaussian", encoder=PlanarFlowEncoder(X_DIM, Z_DIM),
                                     decoder=_mlp(Z_DIM, X_DIM)))


def build_categorical(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=GaussianEncoder(X_DIM, Z_DIM, scale=1 / 255),
                                     decoder=CategoricalDecoder(Z_DIM, X_DIM)))


def build_pixel_variance(seed: int = 0, likelihood: str = "bernoulli") -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, likelihood=likelihood, encoder=GaussianEncoder(X_DIM, Z_DIM),
                                     decoder=PixelVarianceDecoder(Z_DIM, X_DIM)))


def build_two_level(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z1 + Z2, encoder=TwoLevelEncoder(X_DIM), decoder=TwoLevelDecoder(X_DIM),
                                     prior=TwoLevelPriorModule()))


def build_conditional(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=ConditionalEncoder(X_DIM, Z_DIM),
                                     decoder=ConditionalDecoder(Z_DIM, X_DIM)))


def build_conditional_prior(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=ConditionalEncoder(X_DIM, Z_DIM),
                                     decoder=ConditionalDecoder(Z_DIM, X_DIM), prior=ConditionalPrior(Z_DIM)))


def build_pyro(seed: int = 0) -> VAE:
    return _seeded(seed, lambda: VAE(X_DIM, Z_DIM, encoder=PyroEncoder(X_DIM, Z_DIM),
                                     decoder=TorchExampleDecoder(Z_DIM, X_DIM)))


def _prototypes() -> Tensor:
    return (torch.rand(4, X_DIM, generator=G(100)) < 0.5).to(DT)


def binary_data(n: int = N, seed: int = 0) -> tuple[Tensor, None]:
    g = G(seed)
    x = _prototypes()[torch.randint(0, 4, (n,), generator=g)]
    return (x + (torch.rand(n, X_DIM, generator=g) < 0.1).to(DT)) % 2, None


def continuous_data(n: int = N, seed: int = 0) -> tuple[Tensor, None]:
    g = G(seed)
    x = 2 * _prototypes()[torch.randint(0, 4, (n,), generator=g)] - 1
    return x + 0.3 * torch.randn(n, X_DIM, generator=g, dtype=DT), None


def grey_data(n: int = N, seed: int = 0) -> tuple[Tensor, None]:
    """Integers 0..255 (stored as float64), near one of four prototypes."""
    g = G(seed)
    x = 200 * _prototypes()[torch.randint(0, 4, (n,), generator=g)] + 25
    return (x + 20 * torch.randn(n, X_DIM, generator=g, dtype=DT)).round().clamp(0, 255), None


def labelled_data(n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Binary images and their integer labels 0..2 (the image is the label's prototype, 10% flipped)."""
    g = G(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = _prototypes()[labels]
    return (x + (torch.rand(n, X_DIM, generator=g) < 0.1).to(DT)) % 2, labels


def onehot_data(n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    """:func:`labelled_data` with the labels as float64 one-hot rows ``(n, 3)``."""
    x, labels = labelled_data(n, seed)
    return x, F.one_hot(labels, N_CLASSES).to(DT)


@dataclass(frozen=True)
class Case:
    build: Callable[..., VAE]
    data: Callable[..., tuple[Tensor, Tensor | None]]
    closed_form_kl: bool  # whether torch.distributions has a formula for KL(posterior || prior)


CASES: dict[str, Case] = {
    "mog-prior": Case(build_mog, continuous_data, False),
    "full-cov": Case(build_full_cov, binary_data, True),
    "planar-flow": Case(build_flow, continuous_data, False),
    "categorical-256": Case(build_categorical, grey_data, True),
    "pixel-variance": Case(build_pixel_variance, continuous_data, True),
    "two-level": Case(build_two_level, binary_data, False),
    "conditional": Case(build_conditional, labelled_data, True),
    "conditional-prior": Case(build_conditional_prior, onehot_data, True),
    "pyro-style": Case(build_pyro, binary_data, True),
}
NAMES = list(CASES)


def _fit_data(x: Tensor, c: Tensor | None) -> Any:
    return x if c is None else (x, c)


# --- the reference computations, in plain PyTorch -----------------------------------------------------
def _call(method: Callable[..., Any], *args: Any, c: Any = None) -> Any:
    return method(*args) if c is None else method(*args, c)


def _draw(d: Distribution, shape: tuple[int, ...], g: torch.Generator, reparameterized: bool = True) -> Tensor:
    """A draw as vaelib documents it: vaelib's distributions with ``g`` directly; any other one with the
    global generator seeded from ``g`` (one ``randint(0, 2**62)``), inside ``fork_rng``."""
    shape = torch.Size(shape)
    if isinstance(d, DiagonalNormal):
        eps = torch.randn(shape + d.batch_shape + d.event_shape, generator=g, dtype=d.loc.dtype)
        z = d.loc + torch.exp(0.5 * d.logvar) * eps
        return z if reparameterized else z.detach()
    if isinstance(d, StandardNormal):
        return torch.randn(shape + d.batch_shape + d.event_shape, generator=g, dtype=d.dtype)
    if isinstance(d, BernoulliLogits) and not reparameterized:
        return torch.bernoulli(torch.sigmoid(d.logits).expand(shape + d.batch_shape + d.event_shape), generator=g)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return d.rsample(shape) if reparameterized else d.sample(shape)


def _native(d: Distribution, like: Distribution | None = None) -> Distribution:
    """``d`` as a distribution of ``torch.distributions`` itself, so that its densities and KL formulas are
    torch's, not vaelib's (any other family is returned as it is)."""
    if isinstance(d, BernoulliLogits):
        return Independent(Bernoulli(logits=d.logits), 1)
    if isinstance(d, DiagonalNormal):
        return Independent(Normal(d.loc, torch.exp(0.5 * d.logvar)), 1)
    if isinstance(d, StandardNormal):
        zeros = torch.zeros(d.event_shape, dtype=d.dtype)
        if isinstance(like, MultivariateNormal):
            return MultivariateNormal(zeros, scale_tril=torch.eye(d.event_shape[0], dtype=d.dtype))
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
    return d


def _kl(q: Distribution, p: Distribution, z: Tensor) -> tuple[Tensor, bool]:
    """``torch.distributions.kl_divergence`` where torch has a formula, else the mean over the draws ``z`` of
    ``log q(z) - log p(z)``; and whether it was the formula."""
    q0, p0 = _native(q), _native(p, like=q)
    try:
        return kl_divergence(q0, p0), True
    except NotImplementedError:
        return (q0.log_prob(z) - p0.log_prob(z)).mean(0), False


def _elbo_terms(model: VAE, x: Tensor, c: Any, g: torch.Generator, n_samples: int = 1):
    q = _call(model.posterior, x, c=c)
    z = _draw(q, (n_samples,), g)
    reconstruction = _native(_call(model.likelihood, z, c=c)).log_prob(x).mean(0)
    kl, closed = _kl(q, _call(model.prior, c=c), z)
    return reconstruction, kl, closed


def _log_weights(model: VAE, x: Tensor, c: Any, g: torch.Generator, k: int) -> Tensor:
    """``log p(x|z) + log p(z) - log q(z|x)`` at ``k`` draws of ``q``, ``(k, batch)``."""
    q = _call(model.posterior, x, c=c)
    z = _draw(q, (k,), g)
    prior = _native(_call(model.prior, c=c))
    return _native(_call(model.likelihood, z, c=c)).log_prob(x) + prior.log_prob(z) - _native(q).log_prob(z)


def elbo_loss(beta: float = 1.0, warmup_steps: int = 0) -> Callable[..., Tensor]:
    def loss(model: VAE, xb: Tensor, cb: Any, g: torch.Generator, step: int) -> Tensor:
        beta_t = beta if warmup_steps == 0 else beta * min(1.0, (step + 1) / warmup_steps)
        reconstruction, kl, _ = _elbo_terms(model, xb, cb, g)
        return -(reconstruction - beta_t * kl).mean()
    return loss


def iwae_loss(k: int) -> Callable[..., Tensor]:
    def loss(model: VAE, xb: Tensor, cb: Any, g: torch.Generator, step: int) -> Tensor:
        return -(torch.logsumexp(_log_weights(model, xb, cb, g, k), 0) - math.log(k)).mean()
    return loss


def _batches(x: Tensor, c: Any, g: torch.Generator, batch_size: int):
    perm = torch.randperm(x.shape[0], generator=g)
    for start in range(0, x.shape[0], batch_size):
        rows = perm[start : start + batch_size]
        yield x[rows], None if c is None else c[rows]


def reference_fit(model: VAE, x: Tensor, c: Any, epochs: int, loss_fn: Callable[..., Tensor], seed: int,
                  batch_size: int = BATCH, lr: float = LR, lr_at: Callable[[int], float] | None = None) -> None:
    """The plain loop: each epoch ``randperm`` from the run's generator, then per batch the loss, its
    gradient by autograd, one ``torch.optim.Adam`` step."""
    g = G(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999))
    model.train()
    step = 0
    for _ in range(epochs):
        for xb, cb in _batches(x, c, g, batch_size):
            if lr_at is not None:
                opt.param_groups[0]["lr"] = lr_at(step)
            loss = loss_fn(model, xb, cb, g, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()


def _state(model: VAE) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close_states(a: dict[str, Tensor], b: dict[str, Tensor], tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def assert_equal_states(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs: max {float((a[name] - b[name]).abs().max()):.3g}"


def assert_trained(before: dict[str, Tensor], after: dict[str, Tensor]) -> None:
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"training left {unchanged} bit-identical"


# --- (a) fit is autograd and Adam on the model's three distributions --------------------------------------
def test_every_model_is_well_formed():
    for name, case in CASES.items():
        model = case.build()
        x, c = case.data()
        q = _call(model.posterior, x, c=c)
        assert (tuple(q.batch_shape), tuple(q.event_shape)) == ((N,), (model.z_dim,)), name
        assert tuple(_call(model.prior, c=c).event_shape) == (model.z_dim,), name
        z = _draw(q, (3,), G(0))
        lik = _call(model.likelihood, z, c=c)
        assert (tuple(lik.batch_shape), tuple(lik.event_shape)) == ((3, N), (X_DIM,)), name
        assert torch.isfinite(lik.log_prob(x)).all(), name
        assert not vaelib.model.is_builtin_mlp(model)


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_the_plain_autograd_loop(name):
    case = CASES[name]
    x, c = case.data()
    model, ref = case.build(), case.build()
    before = _state(model)
    assert_equal_states(before, _state(ref))
    history = vaelib.fit(model, _fit_data(x, c), 2, batch_size=BATCH, lr=LR, seed=5, progress=False)
    reference_fit(ref, x, c, 2, elbo_loss(), seed=5)
    assert_trained(before, _state(model))
    assert_close_states(_state(model), _state(ref))
    assert history.epochs == 2 and all(math.isfinite(v) for v in history.train_elbo)


@pytest.mark.parametrize("name", NAMES)
def test_fit_with_iwae_is_the_plain_autograd_loop(name):
    case = CASES[name]
    x, c = case.data()
    model, ref = case.build(), case.build()
    vaelib.fit(model, _fit_data(x, c), 2, objective=IWAE(k=5), batch_size=BATCH, lr=LR, seed=6, progress=False)
    reference_fit(ref, x, c, 2, iwae_loss(5), seed=6)
    assert_close_states(_state(model), _state(ref))


def test_the_mixture_prior_is_learned():
    case = CASES["mog-prior"]
    model = case.build()
    before = _state(model)
    vaelib.fit(model, case.data()[0], 2, batch_size=BATCH, lr=LR, seed=0, progress=False)
    after = _state(model)
    for name in ("prior_module.means", "prior_module.log_scales", "prior_module.logits"):
        assert not torch.equal(before[name], after[name]), f"{name} came back bit-identical"
        assert (before[name] - after[name]).abs().max() > 1e-3


def test_a_gaussian_likelihood_name_with_a_decoder_of_its_own_is_refused_naming_obs_logvar():
    model = build_pixel_variance(likelihood="gaussian")
    before = _state(model)
    with pytest.raises(ValueError, match="obs_logvar"):
        vaelib.fit(model, continuous_data()[0], 1, batch_size=BATCH, progress=False)
    assert_equal_states(before, _state(model))
    assert model.fit_state is None
    # Frozen, obs_logvar is no obstacle, and training is that of the model without it.
    model.obs_logvar.requires_grad_(False)
    ref = build_pixel_variance()
    x = continuous_data()[0]
    vaelib.fit(model, x, 2, batch_size=BATCH, lr=LR, seed=1, progress=False)
    reference_fit(ref, x, None, 2, elbo_loss(), seed=1)
    mine = {k: v for k, v in _state(model).items() if k != "obs_logvar"}
    assert_close_states(mine, _state(ref))


# --- DReG, against Tucker et al.'s estimator written out --------------------------------------------------
def _dreg_gradients(model: VAE, xb: Tensor, g: torch.Generator, k: int) -> dict[str, Tensor]:
    """Tucker, Lawson, Gu & Maddison (2019) for the ``mog-prior`` model's diagonal Gaussian encoder, from its
    modules directly: ``log w = log p(x, z) - log q_stop(z)`` with ``q_stop``'s parameters detached, ``w~ =
    softmax(log w)`` detached; the encoder's gradient from ``-(w~^2 log w).sum(0)`` only, the decoder's and
    the prior's from ``-(w~ log w).sum(0)`` only; each averaged over the batch."""
    mu, logvar = model.encoder(xb)
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * torch.randn((k, *mu.shape), generator=g, dtype=mu.dtype)
    q_stop = Independent(Normal(mu.detach(), sigma.detach()), 1)
    log_w = model.decoder(z).log_prob(xb) + model.prior_module().log_prob(z) - q_stop.log_prob(z)
    w = torch.softmax(log_w.detach(), 0)
    encoder_loss = -(w.pow(2) * log_w).sum(0).mean()
    decoder_loss = -(w * log_w).sum(0).mean()
    named = dict(model.named_parameters())
    enc = [n for n in named if n.startswith("encoder.")]
    rest = [n for n in named if not n.startswith("encoder.")]
    grads = dict(zip(enc, torch.autograd.grad(encoder_loss, [named[n] for n in enc], retain_graph=True)))
    grads.update(zip(rest, torch.autograd.grad(decoder_loss, [named[n] for n in rest])))
    return grads


def _objective_gradients(model: VAE, objective: Any, xb: Tensor, g: torch.Generator) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    objective(model, xb, None, g, 0, 1).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def test_dreg_gradient_is_tuckers_estimator():
    model = build_mog()
    x = continuous_data()[0][:BATCH]
    mine = _objective_gradients(model, DReG(k=5), x, G(9))
    ref = _dreg_gradients(model, x, G(9), 5)
    assert_close_states(mine, ref, tol=1e-10)
    # It is not IWAE's gradient for the encoder, and it is for the decoder and the prior.
    iwae = _objective_gradients(model, IWAE(k=5), x, G(9))
    assert (iwae["encoder.net.0.weight"] - mine["encoder.net.0.weight"]).abs().max() > 1e-4
    for name in ("decoder.linear.weight", "decoder.log_scale", "prior_module.means", "prior_module.logits"):
        torch.testing.assert_close(iwae[name], mine[name], rtol=1e-10, atol=1e-12)


def test_fit_with_dreg_is_adam_on_tuckers_estimator():
    model, ref = build_mog(), build_mog()
    x = continuous_data()[0]
    vaelib.fit(model, x, 2, objective=DReG(k=5), batch_size=BATCH, lr=LR, seed=7, progress=False)
    g = G(7)
    params = dict(ref.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=LR, betas=(0.9, 0.999))
    ref.train()
    for _ in range(2):
        for xb, _ in _batches(x, None, g, BATCH):
            grads = _dreg_gradients(ref, xb, g, 5)
            for n, p in params.items():
                p.grad = grads[n]
            opt.step()
    assert_close_states(_state(model), _state(ref), tol=1e-8)


# --- free bits ----------------------------------------------------------------------------------------
def test_free_bits_is_the_hand_written_objective():
    model, ref = build_pyro(), build_pyro()
    x = binary_data()[0]

    def per_unit_kl(m: VAE, xb: Tensor) -> Tensor:  # KL(N(mu, s^2) || N(0, 1)) per unit, (batch, z_dim)
        q = m.encoder(xb)
        return 0.5 * (q.loc.pow(2) + q.scale.pow(2) - 1) - torch.log(q.scale)

    with torch.no_grad():
        units = per_unit_kl(model, x).mean(0)
    lam = float(units.mean())  # between the two units' KLs: the clamp acts on one of them
    assert float(units.min()) < lam < float(units.max())

    def loss(m: VAE, xb: Tensor, cb: Any, g: torch.Generator, step: int) -> Tensor:
        z = _draw(m.posterior(xb), (1,), g)
        reconstruction = m.decoder(z).log_prob(xb).sum(-1).mean(0)  # Bernoulli(probs) over the pixels
        return -reconstruction.mean() + per_unit_kl(m, xb).mean(0).clamp_min(lam).sum()

    vaelib.fit(model, x, 2, objective=ELBO(free_bits=lam), batch_size=BATCH, lr=LR, seed=8, progress=False)
    reference_fit(ref, x, None, 2, loss, seed=8)
    assert_close_states(_state(model), _state(ref))
    plain = build_pyro()
    vaelib.fit(plain, x, 2, batch_size=BATCH, lr=LR, seed=8, progress=False)
    assert (_state(plain)["encoder.loc.weight"] - _state(model)["encoder.loc.weight"]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["mog-prior", "full-cov", "planar-flow", "two-level"])
def test_free_bits_needs_a_kl_that_splits_over_units(name):
    case = CASES[name]
    model = case.build()
    before = _state(model)
    with pytest.raises(ValueError, match="free bits"):
        vaelib.fit(model, case.data()[0], 1, objective=ELBO(free_bits=0.1), batch_size=BATCH, progress=False)
    assert_equal_states(before, _state(model))


# --- (b) the ELBO's two terms ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_elbo_terms_are_the_models_distributions(name):
    case = CASES[name]
    model = case.build()
    x, c = case.data(n=6, seed=3)
    terms = vaelib.elbo(model, x, n_samples=4, generator=G(11), c=c)
    reconstruction, kl, closed = _elbo_terms(model, x, c, G(11), n_samples=4)
    assert closed == case.closed_form_kl
    assert terms.kl_closed_form == case.closed_form_kl
    torch.testing.assert_close(terms.reconstruction, reconstruction, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms.elbo, reconstruction - kl, rtol=1e-12, atol=1e-10)
    assert terms.elbo.shape == (6,) and terms.elbo.requires_grad


def test_the_planar_flows_density_is_the_change_of_variables_formula():
    """The MC KL of the flow posterior, with ``log q`` written out: the base density minus each flow's log
    Jacobian determinant, along the path of one draw."""
    model = build_flow()
    x = continuous_data(n=5, seed=2)[0]
    terms = vaelib.elbo(model, x, n_samples=3, generator=G(4))
    enc = model.encoder
    base = enc.base(x)
    seed = int(torch.randint(0, 2**62, (1,), generator=G(4)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = base.rsample((3,))
    log_q = base.log_prob(z)
    for u, w, b in zip(enc.u, enc.w, enc.b):
        wu = (w * u).sum()
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum()
        a = (z * w).sum(-1) + b
        log_q = log_q - torch.log(torch.abs(1 + (1 - torch.tanh(a) ** 2) * (w * u_hat).sum()))
        z = z + u_hat * torch.tanh(a).unsqueeze(-1)
    kl = (log_q - _std_normal_log_prob(z)).mean(0)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-12, atol=1e-12)
    mean = model.decoder(z)
    var = model.obs_logvar.exp()
    log_px = -0.5 * ((x - mean) ** 2 / var + model.obs_logvar + math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(terms.reconstruction, log_px.mean(0), rtol=1e-12, atol=1e-10)


def test_elbo_of_the_conditional_model_depends_on_the_labels():
    model = build_conditional()
    x, c = labelled_data(n=6, seed=1)
    a = vaelib.elbo(model, x, generator=G(0), c=c).elbo
    b = vaelib.elbo(model, x, generator=G(0), c=(c + 1) % N_CLASSES).elbo
    assert (a - b).abs().max() > 1e-3


# --- (c) the importance-weighted bound and the log-likelihood ------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_iwae_bound_and_log_likelihood_are_the_logsumexp_of_the_models_weights(name):
    case = CASES[name]
    model = case.build()
    x, c = case.data(n=3, seed=4)
    k = 400
    ref = torch.logsumexp(_log_weights(model, x, c, G(21), k), 0) - math.log(k)
    torch.testing.assert_close(vaelib.iwae_bound(model, x, k, G(21), c=c), ref, rtol=1e-12, atol=1e-10)
    # Held at once (one chunk), log_likelihood draws exactly what iwae_bound draws.
    ll = vaelib.log_likelihood(model, x, k, G(21), max_elements=10**9, c=c)
    torch.testing.assert_close(ll, ref.detach(), rtol=1e-12, atol=1e-10)
    # max_elements=1 holds one example and one sample at a time: the same estimator, its weights summed as
    # they come (log-add-exp), its draws taken one by one.
    k_small, g = 40, G(22)
    chunked = vaelib.log_likelihood(model, x, k_small, G(22), max_elements=1, c=c)
    for i in range(x.shape[0]):
        xi, ci = x[i : i + 1], None if c is None else c[i : i + 1]
        q = _call(model.posterior, xi, c=ci)
        prior = _native(_call(model.prior, c=ci))
        log_w = []
        for _ in range(k_small):
            z = _draw(q, (1,), g)
            lik = _native(_call(model.likelihood, z, c=ci))
            log_w.append(lik.log_prob(xi) + prior.log_prob(z) - _native(q).log_prob(z))
        expected = torch.logsumexp(torch.cat(log_w), 0) - math.log(k_small)
        torch.testing.assert_close(chunked[i : i + 1], expected.detach(), rtol=1e-12, atol=1e-10)
    # An upper estimate of the ELBO (within noise).
    elbo = vaelib.elbo(model, x, n_samples=200, generator=G(23), c=c).elbo.detach()
    assert (ll > elbo - 0.05).all()


@pytest.mark.parametrize("name", NAMES)
def test_iwae_bound_at_one_sample_is_the_elbo_in_expectation(name):
    case = CASES[name]
    model = case.build()
    x, c = case.data(n=1, seed=5)
    if not case.closed_form_kl:
        # With the KL estimated from the same draw, they are the same number.
        for seed in range(3):
            torch.testing.assert_close(vaelib.iwae_bound(model, x, 1, G(seed), c=c),
                                       vaelib.elbo(model, x, generator=G(seed), c=c).elbo, rtol=1e-12, atol=1e-10)
        return
    reps = 2000
    xr = x.expand(reps, X_DIM).clone()
    cr = None if c is None else c.expand(reps, *c.shape[1:]).clone()
    with torch.no_grad():
        iwae = vaelib.iwae_bound(model, xr, 1, G(1), c=cr)
        elbo = vaelib.elbo(model, xr, generator=G(1), c=cr).elbo
    diff = iwae - elbo  # log p(z) - log q(z|x) + KL at the same draws: mean zero
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(reps) + 1e-12
    assert float(diff.std()) > 0


def test_the_mixture_prior_models_evidence_is_the_exact_gaussian_mixture():
    """With a linear Gaussian decoder and a mixture prior, p(x) is a Gaussian mixture,
    :math:`\\sum_k \\pi_k \\mathcal{N}(x; W m_k + b, W S_k W^\\top + \\operatorname{diag} e^{2s})`: the ELBO lies below
    it, and the log-likelihood estimate finds it."""
    model = build_mog()
    x = continuous_data(seed=6)[0]
    vaelib.fit(model, x, 3, batch_size=BATCH, lr=LR, seed=0, progress=False)
    x = x[:4]
    with torch.no_grad():
        prior = model.prior_module
        W, b, scale = model.decoder.linear.weight, model.decoder.linear.bias, model.decoder.log_scale.exp()
        cov = W @ torch.diag_embed(prior.log_scales.exp().pow(2)) @ W.T + torch.diag(scale.pow(2))  # (k, D, D)
        comp = MultivariateNormal(prior.means @ W.T + b, covariance_matrix=cov)
        exact = torch.logsumexp(torch.log_softmax(prior.logits, 0) + comp.log_prob(x.unsqueeze(1)), 1)
        elbo = vaelib.elbo(model, x, n_samples=2000, generator=G(0)).elbo
        ll = vaelib.log_likelihood(model, x, 3000, G(1))
    gap = exact - elbo
    assert (gap > 0.5).all()  # the ELBO lies below log p(x) (by KL(q || p(z|x)), over a nat here)
    assert ((exact - ll).abs() < 0.05).all()  # 3000 importance samples close the gap to ~0.01 nats


# --- (d) sampling draws z from the prior -----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_sample_decodes_draws_of_the_prior(name):
    case = CASES[name]
    model = case.build()
    n = 5
    c = case.data(n=n, seed=1)[1]
    g = G(3)
    prior = _call(model.prior, c=c)
    z = _draw(prior, (n,) if prior.batch_shape == () else (), g, reparameterized=False)
    lik = _call(model.likelihood, z, c=c)
    drawn = _draw(lik, (), g, reparameterized=False)
    assert torch.equal(vaelib.sample(model, n, G(3), mean=False, c=c), drawn)
    if name != "categorical-256":  # its mean: the categorical tests below
        out = vaelib.sample(model, n, G(3), c=c)
        torch.testing.assert_close(out, lik.mean, rtol=1e-12, atol=1e-12)
        assert out.shape == (n, X_DIM)


def test_sample_of_the_mixture_prior_uses_its_components():
    """With the components pulled far apart, the codes sample() decodes come from them (not from N(0, I))."""
    model = build_mog()
    with torch.no_grad():
        model.prior_module.means.copy_(torch.tensor([[8.0, 0.0], [0.0, 8.0], [-8.0, -8.0]], dtype=DT))
        model.prior_module.log_scales.fill_(math.log(0.1))
    n = 60
    out = vaelib.sample(model, n, G(5))
    z = _draw(model.prior(), (n,), G(5), reparameterized=False)
    assert (z.norm(dim=-1) > 6).all()
    torch.testing.assert_close(out, model.decoder.linear(z), rtol=1e-12, atol=1e-12)
    drawn = vaelib.sample(model, n, G(5), mean=False)
    assert drawn.shape == (n, X_DIM) and not torch.equal(drawn, out)


def _mean_grey_level(lik: Distribution) -> Tensor:
    """The mean of ``Independent(Categorical(256), 1)`` over the levels 0..255: sum_k k p_k."""
    probs = lik.base_dist.probs
    return (probs * torch.arange(LEVELS, dtype=probs.dtype)).sum(-1)


def test_sample_of_a_categorical_likelihood_is_its_mean_grey_level():
    model = build_categorical()
    out = vaelib.sample(model, 4, G(0))
    assert torch.isfinite(out).all() and ((out >= 0) & (out <= 255)).all()
    g = G(0)
    z = _draw(model.prior(), (4,), g, reparameterized=False)
    torch.testing.assert_close(out, _mean_grey_level(model.likelihood(z)), rtol=1e-12, atol=1e-10)


def test_interpolate_and_reconstruct_with_a_categorical_likelihood_are_finite():
    model = build_categorical()
    x = grey_data(n=2)[0]
    path = vaelib.interpolate(model, x[0], x[1], 3)
    assert path.shape == (3, X_DIM) and torch.isfinite(path).all()
    z = model.posterior(x).mean
    torch.testing.assert_close(model(x), _mean_grey_level(model.likelihood(z)), rtol=1e-12, atol=1e-10)


# --- (e) save and load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_fill_a_fresh_model_exactly(tmp_path, name):
    case = CASES[name]
    x, c = case.data()
    model = case.build()
    vaelib.fit(model, _fit_data(x, c), 1, batch_size=BATCH, lr=LR, seed=2, progress=False)
    path = tmp_path / "zoo.pt"
    vaelib.save(model, path)
    fresh = case.build(seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(_state(fresh).values(), _state(model).values()))
    loaded = vaelib.load(path, model=fresh)
    assert loaded is fresh
    assert_equal_states(_state(model), _state(fresh))
    if model.prior_module is not None:  # the learned prior's parameters travel with the model
        assert any(k.startswith("prior_module.") for k in _state(fresh))
        assert_equal_states(_state(model.prior_module), _state(fresh.prior_module))
    a = vaelib.elbo(model, x[:5], n_samples=3, generator=G(0), c=None if c is None else c[:5]).elbo
    b = vaelib.elbo(fresh, x[:5], n_samples=3, generator=G(0), c=None if c is None else c[:5]).elbo
    assert torch.equal(a, b)


# --- continuing a run --------------------------------------------------------------------------------------
RUNS = {
    "elbo": {},
    "warm-up": {"objective": ELBO(warmup_epochs=3)},
    "cosine": {"lr_schedule": "cosine"},
    "iwae": {"objective": IWAE(k=3)},
}


@pytest.mark.parametrize("name, run", [
    (name, run) for name in ("mog-prior", "planar-flow", "conditional-prior") for run in RUNS
])
def test_a_resumed_run_is_the_uninterrupted_run(tmp_path, name, run):
    """fit 4 epochs = fit 2, then 2 more = fit 2, save, load into a fresh model, fit 2 more: bit for bit."""
    case = CASES[name]
    data = _fit_data(*case.data())
    kwargs = dict(batch_size=BATCH, lr=LR, seed=4, progress=False, **RUNS[run])
    first = {"total_epochs": 4} if run == "cosine" else {}
    whole = case.build()
    vaelib.fit(whole, data, 4, **kwargs)
    halves = case.build()
    vaelib.fit(halves, data, 2, **kwargs, **first)
    path = tmp_path / "half.pt"
    vaelib.save(halves, path)
    vaelib.fit(halves, data, 2, **kwargs)
    assert_equal_states(_state(whole), _state(halves))
    assert halves.fit_state.epoch == 4 and halves.fit_state.step == 4 * (N // BATCH)
    resumed = vaelib.load(path, model=case.build(seed=3))
    vaelib.fit(resumed, data, 2, **kwargs)
    assert_equal_states(_state(whole), _state(resumed))


def test_a_resumed_run_on_a_shuffling_data_loader_is_the_uninterrupted_run():
    """The loader shuffles with its own generator, which goes on across calls; vaelib's draws the noise."""
    x, c = labelled_data()

    def loader() -> DataLoader:
        return DataLoader(TensorDataset(x, c), batch_size=BATCH, shuffle=True, generator=G(1))

    whole = build_conditional()
    vaelib.fit(whole, loader(), 4, objective=ELBO(warmup_epochs=3), lr=LR, seed=2, progress=False)
    halves, data = build_conditional(), loader()
    vaelib.fit(halves, data, 2, objective=ELBO(warmup_epochs=3), lr=LR, seed=2, progress=False)
    vaelib.fit(halves, data, 2, objective=ELBO(warmup_epochs=3), lr=LR, seed=2, progress=False)
    assert_equal_states(_state(whole), _state(halves))


def test_the_warm_up_and_the_cosine_schedule_are_those_of_the_plain_loop():
    case = CASES["mog-prior"]
    x = case.data()[0]
    steps = 4 * (N // BATCH)
    model, ref = case.build(), case.build()
    vaelib.fit(model, x, 2, objective=ELBO(warmup_epochs=3), lr_schedule="cosine", total_epochs=4,
               batch_size=BATCH, lr=LR, seed=9, progress=False)
    vaelib.fit(model, x, 2, objective=ELBO(warmup_epochs=3), lr_schedule="cosine",
               batch_size=BATCH, lr=LR, seed=9, progress=False)
    reference_fit(ref, x, None, 4, elbo_loss(warmup_steps=3 * (N // BATCH)), seed=9,
                  lr_at=lambda t: 0.5 * LR * (1 + math.cos(math.pi * t / steps)))
    assert_close_states(_state(model), _state(ref))


def test_a_continuing_call_with_another_lr_is_refused():
    case = CASES["mog-prior"]
    x = case.data()[0]
    model = case.build()
    vaelib.fit(model, x, 1, batch_size=BATCH, lr=LR, seed=0, progress=False)
    before = _state(model)
    with pytest.raises(ValueError, match="lr"):
        vaelib.fit(model, x, 1, batch_size=BATCH, lr=2 * LR, seed=0, progress=False)
    assert_equal_states(before, _state(model))
    assert model.fit_state is not None and model.fit_state.epoch == 1
    vaelib.fit(model, x, 1, batch_size=BATCH, lr=2 * LR, seed=0, progress=False, restart=True)
    assert model.fit_state.epoch == 1


# --- a DataLoader -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pyro-style", "conditional", "conditional-prior", "categorical-256"])
def test_fit_on_a_data_loader_trains_as_the_plain_loop(name):
    case = CASES[name]
    x, c = case.data()
    dataset = TensorDataset(x) if c is None else TensorDataset(x, c)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False)
    model, ref = case.build(), case.build()
    before = _state(model)
    history = vaelib.fit(model, loader, 2, lr=LR, seed=3, progress=False)
    assert history.epochs == 2 and all(math.isfinite(v) for v in history.train_elbo)
    assert_trained(before, _state(model))
    # The loader's order, no shuffle of vaelib's: the run's generator draws only the noise.
    g = G(3)
    opt = torch.optim.Adam(ref.parameters(), lr=LR, betas=(0.9, 0.999))
    ref.train()
    for _ in range(2):
        for batch in loader:
            xb, cb = batch[0], (batch[1] if len(batch) == 2 else None)
            loss = elbo_loss()(ref, xb, cb, g, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert_close_states(_state(model), _state(ref))
    # A shuffling loader trains too.
    shuffled = case.build()
    vaelib.fit(shuffled, DataLoader(dataset, batch_size=BATCH, shuffle=True), 1, lr=LR, progress=False)
    assert_trained(before, _state(shuffled))
