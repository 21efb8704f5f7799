r"""Estimating the evidence :math:`\log p_\theta(x)` with importance sampling (the IWAE bound).

.. math:: \mathcal{L}_K(x) = \mathbb{E}\Bigl[\log \frac1K \sum_{k=1}^K
          \frac{p_\theta(x, z^{(k)})}{q_\phi(z^{(k)}|x)}\Bigr], \qquad z^{(k)} \sim q_\phi(z|x)

:math:`\mathcal{L}_1` is the ELBO, :math:`\mathcal{L}_K \le \mathcal{L}_{K+1} \le \log p_\theta(x)`, and
:math:`\mathcal{L}_K \to \log p_\theta(x)` as :math:`K \to \infty` (Burda, Grosse & Salakhutdinov 2016).
Chapter 6 uses it to measure the gap between the ELBO and the log-likelihood on real digits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ._validate import check_count, check_generator, check_int
from .distributions import draw, log_prob
from .folding import FoldedDecoder, folded_log_likelihood
from .model import VAE, check_data_support, check_support, is_builtin_mlp, run_likelihood, run_posterior, run_prior

#: Elements of the largest ``(k, batch, x_dim)`` decoder output built at once by :func:`log_likelihood`.
#: 2**20 floats (4 MiB) keep each chunk near the cache, and at K = 1000 on MNIST give one example per
#: chunk, where the decoder is folded (:mod:`vaelib.folding`): on a 2-core CPU, K = 1000 for 1,000 digits took
#: 3.8-4.5 s with it against 7.1-7.6 s with 2**24 (several examples per chunk, unfolded).
CHUNK_ELEMENTS = 1 << 20

#: Fewest samples per chunk for which :func:`log_likelihood` folds the decoder (:mod:`vaelib.folding`): below
#: it, the per-example set-up costs more than the folding saves.
FOLD_MIN_SAMPLES = 100

def iwae_bound(
    model: VAE, x: Tensor, k: int, generator: torch.Generator | None = None, *, c: Any = None
) -> Tensor:
    r"""One draw of the importance-weighted bound :math:`\mathcal{L}_K` per example, in nats.

    .. math:: \log \frac1K \sum_{k} \exp\bigl(\log p_\theta(x|z^{(k)}) + \log p(z^{(k)})
              - \log q_\phi(z^{(k)}|x)\bigr), \qquad z^{(k)} \sim q_\phi(z|x)

    computed with log-sum-exp, so it never overflows, from the model's ``posterior``, ``prior`` and
    ``likelihood``. Differentiable (it is the IWAE training objective, :class:`vaelib.objectives.IWAE`).
    For large ``k`` or many examples prefer :func:`log_likelihood`, which works in memory-bounded chunks.

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(batch, x_dim)``.
        k: number of importance samples ``1 <= K <=`` :data:`MAX_K` (all of them are held at once).
        generator: seeded ``torch.Generator``.
        c: context passed to the model's three methods, or ``None``.

    Returns:
        ``(batch,)``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    k = check_count("k", k, per_item=x.shape[0] * (model.x_dim + model.z_dim), maximum=MAX_K)
    check_generator("generator", generator)
    q = run_posterior(model, x, c)
    return torch.logsumexp(log_weights(model, x, q, k, generator, c), 0) - math.log(k)


def log_weights(
    model: VAE,
    x: Tensor,
    q: Distribution,
    k: int,
    generator: torch.Generator | None,
    c: Any = None,
    *,
    checked: bool = False,
    z: Tensor | None = None,
) -> Tensor:
    r"""Log importance weights :math:`\log w = \log p_\theta(x|z) + \log p(z) - \log q_\phi(z|x)` at ``k``
    reparameterised draws :math:`z \sim q` (or at the given ``z``), shape ``(k, batch)``."""
    if z is None:
        z = draw(q, (k,), generator)
    likelihood = run_likelihood(model, z, c)
    if not checked:
        check_support(likelihood, x)
    prior = run_prior(model, c, x.shape[0])
    return log_prob(likelihood, x) + log_prob(prior, z) - log_prob(q, z)


#: The most importance samples per example :func:`log_likelihood` and :func:`iwae_bound` accept: 10**8
#: decoder evaluations take minutes for one digit on a CPU, and no estimate needs more.
MAX_K = 10**8


def _chunks(model: VAE, n: int, k: int, max_elements: int = CHUNK_ELEMENTS) -> tuple[int, int]:
    """How :func:`log_likelihood` splits its work: ``(examples per chunk, samples per chunk)``.

    Each sample of one example costs the widest row of numbers the decoder forms for it: its output
    (``x_dim``) or, for the built-in MLP, a hidden layer, whichever is wider, plus the code (``z_dim``).
    """
    widest = max((model.x_dim, *model.hidden)) if is_builtin_mlp(model) else model.x_dim
    per_sample = widest + model.z_dim
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
    *,
    c: Any = None,
) -> Tensor:
    r"""Estimate :math:`\log p_\theta(x)` per example with the IWAE bound at ``k`` samples, in chunks.

    The same estimator as :func:`iwae_bound`, without gradients, processing examples and samples in
    chunks so that no decoder output (or, for the built-in MLP, hidden layer) larger than
    ``max_elements`` numbers is held at once, and summing the weights chunk by chunk: memory does not
    grow with ``k``. The chunks only change the order of the random draws, not the estimator. (The
    intermediates of a decoder of your own are its own: the bound counts its output.)

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(n, x_dim)``.
        k: importance samples per example (``1 <= k <=`` :data:`MAX_K`); ``k = 1`` is a one-sample ELBO.
        generator: seeded ``torch.Generator``.
        max_elements: memory bound (number of floats of the largest intermediate).
        c: context of ``x`` (a tensor whose rows go with ``x``'s), or ``None``.

    Returns:
        ``(n,)`` estimates in nats (lower bounds in expectation, tight as ``k`` grows).

    For the built-in MLP with one hidden layer and large ``k`` the decoder is evaluated folded
    (:mod:`vaelib.folding`: the same numbers up to rounding, about half the time); every other model goes through its own ``posterior``, ``prior`` and
    ``likelihood``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    k = check_int("k", k, maximum=MAX_K)
    max_elements = check_int("max_elements", max_elements)
    check_generator("generator", generator)
    check_data_support(model, x, c)
    batch, k_chunk = _chunks(model, x.shape[0], k, max_elements)
    # The one fast path: the built-in MLP, one example per chunk and many samples (vaelib.folding).
    if batch == 1 and k_chunk >= FOLD_MIN_SAMPLES and FoldedDecoder.applies(model):
        return folded_log_likelihood(model, x, k, k_chunk, generator)
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        cb = None if c is None else c[start : start + batch]
        q = run_posterior(model, xb, cb)
        # log sum_k w_k over the chunks of samples, accumulated as it goes: memory O(chunk), not O(k).
        total = None
        for s in range(0, k, k_chunk):
            log_w = log_weights(model, xb, q, min(k_chunk, k - s), generator, cb, checked=True)
            chunk = torch.logsumexp(log_w, 0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
        out.append(total - math.log(k))
    return torch.cat(out)
