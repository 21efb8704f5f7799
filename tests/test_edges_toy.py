"""vaelib.toy at the edges, against exact arithmetic.

* ``LinearGaussian.log_evidence`` and ``marginal().log_prob`` for sigma/||W|| from 1e-12 to 1e12, for x near
  the model and far from it, in float64 and float32, against log N(x; b, W W^T + sigma^2 I) evaluated with
  mpmath at 80 digits from the same floating-point inputs; the posterior, the log-likelihood and the ELBO
  likewise. Tolerances are the ones stated in the docstrings.
* ``ppca`` on data in an exact subspace (it must raise) and on ill-conditioned but full-rank data (it must
  not), in float32 and float64.
* Half precision refused with a ``TypeError`` naming the argument, everywhere in vaelib.toy.
"""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal

import vaelib
from conftest import HYPOTHESIS_EXAMPLES
from vaelib import toy
from vaelib.toy import LinearGaussian, ppca

F64, F32 = torch.float64, torch.float32
EPS = 2.0**-52  # float64 machine epsilon, as in the docstrings
U32 = 2.0**-24  # float32 unit roundoff
DPS = 80  # digits: cond(W W^T + sigma^2 I) reaches 1e24 in the range tested, which leaves 56


# --- exact references ------------------------------------------------------------------------------------


def _mp_matrix(t: torch.Tensor) -> mp.matrix:
    return mp.matrix(t.double().tolist())


def _mp_log_evidence(W: torch.Tensor, b: torch.Tensor, sigma: float, x: torch.Tensor):
    """Exact ``(log p(x), S)`` per row: log N(x; b, W W^T + sigma^2 I) and the scale S of the docstring."""
    with mp.workdps(DPS):
        Wm = _mp_matrix(W)
        D = Wm.rows
        C = Wm * Wm.T + mp.mpf(sigma) ** 2 * mp.eye(D)
        L = mp.cholesky(C)
        logdet = 2 * mp.fsum(mp.log(L[i, i]) for i in range(D))
        out = []
        for row in x.double().tolist():
            r = [mp.mpf(row[i]) - mp.mpf(float(b[i])) for i in range(D)]
            y: list = []
            for i in range(D):  # forward substitution: y = L^{-1} r
                y.append((r[i] - mp.fsum(L[i, k] * y[k] for k in range(i))) / L[i, i])
            quad = mp.fsum(v * v for v in y)
            const = D * mp.log(2 * mp.pi)
            out.append((-(const + logdet + quad) / 2, (const + abs(logdet) + quad) / 2))
        return out


def _kappa_A(W: torch.Tensor, sigma: float) -> float:
    """cond([W; sigma I]) = sqrt((s_max^2 + sigma^2) / (s_min^2 + sigma^2)) <= cond(W)."""
    s = torch.linalg.svdvals(W.double())
    return math.sqrt((float(s[0]) ** 2 + sigma**2) / (float(s[-1]) ** 2 + sigma**2))


def _bound(W: torch.Tensor, sigma: float, S, exact, dtype: torch.dtype) -> float:
    """The stated accuracy of log_evidence: 4 D eps kappa S (+ 2^-24 |log p| for a float32 result)."""
    b = 4 * W.shape[0] * EPS * _kappa_A(W, sigma) * float(S)
    return b + (U32 * abs(float(exact)) * (1 + 1e-6) if dtype == F32 else 0.0)


def _check_evidence(lg: LinearGaussian, x: torch.Tensor) -> float:
    """Assert log_evidence and marginal().log_prob are within the stated bound; return the worst error / S."""
    ref = _mp_log_evidence(lg.W, lg.b, lg.sigma, x)
    got = lg.log_evidence(x)
    marg = lg.marginal().log_prob(x)
    assert got.dtype == x.dtype and marg.dtype == x.dtype
    worst = 0.0
    for i, (exact, S) in enumerate(ref):
        tol = _bound(lg.W, lg.sigma, S, exact, x.dtype)
        for name, value in (("log_evidence", got[i]), ("marginal().log_prob", marg[i])):
            err = abs(float(mp.mpf(float(value)) - exact))
            assert err <= tol, f"{name}: error {err:.3g} > {tol:.3g} (exact {float(exact):.17g}, sigma {lg.sigma:.3g})"
        worst = max(worst, abs(float(mp.mpf(float(got[i])) - exact)) / float(S))
    return worst


