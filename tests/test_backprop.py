"""vaelib.backprop: the hand-written gradient of the ELBO agrees with autograd's.

``elbo_backward`` is what ``fit`` trains with, so it must give what ``loss.backward()`` gives: the test
compares every parameter's gradient with autograd's in float64 over encoder/decoder depths, both
likelihoods, several samples of z per example, KL weights and batch sizes. Rounding of float64 sums of a
few hundred terms is ~1e-15 relative; 1e-11 leaves room for the cancellation in the Gaussian
log-variance's derivative and still catches any wrong term (a missing factor 1/2 or a lost sample is
O(1) relative).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import vaelib
from vaelib import VAE, elbo, elbo_backward


def _data(likelihood: str, n: int, d: int, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli":
        return (torch.rand(n, d, generator=g, dtype=dtype) < 0.4).to(dtype)
    return torch.randn(n, d, generator=g, dtype=dtype)


def _autograd(model: VAE, x: torch.Tensor, n_samples: int, beta: float, seed: int):
    for p in model.parameters():
        p.grad = None
    terms = elbo(model, x, n_samples, beta, torch.Generator().manual_seed(seed))
    (-terms.objective.mean()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    return terms, grads


CONFIGS = list(itertools.product([(), (5,), (7, 5)], ["bernoulli", "gaussian"], [1, 3], [0.0, 0.7, 1.0]))


@pytest.mark.parametrize("hidden, likelihood, n_samples, beta", CONFIGS)
def test_gradients_match_autograd_in_float64(hidden, likelihood, n_samples, beta):
    model = VAE(12, 3, hidden=hidden, likelihood=likelihood, seed=1).double()
    with torch.no_grad():  # a trained-looking model: gaussian noise level away from 1
        if likelihood == "gaussian":
            model.obs_logvar.fill_(-0.7)
    x = _data(likelihood, 9, 12, torch.float64)
    ref_terms, ref = _autograd(model, x, n_samples, beta, seed=3)
    terms = elbo_backward(model, x, n_samples, beta, torch.Generator().manual_seed(3))
    for name, p in model.named_parameters():
        scale = ref[name].abs().max().clamp_min(1e-300)
        err = float((p.grad - ref[name]).abs().max() / scale)
        assert err < 1e-11, (name, err)
    # The forward pass is elbo's, operation for operation, on the same noise: identical terms.
    for field in ("elbo", "reconstruction", "kl"):
        assert torch.equal(getattr(terms, field), getattr(ref_terms, field).detach())
    assert terms.beta == beta and not terms.elbo.requires_grad


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_float32_gradients_match_autograd_to_rounding(batch):
    model = VAE(784, 20, hidden=(400,), seed=0)
    x = _data("bernoulli", batch, 784, torch.float32, seed=batch)
    _, ref = _autograd(model, x, 1, 1.0, seed=4)
    elbo_backward(model, x, generator=torch.Generator().manual_seed(4))
    for name, p in model.named_parameters():
        err = float((p.grad - ref[name]).abs().max() / ref[name].abs().max())
        assert err < 2e-5, (name, err)  # float32 sums of up to 784 terms: ~1e-7 typical, 1e-6 worst seen


def test_gradients_are_overwritten_in_place_when_they_fit():
    model = VAE(12, 3, hidden=(5,), seed=1)
    x = _data("bernoulli", 4, 12, torch.float32)
    buffers = {name: torch.full_like(p, 123.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = buffers[name]
    elbo_backward(model, x, generator=torch.Generator().manual_seed(0))
    _, ref = _autograd_keep(model, x)
    for name, p in model.named_parameters():
        assert p.grad is buffers[name]  # written in place, not replaced
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-6)  # overwritten, not accumulated


def _autograd_keep(model: VAE, x: torch.Tensor):
    saved = {name: p.grad for name, p in model.named_parameters()}
    terms, grads = _autograd(model, x, 1, 1.0, seed=0)
    for name, p in model.named_parameters():
        p.grad = saved[name]
    return terms, grads


def test_missing_gradients_are_created():
    model = VAE(12, 3, hidden=(5,), seed=1)
    x = _data("bernoulli", 4, 12, torch.float32)
    elbo_backward(model, x, generator=torch.Generator().manual_seed(0))
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == p.dtype


def test_it_is_exported_and_validates_like_elbo():
    assert vaelib.elbo_backward is elbo_backward
    model = VAE(6, 2, hidden=(4,), seed=0)
    with pytest.raises(ValueError, match="x must be binary"):
        elbo_backward(model, torch.full((2, 6), 0.5))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        elbo_backward(model, torch.zeros(2, 6), n_samples=0)
