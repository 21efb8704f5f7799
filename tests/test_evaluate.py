"""vaelib.evaluate.report: every field is the public function it names, called with the documented seeds."""

from __future__ import annotations

import math

import pytest
import torch

import vaelib
from vaelib.evaluate import Report, report


@pytest.fixture(scope="module")
def trained():
    train_all, test = vaelib.data.load_mnist()
    model = vaelib.VAE(784, 4, hidden=(32,), seed=0)
    vaelib.fit(model, train_all.images[:300], epochs=2, seed=0, progress=False)
    return model, test.images[:40]


def test_fields_are_the_functions_they_name(trained):
    model, x = trained
    r = report(model, x, x[:4], x[4:8], seconds=1.5, k=8, n_nll=20, n_samples=3, gap_steps=3, gap_k=4, seed=7)
    with torch.no_grad():
        elbo = vaelib.elbo(model, x, n_samples=3, generator=torch.Generator().manual_seed(7)).elbo
    log_p = vaelib.log_likelihood(model, x[:20], k=8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(r.elbo, elbo)
    torch.testing.assert_close(r.log_p, log_p)
    assert r.active == vaelib.active_units(model, x).count
    assert r.parameters == sum(p.numel() for p in model.parameters())
    assert r.seconds == 1.5 and r.k == 8
    g = vaelib.inference_gap.gap_decomposition(model, x[:4], steps=3, k=4, n_samples=500, seed=9)
    torch.testing.assert_close(r.gaps["train"].best, g.best)
    torch.testing.assert_close(r.gaps["train"].log_p, g.log_p)


def test_summaries_are_means_with_standard_errors(trained):
    model, x = trained
    r = report(model, x, k=4, n_nll=10, n_samples=2)
    assert r.gaps == {}
    m, s = r.test_elbo
    assert m == pytest.approx(r.elbo.mean().item())
    assert s == pytest.approx(r.elbo.std().item() / math.sqrt(len(r.elbo)))
    assert r.nll[0] == pytest.approx(-r.log_p.mean().item())
    assert r.nll[0] < -m  # L_K >= ELBO in expectation, and by far more than the noise here
    assert isinstance(r, Report)


def test_frozen_parameters_are_not_counted(trained):
    model, x = trained
    model.decoder.requires_grad_(False)
    try:
        r = report(model, x, k=4, n_nll=10, n_samples=2)
        assert r.parameters == sum(p.numel() for p in model.encoder.parameters())
    finally:
        model.decoder.requires_grad_(True)


def test_errors_name_the_argument(trained):
    model, x = trained
    with pytest.raises(ValueError, match="x_test"):
        report(model, x * 0.5 + 0.25)
    with pytest.raises(ValueError, match="n_nll"):
        report(model, x, n_nll=41)
    with pytest.raises(TypeError, match="VAE"):
        report(object(), x)


def test_paired_difference_is_the_mean_and_se_of_the_differences():
    a = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    b = a + torch.tensor([0.5, 0.7, 0.4, 0.6], dtype=torch.float64)
    mean, se = vaelib.evaluate.paired_difference(a, b)
    d = [0.5, 0.7, 0.4, 0.6]
    m = sum(d) / 4
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / 3)
    assert mean == pytest.approx(m) and se == pytest.approx(sd / 2)
    assert se < math.sqrt(a.var().item() / 4 + b.var().item() / 4)  # pairing removes the shared spread