def _woodbury(lg: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """The textbook d x d form that log_evidence used to evaluate (float64): r^T r / s^2 - m^T M m."""
    W, s2 = lg.W.double(), lg.sigma**2
    M = torch.eye(lg.z_dim, dtype=F64) + W.T @ W / s2
    Lm = torch.linalg.cholesky(M)
    r = x.double() - lg.b.double()
    proj = torch.cholesky_solve((r @ W).T, Lm).T
    quad = (r.pow(2).sum(-1) - (r @ W * proj).sum(-1) / s2) / s2
    logdet = 2 * torch.log(torch.diagonal(Lm)).sum() + lg.x_dim * math.log(s2)
    return -0.5 * (lg.x_dim * math.log(2 * math.pi) + logdet + quad)


# --- the quoted cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, w_scale, dtype, woodbury_error",
    [
        (1e-10, 1.0, F64, 100.0),  # the Woodbury form: thousands of nats off
        (1e-8, 1.0, F64, 0.1),  # about 2 nats off
        (1.0, 1e8, F64, 1.0),  # W x 1e8: about 20 nats off
        (1e-3, 1.0, F32, None),  # float32: was 0.17 nats off
    ],
)
def test_quoted_cases_match_exact_arithmetic(sigma, w_scale, dtype, woodbury_error):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=F64) * w_scale
    b = torch.randn(5, generator=g, dtype=F64)
    lg = LinearGaussian(W.to(dtype), b.to(dtype), sigma)
    x, _ = lg.sample(3, generator=g)
    worst = _check_evidence(lg, x)
    assert worst < (1e-15 if dtype == F64 else 1e-7)
    if woodbury_error is not None:  # the regression test has teeth: the old formula fails it by far
        ref = torch.tensor([float(v) for v, _ in _mp_log_evidence(W, b, sigma, x)], dtype=F64)
        assert float((_woodbury(lg, x) - ref).abs().max()) > woodbury_error


# --- the whole range, by property ------------------------------------------------------------------------


