"""vaelib.posteriors: the full-covariance Gaussian and the IAF posterior, alone and inside a vaelib.VAE.

The full-covariance encoder's matrices are rebuilt here element by element from its heads' outputs, and
its KL is checked against ``torch.distributions.kl_divergence`` between two ``MultivariateNormal`` and a
Monte Carlo estimate. The IAF encoder's density is checked against the change of variables with a
brute-force Jacobian of the whole flow (autograd), its two scoring paths (cached draw, inversion) against
each other, and its Monte Carlo KL in :func:`vaelib.elbo` against an independent estimate.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution, kl_divergence

import vaelib
from vaelib.distributions import draw
from vaelib.flows import IAFTransform
from vaelib.posteriors import LOWER_SCALE, FullCovarianceEncoder, IAFEncoder

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary(n: int, x_dim: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(n, x_dim, generator=_gen(seed)) < 0.3).to(dtype)


def _standard(d: int, dtype=F64) -> MultivariateNormal:
    return MultivariateNormal(torch.zeros(d, dtype=dtype), torch.eye(d, dtype=dtype))


def _perturb(module: torch.nn.Module, std: float, seed: int) -> None:
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- FullCovarianceEncoder --------------------------------------------------------------------------

def _full(x_dim=10, z_dim=4, seed=0, perturbed=True) -> FullCovarianceEncoder:
    torch.manual_seed(seed)
    enc = FullCovarianceEncoder(x_dim, z_dim, hidden=(16,)).double()
    if perturbed:
        _perturb(enc.to_lower, 1.0, seed + 1)
    return enc


def test_full_covariance_encoder_starts_diagonal():
    enc = _full(perturbed=False)
    x = _binary(6, 10, dtype=F64)
    q = enc(x)
    assert isinstance(q, MultivariateNormal)
    assert q.batch_shape == (6,) and q.event_shape == (4,)
    L = q.scale_tril
    assert torch.all(L - torch.diag_embed(torch.diagonal(L, dim1=-2, dim2=-1)) == 0)
    h = enc.body(x)
    torch.testing.assert_close(q.loc, enc.to_mu(h), rtol=0, atol=0)
    torch.testing.assert_close(torch.diagonal(q.covariance_matrix, dim1=-2, dim2=-1), enc.to_logvar(h).exp(),
                               rtol=1e-12, atol=0)


def _expected_covariance(enc: FullCovarianceEncoder, x: torch.Tensor) -> torch.Tensor:
    """(I + M) diag(sigma^2) (I + M)^T, with M filled row by row from the to_lower head (scaled)."""
    h = enc.body(x)
    sigma2 = enc.to_logvar(h).exp()
    lower = LOWER_SCALE * enc.to_lower(h)
    d = enc.z_dim
    out = []
    for b in range(x.shape[0]):
        M = torch.zeros(d, d, dtype=x.dtype)
        k = 0
        for i in range(d):
            for j in range(i):
                M[i, j] = lower[b, k]
                k += 1
        A = torch.eye(d, dtype=x.dtype) + M
        out.append(A @ torch.diag(sigma2[b]) @ A.T)
    return torch.stack(out)


def test_full_covariance_scale_tril_and_covariance():
    enc = _full(seed=3)
    x = _binary(5, 10, seed=4, dtype=F64)
    q = enc(x)
    L = q.scale_tril
    assert torch.all(torch.triu(L, 1) == 0)
    assert torch.all(torch.diagonal(L, dim1=-2, dim2=-1) > 0)
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    assert L[:, rows, cols].abs().min() > 0          # the perturbation made every entry below the diagonal nonzero
    expected = _expected_covariance(enc, x)
    torch.testing.assert_close(L @ L.transpose(-1, -2), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.covariance_matrix, expected, rtol=1e-12, atol=1e-14)
    # and the density is that of the Gaussian with this covariance, built independently
    ref = MultivariateNormal(q.loc, covariance_matrix=expected)
    z = torch.randn(3, 5, 4, generator=_gen(5), dtype=F64)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=1e-12, atol=1e-12)


def _full_vae(seed=0, x_dim=12, z_dim=3) -> vaelib.VAE:
    torch.manual_seed(seed)
    enc = FullCovarianceEncoder(x_dim, z_dim, hidden=(16,))
    return vaelib.VAE(x_dim, z_dim, hidden=(16,), encoder=enc, seed=seed).double()


def test_full_covariance_kl_is_closed_form_and_right():
    model = _full_vae(seed=6)
    _perturb(model.encoder.to_lower, 1.0, 7)
    _perturb(model.encoder.to_mu, 0.3, 8)
    x = _binary(4, 12, seed=9, dtype=F64)
    terms = vaelib.elbo(model, x, n_samples=2, generator=_gen(10))
    assert terms.kl_closed_form is True
    q = model.posterior(x)
    assert isinstance(q, MultivariateNormal)
    ref = kl_divergence(MultivariateNormal(q.loc, covariance_matrix=q.covariance_matrix), _standard(3))
    torch.testing.assert_close(terms.kl, ref, rtol=1e-10, atol=1e-12)
    # Monte Carlo: E_q[log q(z) - log N(z; 0, I)], within 4 standard errors
    S = 20000
    torch.manual_seed(11)
    with torch.no_grad():
        z = q.sample((S,))
        ratio = q.log_prob(z) - _standard(3).log_prob(z)
    est, se = ratio.mean(0), ratio.std(0) / math.sqrt(S)
    assert torch.all((est - terms.kl.detach()).abs() < 4 * se), (est, terms.kl, se)


def test_full_covariance_gradients_reach_to_lower():
    for perturbed in (False, True):  # at the diagonal start (M = 0) too: z = mu + L eps moves with M
        model = _full_vae(seed=12)
        if perturbed:
            _perturb(model.encoder.to_lower, 1.0, 13)
        x = _binary(8, 12, seed=14, dtype=F64)
        vaelib.elbo(model, x, n_samples=2, generator=_gen(15)).elbo.mean().backward()
        for name in ("weight", "bias"):
            g = getattr(model.encoder.to_lower, name).grad
            assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0, (perturbed, name)


def test_full_covariance_save_load_round_trip(tmp_path):
    model = _full_vae(seed=16)
    _perturb(model.encoder.to_lower, 1.0, 17)
    x = _binary(5, 12, seed=18, dtype=F64)
    path = tmp_path / "full.pt"
    vaelib.save(model, path)
    other = _full_vae(seed=99)
    with torch.no_grad():
        assert not torch.equal(other.posterior(x).scale_tril, model.posterior(x).scale_tril)
    loaded = vaelib.load(path, model=other)
    assert loaded is other
    with torch.no_grad():
        q, q2 = model.posterior(x), loaded.posterior(x)
    torch.testing.assert_close(q2.loc, q.loc, rtol=0, atol=0)
    torch.testing.assert_close(q2.scale_tril, q.scale_tril, rtol=0, atol=0)
    assert torch.tril(q2.scale_tril, -1).abs().max() > 0


def test_full_covariance_trains():
    model = _full_vae(seed=19)
    x = _binary(64, 12, seed=20)
    model = model.float()
    before = model.encoder.to_lower.weight.detach().clone()
    history = vaelib.fit(model, x, 1, batch_size=16, lr=1e-2, seed=0, progress=False)
    assert history.epochs == 1 and math.isfinite(history.train_elbo[0])
    assert not torch.equal(model.encoder.to_lower.weight, before)


# --- IAFEncoder -------------------------------------------------------------------------------------

def _iaf(x_dim=12, z_dim=3, steps=2, seed=0, dtype=torch.float32, std=0.3) -> IAFEncoder:
    torch.manual_seed(seed)
    enc = IAFEncoder(x_dim, z_dim, hidden=(16,), steps=steps, made_hidden=(12,), context_dim=6)
    _perturb(enc.mades, std, seed + 1)  # far from the identity
    return enc.to(dtype)


def test_iaf_encoder_shapes_and_structure():
    enc = _iaf()
    x = _binary(5, 12)
    q = enc(x)
    assert isinstance(q, TransformedDistribution)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert len(q.transforms) == 2 and all(isinstance(t, IAFTransform) for t in q.transforms)
    assert [t.made.reverse for t in q.transforms] == [False, True]
    torch.manual_seed(0)
    z = q.rsample((4,))
    assert z.shape == (4, 5, 3) and q.log_prob(z).shape == (4, 5)
    with pytest.raises(ValueError, match="z_dim"):
        IAFEncoder(12, 1)
    with pytest.raises(ValueError, match="steps"):
        IAFEncoder(12, 3, steps=0)


def test_iaf_encoder_rsample_carries_gradients_to_every_parameter():
    enc = _iaf(seed=2)
    x = _binary(6, 12, seed=3)
    torch.manual_seed(4)
    z = enc(x).rsample((3,))
    z.pow(2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"


def test_iaf_encoder_log_prob_is_the_change_of_variables_of_the_whole_flow():
    """log q(z_T|x) = log N(z_0; mu, sigma) - log|det dz_T/dz_0|, the Jacobian of both steps by autograd."""
    enc = _iaf(seed=5, dtype=F64, std=0.5)
    x = _binary(1, 12, seed=6, dtype=F64)
    q = enc(x)
    h = enc.body(x)
    base = Independent(Normal(enc.to_mu(h)[0], (0.5 * enc.to_logvar(h)[0]).exp()), 1)
    t1, t2 = q.transforms
    flow = lambda u: t2._call(t1._call(u.unsqueeze(0)))[0]   # noqa: E731
    for z0 in base.sample((4,)):
        J = jacobian(flow, z0)
        expected = base.log_prob(z0) - torch.linalg.slogdet(J)[1]
        zT = flow(z0).detach().clone().unsqueeze(0)
        torch.testing.assert_close(q.log_prob(zT), expected.unsqueeze(0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (F64, 1e-10)])
def test_iaf_encoder_log_prob_of_its_draws_cached_and_inverted(dtype, tol):
    enc = _iaf(seed=7, dtype=dtype)
    x = _binary(8, 12, seed=8, dtype=dtype)
    q = enc(x)
    torch.manual_seed(9)
    z = q.rsample((5,))
    assert z.dtype == dtype
    cached = q.log_prob(z)
    inverted = q.log_prob(z.detach().clone())
    assert cached.dtype == inverted.dtype == dtype
    torch.testing.assert_close(cached, inverted.detach(), rtol=0, atol=tol)


def _iaf_vae(seed=0, z_dim=3, dtype=torch.float32) -> vaelib.VAE:
    enc = _iaf(x_dim=784, z_dim=z_dim, seed=seed, std=0.3)
    return vaelib.VAE(784, z_dim, hidden=(16,), encoder=enc, seed=seed).to(dtype)


def test_iaf_kl_in_elbo_is_the_monte_carlo_kl():
    model = _iaf_vae(seed=10, dtype=F64)
    x = _binary(3, 784, seed=11, dtype=F64)
    S = 4000
    with torch.no_grad():
        terms = vaelib.elbo(model, x, n_samples=S, generator=_gen(12))
        assert terms.kl_closed_form is False
        assert terms.kl.shape == (3,)
        # the same draws reproduce it exactly: (log q - log p) averaged, log p the standard normal
        q = model.posterior(x)
        z = draw(q, (S,), _gen(12))
        prior = Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1)
        same = (q.log_prob(z.clone()) - prior.log_prob(z)).mean(0)
        torch.testing.assert_close(terms.kl, same, rtol=0, atol=1e-8)
        # an independent estimate from other draws agrees within 4 standard errors (of the difference)
        torch.manual_seed(13)
        z2 = q.sample((S,))
        r2 = q.log_prob(z2) - prior.log_prob(z2)
        r1 = q.log_prob(z.clone()) - prior.log_prob(z)
        se = (r1.var(0) / S + r2.var(0) / S).sqrt()
        assert torch.all((terms.kl - r2.mean(0)).abs() < 4 * se), (terms.kl, r2.mean(0), se)
        assert torch.all(terms.kl > 0)
        torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_iaf_vae_trains_one_epoch(dtype):
    model = _iaf_vae(seed=14, dtype=dtype)
    x = _binary(64, 784, seed=15, dtype=dtype)
    before = [m.to_ms.weight.detach().clone() for m in model.encoder.mades]
    history = vaelib.fit(model, x, 1, batch_size=16, lr=1e-3, seed=0, progress=False)
    assert history.epochs == 1
    assert math.isfinite(history.train_elbo[0]) and math.isfinite(history.train_kl[0])
    for b, m in zip(before, model.encoder.mades):
        assert not torch.equal(m.to_ms.weight, b), "the flow's parameters were not trained"
        assert m.to_ms.weight.dtype == dtype
    with torch.no_grad():
        terms = vaelib.elbo(model, x[:8], n_samples=4, generator=_gen(16))
    assert terms.elbo.dtype == dtype and torch.isfinite(terms.elbo).all()
    assert terms.kl_closed_form is False
