"""vaelib.distributions: the model's three distributions, against torch.distributions in float64."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    kl_divergence,
)
from torch.distributions.transforms import ExpTransform

from vaelib.distributions import (
    BernoulliLogits,
    DiagonalNormal,
    StandardNormal,
    Unflattened,
    as_event,
    draw,
    kl,
    kl_per_dimension,
    log_prob,
    mean,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian(batch: int = 5, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(batch, d, generator=g, dtype=F64), torch.randn(batch, d, generator=g, dtype=F64)


def _torch_normal(loc: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(loc, torch.exp(0.5 * logvar)), 1)


def test_diagonal_normal_is_torchs_independent_normal():
    loc, logvar = _gaussian()
    q, ref = DiagonalNormal(loc, logvar), _torch_normal(loc, logvar)
    assert q.batch_shape == ref.batch_shape == (5,) and q.event_shape == ref.event_shape == (3,)
    z = ref.sample((7,))
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.entropy(), ref.entropy(), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.mean, ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(q.variance, ref.variance, rtol=1e-15, atol=0)
    assert q.expand((2, 5)).batch_shape == (2, 5)


def test_diagonal_normal_draws_the_reparameterisation_with_the_callers_generator():
    loc, logvar = _gaussian()
    loc.requires_grad_(True)
    z = draw(DiagonalNormal(loc, logvar), (4,), _gen(3))
    eps = torch.randn((4, 5, 3), generator=_gen(3), dtype=F64)
    torch.testing.assert_close(z, loc + torch.exp(0.5 * logvar) * eps, rtol=0, atol=0)
    z.sum().backward()  # reparameterised: the gradient reaches loc
    torch.testing.assert_close(loc.grad, torch.full_like(loc, 4.0))


def test_a_scalar_logvar_is_one_variance_for_every_coordinate():
    loc = torch.randn(4, 6, dtype=F64)
    logvar = torch.tensor(-0.7, dtype=F64)
    x = torch.randn(4, 6, dtype=F64)
    p = DiagonalNormal(loc, logvar)
    assert p.batch_shape == (4,) and p.event_shape == (6,)
    torch.testing.assert_close(p.log_prob(x), _torch_normal(loc, logvar.expand(4, 6)).log_prob(x), rtol=0, atol=1e-12)


def test_standard_normal():
    p, ref = StandardNormal(3, F64), _torch_normal(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64))
    z = torch.randn(6, 2, 3, dtype=F64)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.entropy(), ref.entropy(), rtol=0, atol=1e-12)
    torch.testing.assert_close(draw(p, (5,), _gen(1)), torch.randn(5, 3, generator=_gen(1), dtype=F64))
    assert p.expand((4,)).log_prob(z[0, 0]).shape == (4,)


def test_bernoulli_logits_is_torchs_bernoulli_and_refuses_grey_levels():
    logits = torch.randn(3, 4, 10, dtype=F64) * 5
    x = (torch.rand(4, 10, generator=_gen(2)) < 0.4).to(F64)
    b, ref = BernoulliLogits(logits), Independent(Bernoulli(logits=logits), 1)
    torch.testing.assert_close(b.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.entropy(), ref.entropy(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.mean, ref.mean)
    with pytest.raises(ValueError, match="binary"):
        b.log_prob(x * 0.5)
    assert torch.isfinite(BernoulliLogits(logits, validate_args=False).log_prob(x * 0.5)).all()
    assert torch.equal(draw(b, (), _gen(4), reparameterized=False), torch.bernoulli(b.probs, generator=_gen(4)))
    with pytest.raises(TypeError, match="no reparameterised sample"):
        draw(b, (), _gen(4))


@pytest.mark.parametrize("p_kind", ["standard", "diagonal", "independent"])
@pytest.mark.parametrize("q_kind", ["diagonal", "independent"])
def test_registered_kls_are_torchs(q_kind, p_kind):
    loc, logvar = _gaussian(seed=1)
    ploc, plogvar = _gaussian(seed=2)
    q = DiagonalNormal(loc, logvar) if q_kind == "diagonal" else _torch_normal(loc, logvar)
    p = {"standard": StandardNormal(3, F64), "diagonal": DiagonalNormal(ploc, plogvar),
         "independent": _torch_normal(ploc, plogvar)}[p_kind]
    zero = torch.zeros(3, dtype=F64)
    ref_p = _torch_normal(zero, zero) if p_kind == "standard" else _torch_normal(ploc, plogvar)
    want = kl_divergence(_torch_normal(loc, logvar), ref_p)
    torch.testing.assert_close(kl(q, p), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl_per_dimension(q, p).sum(-1), want, rtol=1e-12, atol=1e-12)


def test_full_covariance_kl_to_the_standard_normal():
    g = _gen(5)
    loc = torch.randn(4, 3, generator=g, dtype=F64)
    tril = torch.randn(4, 3, 3, generator=g, dtype=F64).tril(-1) + torch.diag_embed(torch.rand(4, 3, generator=g, dtype=F64) + 0.2)
    q = MultivariateNormal(loc, scale_tril=tril)
    want = kl_divergence(q, MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)))
    torch.testing.assert_close(kl(q, StandardNormal(3, F64)), want, rtol=1e-12, atol=1e-12)
    assert kl_per_dimension(q, StandardNormal(3, F64)) is None  # a full covariance does not split


def test_no_closed_form_is_none():
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(2, dtype=F64)),
                                Independent(Normal(torch.randn(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64)), 1))
    loc, logvar = _gaussian()
    assert kl(DiagonalNormal(loc, logvar), mixture) is None


def test_draw_from_torch_families_is_reproducible_and_leaves_the_global_generator_alone():
    loc, logvar = _gaussian()
    q = MultivariateNormal(loc, scale_tril=torch.diag_embed(torch.exp(0.5 * logvar)))
    state = torch.get_rng_state()
    a, b = draw(q, (3,), _gen(8)), draw(q, (3,), _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, draw(q, (3,), _gen(9)))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (3, 5, 3)


def test_as_event_and_unflattened():
    loc, logvar = _gaussian()
    n = Normal(loc, torch.exp(0.5 * logvar))
    d = as_event(n, 3)
    assert isinstance(d, Independent) and d.event_shape == (3,) and d.batch_shape == (5,)
    assert as_event(d, 3) is d
    flat = Independent(Normal(torch.randn(6, 4, dtype=F64), torch.ones(6, 4, dtype=F64)), 1)
    u = Unflattened(flat, (2, 3))
    x = torch.randn(3, 4, dtype=F64)  # broadcast over the leading 2
    torch.testing.assert_close(u.log_prob(x), flat.log_prob(x.expand(2, 3, 4).reshape(6, 4)).reshape(2, 3))
    assert u.mean.shape == (2, 3, 4) and draw(u, (5,), _gen(0)).shape == (5, 2, 3, 4)
    with pytest.raises(ValueError, match="cannot view"):
        Unflattened(flat, (4, 2))


def test_log_prob_without_the_support_check_and_mean_without_a_formula():
    logits = torch.randn(2, 5, dtype=F64)
    grey = torch.full((2, 5), 0.5, dtype=F64)
    torch.testing.assert_close(log_prob(BernoulliLogits(logits), grey),
                               BernoulliLogits(logits, validate_args=False).log_prob(grey))
    lognormal = TransformedDistribution(Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1),
                                        [ExpTransform()])
    m = mean(lognormal, _gen(0), n_samples=200_000)
    torch.testing.assert_close(m, torch.full((3,), torch.e**0.5, dtype=F64), rtol=0.02, atol=0)