@st.composite
def models_and_data(draw):
    D = draw(st.integers(2, 6))
    d = draw(st.integers(1, D - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    W = torch.randn(D, d, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    sigma = 10 ** draw(st.floats(-12, 12)) * float(torch.linalg.matrix_norm(W, 2))
    dtype = draw(st.sampled_from([F64, F32]))
    lg = LinearGaussian(W.to(dtype), b.to(dtype), sigma)
    x, _ = lg.sample(2, generator=g)
    where = draw(st.sampled_from(["model", "far", "plane"]))
    if where == "far":  # many standard deviations away, in every direction
        x = x + 10 * (sigma + 1) * torch.randn(x.shape, generator=g, dtype=dtype)
    elif where == "plane":  # exactly b + W z up to rounding: the perpendicular part is pure rounding
        x = lg.b + torch.randn(2, d, generator=g, dtype=dtype) @ lg.W.T
    return lg, x


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)
@given(models_and_data())
def test_log_evidence_and_marginal_match_exact_arithmetic_over_the_range(case):
    lg, x = case
    _check_evidence(lg, x)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)
@given(st.integers(0, 2**31 - 1), st.floats(0, 8), st.floats(-12, 12))
def test_ill_conditioned_W_within_the_kappa_bound(seed, log_cond, log_sigma):
    """W with cond(W) up to 1e8 and sigma anywhere, including s_min(W) ~ sigma << s_max(W)."""
    g = torch.Generator().manual_seed(seed)
    D, d = 5, 3
    U, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    W = (U * torch.logspace(0, -log_cond, d, dtype=F64)) @ V.T
    lg = LinearGaussian(W, torch.randn(D, generator=g, dtype=F64), 10**log_sigma)
    _check_evidence(lg, lg.sample(2, generator=g)[0])


def test_float32_model_is_the_float64_model_rounded_once():
    g = torch.Generator().manual_seed(1)
    lg32 = LinearGaussian.random(5, 2, sigma=1e-6, generator=g, dtype=F32)
    lg64 = LinearGaussian(lg32.W.double(), lg32.b.double(), lg32.sigma)
    x32, _ = lg32.sample(4, generator=g)
    assert torch.equal(lg32.log_evidence(x32), lg64.log_evidence(x32.double()).float())
    assert torch.equal(lg32.marginal().log_prob(x32), lg64.log_evidence(x32.double()).float())
    # x of another dtype: the result has the promoted dtype, and is exact for the given x.
    assert lg32.log_evidence(x32.double()).dtype == F64
    assert torch.equal(lg32.log_evidence(x32.double()), lg64.log_evidence(x32.double()))


# --- marginal() ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1e-12, 1e-6, 1.0, 1e6, 1e12])
def test_marginal_is_built_from_a_stable_factor(ratio):
    g = torch.Generator().manual_seed(2)
    W = torch.randn(6, 2, generator=g, dtype=F64)
    sigma = ratio * float(torch.linalg.matrix_norm(W, 2))
    lg = LinearGaussian(W, torch.randn(6, generator=g, dtype=F64), sigma)
    dist = lg.marginal()
    assert isinstance(dist, MultivariateNormal)
    L = dist.scale_tril
    assert torch.equal(L, torch.tril(L)) and bool((torch.diagonal(L) > 0).all())
    # L L^T is the covariance to rounding of its largest entries (entrywise, what any float64 matrix can do).
    with mp.workdps(DPS):
        Wm = _mp_matrix(W)
        C = Wm * Wm.T + mp.mpf(sigma) ** 2 * mp.eye(6)
        scale = float(mp.mnorm(C, 1))
        err = float(mp.mnorm(_mp_matrix(dist.covariance_matrix) - C, "inf"))
        logdet = mp.log(mp.det(C))
    assert err <= 50 * EPS * scale
    # The entropy uses log det L: relatively accurate, unlike log det of the rounded covariance.
    entropy = 0.5 * (6 * (1 + math.log(2 * math.pi)) + float(logdet))
    assert float(dist.entropy()) == pytest.approx(entropy, rel=0, abs=50 * EPS * (abs(entropy) + 6))
    # Its log_prob is the stable evidence, for any batch shape; the naive triangular solve with the same L
    # is not, far from sigma ~ ||W|| (it is kept only as the documented reason for the override).
    x, _ = lg.sample(6, generator=g)
    torch.testing.assert_close(dist.log_prob(x.reshape(2, 3, 6)), lg.log_evidence(x).reshape(2, 3), rtol=0, atol=0)
    expanded = dist.expand((4,))
    assert expanded.batch_shape == (4,) and torch.equal(expanded.log_prob(x[:1]), lg.log_evidence(x[:1]).expand(4))


def test_the_plain_factor_is_the_weak_link_that_log_prob_avoids():
    g = torch.Generator().manual_seed(0)
    lg = LinearGaussian(torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64), 1e-10)
    x, _ = lg.sample(3, generator=g)
    exact = torch.tensor([float(v) for v, _ in _mp_log_evidence(lg.W, lg.b, lg.sigma, x)], dtype=F64)
    plain = MultivariateNormal(lg.b, scale_tril=lg.marginal().scale_tril).log_prob(x)
    assert float((plain - exact).abs().max()) > 1e-8  # epsilon ||x - b|| / sigma: ~1e-6 here
    assert float((lg.marginal().log_prob(x) - exact).abs().max()) < 1e-13
    # And the covariance matrix itself cannot even be factorised at this ratio.
    cov = lg.W @ lg.W.T + lg.sigma**2 * torch.eye(5, dtype=F64)
    assert int(torch.linalg.cholesky_ex(cov).info) != 0 or float(
        (MultivariateNormal(lg.b, covariance_matrix=cov).log_prob(x) - exact).abs().max()
    ) > 1e-3


