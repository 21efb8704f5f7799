"""Shared fixtures of the vaelib unit tests.

The central one builds the *linear Gaussian VAE* (``hidden=()``, ``likelihood="gaussian"``) together with
the :class:`vaelib.toy.LinearGaussian` it is equivalent to: ``W = to_x.weight``, ``b = to_x.bias``,
``sigma^2 = exp(obs_logvar)``. Every bound the VAE computes (ELBO, IWAE, log-likelihood) can then be
checked against the exact evidence and posterior of that model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import vaelib
from vaelib.toy import LinearGaussian

#: Examples per hypothesis test; raise it (e.g. VAELIB_HYPOTHESIS_EXAMPLES=2000) for a soak run.
HYPOTHESIS_EXAMPLES = int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40"))

# The unit tests work on tiny tensors, where a second intra-op thread brings no speed, only
# synchronisation: on a busy 2-core machine, small linear algebra ran up to 50x slower with 2 threads
# (spin-waiting) than with 1. One thread also makes results independent of the machine's core count.
torch.set_num_threads(int(os.environ.get("VAELIB_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def html_dir(request) -> Path:
    """The built book given by ``--book-html`` (the tests that read it are skipped without it; with it,
    a missing build is a failure). ``make test`` passes ``--book-html=_build/html`` after the build."""
    option = request.config.getoption("--book-html")
    if not option:
        pytest.skip("needs the built book: pass --book-html=_build/html (make test does)")
    path = Path(option)
    if not path.is_absolute():
        path = Path(request.config.invocation_params.dir) / path
    if not (path / "index.html").is_file() or not (path / "search.html").is_file():
        pytest.fail(f"no built book in {path}: build it first (make book)", pytrace=False)
    return path


def _linear_vae(
    x_dim: int = 5,
    z_dim: int = 2,
    sigma: float = 0.7,
    seed: int = 0,
    encoder: str = "random",
) -> tuple[vaelib.VAE, LinearGaussian]:
    """A float64 linear Gaussian VAE and its equivalent :class:`LinearGaussian`.

    ``encoder``: ``"random"`` (the seeded initialisation), ``"exact"`` (the encoder outputs the exact
    posterior, possible because the decoder's columns are made orthogonal so the posterior covariance
    is diagonal), or ``"near"`` (the exact posterior with its mean shifted and its variance inflated).
    """
    g = torch.Generator().manual_seed(seed)
    model = vaelib.VAE(x_dim, z_dim, hidden=(), likelihood="gaussian", seed=seed).double()
    with torch.no_grad():
        if encoder in ("exact", "near"):
            q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64))
            scales = 0.5 + 1.5 * torch.rand(z_dim, generator=g, dtype=torch.float64)
            model.decoder.to_x.weight.copy_(q * scales)  # orthogonal columns: W^T W diagonal
        model.decoder.to_x.bias.copy_(torch.randn(x_dim, generator=g, dtype=torch.float64))
        model.obs_logvar.fill_(2 * math.log(sigma))
        W, b = model.decoder.to_x.weight, model.decoder.to_x.bias
        if encoder in ("exact", "near"):
            m_diag = 1 + (W * W).sum(0) / sigma**2  # M = I + W^T W / sigma^2, diagonal
            A = (W / sigma**2 / m_diag).T  # M^{-1} W^T / sigma^2, (d, D)
            model.encoder.to_mu.weight.copy_(A)
            model.encoder.to_mu.bias.copy_(-(A @ b))
            model.encoder.to_logvar.weight.zero_()
            model.encoder.to_logvar.bias.copy_(-torch.log(m_diag))
            if encoder == "near":
                model.encoder.to_mu.bias.add_(0.15)
                model.encoder.to_logvar.bias.add_(0.4)
    lg = LinearGaussian(model.decoder.to_x.weight.detach().clone(), model.decoder.to_x.bias.detach().clone(), sigma)
    return model, lg


@pytest.fixture
def linear_vae():
    """Factory: ``linear_vae(x_dim=5, z_dim=2, sigma=0.7, seed=0, encoder="random") -> (model, lg)``."""
    return _linear_vae


@pytest.fixture
def binary_data():
    """Factory: ``binary_data(n, x_dim, seed=0)`` -> float32 0/1 data drawn from a few prototypes."""

    def make(n: int = 64, x_dim: int = 12, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        protos = (torch.rand(4, x_dim, generator=g) < 0.5).float()
        idx = torch.randint(0, 4, (n,), generator=g)
        flips = (torch.rand(n, x_dim, generator=g) < 0.1).float()
        return (protos[idx] + flips) % 2

    return make
