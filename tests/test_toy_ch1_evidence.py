"""Behaviour of the brute-force evidence functions in vaelib.toy (chapter 1): shapes, validation,
determinism, chunking. The identities they are meant to reproduce are in tests/test_ch1_evidence.py."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

import vaelib.toy as toy
from vaelib.toy import (
    LinearGaussian,
    log_evidence_importance,
    log_evidence_quadrature,
    log_importance_weights,
    posterior_moments_quadrature,
)


def _model(x_dim: int = 3, z_dim: int = 2, seed: int = 0, sigma: float = 0.8) -> tuple[LinearGaussian, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = LinearGaussian.random(x_dim, z_dim, sigma=sigma, generator=g)
    return m, m.sample(3, generator=g)[0]


def test_shapes() -> None:
    m, x = _model()
    assert log_evidence_quadrature(m, x, n_points=41).shape == (3,)
    mean, cov = posterior_moments_quadrature(m, x, n_points=41)
    assert mean.shape == (3, 2) and cov.shape == (3, 2, 2)
    assert log_importance_weights(m, x, 7).shape == (7, 3)
    est, se = log_evidence_importance(m, x, 7)
    assert est.shape == se.shape == (3,)
    for t in (est, se, mean, cov):
        assert t.dtype == torch.float64


def test_quadrature_covariance_is_symmetric_positive_definite() -> None:
    m, x = _model()
    _, cov = posterior_moments_quadrature(m, x)
    torch.testing.assert_close(cov, cov.transpose(-1, -2), rtol=0, atol=1e-15)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_quadrature_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    m, x = _model()
    ref = log_evidence_quadrature(m, x, n_points=31)
    ref_mean, ref_cov = posterior_moments_quadrature(m, x, n_points=31)
    monkeypatch.setattr(toy, "CHUNK_ELEMENTS", chunk)
    torch.testing.assert_close(log_evidence_quadrature(m, x, n_points=31), ref, rtol=0, atol=1e-12)
    mean, cov = posterior_moments_quadrature(m, x, n_points=31)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=0, atol=1e-12)


def test_importance_weights_deterministic_under_seed() -> None:
    m, x = _model()
    a = log_importance_weights(m, x, 50, generator=torch.Generator().manual_seed(3))
    b = log_importance_weights(m, x, 50, generator=torch.Generator().manual_seed(3))
    c = log_importance_weights(m, x, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prior_default_equals_explicit_prior_proposal() -> None:
    """proposal=None is the prior: z = 0 + I eps gives the same draws, and log p(z) - log q(z) = 0."""
    m, x = _model()
    prior = MultivariateNormal(torch.zeros(2, dtype=torch.float64), covariance_matrix=torch.eye(2, dtype=torch.float64))
    a = log_importance_weights(m, x, 100, generator=torch.Generator().manual_seed(1))
    b = log_importance_weights(m, x, 100, proposal=prior, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_importance_rows_are_independent_repetitions() -> None:
    m, x = _model()
    w = log_importance_weights(m, x[:1].expand(4, -1), 20, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(w[:, 0], w[:, 1])


def test_importance_accepts_batched_posterior_proposal() -> None:
    m, x = _model()
    w = log_importance_weights(m, x, 5, proposal=m.posterior(x), generator=torch.Generator().manual_seed(0))
    assert w.shape == (5, 3)


def test_validation() -> None:
    m, x = _model()
    with pytest.raises(TypeError, match="LinearGaussian"):
        log_evidence_quadrature(object(), x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last dimension"):
        log_evidence_quadrature(m, x[:, :2])
    with pytest.raises(TypeError, match="dtype"):
        log_evidence_quadrature(m, x.float())
    with pytest.raises(ValueError, match="n_points"):
        log_evidence_quadrature(m, x, n_points=1)
    with pytest.raises(TypeError, match="n_points"):
        log_evidence_quadrature(m, x, n_points=10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bound"):
        log_evidence_quadrature(m, x, bound=0.0)
    with pytest.raises(ValueError, match="NaN"):
        log_evidence_quadrature(m, x * float("nan"))
    with pytest.raises(ValueError, match="n_samples"):
        log_evidence_importance(m, x, 1)
    with pytest.raises(ValueError, match="n_samples"):
        log_importance_weights(m, x, 0)
    with pytest.raises(TypeError, match="generator"):
        log_importance_weights(m, x, 5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="proposal"):
        log_importance_weights(m, x, 5, proposal="prior")  # type: ignore[arg-type]
    wrong = MultivariateNormal(torch.zeros(3, dtype=torch.float64), covariance_matrix=torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="event shape"):
        log_importance_weights(m, x, 5, proposal=wrong)
    with pytest.raises(ValueError, match="batch shape"):
        log_importance_weights(m, x[:2], 5, proposal=m.posterior(x))
    single = MultivariateNormal(torch.zeros(2), covariance_matrix=torch.eye(2))  # float32, model float64
    with pytest.raises(TypeError, match="proposal must have the model's dtype"):
        log_importance_weights(m, x, 5, proposal=single)
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        log_evidence_quadrature(m, x.half())


def test_grid_too_large_is_refused_without_overflow() -> None:
    g = torch.Generator().manual_seed(0)
    big = LinearGaussian.random(30, 20, generator=g)
    x = big.sample(1, generator=g)[0]
    with pytest.raises(ValueError, match="exceeds max_points"):
        log_evidence_quadrature(big, x, n_points=100)  # 100**20 would overflow int64
    m, x = _model()
    with pytest.raises(ValueError, match="exceeds max_points"):
        posterior_moments_quadrature(m, x, n_points=11, max_points=100)
    assert log_evidence_quadrature(m, x, n_points=10, max_points=100).shape == (3,)