# --- posterior, log-likelihood, ELBO ---------------------------------------------------------------------


def _mp_posterior(W, b, sigma, x):
    """Exact posterior mean rows and covariance: (W^T W + s^2 I)^{-1} W^T r and s^2 (W^T W + s^2 I)^{-1}."""
    with mp.workdps(DPS):
        Wm, s = _mp_matrix(W), mp.mpf(sigma)
        P = Wm.T * Wm + s**2 * mp.eye(Wm.cols)
        means = [mp.lu_solve(P, Wm.T * (mp.matrix(row) - _mp_matrix(b))) for row in x.double().tolist()]
        return means, s**2 * mp.inverse(P)


def _mp_elbo(W, b, sigma, x, m, S):
    """The ELBO formula of LinearGaussian.elbo in exact arithmetic, for the given float q."""
    with mp.workdps(DPS):
        Wm, Sm, s = _mp_matrix(W), _mp_matrix(S), mp.mpf(sigma)
        D, d = Wm.rows, Wm.cols
        L = mp.cholesky(Sm)
        logdet_S = 2 * mp.fsum(mp.log(L[j, j]) for j in range(d))
        tr_WSW = mp.fsum((Wm * Sm * Wm.T)[j, j] for j in range(D))
        out = []
        for row, mi in zip(x.double().tolist(), m.double().tolist()):
            mv = mp.matrix(mi)
            r = mp.matrix(row) - _mp_matrix(b) - Wm * mv
            log_lik = -(D * mp.log(2 * mp.pi * s**2) + mp.fsum(v * v for v in r) / s**2) / 2
            prior = -(d * mp.log(2 * mp.pi) + mp.fsum(v * v for v in mv) + mp.fsum(Sm[j, j] for j in range(d))) / 2
            out.append((log_lik - tr_WSW / (2 * s**2) + prior + (d * (1 + mp.log(2 * mp.pi)) + logdet_S) / 2,
                        log_lik))
        return out


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)
@given(st.integers(2, 6), st.data(), st.integers(0, 2**31 - 1), st.floats(-12, 12))
def test_posterior_likelihood_and_elbo_match_exact_arithmetic(D, data, seed, log_ratio):
    d = data.draw(st.integers(1, D - 1))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, d, generator=g, dtype=F64)
    sigma = 10**log_ratio * float(torch.linalg.matrix_norm(W, 2))
    lg = LinearGaussian(W, torch.randn(D, generator=g, dtype=F64), sigma)
    x, _ = lg.sample(2, generator=g)
    kappa = _kappa_A(W, lg.sigma)
    post = lg.posterior(x)
    means, cov = _mp_posterior(W, lg.b, lg.sigma, x)
    with mp.workdps(DPS):
        for i in range(2):
            rel = mp.norm(_mp_matrix(post.mean[i]) - means[i]) / mp.norm(means[i])
            assert float(rel) <= 8 * D * EPS * kappa
        rel = mp.mnorm(_mp_matrix(post.covariance_matrix[0]) - cov, 1) / mp.mnorm(cov, 1)
        assert float(rel) <= 8 * D * EPS * kappa**2
    # At q = the (rounded) posterior the residual x - W m - b is of size sigma, far below |x|: the case
    # where a naive residual loses eps ||x|| / sigma. log_likelihood and elbo are exact for the given q.
    S_q = post.covariance_matrix[0]
    elbo, log_lik = lg.elbo(x, post.mean, S_q), lg.log_likelihood(x, post.mean)
    for i, (exact_elbo, exact_log_lik) in enumerate(_mp_elbo(W, lg.b, lg.sigma, x, post.mean, S_q)):
        scale = abs(float(exact_log_lik)) + D
        assert abs(float(mp.mpf(float(log_lik[i])) - exact_log_lik)) <= 8 * D * EPS * scale
        elbo_tol = 8 * D * EPS * kappa**2 * (scale + abs(float(exact_elbo)))
        assert abs(float(mp.mpf(float(elbo[i])) - exact_elbo)) <= elbo_tol


