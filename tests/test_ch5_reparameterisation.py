"""The identities chapter 5 (the reparameterisation trick) asserts, generalised over seeds and sizes.

Each test mirrors a self-check of ``book/ch5_reparameterisation.md`` but imports only ``vaelib``.
Statistical checks compare with the exact answer in units of a standard error estimated from the
draws; every generator is seeded, so each test is deterministic, and 5 standard errors (two-sided
normal tail 5.7e-7) leave a correct implementation no realistic chance of failing on any seed.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import vaelib

DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(estimate: float, truth: float, se: float, k: float = 5.0) -> bool:
    return abs(estimate - truth) < k * se


def variance_and_se(draws: torch.Tensor) -> tuple[float, float]:
    """Sample variance of 1-D draws and its standard error, from the squared deviations."""
    sq = (draws - draws.mean()).pow(2)
    return sq.mean().item(), (sq.std() / math.sqrt(len(sq))).item()


# --- sample() blocks the gradient, rsample() does not -------------------------------------------


@pytest.mark.parametrize("seed", [0, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_and_rsample_same_numbers_only_rsample_differentiable(seed, dtype):
    mu = torch.randn(2, 3, dtype=dtype, generator=gen(seed)).requires_grad_(True)
    logvar = torch.randn(2, 3, dtype=dtype, generator=gen(seed + 1)).requires_grad_(True)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    torch.manual_seed(seed)
    z_sample = q.sample((5,))
    torch.manual_seed(seed)
    z_rsample = q.rsample((5,))
    assert torch.equal(z_sample, z_rsample)
    assert z_sample.grad_fn is None and not z_sample.requires_grad
    assert z_rsample.grad_fn is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        z_sample.sum().backward()
    # vaelib.reparameterize draws the same numbers from a generator in the same state.
    z = vaelib.reparameterize(mu.detach(), logvar.detach(), 5, generator=gen(seed))
    assert torch.equal(z, z_rsample.detach())


# --- both estimators are unbiased; their variances (proposition prop-toy-variance) ----------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("d", [1, 3, 6])
def test_estimators_unbiased_on_toy(seed, d):
    """eq. toy-gradient: d/dmu E||z - a||^2 = 2(mu - a), d/dlogvar = sigma^2."""
    g0 = gen(1000 + seed)
    mu = torch.randn(d, generator=g0, dtype=DTYPE)
    logvar = 0.5 * torch.randn(d, generator=g0, dtype=DTYPE)
    a = torch.randn(d, generator=g0, dtype=DTYPE)
    f = lambda z: (z - a).pow(2).sum(-1)  # noqa: E731
    truth = {"mu": 2 * (mu - a), "logvar": logvar.exp()}
    S = 40_000
    for estimator in (vaelib.score_function_grad, vaelib.pathwise_grad):
        g = estimator(f, mu, logvar, S, generator=gen(seed))
        for param in ("mu", "logvar"):
            draws = getattr(g, param)
            se = draws.std(0) / math.sqrt(S)
            assert ((draws.mean(0) - truth[param]).abs() < 5 * se).all(), (estimator, param)


@pytest.mark.parametrize("d", [1, 2, 5, 12])
def test_score_function_variance_grows_like_d_squared(d):
    """At mu = a = 0, sigma = 1 one score-function draw of d/dmu_1 has variance (d + 2)(d + 4)."""
    zero = torch.zeros(d, dtype=DTYPE)
    f = lambda z: z.pow(2).sum(-1)  # noqa: E731
    sf = vaelib.score_function_grad(f, zero, zero, 100_000, generator=gen(d)).mu[:, 0]
    pw = vaelib.pathwise_grad(f, zero, zero, 100_000, generator=gen(d)).mu[:, 0]
    v, se = variance_and_se(sf)
    assert within(v, (d + 2) * (d + 4), se)
    v, se = variance_and_se(pw)
    assert within(v, 4.0, se)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(m=st.floats(-3, 3), logvar0=st.floats(-1, 1), seed=st.integers(0, 2**16))
def test_per_draw_variances_d1(m, logvar0, seed):
    """d = 1: score function m^4/s^2 + 14 m^2 + 15 s^2; pathwise 4 s^2 (mu) and s^2 (m^2 + 2 s^2)."""
    s2 = math.exp(logvar0)
    mu = torch.tensor([m], dtype=DTYPE)  # a = 0, so m = mu - a
    logvar = torch.tensor([logvar0], dtype=DTYPE)
    f = lambda z: z.pow(2).sum(-1)  # noqa: E731
    sf = vaelib.score_function_grad(f, mu, logvar, 100_000, generator=gen(seed))
    pw = vaelib.pathwise_grad(f, mu, logvar, 100_000, generator=gen(seed))
    v, se = variance_and_se(sf.mu[:, 0])
    assert within(v, m**4 / s2 + 14 * m**2 + 15 * s2, se)
    v, se = variance_and_se(pw.mu[:, 0])
    assert within(v, 4 * s2, se)
    v, se = variance_and_se(pw.logvar[:, 0])
    assert within(v, s2 * (m**2 + 2 * s2), se)


@pytest.mark.parametrize("m", [0.5, 2.0, -3.0])
def test_baseline_variance(m):
    """Exercise ex-ch5-baseline: with b = m^2 + sigma^2 the variance is 8 m^2 + 10 sigma^2 (sigma = 1)."""
    zero = torch.zeros(1, dtype=DTYPE)
    f = lambda z: (z + m).pow(2).sum(-1) - (m**2 + 1.0)  # noqa: E731  (mu = 0, a = -m)
    g = vaelib.score_function_grad(f, zero, zero, 100_000, generator=gen(11)).mu[:, 0]
    se_mean = g.std().item() / math.sqrt(len(g))
    assert within(g.mean().item(), 2 * m, se_mean)
    v, se = variance_and_se(g)
    assert within(v, 8 * m**2 + 10, se)


def _oscillating_variances(w: float, mu: float) -> tuple[float, float]:
    """Exercise ex-ch5-oscillating, eq. oscillating-variances: (V_PW, V_SF) for f(z) = cos(w z), z ~ N(mu, 1)."""
    c2, s2 = math.cos(2 * w * mu) * math.exp(-2 * w**2), math.sin(w * mu) ** 2
    v_pw = w**2 * (0.5 * (1 - c2) - s2 * math.exp(-(w**2)))
    v_sf = 0.5 * (1 + (1 - 4 * w**2) * c2) - w**2 * s2 * math.exp(-(w**2))
    return v_pw, v_sf


@pytest.mark.parametrize("w", [0.3, 0.87, 1.5, 4.0])
@pytest.mark.parametrize("mu0", [0.0, 0.3, 1.2])
def test_oscillating_variances_closed_form_against_monte_carlo(w, mu0):
    """The per-draw variances of the pathwise (-w sin wz) and score-function (cos(wz)(z - mu)) estimates,
    computed by the vaelib estimators themselves, match the closed forms within 5 SE."""
    mu, logvar = torch.tensor([mu0], dtype=DTYPE), torch.zeros(1, dtype=DTYPE)
    f = lambda z: torch.cos(w * z).sum(-1)  # noqa: E731
    truth = -w * math.sin(w * mu0) * math.exp(-(w**2) / 2)
    closed = _oscillating_variances(w, mu0)
    for estimator, v_closed in zip((vaelib.pathwise_grad, vaelib.score_function_grad), closed):
        draws = estimator(f, mu, logvar, 100_000, generator=gen(int(100 * w + 10 * mu0))).mu[:, 0]
        assert within(draws.mean().item(), truth, draws.std().item() / math.sqrt(len(draws)))
        v, se = variance_and_se(draws)
        assert within(v, v_closed, se)


def test_oscillating_crossover_and_limits():
    """At mu = 0.3 the variances cross once, near omega = 0.8704 (not sqrt 2); V_SF -> 1/2, V_PW ~ w^2/2;
    the difference V_PW - V_SF is 1/2 [(w^2 - 1) + (3 w^2 - 1) cos(2 w mu) e^(-2 w^2)]."""
    diffs = [(w, _oscillating_variances(w, 0.3)) for w in torch.linspace(0.05, 8, 800).tolist()]
    for w, (v_pw, v_sf) in diffs:
        expected = 0.5 * ((w**2 - 1) + (3 * w**2 - 1) * math.cos(0.6 * w) * math.exp(-2 * w**2))
        assert abs((v_pw - v_sf) - expected) < 1e-12 * max(1.0, v_pw)
    signs = [v_pw > v_sf for _, (v_pw, v_sf) in diffs]
    flips = [i for i in range(1, len(signs)) if signs[i] != signs[i - 1]]
    assert len(flips) == 1
    assert 0.86 < diffs[flips[0]][0] < 0.88
    v_pw, v_sf = _oscillating_variances(8.0, 0.3)
    assert abs(v_sf - 0.5) < 1e-14 and abs(v_pw / 64 - 0.5) < 1e-2


def test_lognormal_pathwise_unbiased():
    """Exercise ex-ch5-lognormal: d/dmu E[e^z] = e^(mu + s^2/2), d/dlogvar = s^2/2 e^(mu + s^2/2)."""
    for seed, (m, lv) in enumerate([(0.3, -0.7), (-1.0, 0.5), (0.0, 0.0)]):
        mu, logvar = torch.tensor([m], dtype=DTYPE), torch.tensor([lv], dtype=DTYPE)
        mean_w = math.exp(m + 0.5 * math.exp(lv))
        g = vaelib.pathwise_grad(lambda z: z.exp().sum(-1), mu, logvar, 100_000, generator=gen(seed))
        for draws, truth in [(g.mu[:, 0], mean_w), (g.logvar[:, 0], 0.5 * math.exp(lv) * mean_w)]:
            assert within(draws.mean().item(), truth, draws.std().item() / math.sqrt(len(draws)))


# --- vaelib.reparameterize: shape, moments, gradients ---------------------------------------------


@settings(max_examples=15, deadline=None, derandomize=True)
@given(batch=st.integers(1, 3), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_reparameterize_moments(batch, d, seed):
    g0 = gen(seed)
    mu = 3 * torch.randn(batch, d, generator=g0, dtype=DTYPE)
    logvar = torch.randn(batch, d, generator=g0, dtype=DTYPE)
    n = 50_000
    z = vaelib.reparameterize(mu, logvar, n_samples=n, generator=gen(seed + 1))
    assert z.shape == (n, batch, d)
    var = logvar.exp()
    assert ((z.mean(0) - mu).abs() < 5 * var.sqrt() / math.sqrt(n)).all()
    assert ((z.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_reparameterize_gradients(seed, n):
    """sum(z).backward(): d/dmu = n exactly, d/dlogvar = sigma/2 * sum_s eps_s."""
    g0 = gen(50 + seed)
    mu = torch.randn(2, 3, generator=g0, dtype=DTYPE).requires_grad_(True)
    logvar = torch.randn(2, 3, generator=g0, dtype=DTYPE).requires_grad_(True)
    vaelib.reparameterize(mu, logvar, n_samples=n, generator=gen(seed)).sum().backward()
    eps = torch.randn((n, 2, 3), generator=gen(seed), dtype=DTYPE)
    assert torch.equal(mu.grad, torch.full((2, 3), float(n), dtype=DTYPE))
    expected = 0.5 * torch.exp(0.5 * logvar.detach()) * eps.sum(0)
    torch.testing.assert_close(logvar.grad, expected, rtol=1e-12, atol=1e-12)


# --- a finite-difference check through the whole ELBO ------------------------------------------------


def _elbo_setup(likelihood: str, hidden: tuple[int, ...], z_dim: int, seed: int):
    digits = vaelib.data.load_digits_8x8().subset(slice(8 * seed, 8 * seed + 6))
    if likelihood == "bernoulli":
        x = digits.binarized(gen(seed)).images.to(DTYPE)
    else:
        x = digits.images.to(DTYPE)
    model = vaelib.VAE(x_dim=64, z_dim=z_dim, hidden=hidden, likelihood=likelihood, seed=seed).to(DTYPE)
    params = list(model.parameters())
    theta0 = parameters_to_vector(params).detach().clone()

    def elbo_sum(theta: torch.Tensor, noise_seed: int = 7) -> torch.Tensor:
        vector_to_parameters(theta, params)
        return vaelib.elbo(model, x, n_samples=3, generator=gen(noise_seed)).elbo.sum()

    return model, x, params, theta0, elbo_sum


def _in_encoder(model: vaelib.VAE) -> torch.Tensor:
    """Which entries of the flat parameter vector (``model.parameters()`` order) are the encoder's, by name."""
    return torch.cat([torch.full((p.numel(),), n.startswith("encoder.")) for n, p in model.named_parameters()])


