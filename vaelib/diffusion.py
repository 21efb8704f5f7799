r"""Diffusion models as deep VAEs (chapter 12): a fixed Gaussian encoder, a learned reverse process, their ELBO.

The notation is that of variational diffusion models (Kingma et al. 2021). Data :math:`x \in \mathbb{R}^d`
are encoded by a *fixed* chain of ever noisier latents :math:`z_t`, :math:`t \in [0, 1]`, with marginals

.. math::

    q(z_t \mid x) = \mathcal{N}(\alpha_t x, \sigma_t^2 I), \qquad
    \alpha_t^2 = \operatorname{sigmoid}(\lambda_t), \quad \sigma_t^2 = \operatorname{sigmoid}(-\lambda_t),

where :math:`\lambda_t = \log \mathrm{SNR}(t) = \log(\alpha_t^2/\sigma_t^2)` falls from
:math:`\lambda_\text{max}` at :math:`t = 0` to :math:`\lambda_\text{min}` at :math:`t = 1` (variance
preserving: :math:`\alpha_t^2 + \sigma_t^2 = 1`). A :class:`Schedule` is that function :math:`\lambda_t`.

The generative model runs the chain backwards: :math:`z_1 \sim \mathcal{N}(0, I)`, then on a grid
:math:`t_i = i/T` each step :math:`p(z_s \mid z_t) = q(z_s \mid z_t, x = \hat x_\theta(z_t; t))` is the
forward posterior (:func:`forward_posterior`) with the unknown :math:`x` replaced by a network's guess
:math:`\hat x_\theta`, and :math:`p(x \mid z_0)` is a Gaussian of scale :math:`\sigma_0/\alpha_0` around
:math:`z_0/\alpha_0` (rounded to a grid for quantised data: :class:`vaelib.distributions.DiscretisedGaussian`).
The network predicts the noise, :math:`\hat\epsilon_\theta(z_t; \lambda_t)`, and
:math:`\hat x = (z_t - \sigma_t \hat\epsilon)/\alpha_t`. It sees :math:`\lambda_t`, not :math:`t`, so one trained
network serves every schedule with the same end points.

:func:`elbo` is chapter 3's bound for this hierarchy, in three terms (nats per example):

.. math::

    \log p(x) \ge{} &\underbrace{\mathbb{E}_{q}\log p(x \mid z_0)}_{\text{reconstruction}} \\
    &- \underbrace{\sum_{i=1}^{T} \mathbb{E}_q\, D_\mathrm{KL}\bigl(q(z_{s} \mid z_{t}, x) \,\|\, p(z_{s} \mid z_{t})\bigr)}_{\text{diffusion},\ s = t_{i-1},\ t = t_i} \\
    &- \underbrace{D_\mathrm{KL}\bigl(q(z_1 \mid x) \,\|\, \mathcal{N}(0, I)\bigr)}_{\text{prior}},

where each step's KL is :math:`\tfrac12(\mathrm{SNR}(s) - \mathrm{SNR}(t))\,\|x - \hat x_\theta(z_t; t)\|^2
= \tfrac12 (e^{\lambda_s - \lambda_t} - 1)\,\|\epsilon - \hat\epsilon_\theta\|^2`, and, as
:math:`T \to \infty`, the diffusion term becomes
:math:`-\tfrac12\, \mathbb{E}_{t \sim U(0, 1)}\, \lambda'_t\, \|\epsilon - \hat\epsilon_\theta(z_t; \lambda_t)\|^2`.

What the module holds:

* schedules :class:`LinearLogSNR`, :class:`CosineLogSNR` (any :class:`Schedule` subclass works);
* the forward process: :func:`marginal`, :func:`transition`, :func:`forward_posterior`;
* the model: :class:`DenoisingMLP` (the network), :class:`Diffusion` (network + schedule + likelihood);
* the bound: :func:`elbo` (discrete ``steps=T`` or continuous ``steps=None``), :class:`DiffusionELBO`;
* training: :func:`fit` (Adam, cosine learning rate, an exponential moving average of the weights);
* sampling: :func:`reverse_process` (the whole trajectory, from given noise if you like), :func:`sample`;
* :func:`tweedie`, the posterior mean of :math:`x` from a score, and :func:`diffused_mixture`, the exact
  marginal :math:`p(z_t)` of Gaussian-mixture data, to check both against;
* :func:`export_reverse_process`, the 2-D model's weights for the book's in-page sampler.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily, MultivariateNormal
from tqdm import tqdm

from ._validate import check_count, check_float, check_generator, check_int, check_tensor
from .explorer import _b64_float32  # the layout chapter 6's explorer uses too
from .distributions import DiagonalNormal, DiscretisedGaussian, StandardNormal, log_prob
from .model import seeded
from .train import _progress_default

__all__ = [
    "CosineLogSNR",
    "DenoisingMLP",
    "Diffusion",
    "DiffusionELBO",
    "DiffusionHistory",
    "LinearLogSNR",
    "Schedule",
    "diffused_mixture",
    "elbo",
    "export_reverse_process",
    "fit",
    "forward_posterior",
    "marginal",
    "reverse_process",
    "sample",
    "transition",
    "tweedie",
]


# --- time ---------------------------------------------------------------------------------------------------
def check_time(name: str, t: object, *, like: Tensor | None = None) -> Tensor:
    """``t`` as a floating-point tensor of times in ``[0, 1]`` (a Python number becomes a 0-d tensor in
    ``like``'s dtype and device); a ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        v = check_float(name, t)
        t = torch.tensor(v, dtype=like.dtype if like is not None else torch.get_default_dtype(),
                         device=like.device if like is not None else None)
    t = check_tensor(name, t, nonempty=False)
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        lo, hi = float(t.min()), float(t.max())
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return t


# --- schedules ----------------------------------------------------------------------------------------------
class Schedule:
    r"""A noise schedule: the log signal-to-noise ratio :math:`\lambda_t`, decreasing on :math:`[0, 1]`.

    A subclass defines :meth:`logsnr` and its derivative :meth:`dlogsnr`; everything else follows for a
    variance-preserving process: :math:`\alpha_t^2 = \operatorname{sigmoid}(\lambda_t)`,
    :math:`\sigma_t^2 = \operatorname{sigmoid}(-\lambda_t)`, computed through ``logsigmoid`` so that no
    :math:`\lambda` overflows. Every method takes a tensor of times in ``[0, 1]`` (or a number) and
    returns a tensor of its shape and dtype.

    Args:
        logsnr_max: :math:`\lambda_0`, the log-SNR at ``t = 0`` (the least noise).
        logsnr_min: :math:`\lambda_1 < \lambda_0`, at ``t = 1`` (the most noise).
    """

    def __init__(self, logsnr_max: float = 7.0, logsnr_min: float = -9.0) -> None:
        self.logsnr_max = check_float("logsnr_max", logsnr_max)
        self.logsnr_min = check_float("logsnr_min", logsnr_min)
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
        if max(abs(self.logsnr_min), abs(self.logsnr_max)) > 30:
            raise ValueError(f"logsnr_max and logsnr_min must lie in [-30, 30] (beyond, alpha or sigma falls below "
                             f"float32's precision), got {logsnr_max} and {logsnr_min}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(logsnr_max={self.logsnr_max:g}, logsnr_min={self.logsnr_min:g})"

    def logsnr(self, t: Tensor) -> Tensor:  # pragma: no cover - every subclass defines it
        r""":math:`\lambda_t = \log \alpha_t^2/\sigma_t^2`."""
        raise NotImplementedError

    def dlogsnr(self, t: Tensor) -> Tensor:  # pragma: no cover - every subclass defines it
        r""":math:`\mathrm{d}\lambda_t/\mathrm{d}t` (negative)."""
        raise NotImplementedError

    def _t(self, t: object) -> Tensor:
        return check_time("t", t)

    def alpha(self, t: Tensor | float) -> Tensor:
        r""":math:`\alpha_t = \operatorname{sigmoid}(\lambda_t)^{1/2}`."""
        return torch.exp(0.5 * F.logsigmoid(self.logsnr(self._t(t))))

    def sigma(self, t: Tensor | float) -> Tensor:
        r""":math:`\sigma_t = \operatorname{sigmoid}(-\lambda_t)^{1/2}`."""
        return torch.exp(0.5 * F.logsigmoid(-self.logsnr(self._t(t))))

    def snr(self, t: Tensor | float) -> Tensor:
        r""":math:`\mathrm{SNR}(t) = e^{\lambda_t} = \alpha_t^2/\sigma_t^2`."""
        return torch.exp(self.logsnr(self._t(t)))


class LinearLogSNR(Schedule):
    r""":math:`\lambda_t = \lambda_\text{max} + (\lambda_\text{min} - \lambda_\text{max})\, t`: the log-SNR falls
    at a constant rate. The book's schedule: from +7 to -9 it matches the 17 grey levels of the 8x8 digits
    (:math:`\sigma_0/\alpha_0 = e^{-3.5} = 0.03`, a quarter of a grey level's bin)."""

    def logsnr(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        return self.logsnr_max + (self.logsnr_min - self.logsnr_max) * t

    def dlogsnr(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        return torch.full_like(t, self.logsnr_min - self.logsnr_max)


class CosineLogSNR(Schedule):
    r"""The cosine schedule of Nichol & Dhariwal (2021) in log-SNR form, between given end points:
    :math:`\lambda_t = -2 \log \tan(a + (b - a)\, t)` with :math:`a = \arctan e^{-\lambda_\text{max}/2}`,
    :math:`b = \arctan e^{-\lambda_\text{min}/2}` (so :math:`\alpha_t = \cos(a + (b - a) t)`)."""

    def __init__(self, logsnr_max: float = 7.0, logsnr_min: float = -9.0) -> None:
        super().__init__(logsnr_max, logsnr_min)
        self._a = math.atan(math.exp(-0.5 * self.logsnr_max))
        self._b = math.atan(math.exp(-0.5 * self.logsnr_min))

    def logsnr(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        return -2.0 * torch.log(torch.tan(self._a + (self._b - self._a) * t))

    def dlogsnr(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        u = self._a + (self._b - self._a) * t
        return -2.0 * (self._b - self._a) / (torch.sin(u) * torch.cos(u))


def _check_schedule(schedule: object) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a vaelib.diffusion.Schedule, got {type(schedule).__name__}")
    return schedule


# --- the forward process ------------------------------------------------------------------------------------
def _logs(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(lambda, log alpha, log sigma^2)`` at ``t``, with a trailing axis for the data's coordinates."""
    lam = schedule.logsnr(t).unsqueeze(-1)
    return lam, 0.5 * F.logsigmoid(lam), F.logsigmoid(-lam)


def _rows(name: str, t: Tensor, n: int) -> Tensor:
    """Times ``t`` (a scalar or one per row) as a ``(n,)`` tensor."""
    if t.dim() == 0:
        return t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{name} must be a number or have shape ({n},) (one time per row), got {tuple(t.shape)}")
    return t


def _times(name: str, t: object, like: Tensor) -> Tensor:
    """Checked times ``t`` (a number, or one per row of ``like``) as a ``(n,)`` tensor in ``like``'s dtype."""
    return _rows(name, check_time(name, t, like=like), like.shape[0]).to(like.dtype)


def _data(name: str, x: object) -> Tensor:
    return check_tensor(name, x, ndim=2)


def marginal(schedule: Schedule, x: Tensor, t: Tensor | float) -> DiagonalNormal:
    r""":math:`q(z_t \mid x) = \mathcal{N}(\alpha_t x, \sigma_t^2 I)`, for data ``x`` ``(n, d)`` and a time
    ``t`` (a number, or one per row)."""
    _check_schedule(schedule)
    x = _data("x", x)
    _, log_alpha, logvar = _logs(schedule, _times("t", t, x))
    return DiagonalNormal(torch.exp(log_alpha) * x, logvar.expand_as(x))


def transition(schedule: Schedule, z_s: Tensor, s: Tensor | float, t: Tensor | float) -> DiagonalNormal:
    r"""One step of the forward chain, :math:`q(z_t \mid z_s) = \mathcal{N}(\alpha_{t|s} z_s, \sigma_{t|s}^2 I)`
    for :math:`s < t`: :math:`\alpha_{t|s} = \alpha_t/\alpha_s`,
    :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2\sigma_s^2 = -\sigma_t^2\,\operatorname{expm1}(\lambda_t - \lambda_s)`."""
    _check_schedule(schedule)
    z_s = _data("z_s", z_s)
    s, t = _pair(s, t, z_s)
    lam_s, log_alpha_s, _ = _logs(schedule, s)
    lam_t, log_alpha_t, logvar_t = _logs(schedule, t)
    logvar = logvar_t + torch.log(-torch.expm1(lam_t - lam_s))
    return DiagonalNormal(torch.exp(log_alpha_t - log_alpha_s) * z_s, logvar.expand_as(z_s))


def _pair(s: object, t: object, like: Tensor) -> tuple[Tensor, Tensor]:
    s, t = _times("s", s, like), _times("t", t, like)
    if not bool((s < t).all()):
        raise ValueError("need s < t for every row (s is the earlier, less noisy time)")
    return s, t


def forward_posterior(schedule: Schedule, z_t: Tensor, x: Tensor, s: Tensor | float, t: Tensor | float) -> DiagonalNormal:
    r""":math:`q(z_s \mid z_t, x)` for :math:`s < t`, a Gaussian (chapter 12, eq. ``eq-forward-posterior``):

    .. math::

        \mu = \frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} z_t + \frac{\alpha_s \sigma_{t|s}^2}{\sigma_t^2} x,
        \qquad \text{variance } \frac{\sigma_{t|s}^2 \sigma_s^2}{\sigma_t^2}
        = -\sigma_s^2 \operatorname{expm1}(\lambda_t - \lambda_s).

    ``z_t`` and ``x`` are ``(n, d)``; ``s`` and ``t`` numbers or one per row.
    """
    _check_schedule(schedule)
    z_t = _data("z_t", z_t)
    x = _data("x", x)
    if x.shape != z_t.shape:
        raise ValueError(f"x and z_t must have the same shape, got {tuple(x.shape)} and {tuple(z_t.shape)}")
    s, t = _pair(s, t, z_t)
    lam_s, log_alpha_s, logvar_s = _logs(schedule, s)
    lam_t, log_alpha_t, logvar_t = _logs(schedule, t)
    one_minus = -torch.expm1(lam_t - lam_s)  # sigma_{t|s}^2 / sigma_t^2 = 1 - SNR(t)/SNR(s)
    coef_z = torch.exp(log_alpha_t - log_alpha_s + logvar_s - logvar_t)
    coef_x = torch.exp(log_alpha_s) * one_minus
    logvar = logvar_s + torch.log(one_minus)
    return DiagonalNormal(coef_z * z_t + coef_x * x, logvar.expand_as(z_t))


# --- the network ------------------------------------------------------------------------------------------
class DenoisingMLP(nn.Module):
    r"""The noise-prediction network :math:`\hat\epsilon_\theta(z; \lambda)`: an MLP with residual blocks.

    The log-SNR enters through ``frequencies`` sine/cosine features
    :math:`(\sin \omega_k\lambda, \cos \omega_k\lambda)` with :math:`\omega_k` geometric from 1/16 to 32,
    appended to :math:`z`. Then ``Linear(d + 2K, width)``, ``blocks`` pre-activation residual blocks
    :math:`h \leftarrow h + W_2\,\operatorname{silu}(W_1 \operatorname{silu}(h) + b_1) + b_2`, and
    ``Linear(width, d)`` of :math:`\operatorname{silu}(h)`. The book's in-page sampler computes exactly this
    (see :func:`export_reverse_process`).

    Args:
        x_dim: :math:`d`.
        width: hidden width.
        blocks: residual blocks (``>= 0``).
        frequencies: :math:`K`, the number of sine/cosine pairs.
        seed: seeds the initial weights without touching PyTorch's global generator (``None``: drawn
            from it, as ``nn.Linear`` does).
    """

    def __init__(self, x_dim: int, width: int = 256, blocks: int = 2, frequencies: int = 16,
                 seed: int | None = None) -> None:
        super().__init__()
        self.x_dim = check_int("x_dim", x_dim)
        self.width = check_int("width", width)
        self.blocks = check_int("blocks", blocks, minimum=0)
        self.frequencies = check_int("frequencies", frequencies)
        if seed is not None:
            seed = check_int("seed", seed, minimum=0)
        w = torch.logspace(math.log10(1 / 16), math.log10(32), self.frequencies)
        self.register_buffer("omega", w)
        with seeded(seed):  # the caller's generator is left as it was
            self.inp = nn.Linear(self.x_dim + 2 * self.frequencies, self.width)
            self.hidden = nn.ModuleList(
                nn.ModuleList([nn.Linear(self.width, self.width), nn.Linear(self.width, self.width)])
                for _ in range(self.blocks))
            self.out = nn.Linear(self.width, self.x_dim)

    def embed(self, logsnr: Tensor) -> Tensor:
        r"""The features :math:`(\sin\omega_k\lambda, \cos\omega_k\lambda)_k` of a ``(n,)`` tensor of log-SNRs."""
        angle = logsnr.unsqueeze(-1) * self.omega.to(logsnr.dtype)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)

    def forward(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """:math:`\\hat\\epsilon` for ``z`` ``(n, d)`` at log-SNRs ``logsnr`` ``(n,)``."""
        h = self.inp(torch.cat([z, self.embed(logsnr)], dim=-1))
        for first, second in self.hidden:
            h = h + second(F.silu(first(F.silu(h))))
        return self.out(F.silu(h))


# --- the model ------------------------------------------------------------------------------------------
class Diffusion(nn.Module):
    r"""A diffusion model: a noise-prediction network, a :class:`Schedule` and the likelihood at ``t = 0``.

    Args:
        net: any module called as ``net(z, logsnr)`` with ``z`` ``(n, d)`` and ``logsnr`` ``(n,)``, returning
            :math:`\hat\epsilon` ``(n, d)`` (:class:`DenoisingMLP`, or your own).
        x_dim: :math:`d`.
        schedule: the noise schedule (default :class:`LinearLogSNR` from +7 to -9).
        levels: ``None`` for continuous data: :math:`p(x \mid z_0) = \mathcal{N}(z_0/\alpha_0, (\sigma_0/\alpha_0)^2 I)`;
            an integer for data quantised to ``levels`` values in ``[-1, 1]`` (17 for the 8x8 digits):
            the same Gaussian rounded to that grid (:class:`vaelib.distributions.DiscretisedGaussian`).
    """

    def __init__(self, net: nn.Module, x_dim: int, schedule: Schedule | None = None,
                 levels: int | None = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.x_dim = check_int("x_dim", x_dim)
        if isinstance(net, DenoisingMLP) and net.x_dim != self.x_dim:
            raise ValueError(f"x_dim is {self.x_dim} but the network net was built for x_dim={net.x_dim}")
        self.schedule = LinearLogSNR() if schedule is None else _check_schedule(schedule)
        self.levels = None if levels is None else check_int("levels", levels, minimum=2)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, schedule={self.schedule!r}, levels={self.levels}"

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def check_z(self, z: object, name: str = "z") -> Tensor:
        """``z`` as ``(n, x_dim)`` finite, in the model's dtype and device (a clear error otherwise)."""
        z = check_tensor(name, z, ndim=2, last_dim=self.x_dim)
        if z.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {z.dtype} but the model is {self.dtype}: convert one of them")
        if z.device != self.device:
            raise ValueError(f"{name} is on {z.device} but the model is on {self.device}")
        return z

    def eps(self, z_t: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\hat\epsilon_\theta(z_t; \lambda_t)`, the predicted noise, ``(n, d)``."""
        z_t = self.check_z(z_t, "z_t")
        out = self.net(z_t, self.schedule.logsnr(_times("t", t, z_t)))
        if not isinstance(out, Tensor) or out.shape != z_t.shape:
            raise ValueError(f"net must return a tensor of z's shape {tuple(z_t.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        return out

    def x_hat(self, z_t: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\hat x_\theta = (z_t - \sigma_t\hat\epsilon)/\alpha_t`, the data prediction."""
        eps = self.eps(z_t, t)
        _, log_alpha, logvar = _logs(self.schedule, _times("t", t, z_t))
        return (z_t - torch.exp(0.5 * logvar) * eps) * torch.exp(-log_alpha)

    def score(self, z_t: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\nabla_{z}\log p(z_t) \approx -\hat\epsilon/\sigma_t`, the score prediction."""
        eps = self.eps(z_t, t)
        _, _, logvar = _logs(self.schedule, _times("t", t, z_t))
        return -eps * torch.exp(-0.5 * logvar)

    def reverse(self, z_t: Tensor, s: Tensor | float, t: Tensor | float) -> DiagonalNormal:
        r""":math:`p(z_s \mid z_t) = q(z_s \mid z_t, x = \hat x_\theta(z_t; t))`, one step back (:math:`s < t`)."""
        return forward_posterior(self.schedule, z_t, self.x_hat(z_t, t), s, t)

    def prior(self) -> StandardNormal:
        r""":math:`p(z_1) = \mathcal{N}(0, I)`."""
        return StandardNormal(self.x_dim, dtype=self.dtype, device=self.device)

    def likelihood(self, z_0: Tensor) -> Distribution:
        r""":math:`p(x \mid z_0)`: a Gaussian of mean :math:`z_0/\alpha_0` and scale :math:`\sigma_0/\alpha_0`
        (per coordinate), rounded to the grid when the model has ``levels``."""
        z_0 = self.check_z(z_0, "z_0")
        lam = self.schedule.logsnr(torch.zeros((), dtype=z_0.dtype, device=z_0.device))
        inv_alpha = torch.exp(-0.5 * F.logsigmoid(lam))
        scale = torch.exp(-0.5 * lam).expand_as(z_0)  # sigma_0 / alpha_0
        if self.levels is None:
            return DiagonalNormal(z_0 * inv_alpha, (-lam).expand_as(z_0))
        return DiscretisedGaussian(z_0 * inv_alpha, scale, self.levels)


def _check_model(model: object) -> Diffusion:
    if not isinstance(model, Diffusion):
        raise TypeError(f"model must be a vaelib.diffusion.Diffusion, got {type(model).__name__}")
    return model


# --- the bound --------------------------------------------------------------------------------------------
class DiffusionELBO(NamedTuple):
    """The ELBO of a diffusion model and its three terms, per example, in nats (each averaged over the
    ``n_t`` draws of :func:`elbo`): ``elbo = reconstruction - diffusion - prior``."""

    elbo: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor


def _stratified_times(n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``n`` times in ``(0, 1)``, each uniform, jointly spread evenly: ``(u + k/n) mod 1`` with one uniform ``u``
    (the low-discrepancy sampler of Kingma et al. 2021: each time is uniform, so every average is unbiased)."""
    u = torch.rand((), generator=generator, dtype=torch.float64, device=device)
    k = torch.arange(n, dtype=torch.float64, device=device)
    return torch.remainder(u + k / n, 1.0).to(dtype)


def _diffusion_term(model: Diffusion, x: Tensor, eps: Tensor, steps: int | None,
                    generator: torch.Generator | None) -> Tensor:
    """The diffusion term of :func:`elbo` for each row of ``x`` (checked), with noise ``eps`` and stratified times."""
    sched = model.schedule
    u = _stratified_times(x.shape[0], generator, x.dtype, x.device)
    if steps is None:
        t = u
        weight = -0.5 * sched.dlogsnr(t)
    else:
        i = torch.clamp(torch.floor(u * steps) + 1, max=steps)
        t, s = i / steps, (i - 1) / steps
        weight = 0.5 * steps * torch.expm1(sched.logsnr(s) - sched.logsnr(t))
    _, log_alpha, logvar = _logs(sched, t)
    z_t = torch.exp(log_alpha) * x + torch.exp(0.5 * logvar) * eps
    return weight * (eps - model.eps(z_t, t)).pow(2).sum(-1)


def elbo(model: Diffusion, x: Tensor, *, steps: int | None = None, n_t: int = 1,
         generator: torch.Generator | None = None, check: bool = True) -> DiffusionELBO:
    r"""The ELBO of ``model`` for each row of ``x``: continuous time (``steps=None``) or ``steps`` = :math:`T`.

    The diffusion term is estimated by Monte Carlo, as in training: for each example ``n_t`` times and
    noises :math:`\epsilon \sim \mathcal{N}(0, I)`, :math:`z_t = \alpha_t x + \sigma_t\epsilon`, and

    * ``steps=None``: :math:`t \sim U(0, 1)`, term :math:`-\tfrac12 \lambda'_t \|\epsilon - \hat\epsilon\|^2`;
    * ``steps=T``: a step :math:`i` uniform in :math:`1..T`, :math:`s = (i-1)/T`, :math:`t = i/T`, term
      :math:`T \cdot \tfrac12 \operatorname{expm1}(\lambda_s - \lambda_t) \|\epsilon - \hat\epsilon\|^2`
      (:math:`T` times the KL of one step).

    The times of all :math:`n \cdot n_t` draws are stratified (one uniform shift of an even grid), each
    uniform, so the estimate is unbiased; the reconstruction term uses one draw of :math:`z_0` per time;
    the prior term is exact. Gradients flow to the network (this is the training loss, negated).

    Args:
        model: a :class:`Diffusion`.
        x: data ``(n, d)`` (on the grid in ``[-1, 1]`` for a model with ``levels``).
        steps: ``None`` (continuous time) or :math:`T \ge 1`.
        n_t: draws per example.
        generator: for the times and noises.
        check: check that ``x`` lies in the likelihood's support (turn off only in a training loop that
            checked it once).
    """
    _check_model(model)
    x = model.check_z(x, "x")
    if steps is not None:
        steps = check_int("steps", steps)
    n_t = check_count("n_t", n_t, x.numel())
    check_generator("generator", generator)
    n = x.shape[0]
    sched = model.schedule
    xr = x.repeat(n_t, 1)  # draw j of example b is row j * n + b
    eps = torch.randn(xr.shape, generator=generator, dtype=x.dtype, device=x.device)
    diffusion = _diffusion_term(model, xr, eps, steps, generator).view(n_t, n).mean(0)
    # reconstruction: z_0 ~ q(z_0 | x), one per draw (the same noise: q(z_0|x) needs no other)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    _, log_alpha0, logvar0 = _logs(sched, zero)
    z_0 = torch.exp(log_alpha0) * xr + torch.exp(0.5 * logvar0) * eps
    lik = model.likelihood(z_0)
    if check and not bool(lik.support.check(xr).all()):
        raise ValueError(f"x lies outside the support of the likelihood {type(lik).__name__} ({lik.support})")
    reconstruction = log_prob(lik, xr).view(n_t, n).mean(0)
    # prior: KL(N(alpha_1 x, sigma_1^2) || N(0, I)), exact
    one = torch.ones((), dtype=x.dtype, device=x.device)
    _, log_alpha1, logvar1 = _logs(sched, one)
    alpha1_sq = torch.exp(2 * log_alpha1)
    prior = 0.5 * (alpha1_sq * x.pow(2) + torch.exp(logvar1) - 1 - logvar1).sum(-1)
    return DiffusionELBO(reconstruction - diffusion - prior, reconstruction, diffusion, prior)


# --- training -----------------------------------------------------------------------------------------
class DiffusionHistory(NamedTuple):
    r"""What :func:`fit` returns: the loss of each update (the batch mean of the continuous-time diffusion
    term, nats per example: the part of :math:`-\mathcal{L}` that depends on the network), and the
    wall-clock seconds since the start at each update."""

    loss: list[float]
    seconds: list[float]


def fit(model: Diffusion, x: Tensor, steps: int, *, batch_size: int = 256, lr: float = 2e-3,
        ema: float = 0.999, seed: int = 0, progress: bool | None = None,
        callback: Callable[[int, Diffusion], None] | None = None) -> DiffusionHistory:
    r"""Train ``model`` on the rows of ``x`` by maximising the continuous-time ELBO (:func:`elbo`, ``n_t=1``).

    The reconstruction and prior terms of the bound do not depend on the network (the encoder and
    :math:`p(x \mid z_0)` are fixed), so each update minimises the diffusion term alone: for a minibatch,
    stratified times :math:`t`, noise :math:`\epsilon`, and the loss
    :math:`-\tfrac12\lambda'_t\|\epsilon - \hat\epsilon_\theta(z_t; \lambda_t)\|^2` averaged over the batch.
    Adam (``lr``, cosine-annealed to 0 over ``steps`` updates), minibatches drawn without replacement
    (reshuffled every pass), and an exponential moving average of the weights with decay ``ema``, the
    weights ``model`` holds at the end (``ema=0``: the last weights). Seeded end to end by ``seed``: the
    data order, times and noise come from a generator of its own, and a network that draws from PyTorch's
    global generator (dropout) gets it seeded by ``seed`` (under :func:`vaelib.model.seeded`); the caller's
    global generator is left as it was.

    Args:
        model: the :class:`Diffusion` to train (in place; it ends holding the averaged weights).
        x: training data ``(n, d)``, in the likelihood's support (on the grid for a model with ``levels``).
        steps: the number of updates.
        batch_size: examples per update (at most ``n``).
        lr: Adam's initial learning rate.
        ema: the decay of the moving average, in ``[0, 1)``.
        seed: seeds the data order, the times and the noise.
        progress: show a progress bar; ``None`` shows one unless ``VAELIB_PROGRESS=0`` is set.
        callback: called as ``callback(step, averaged_model)`` every 500 updates and at the end (for a curve
            of the bound against training time; the model passed holds the averaged weights).

    Raises:
        ValueError, TypeError: a bad argument, or data outside the likelihood's support.
        ValueError: also a model whose tensors were made inside ``torch.inference_mode()`` (they can never
            be trained). Called inside ``torch.no_grad()`` or ``torch.inference_mode()``, ``fit`` trains
            with autograd on and leaves the caller's modes as they were.
        FloatingPointError: the loss became NaN or infinite. The model then keeps its last weights (from
            before the failing update), not their average; so it does after an interrupt.
    """
    _check_model(model)
    x = model.check_z(x, "x")
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size, maximum=x.shape[0])
    lr = check_float("lr", lr, minimum=0, strict=True)
    ema = check_float("ema", ema, minimum=0)
    if ema >= 1:
        raise ValueError(f"ema must be < 1, got {ema}")
    seed = check_int("seed", seed, minimum=0)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    made_in_inference = [name for name, t in model.state_dict().items() if t.is_inference()]
    if made_in_inference:
        raise ValueError(f"{', '.join(made_in_inference)} of the model were made inside torch.inference_mode(), "
                         "and such tensors can never be trained: build the model outside inference mode")
    if x.is_inference():  # data made in inference mode: a normal copy, so that autograd may use it
        with torch.inference_mode(False):
            x = x.clone()
    lik = model.likelihood(torch.zeros(1, model.x_dim, dtype=x.dtype, device=x.device))
    if not bool(lik.support.check(x).all()):
        raise ValueError(f"x lies outside the support of the likelihood {type(lik).__name__} ({lik.support})")
    show = _progress_default() if progress is None else bool(progress)
    g = torch.Generator(device=x.device).manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, fused=True if x.device.type in ("cpu", "cuda") else None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    with torch.inference_mode(False):  # the average must be a normal tensor, whatever the caller's mode
        averaged = copy.deepcopy(model)
    for p in averaged.parameters():
        p.requires_grad_(False)
    losses: list[float] = []
    seconds: list[float] = []
    start = time.perf_counter()
    n = x.shape[0]
    order = torch.randperm(n, generator=g, device=x.device)
    pos = 0
    was_training = model.training
    model.train()
    try:
        # A network of one's own may draw from the global generator (dropout): seed it from ``seed`` and
        # give the caller's generator back afterwards, whatever happens.
        with seeded(seed), torch.inference_mode(False), torch.enable_grad():
            for step in tqdm(range(1, steps + 1), desc="diffusion", unit="step", disable=not show, leave=False):
                if pos + batch_size > n:
                    order = torch.randperm(n, generator=g, device=x.device)
                    pos = 0
                xb = x[order[pos:pos + batch_size]]
                pos += batch_size
                eps = torch.randn(xb.shape, generator=g, dtype=xb.dtype, device=xb.device)
                loss = _diffusion_term(model, xb, eps, None, g).mean()
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(f"the loss became {float(loss)} at update {step}: lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for pa, p in zip(averaged.parameters(), model.parameters()):
                        pa.lerp_(p.detach(), 1 - ema)
                losses.append(float(loss.detach()))
                seconds.append(time.perf_counter() - start)
                if callback is not None and (step % 500 == 0 or step == steps):
                    callback(step, averaged)
    finally:
        model.train(was_training)
    with torch.inference_mode(False), torch.no_grad():
        for p, pa in zip(model.parameters(), averaged.parameters()):
            p.copy_(pa)
    return DiffusionHistory(losses, seconds)


# --- sampling -----------------------------------------------------------------------------------------
def reverse_process(model: Diffusion, n: int, steps: int, *, generator: torch.Generator | None = None,
                    noise: Tensor | None = None) -> Tensor:
    r"""Run the generative chain: :math:`z_1 \sim \mathcal{N}(0, I)`, then ``steps`` ancestral steps
    :math:`z_s \sim p(z_s \mid z_t)` on the grid :math:`t_i = i/T`.

    Returns:
        ``(steps + 1, n, d)``: :math:`z` at :math:`t = 1, (T-1)/T, \dots, 0` (row ``k`` at :math:`t = 1 - k/T`).

    Args:
        noise: the standard normal draws to use, ``(steps + 1, n, d)``: ``noise[0]`` is :math:`z_1`,
            ``noise[k]`` the noise of step ``k``; default drawn with ``generator``.
    """
    _check_model(model)
    steps = check_int("steps", steps)
    n = check_count("n", n, model.x_dim * (steps + 1))
    check_generator("generator", generator)
    shape = (steps + 1, n, model.x_dim)
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=model.dtype, device=model.device)
    else:
        noise = check_tensor("noise", noise)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (steps + 1, n, d), got {tuple(noise.shape)}")
        model.check_z(noise[0], "noise")
    out = [noise[0]]
    z = noise[0]
    with torch.no_grad():
        for k in range(1, steps + 1):
            t = torch.tensor((steps - k + 1) / steps, dtype=z.dtype, device=z.device)
            s = torch.tensor((steps - k) / steps, dtype=z.dtype, device=z.device)
            step = model.reverse(z, s, t)
            z = step.loc + step.scale * noise[k]
            out.append(z)
    return torch.stack(out)


def sample(model: Diffusion, n: int, steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    r"""``n`` draws :math:`x \sim p(x)`: :func:`reverse_process`, then :math:`x \sim p(x \mid z_0)`."""
    z = reverse_process(model, n, steps, generator=generator)[-1]
    return model.likelihood(z).sample(generator=generator)


# --- checks: Tweedie and an exactly diffused mixture ----------------------------------------------------
def tweedie(score: Tensor, z_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    r"""Tweedie's formula, :math:`\mathbb{E}[x \mid z_t] = (z_t + \sigma_t^2 \nabla \log p(z_t))/\alpha_t`."""
    z_t = check_tensor("z_t", z_t)
    score = check_tensor("score", score)
    if score.shape != z_t.shape:
        raise ValueError(f"score and z_t must have the same shape, got {tuple(score.shape)} and {tuple(z_t.shape)}")
    alpha = _positive("alpha", alpha)
    sigma = _positive("sigma", sigma)
    return (z_t + sigma ** 2 * score) / alpha


def _positive(name: str, v: object) -> Tensor | float:
    """A positive finite number, or a tensor of them (a ``TypeError``/``ValueError`` naming ``name`` otherwise)."""
    if isinstance(v, Tensor):
        v = check_tensor(name, v)
        if not bool((v > 0).all()):
            raise ValueError(f"{name} must be positive, got values down to {float(v.min()):.4g}")
        return v
    return check_float(name, v, minimum=0, strict=True)


def diffused_mixture(mixture: MixtureSameFamily, schedule: Schedule, t: float) -> MixtureSameFamily:
    r"""The exact marginal :math:`p(z_t) = \int q(z_t \mid x) p(x)\,\mathrm{d}x` of Gaussian-mixture data:
    component :math:`k` becomes :math:`\mathcal{N}(\alpha_t\mu_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)`.

    ``mixture`` is a ``MixtureSameFamily`` of ``MultivariateNormal`` components (one batch of them).
    """
    if not isinstance(mixture, MixtureSameFamily) or not isinstance(mixture.component_distribution, MultivariateNormal):
        raise TypeError("mixture must be a torch.distributions.MixtureSameFamily of MultivariateNormal components")
    _check_schedule(schedule)
    comp = mixture.component_distribution
    tt = check_time("t", t, like=comp.loc)
    if tt.dim() != 0:
        raise ValueError(f"t must be a single time (a number or a 0-d tensor), got shape {tuple(tt.shape)}")
    a = schedule.alpha(tt)
    s = schedule.sigma(tt)
    d = comp.loc.shape[-1]
    eye = torch.eye(d, dtype=comp.loc.dtype, device=comp.loc.device)
    cov = a ** 2 * comp.covariance_matrix + s ** 2 * eye
    return MixtureSameFamily(Categorical(logits=mixture.mixture_distribution.logits),
                             MultivariateNormal(a * comp.loc, covariance_matrix=cov))


# --- export for the in-page sampler -------------------------------------------------------------------
FORMAT = "vaelib-diffusion/1"


def export_reverse_process(model: Diffusion, steps: int) -> dict[str, Any]:
    r"""A :class:`Diffusion` with a :class:`DenoisingMLP` as a JSON-ready ``dict`` for the in-page sampler.

    Returns ``{"format", "x_dim", "steps", "logsnr", "omega", "layers"}``: ``logsnr`` is
    :math:`\lambda` at :math:`t = 1 - k/T`, ``k = 0..T`` (floats, computed by the schedule in float64),
    ``omega`` the embedding's frequencies, and ``layers`` the network's ``nn.Linear`` layers in order
    (input, then two per block, then output), each ``{"in", "out", "weight", "bias"}`` base64 of little-endian
    float32, a weight ``(out, in)`` row-major. Raises ``ValueError`` for any other network.
    """
    _check_model(model)
    steps = check_int("steps", steps)
    net = model.net
    if type(net) is not DenoisingMLP:
        raise ValueError(f"only a model whose net is a vaelib.diffusion.DenoisingMLP can be exported, got "
                         f"{type(net).__name__}")
    linears = [net.inp, *[lin for block in net.hidden for lin in block], net.out]
    for lin in linears:
        if not bool(torch.isfinite(lin.weight).all()) or not bool(torch.isfinite(lin.bias).all()):
            raise ValueError("the network has non-finite weights")
    t = torch.tensor([(steps - k) / steps for k in range(steps + 1)], dtype=torch.float64)
    return {
        "format": FORMAT,
        "x_dim": model.x_dim,
        "steps": steps,
        "blocks": net.blocks,
        "logsnr": [float(v) for v in model.schedule.logsnr(t)],
        "omega": [float(v) for v in net.omega.to(torch.float64)],
        "layers": [{"in": lin.in_features, "out": lin.out_features, "weight": _b64_float32(lin.weight),
                    "bias": _b64_float32(lin.bias)} for lin in linears],
    }
