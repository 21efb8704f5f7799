r"""Estimating the evidence :math:`\log p_\theta(x)` with importance sampling (the IWAE bound).

.. math:: \mathcal{L}_K(x) = \mathbb{E}\Bigl[\log \frac1K \sum_{k=1}^K
          \frac{p_\theta(x, z^{(k)})}{q_\phi(z^{(k)}|x)}\Bigr], \qquad z^{(k)} \sim q_\phi(z|x)

:math:`\mathcal{L}_1` is the ELBO, :math:`\mathcal{L}_K \le \mathcal{L}_{K+1} \le \log p_\theta(x)`, and
:math:`\mathcal{L}_K \to \log p_\theta(x)` as :math:`K \to \infty` (Burda, Grosse & Salakhutdinov 2016).
Chapter 6 uses it to measure the gap between the ELBO and the log-likelihood on real digits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import check_generator, check_int
from .model import VAE

#: Elements of the largest ``(k, batch, x_dim)`` decoder output built at once by :func:`log_likelihood`.
#: 2**20 floats (4 MiB) keep each chunk near the cache, and at K = 1000 on MNIST give one example per
#: chunk, where the decoder is folded (:class:`_Folder`): on a 2-core CPU, K = 1000 for 1,000 digits took
#: 4.3-5.6 s with it against 5.3-7.2 s with 2**24 (several examples per chunk, unfolded).
CHUNK_ELEMENTS = 1 << 20

#: Fewest samples per chunk for which :func:`log_likelihood` folds the decoder (:class:`_Folder`): below
#: it, the per-example set-up costs more than the folding saves.
FOLD_MIN_SAMPLES = 100


def iwae_bound(
    model: VAE, x: Tensor, k: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""One draw of the importance-weighted bound :math:`\mathcal{L}_K` per example, in nats.

    .. math:: \log \frac1K \sum_{k} \exp\bigl(\log p_\theta(x|z^{(k)}) + \log p(z^{(k)})
              - \log q_\phi(z^{(k)}|x)\bigr)

    computed with log-sum-exp, so it never overflows. Differentiable (it is the IWAE training objective).
    For large ``k`` or many examples prefer :func:`log_likelihood`, which works in memory-bounded chunks.

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(batch, x_dim)``.
        k: number of importance samples ``K >= 1``.
        generator: seeded ``torch.Generator``.

    Returns:
        ``(batch,)``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    k = check_int("k", k)
    check_generator("generator", generator)
    mu, logvar = model._encode(x)
    return torch.logsumexp(_log_weights(model, x, mu, logvar, k, generator), 0) - math.log(k)


def _log_weights(
    model: VAE,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    k: int,
    generator: torch.Generator | None,
    folder: "_Folder | None" = None,
) -> Tensor:
    r"""Log importance weights :math:`\log p(x|z) + \log p(z) - \log q(z|x)`, shape ``(k, batch)``.

    With a ``folder`` (one example, ``batch == 1``) the decoder runs as :class:`_Folder` describes.
    """
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    if folder is not None:
        log_px_z = folder.log_px_z(x, z.view(k, -1)).unsqueeze(1)
    else:
        log_px_z = model._log_px_z(x, z)
    # log p(z) - log q(z|x) with p = N(0, I) and q = N(mu, sigma^2): the log(2 pi) terms cancel, and
    # z - mu = sigma * eps makes q's quadratic term eps^2 exactly.
    log_pz_minus_log_qz = -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)
    return log_px_z + log_pz_minus_log_qz


class _Folder:
    r"""The decoder, for many samples of one example's :math:`z`, with the always-active units folded.

    For a decoder with one hidden layer, :math:`h = \operatorname{relu}(Wz + b)` and output
    :math:`o = Vh + c`. The :math:`k` samples of :math:`z` come from one :math:`q_\phi(z|x)` and lie close
    together, so many hidden units have the same sign for all of them. A unit that is positive for every
    sample is linear in :math:`z` there, and one that is never positive is zero. With :math:`A` the
    always-active units and :math:`U` the units whose sign varies, exactly

    .. math:: o = (V_A W_A)\,z + (V_A b_A + c) + V_U \operatorname{relu}(W_U z + b_U).

    :math:`V_A W_A` and :math:`V_A b_A + c` form one ``(x_dim, z_dim + 1)`` matrix per example (the biases
    ride along as a last input coordinate fixed at 1), so the big product costs
    :math:`k \cdot x_\text{dim} \cdot (z_\text{dim} + 1 + |U|)` multiplications instead of
    :math:`k \cdot x_\text{dim} \cdot \text{hidden}`; for the book's MNIST models at :math:`K = 1000`,
    the sign of roughly half to two thirds of the hidden units varies. The result equals the plain
    decoder's up to floating-point rounding (the sums run in another order). It is used only where
    it saves work: one example at a time (:func:`log_likelihood` at large ``k``) and a decoder with
    exactly one hidden layer.
    """

    def __init__(self, model: VAE) -> None:
        self.model = model
        (hidden,) = [layer for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
        self.w_b = torch.cat([hidden.weight, hidden.bias.unsqueeze(1)], 1)  # (hidden, z_dim + 1): [W | b]
        self.out_t = model.to_x.weight.t().contiguous()  # (hidden, x_dim): V transposed, rows gathered below
        self.out_bias = model.to_x.bias

    @staticmethod
    def applies(model: VAE) -> bool:
        """Whether ``model``'s decoder has the one hidden layer this needs."""
        return len(model.hidden) == 1

    def log_px_z(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x|z)` ``(k,)`` for one example ``x`` ``(1, x_dim)`` and ``z`` ``(k, z_dim)``.

        For a Bernoulli decoder the output's columns are multiplied by :math:`1 - 2x` inside the product,
        which yields :math:`u = (1 - 2x) \odot o` and :math:`\log p(x|z) = -\sum_j \operatorname{softplus}(u_j)`:
        a sum of small terms of one sign, more accurate in float32 than
        :math:`x \cdot o - \sum_j \operatorname{softplus}(o_j)` (two large sums that nearly cancel), and
        one pass fewer.
        """
        if self.model.likelihood == "bernoulli":
            u = self.decode(z, 1 - 2 * x[0])
            torch._C._nn.softplus(u, 1.0, 40.0, out=u)  # in place: no second (k, x_dim) buffer
            return -u.sum(-1)
        return self.model._log_px_given(x, self.decode(z).unsqueeze(1)).squeeze(1)

    def decode(self, z: Tensor, sign: Tensor | None = None) -> Tensor:
        """The decoder's output ``(k, x_dim)`` for ``z`` ``(k, z_dim)``, times ``sign`` ``(x_dim,)`` if given."""
        z1 = F.pad(z, (0, 1), value=1.0)  # (k, z_dim + 1): [z | 1]
        pre = z1 @ self.w_b.t()  # (k, hidden) pre-activations
        lowest, highest = pre.amin(0), pre.amax(0)  # each unit's extremes over the k samples
        varies = ((lowest <= 0) & (highest > 0)).nonzero().squeeze(1)
        always = (lowest > 0).nonzero().squeeze(1)
        v_always = self.out_t.index_select(0, always)  # (|A|, x_dim): V_A transposed
        folded = self.w_b.index_select(0, always).t() @ v_always  # (z_dim + 1, x_dim): [V_A W_A | V_A b_A]^T
        folded[-1] += self.out_bias
        # One product for everything: inputs [z | 1 | relu(h_U)], weights [folded; V_U transposed].
        inputs = torch.cat([z1, pre.index_select(1, varies).relu_()], 1)  # (k, z_dim + 1 + |U|)
        weights = torch.cat([folded, self.out_t.index_select(0, varies)])  # (z_dim + 1 + |U|, x_dim)
        if sign is not None:
            weights.mul_(sign)
        return inputs @ weights


def _chunks(model: VAE, n: int, k: int, max_elements: int = CHUNK_ELEMENTS) -> tuple[int, int]:
    """How :func:`log_likelihood` splits its work: ``(examples per chunk, samples per chunk)``."""
    per_sample = model.x_dim + model.z_dim
    k_chunk = max(1, min(k, max_elements // per_sample))
    batch = max(1, min(n, max_elements // (k_chunk * per_sample)))
    return batch, k_chunk


@torch.no_grad()
def log_likelihood(
    model: VAE,
    x: Tensor,
    k: int = 1000,
    generator: torch.Generator | None = None,
    max_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    r"""Estimate :math:`\log p_\theta(x)` per example with the IWAE bound at ``k`` samples, in chunks.

    The same estimator as :func:`iwae_bound`, without gradients, processing examples and samples in
    chunks so that no decoder output larger than ``max_elements`` numbers is held at once; any ``k``
    fits in memory. The chunks only change the order of the random draws, not the estimator.

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(n, x_dim)``.
        k: importance samples per example (``>= 1``); ``k = 1`` is a one-sample ELBO.
        generator: seeded ``torch.Generator``.
        max_elements: memory bound (number of floats of the largest intermediate).

    Returns:
        ``(n,)`` estimates in nats (lower bounds in expectation, tight as ``k`` grows).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    k = check_int("k", k)
    max_elements = check_int("max_elements", max_elements)
    check_generator("generator", generator)
    batch, k_chunk = _chunks(model, x.shape[0], k, max_elements)
    # One example per chunk and many samples: fold the decoder's always-active units (see _Folder).
    folder = _Folder(model) if batch == 1 and k_chunk >= FOLD_MIN_SAMPLES and _Folder.applies(model) else None
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        mu, logvar = model._encode(xb)
        log_w = torch.cat(
            [
                _log_weights(model, xb, mu, logvar, min(k_chunk, k - s), generator, folder)
                for s in range(0, k, k_chunk)
            ]
        )
        out.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.cat(out)