def test_log_likelihood_naive_and_exact_residuals_agree_where_both_are_accurate():
    g = torch.Generator().manual_seed(3)
    lg = LinearGaussian.random(6, 3, sigma=0.7, generator=g)
    x, _ = lg.sample(4, generator=g)
    z = torch.randn(5, 4, 3, generator=g, dtype=F64)
    naive = -0.5 * (6 * math.log(2 * math.pi * 0.49) + (x - z @ lg.W.T - lg.b).pow(2).sum(-1) / 0.49)
    torch.testing.assert_close(lg.log_likelihood(x, z), naive, rtol=1e-14, atol=0)
    # Near the plane at tiny sigma the naive residual is off by eps ||x|| / sigma; log_likelihood is not.
    tiny = LinearGaussian(lg.W, lg.b, 1e-11)
    x_near, _ = tiny.sample(2, generator=g)
    m = tiny.posterior(x_near).mean
    exact = [v for _, v in _mp_elbo(lg.W, lg.b, 1e-11, x_near, m, torch.eye(3, dtype=F64))]
    for i in range(2):
        assert abs(float(mp.mpf(float(tiny.log_likelihood(x_near, m)[i])) - exact[i])) < 1e-12 * abs(float(exact[i]))


def test_log_evidence_is_differentiable():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(4, 2, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda W, b: LinearGaussian(W, b, 0.6).log_evidence(x), (W, b))
    assert torch.autograd.gradcheck(lambda W, b: LinearGaussian(W, b, 0.6).posterior(x).mean, (W, b))


# --- pPCA ------------------------------------------------------------------------------------------------


def _subspace_data(n, D, k, dtype, offset, seed):
    """n points in a k-dimensional affine subspace of R^D, computed in ``dtype`` (so up to its rounding)."""
    g = torch.Generator().manual_seed(seed)
    c = offset * torch.randn(D, generator=g, dtype=dtype)
    if k == 0:
        return c.expand(n, D).clone()
    return torch.randn(n, k, generator=g, dtype=dtype) @ torch.randn(k, D, generator=g, dtype=dtype) + c


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("D", [2, 3, 5, 8])
@pytest.mark.parametrize("n", [3, 40, 3000])
@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_ppca_rejects_data_in_an_exact_subspace(dtype, D, n, offset):
    for z_dim in range(1, D):
        for k in range(z_dim + 1):  # every subspace dimension <= z_dim
            x = _subspace_data(n, D, k, dtype, offset, seed=100 * D + 10 * z_dim + k)
            with pytest.raises(ValueError, match="subspace of dimension <= z_dim"):
                ppca(x, z_dim)


