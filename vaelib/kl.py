r"""The Kullback-Leibler divergence between Gaussians, in closed form.

Chapter 2 derives :math:`D_{\mathrm{KL}}` between two Gaussians; chapter 4 specialises it to the
regulariser of the ELBO, the KL from :math:`q_\phi(z|x)=\mathcal{N}(\mu, \operatorname{diag}\sigma^2)`
to the prior :math:`p(z)=\mathcal{N}(0, I)`.

Both are computed in the inputs' dtype (float16/bfloat16 in float32) over its whole finite range: every
per-dimension term is nonnegative and is evaluated without an intermediate that overflows before the
term does, so for finite inputs the KL is never NaN, it is finite whenever the exact value is
representable and ``+inf`` when it is not (one documented exception in :func:`kl_normal`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_same_shape, check_tensor
from .densities import _compute_dtype, _shape_list, _standardised


def _quarter_variance_terms(g: Tensor) -> Tensor:
    r""":math:`(e^{2g} - 1 - 2g)/4` elementwise, for a half log-variance ratio :math:`g = \rho/2`.

    As :math:`a^2 + (a - g/2)` with :math:`a = \operatorname{expm1}(g)/2`, since
    :math:`a^2 + a = (e^{2g} - 1)/4`: ``expm1`` keeps the precision near :math:`g = 0` (the rounding is
    relative to :math:`|g|`, not to 1), exactly 0 at :math:`g = 0`, and :math:`a \le e^{g}/2` never
    overflows while :math:`e^{2g}/4` is representable (``expm1(rho)`` overflows at
    :math:`\rho = \log\text{max}` already). For :math:`g \to -\infty`, :math:`a = -1/2` and the term is
    :math:`-g/2 - 1/4`, finite for any finite :math:`g`.
    """
    a = torch.expm1(g) * 0.5
    return torch.addcmul(torch.sub(a, g, alpha=0.5), a, a)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    r"""KL from a diagonal Gaussian to the standard normal, per example, in nats.

    .. math:: D_{\mathrm{KL}}\bigl(\mathcal{N}(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal{N}(0, I)\bigr)
              = \tfrac12 \sum_{j=1}^{d} \bigl(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1\bigr)

    Implements eq. ``kl-standard-normal`` of chapter 4, as
    :math:`2 \sum_j \bigl[(\mu_j/2)^2 + a_j^2 + (a_j - \log\sigma_j^2/4)\bigr]`,
    :math:`a_j = \operatorname{expm1}(\log\sigma_j^2/2)/2` (exact scalings by powers of 2): accurate to a
    few ulps of the terms :math:`\mu^2, |\sigma^2 - 1|, |\log\sigma^2|` for every finite input, finite
    whenever the KL is representable (e.g. :math:`|\mu|` up to :math:`\sqrt{2\,\text{max}}`,
    :math:`\log\sigma^2` up to :math:`\log(2\,\text{max})`), ``+inf`` beyond.

    Args:
        mu: posterior means, ``(batch, d)`` (or ``(d,)``, or ``(..., d)``).
        logvar: posterior log-variances :math:`\log\sigma^2`, same shape as ``mu``.

    Returns:
        ``(batch,)`` (or a scalar): the KL summed over the ``d`` latent dimensions.
    """
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    check_same_shape("mu", mu, "logvar", logvar)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the last one is summed over)")
    return _gaussian_kl(mu, logvar)


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """:func:`gaussian_kl` without input checks, for the training hot path.

    Quarter terms, each >= 0 and <= the exact KL / 2, so no term and no partial sum overflows unless the
    KL does; the sum is doubled at the end.
    """
    dtype, out_dtype = _compute_dtype(mu, logvar)
    mu, logvar = (t if t.dtype == dtype else t.to(dtype) for t in (mu, logvar))
    half_mu = mu * 0.5
    quarter = torch.addcmul(_quarter_variance_terms(logvar * 0.5), half_mu, half_mu)
    return (quarter.sum(-1) * 2.0).to(out_dtype)


def kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    r"""KL between two diagonal Gaussians :math:`q=\mathcal{N}(\mu_q,\sigma_q^2)`, :math:`p=\mathcal{N}(\mu_p,\sigma_p^2)`.

    .. math:: D_{\mathrm{KL}}(q\,\|\,p) = \tfrac12 \sum_j \Bigl[\log\frac{\sigma_{p,j}^2}{\sigma_{q,j}^2}
              + \frac{\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2}{\sigma_{p,j}^2} - 1\Bigr]

    Implements eq. ``kl-gaussians`` of chapter 2. With ``mu_p = 0`` and ``logvar_p = 0`` it equals
    :func:`gaussian_kl`.

    Computed as :math:`2 \sum_j [(z_j/2)^2 + (e^{\rho_j} - 1 - \rho_j)/4]` with
    :math:`z_j = (\mu_{q,j} - \mu_{p,j})\, e^{-\log\sigma_{p,j}^2/4} e^{-\log\sigma_{p,j}^2/4}` and the
    variance term from :math:`\rho_j/2 = \log\sigma_{q,j}^2/2 - \log\sigma_{p,j}^2/2` (which cannot
    overflow) as in :func:`gaussian_kl`. For finite inputs the result is never NaN, it is finite and
    accurate whenever the exact KL is representable (e.g. ``kl_normal(0, -90, 0, -90) = 0`` and
    ``kl_normal(1e20, 100, 0, 100) = 1.86e-4`` in float32) and ``+inf`` when it overflows. The one limit:
    when :math:`|\mu_{q,j} - \mu_{p,j}|` itself exceeds the dtype's largest value (opposite signs, both
    beyond half of it) the result is ``+inf``, which is exact unless
    :math:`\sigma_{p,j}^2 > (\mu_{q,j} - \mu_{p,j})^2 / \text{max}` (so :math:`\log\sigma_p^2 > 88.7` in
    float32, :math:`709.8` in float64). Accuracy: a few ulps of the terms' sizes, plus the rounding of
    :math:`\rho_j/2`, which perturbs :math:`e^{\rho_j}` by :math:`|\rho_j|` half-ulps (as in any
    formula that forms the log-variance ratio).

    Args:
        mu_q, logvar_q: parameters of ``q``, ``(..., d)``, the same shape.
        mu_p, logvar_p: parameters of ``p``, each broadcastable *to* ``mu_q``'s shape (e.g. ``(d,)``,
            ``(1, d)``, ``(..., 1)`` or 0-d against ``(batch, d)``): the broadcast of all four must be
            ``mu_q``'s shape exactly, so ``p`` neither adds batch dimensions nor stretches a size-1
            latent dimension of ``q``. Anything else is a ``ValueError`` naming the shapes.

    Returns:
        ``(...)``: the KL in nats, summed over the last dimension.
    """
    for name, t in (("mu_q", mu_q), ("logvar_q", logvar_q), ("mu_p", mu_p), ("logvar_p", logvar_p)):
        check_tensor(name, t)
    check_same_shape("mu_q", mu_q, "logvar_q", logvar_q)
    if mu_q.dim() == 0:
        raise ValueError("mu_q must have at least one dimension (the last one is summed over)")
    try:
        shape = torch.broadcast_shapes(mu_q.shape, mu_p.shape, logvar_p.shape)
    except RuntimeError:
        shape = None
    if shape != mu_q.shape:
        shapes = _shape_list({"mu_q": mu_q, "mu_p": mu_p, "logvar_p": logvar_p})
        raise ValueError(f"mu_p and logvar_p must broadcast to mu_q's shape {tuple(mu_q.shape)}, got {shapes}")
    return _kl_normal(mu_q, logvar_q, mu_p, logvar_p)


def _kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """:func:`kl_normal` without input checks (quarter terms, as in :func:`_gaussian_kl`)."""
    dtype, out_dtype = _compute_dtype(mu_q, logvar_q, mu_p, logvar_p)
    mu_q, logvar_q, mu_p, logvar_p = (
        t if t.dtype == dtype else t.to(dtype) for t in (mu_q, logvar_q, mu_p, logvar_p)
    )
    half_ratio = torch.sub(logvar_q * 0.5, logvar_p, alpha=0.5)
    half_z = _standardised(mu_q, mu_p, logvar_p, 0.5)
    quarter = torch.addcmul(_quarter_variance_terms(half_ratio), half_z, half_z)
    return (quarter.sum(-1) * 2.0).to(out_dtype)
