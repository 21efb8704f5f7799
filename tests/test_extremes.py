"""Extreme inputs: log-variances from -50 to 50, logits of +-100, K = 10^5 importance samples, and a
single example. Every result must be finite (where the true value is representable) and correct."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaelib
from vaelib import (
    VAE,
    elbo,
    fit,
    gaussian_kl,
    interpolate,
    iwae_bound,
    kl_normal,
    log_bernoulli,
    log_likelihood,
    log_normal,
    reparameterize,
    sample,
)
from vaelib.toy import LinearGaussian

# Examples per property; VAELIB_HYPOTHESIS_EXAMPLES=2000 makes a soak run.
SETTINGS = settings(
    max_examples=int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40")), deadline=None, database=None
)
F32_MAX = torch.finfo(torch.float32).max

logvars = st.floats(-50, 50, allow_nan=False)
means = st.floats(-1e3, 1e3, allow_nan=False)
logits = st.floats(-100, 100, allow_nan=False)


def _vec(values, dtype=torch.float32):
    return torch.tensor([values], dtype=dtype)


@SETTINGS
@given(st.lists(st.tuples(means, logvars), min_size=1, max_size=6))
def test_gaussian_kl_float32_is_finite_and_matches_float64(pairs):
    mu, logvar = zip(*pairs)
    got = gaussian_kl(_vec(mu), _vec(logvar))
    exact = gaussian_kl(_vec(mu, torch.float64), _vec(logvar, torch.float64))
    assert bool(torch.isfinite(got).all())  # at most 1e3^2 * 6 + e^50 * 6 / 2: well inside float32
    # float32 rounds each term (mu^2, sigma^2, log sigma^2) to ~6e-8 of its size; exp(logvar) also
    # inherits the rounding of logvar itself, amplified |logvar| times.
    scale = sum(m * m + math.exp(lv) * (1 + abs(lv)) + abs(lv) + 1 for m, lv in pairs)
    assert abs(float(got) - float(exact)) <= 1e-6 * scale


@SETTINGS
@given(st.lists(st.tuples(means, logvars, means, logvars), min_size=1, max_size=4))
def test_kl_normal_float32_is_finite_when_representable(rows):
    mq, lq, mp, lp = (_vec(v) for v in zip(*rows))
    got = kl_normal(mq, lq, mp, lp)
    exact = float(kl_normal(*(t.double() for t in (mq, lq, mp, lp))))
    assert not bool(torch.isnan(got).any())
    if exact < F32_MAX / 2:
        assert math.isfinite(float(got))
        ratio = [lq_ - lp_ for lq_, lp_ in zip(*(v.tolist()[0] for v in (lq, lp)))]
        # As above: exp of a rounded argument r is off by |r| roundings.
        scale = sum(math.exp(r) * (1 + abs(r)) + abs(r) + 1 for r in ratio) + sum(
            (a - b) ** 2 * math.exp(-c) * (1 + abs(c))
            for a, b, c in zip(mq[0].tolist(), mp[0].tolist(), lp[0].tolist())
        )
        assert abs(float(got) - exact) <= 1e-6 * scale
    elif exact > 2 * F32_MAX:  # KL(q || p) = e^(lq - lp) / 2 + ... beyond float32: +inf, never NaN
        assert float(got) == math.inf


@SETTINGS
@given(st.lists(st.tuples(means, logvars), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_reparameterize_and_log_normal_at_extreme_variances(pairs, seed):
    mu, logvar = _vec([p[0] for p in pairs]), _vec([p[1] for p in pairs])
    z = reparameterize(mu, logvar, n_samples=3, generator=torch.Generator().manual_seed(seed))
    assert bool(torch.isfinite(z).all())
    lp = log_normal(z, mu, logvar)
    exact = log_normal(z.double(), mu.double(), logvar.double())
    assert bool(torch.isfinite(lp).all())
    # Rounding is relative to the terms: log 2pi, |log sigma^2| and the standardised square.
    scale = (logvar.double().abs() + 2 + ((z.double() - mu.double()) ** 2 * torch.exp(-logvar.double()))).sum(-1)
    assert bool(((lp.double() - exact).abs() <= 1e-5 * scale).all())


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), logits), min_size=1, max_size=8))
def test_log_bernoulli_at_extreme_logits(pairs):
    x, l = _vec([p[0] for p in pairs]), _vec([p[1] for p in pairs])
    l.requires_grad_(True)
    got = log_bernoulli(x, l)
    exact = sum(
        (-math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))) if xi == 1
        else (-math.log1p(math.exp(t)) if t <= 0 else -t - math.log1p(math.exp(-t)))
        for xi, t in pairs
    )
    assert math.isfinite(float(got.detach()))
    assert abs(float(got.detach()) - exact) <= 1e-6 * (1 + sum(abs(t) for _, t in pairs))
    got.sum().backward()
    assert bool(torch.isfinite(l.grad).all()) and bool((l.grad.abs() <= 1).all())


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("logvar", [-50.0, 50.0])
def test_vae_bounds_stay_finite_when_the_encoder_variance_is_extreme(likelihood, logvar):
    model = VAE(6, 2, hidden=(4,), likelihood=likelihood, seed=0)
    with torch.no_grad():
        model.encoder.to_logvar.weight.zero_()
        model.encoder.to_logvar.bias.fill_(logvar)
    x = (torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    terms = elbo(model, x, n_samples=4, generator=torch.Generator().manual_seed(1))
    for t in (terms.elbo, terms.reconstruction, terms.kl):
        assert bool(torch.isfinite(t).all())
    assert bool((terms.kl > 0).all())
    bound = iwae_bound(model, x, k=16, generator=torch.Generator().manual_seed(2))
    assert bool(torch.isfinite(bound).all())
    ll = log_likelihood(model, x, k=16, generator=torch.Generator().manual_seed(2), max_elements=50)
    assert bool(torch.isfinite(ll).all())
    terms.elbo.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("obs_logvar", [-50.0, 50.0])
def test_gaussian_decoder_with_an_extreme_observation_variance(obs_logvar):
    model = VAE(6, 2, hidden=(), likelihood="gaussian", seed=0).double()
    with torch.no_grad():
        model.obs_logvar.fill_(obs_logvar)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = model.log_px_z(x, z)
    out = model.decode(z)
    exact = torch.distributions.Normal(out, math.exp(obs_logvar / 2)).log_prob(x).sum(-1)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=0)


@torch.no_grad()
def test_k_of_a_hundred_thousand_in_memory_bounded_chunks(linear_vae):
    exact_model, lg = linear_vae(x_dim=4, z_dim=2, sigma=0.7, seed=0, encoder="exact")
    x, _ = lg.sample(2, generator=torch.Generator().manual_seed(0))
    log_px = lg.log_evidence(x)
    k = 100_000
    got = log_likelihood(exact_model, x, k=k, generator=torch.Generator().manual_seed(1), max_elements=60_000)
    torch.testing.assert_close(got, log_px, rtol=0, atol=1e-9)  # every weight is p(x): exact
    near_model, _ = linear_vae(x_dim=4, z_dim=2, sigma=0.7, seed=0, encoder="near")
    got = log_likelihood(near_model, x, k=k, generator=torch.Generator().manual_seed(2), max_elements=60_000)
    assert bool(torch.isfinite(got).all())
    assert bool(((got - log_px).abs() < 0.005).all()), got - log_px


@torch.no_grad()
def test_k_of_a_hundred_thousand_for_a_bernoulli_model():
    model = VAE(8, 2, hidden=(4,), seed=0)
    x = (torch.rand(2, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    big = log_likelihood(model, x, k=100_000, generator=torch.Generator().manual_seed(1), max_elements=200_000)
    assert bool(torch.isfinite(big).all())
    ref = elbo(model, x.repeat(2000, 1), generator=torch.Generator().manual_seed(2)).elbo.reshape(2000, 2).mean(0)
    assert bool((big > ref).all())  # the tight bound is above the ELBO


def test_a_single_example_everywhere(linear_vae):
    g = torch.Generator().manual_seed(0)
    model = VAE(6, 2, hidden=(4,), seed=0)
    x = (torch.rand(1, 6, generator=g) < 0.5).float()
    assert elbo(model, x).elbo.shape == (1,)
    assert iwae_bound(model, x, k=3).shape == (1,)
    assert log_likelihood(model, x, k=3, max_elements=1).shape == (1,)
    assert gaussian_kl(torch.zeros(1, 2), torch.zeros(1, 2)).shape == (1,)
    assert reparameterize(torch.zeros(1, 2), torch.zeros(1, 2)).shape == (1, 1, 2)
    assert sample(model, 1).shape == (1, 6)
    assert interpolate(model, x[0], x[0], steps=2).shape == (2, 6)
    h = fit(model, x, 2, valid=x, batch_size=128, progress=False)
    assert h.epochs == 2 and all(math.isfinite(v) for v in h.train_elbo + h.valid_elbo)
    # The smallest linear-Gaussian model: one pixel, one latent; p(x) = N(b, w^2 + sigma^2).
    lg = LinearGaussian(torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 0.3)
    x1 = torch.tensor([[1.7]], dtype=torch.float64)
    ref = -0.5 * (math.log(2 * math.pi * 4.09) + (1.7 - 0.5) ** 2 / 4.09)
    assert float(lg.log_evidence(x1)) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        vaelib.toy.ppca(x1, 1)
