"""Tests of the chapter-3 additions to vaelib.toy: LinearGaussian.from_vae and fit_gaussian_q."""

from __future__ import annotations

import math

import pytest
import torch

import vaelib
from vaelib.toy import GaussianFit, LinearGaussian, fit_gaussian_q

F64 = torch.float64


# --- LinearGaussian.from_vae ---------------------------------------------------------------------


@pytest.mark.parametrize("x_dim, z_dim", [(5, 2), (64, 4), (3, 1)])
def test_from_vae_is_the_decoder(x_dim, z_dim):
    vae = vaelib.VAE(x_dim, z_dim, hidden=(), likelihood="gaussian", seed=0)
    with torch.no_grad():
        vae.obs_logvar.fill_(-0.7)
    lg = LinearGaussian.from_vae(vae)
    assert (lg.x_dim, lg.z_dim) == (x_dim, z_dim)
    assert lg.W.dtype == F64 and lg.b.dtype == F64
    assert math.isclose(lg.sigma**2, math.exp(-0.7), rel_tol=1e-6)
    z = torch.randn(7, z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(z.double() @ lg.W.T + lg.b, vae.decode(z).double(), atol=1e-6)
        x = torch.randn(7, x_dim, generator=torch.Generator().manual_seed(2))
        # same log p(x|z) as the VAE's own likelihood
        assert torch.allclose(lg.log_likelihood(x.double(), z.double()), vae.log_px_z(x, z).double(),
                              rtol=1e-5, atol=1e-4)


def test_from_vae_copies_and_detaches():
    vae = vaelib.VAE(4, 2, hidden=(), likelihood="gaussian", seed=0)
    lg = LinearGaussian.from_vae(vae, dtype=torch.float32)
    assert lg.W.dtype == torch.float32 and not lg.W.requires_grad
    with torch.no_grad():
        vae.decoder.to_x.weight.add_(1.0)
    assert not torch.allclose(lg.W, vae.decoder.to_x.weight)


def test_from_vae_rejects_other_models():
    with pytest.raises(TypeError, match="vaelib.VAE"):
        LinearGaussian.from_vae(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="linear Gaussian VAE"):
        LinearGaussian.from_vae(vaelib.VAE(4, 2, hidden=(8,), likelihood="gaussian", seed=0))
    with pytest.raises(ValueError, match="linear Gaussian VAE"):
        LinearGaussian.from_vae(vaelib.VAE(4, 2, hidden=(), likelihood="bernoulli", seed=0))
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        LinearGaussian.from_vae(vaelib.VAE(4, 2, hidden=(), likelihood="gaussian", seed=0), dtype=torch.float16)


# --- fit_gaussian_q ---------------------------------------------------------------------------------


def _model_x(seed=0, x_dim=4, z_dim=2, n=3):
    g = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(x_dim, z_dim, sigma=0.7, generator=g)
    x, _ = model.sample(n, generator=g)
    return model, x


def test_fit_gaussian_q_shapes_and_start():
    model, x = _model_x(n=3)
    fit = fit_gaussian_q(model, x, steps=5)
    assert isinstance(fit, GaussianFit)
    assert fit.mean.shape == (3, 2) and fit.cov.shape == (3, 2, 2)
    assert fit.elbo.shape == (6, 3) and fit.kl.shape == (6, 3)
    assert not fit.elbo.requires_grad and not fit.cov.requires_grad
    # step 0 is the prior N(0, I)
    eye = torch.eye(2, dtype=F64)
    assert torch.allclose(fit.elbo[0], model.elbo(x, torch.zeros(3, 2, dtype=F64), eye))


def test_fit_gaussian_q_mean_field_is_diagonal_and_improves():
    model, x = _model_x(seed=1, z_dim=3)
    fit = fit_gaussian_q(model, x, full_covariance=False, steps=50)
    off = fit.cov - torch.diag_embed(torch.diagonal(fit.cov, dim1=-2, dim2=-1))
    assert off.abs().max() == 0
    assert (fit.elbo[-1] > fit.elbo[0]).all()


def test_fit_gaussian_q_works_under_no_grad():
    model, x = _model_x()
    with torch.no_grad():
        fit = fit_gaussian_q(model, x, steps=20)
    assert (fit.elbo[-1] > fit.elbo[0]).all()


def test_fit_gaussian_q_validates_input():
    model, x = _model_x()
    with pytest.raises(TypeError, match="LinearGaussian"):
        fit_gaussian_q("model", x)
    with pytest.raises(TypeError, match="dtype"):
        fit_gaussian_q(model, x.float())
    with pytest.raises(ValueError, match="last dimension"):
        fit_gaussian_q(model, x[:, :2])
    with pytest.raises(ValueError, match="steps"):
        fit_gaussian_q(model, x, steps=0)
    with pytest.raises(ValueError, match="lr"):
        fit_gaussian_q(model, x, lr=0.0)