def _data_with_spread(n, D, z_dim, spread, dtype, seed):
    """Signal in z_dim directions, and exactly ``spread`` (singular value) in every other direction."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    E = torch.randn(n, D, generator=g, dtype=F64)
    E = E - E.mean(0)
    E = torch.linalg.qr(E)[0]  # orthonormal, centred columns: singular values 1
    coords = torch.cat([3 * math.sqrt(n) * E[:, :z_dim], spread * E[:, z_dim:]], 1)
    return (coords @ Q.T + 1.0).to(dtype)


@pytest.mark.parametrize("dtype, spreads", [(F64, [1e-6, 1e-10, 1e-12]), (F32, [1e-2, 1e-3])])
def test_ppca_fits_ill_conditioned_full_rank_data(dtype, spreads):
    n, D, z_dim = 200, 5, 2
    for spread in spreads:
        x = _data_with_spread(n, D, z_dim, spread * math.sqrt(n), dtype, seed=7)
        fit = ppca(x, z_dim)
        assert fit.W.dtype == dtype
        # The residual eigenvalues are spread^2 each (up to the rounding of x): sigma = spread.
        assert fit.sigma == pytest.approx(spread, rel=1e-2)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ppca_tolerance_is_where_it_is_stated(dtype):
    """Spread 3x the stated tolerance: fitted; a third of it: refused (the noise floor is < tol / 5)."""
    n, D, z_dim = 100, 4, 2
    x = _data_with_spread(n, D, z_dim, 0.0, dtype, seed=8)
    x64 = x.double()
    tol = (D * torch.finfo(dtype).eps + math.sqrt(n) * EPS) * float(torch.linalg.vector_norm(x64))
    ppca(_data_with_spread(n, D, z_dim, 3 * tol, dtype, seed=8), z_dim)
    with pytest.raises(ValueError, match="subspace"):
        ppca(_data_with_spread(n, D, z_dim, tol / 3, dtype, seed=8), z_dim)


def test_ppca_at_tiny_noise_is_still_the_maximum_likelihood():
    """sigma / ||W|| ~ 1e-9: the likelihood is maximal in sigma (needs an accurate log_evidence there)."""
    x = _data_with_spread(300, 5, 2, 1e-9 * math.sqrt(300), F64, seed=9)
    fit = ppca(x, 2)
    best = float(fit.log_evidence(x).sum())
    for factor in (1 - 1e-4, 1 + 1e-4, 0.9, 1.1):
        assert float(LinearGaussian(fit.W, fit.b, fit.sigma * factor).log_evidence(x).sum()) < best
    g = torch.Generator().manual_seed(10)
    for _ in range(5):
        W = fit.W + 1e-12 * torch.randn(fit.W.shape, generator=g, dtype=F64)
        assert float(LinearGaussian(W, fit.b, fit.sigma).log_evidence(x).sum()) <= best + 1e-6


# --- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_a_clear_type_error(half):
    g = torch.Generator().manual_seed(0)
    m = LinearGaussian.random(4, 2, generator=g)
    x, _ = m.sample(3, generator=g)
    supported = "torch.float32 or torch.float64"
    with pytest.raises(TypeError, match=f"W must have dtype {supported}"):
        LinearGaussian(m.W.to(half), m.b.to(half), 0.5)
    with pytest.raises(TypeError, match=f"dtype must be {supported}"):
        LinearGaussian.random(4, 2, dtype=half)
    with pytest.raises(TypeError, match=f"dtype must be {supported}"):
        LinearGaussian.from_vae(vaelib.VAE(4, 2, hidden=(), likelihood="gaussian", seed=0), dtype=half)
    with pytest.raises(TypeError, match=f"x must have dtype {supported}"):
        ppca(x.to(half), 1)
    for fn in (toy.log_evidence_quadrature, toy.posterior_moments_quadrature):
        with pytest.raises(TypeError, match="x must have the model's dtype"):
            fn(m, x.to(half), n_points=11)
    for fn in (toy.log_importance_weights, toy.log_evidence_importance):
        with pytest.raises(TypeError, match="x must have the model's dtype"):
            fn(m, x.to(half), 4)
        proposal = MultivariateNormal(torch.zeros(2, dtype=F32), scale_tril=torch.eye(2, dtype=F32))
        with pytest.raises(TypeError, match="proposal must have the model's dtype"):
            fn(m, x, 4, proposal=proposal)
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        toy.fit_gaussian_q(m, x.to(half), steps=1)
    with pytest.raises(TypeError, match="q_mean must have the model's dtype"):
        m.elbo(x, torch.zeros(3, 2, dtype=half), torch.eye(2, dtype=F64))
    with pytest.raises(TypeError, match="q_cov must have the model's dtype"):
        m.elbo(x, torch.zeros(3, 2, dtype=F64), torch.eye(2, dtype=half))
    for fn in (m.log_likelihood, m.log_joint):
        with pytest.raises(TypeError, match="z must have the model's dtype"):
            fn(x, torch.zeros(3, 2, dtype=half))
    # Half-precision *data* for the exact formulas are supported: exact for the given (rounded) x.
    xh = x.to(half)
    assert torch.equal(m.log_evidence(xh), m.log_evidence(xh.double()))
    assert torch.equal(m.posterior(xh).mean, m.posterior(xh.double()).mean)