@pytest.mark.parametrize(
    "likelihood,hidden,z_dim,seed",
    [("bernoulli", (16,), 2, 0), ("bernoulli", (), 3, 1), ("gaussian", (8,), 1, 2), ("gaussian", (), 2, 3)],
)
def test_elbo_gradient_matches_finite_differences(likelihood, hidden, z_dim, seed):
    """With the noise fixed, autograd's directional derivatives equal central differences (h = 1e-6).

    Rounding error of the difference is about 1e-16 |ELBO| / h, at most ~1e-7 nats for these sums of a
    few hundred nats; the truncation error is O(h^2). 1e-6 nats leaves a safety margin.
    """
    model, x, params, theta0, elbo_sum = _elbo_setup(likelihood, hidden, z_dim, seed)
    in_encoder = _in_encoder(model)
    value = elbo_sum(theta0)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])
    h = 1e-6
    g0 = gen(100 + seed)
    for mask in (torch.ones_like(in_encoder), in_encoder, ~in_encoder):
        v = torch.randn(theta0.shape, generator=g0, dtype=DTYPE) * mask
        v /= v.norm()
        with torch.no_grad():
            fd = (elbo_sum(theta0 + h * v) - elbo_sum(theta0 - h * v)) / (2 * h)
        assert abs(fd - grad @ v) < 1e-6
    vector_to_parameters(theta0, params)


@pytest.mark.parametrize("seed", range(3))
def test_detached_sample_gives_a_different_encoder_gradient(seed):
    """A detached draw (as from sample()) gives the same ELBO value but misses the path through z."""
    model, x, params, theta0, elbo_sum = _elbo_setup("bernoulli", (16,), 2, seed)
    value = elbo_sum(theta0)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])
    mu, logvar = model.encode(x)
    z = vaelib.reparameterize(mu, logvar, 3, generator=gen(7)).detach()
    blocked = (model.log_px_z(x, z).mean(0) - vaelib.gaussian_kl(mu, logvar)).sum()
    grad_blocked = torch.cat([g.reshape(-1) for g in torch.autograd.grad(blocked, params)])
    torch.testing.assert_close(blocked, value, rtol=1e-12, atol=1e-12)
    enc = _in_encoder(model)
    # The decoder's gradient is unchanged; the encoder's differs by the reconstruction's path.
    torch.testing.assert_close(grad_blocked[~enc], grad[~enc], rtol=1e-12, atol=1e-12)
    assert (grad_blocked[enc] - grad[enc]).norm() > 1e-3 * grad[enc].norm()
