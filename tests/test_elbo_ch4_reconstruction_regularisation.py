"""vaelib.elbo.active_units (chapter 4): the active-unit statistic of Burda et al. (2016) and the
per-unit KL terms of eq. ``kl-standard-normal``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaelib
from vaelib import VAE, ActiveUnits, active_units, elbo, gaussian_kl

from conftest import HYPOTHESIS_EXAMPLES


@pytest.fixture
def model_and_data(binary_data):
    return VAE(12, 5, hidden=(8,), seed=0), binary_data(40, 12)


def test_exported():
    assert vaelib.active_units is active_units
    assert vaelib.ActiveUnits is ActiveUnits
    assert "active_units" in vaelib.__all__ and "ActiveUnits" in vaelib.__all__


def test_variance_and_kl_match_a_hand_computation(model_and_data):
    model, x = model_and_data
    units = active_units(model, x, threshold=0.01)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    assert units.variance.shape == units.kl.shape == (5,)
    torch.testing.assert_close(units.variance, mu.var(0, unbiased=False), rtol=1e-5, atol=1e-7)
    per_unit = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)  # eq. kl-standard-normal, unsummed
    torch.testing.assert_close(units.kl, per_unit.mean(0), rtol=1e-5, atol=1e-7)
    assert not units.variance.requires_grad and not units.kl.requires_grad


def test_per_unit_kl_adds_up_to_the_kl_term_of_the_elbo(model_and_data):
    model, x = model_and_data
    units = active_units(model, x)
    kl_term = elbo(model, x, generator=torch.Generator().manual_seed(0)).kl
    torch.testing.assert_close(units.kl.sum(), kl_term.mean().detach(), rtol=1e-5, atol=1e-6)
    assert (units.kl >= 0).all()


def test_mask_and_count_follow_the_threshold(model_and_data):
    model, x = model_and_data
    variance = active_units(model, x).variance
    for threshold in (0.0, float(variance.median()), float(variance.max()) + 1.0):
        units = active_units(model, x, threshold=threshold)
        assert units.threshold == threshold
        assert torch.equal(units.active, variance > threshold)
        assert units.count == int((variance > threshold).sum())
    assert active_units(model, x, threshold=float(variance.max()) + 1.0).count == 0


@pytest.mark.parametrize("batch_size", [1, 7, 40, 1000])
def test_result_does_not_depend_on_the_batch_size(model_and_data, batch_size):
    model, x = model_and_data
    ref = active_units(model, x)
    got = active_units(model, x, batch_size=batch_size)
    torch.testing.assert_close(got.variance, ref.variance, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.kl, ref.kl, rtol=1e-5, atol=1e-7)


def test_a_unit_wired_to_the_prior_is_collapsed_and_inactive(model_and_data):
    """Zero weights and biases into unit 2: mu = 0 and log sigma^2 = 0 for every x, i.e. q(z_2|x) = p(z_2)."""
    model, x = model_and_data
    with torch.no_grad():
        for layer in (model.encoder.to_mu, model.encoder.to_logvar):
            layer.weight[2].zero_()
            layer.bias[2].zero_()
    units = active_units(model, x)
    assert units.variance[2] == 0 and units.kl[2] == 0
    assert not units.active[2]


def test_a_unit_that_copies_a_pixel_is_active(model_and_data):
    """A unit whose mean is (a multiple of) one pixel varies as much as that pixel does."""
    model, x = model_and_data
    with torch.no_grad():
        for layer in (model.encoder.to_mu, model.encoder.to_logvar):
            layer.weight.zero_()
            layer.bias.zero_()
        model.encoder.body[0].weight.zero_()
        model.encoder.body[0].bias.zero_()
        model.encoder.body[0].weight[0, 3] = 1.0  # hidden unit 0 = relu(x_3) = x_3 for binary x
        model.encoder.to_mu.weight[1, 0] = 2.0  # mu_1 = 2 x_3
    units = active_units(model, x)
    p = x[:, 3].mean()
    torch.testing.assert_close(units.variance[1], 4 * p * (1 - p), rtol=1e-5, atol=1e-7)
    assert units.active[1] == bool(4 * p * (1 - p) > 0.01)
    assert units.count == int(units.active[1])


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)
@given(
    z_dim=st.integers(1, 6),
    n=st.integers(2, 30),
    seed=st.integers(0, 10_000),
    likelihood=st.sampled_from(["bernoulli", "gaussian"]),
)
def test_properties_for_any_model(z_dim, n, seed, likelihood):
    g = torch.Generator().manual_seed(seed)
    model = VAE(6, z_dim, hidden=(5,), likelihood=likelihood, seed=seed)
    x = (torch.rand(n, 6, generator=g) < 0.5).float() if likelihood == "bernoulli" else torch.randn(n, 6, generator=g)
    units = active_units(model, x)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    assert (units.variance >= 0).all() and (units.kl >= 0).all()
    torch.testing.assert_close(units.kl.sum(), gaussian_kl(mu, logvar).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(units.variance, mu.var(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_input_validation(model_and_data):
    model, x = model_and_data
    with pytest.raises(TypeError, match="model"):
        active_units("not a model", x)
    with pytest.raises(ValueError, match="at least 2"):
        active_units(model, x[:1])
    with pytest.raises(ValueError, match="binary"):
        active_units(model, x * 0.5)
    with pytest.raises(ValueError, match="last dimension"):
        active_units(model, x[:, :5])
    with pytest.raises(ValueError, match="threshold"):
        active_units(model, x, threshold=-0.1)
    with pytest.raises(TypeError, match="threshold"):
        active_units(model, x, threshold="0.01")
    with pytest.raises(ValueError, match="batch_size"):
        active_units(model, x, batch_size=0)
