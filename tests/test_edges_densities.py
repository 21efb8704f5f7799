"""vaelib.densities and vaelib.kl over each dtype's whole finite range, against exact mpmath references.

Every input is a float of the tested dtype, so it is exactly representable and mpmath (60 digits, far
beyond float64's 16, with an exponent range that never overflows) computes the exact value of the
formula from those very inputs. For finite inputs the library must

* never return NaN;
* return a finite value within the stated error bound when the exact value is representable, with the
  error bound itself as the safety margin: ``|exact| + bound < max`` (a value within rounding distance
  of ``max`` may round either way);
* return the infinity of the exact value's sign when ``|exact| - bound > max``.

Error bounds, with ``eps = finfo.eps`` (one ulp at 1, twice the unit roundoff ``u``):

* Gaussian terms: the standardised difference ``z = ((x - mu) e) (e r)``, ``e = exp(-logvar/4)``, has
  <= 2 eps relative error (the subtraction u, ``exp`` <= 1 ulp = eps used twice, two products 2u); its
  square <= 4.5 eps; the log-variance term and the ``addcmul`` add <= 1.5 eps. Summing ``D`` terms adds
  <= (D - 1) u times the sum of the terms' absolute values. So
  ``|error| <= (6 + D/2) eps * A``, ``A`` the sum of the absolute values of the formula's summands; we
  allow ``(8 + D) eps * A``. The bound is relative to ``A``, not to the result: the log-density's
  summands may cancel (``log sigma^2`` against ``log 2 pi``, or across dimensions), and no formula that
  rounds each summand can do better.
* KL: the same per-term rounding, plus the rounding of the half log-variance ratio ``rho/2`` (one
  rounding of ``logvar_q/2 - logvar_p/2``, unavoidable without splitting the exponential): it perturbs
  ``e^rho - 1 - rho`` by ``|rho| u |expm1(rho)|``; we allow ``eps/2 * sum |rho| |expm1(rho)|`` for it.
* Bernoulli: every term ``-softplus(+-logit)`` is <= 0 and computed to <= 2.5 ulps of itself (``exp``,
  ``log1p``, one rounding), so the sum is accurate relative to the result: ``(4 + D) eps * |exact|``.
* Results in the subnormal range have an absolute rounding error of up to the smallest subnormal per
  operation; all bounds add ``8 D`` smallest subnormals.

In soak runs (3,000 examples per property) the largest error seen was about ``3 eps * A`` for the
Gaussian log-density and KL and ``0.9 eps * |exact|`` for the Bernoulli one, against bounds of at least
``9 eps * A`` and ``5 eps * |exact|``.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from conftest import HYPOTHESIS_EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal, kl_divergence

from vaelib import gaussian_kl, kl_normal, log_bernoulli, log_normal

SETTINGS = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)
DTYPES = [torch.float32, torch.float64]
MP_DPS = 60


def _fi(dtype):
    return torch.finfo(dtype)


def _sub_min(dtype) -> float:
    return _fi(dtype).tiny * _fi(dtype).eps  # smallest subnormal: 2^-149 (float32), 2^-1074 (float64)


def _round(v: float, dtype) -> float:
    """``v`` rounded to ``dtype`` (hypothesis bounds of a narrow width must be representable in it)."""
    return float(torch.tensor(v, dtype=torch.float64).to(dtype))


def _floats(dtype, lo: float | None = None, hi: float | None = None):
    """Finite floats of ``dtype`` in ``[lo, hi]`` (default: the whole finite range, subnormals included)."""
    big = _fi(dtype).max
    lo = -big if lo is None else _round(max(lo, -big), dtype)
    hi = big if hi is None else _round(min(hi, big), dtype)
    width = 32 if dtype == torch.float32 else 64
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)


def _near(dtype, points):
    """Floats within 3 of each point (where ``exp``, a square or a clamp bound changes regime)."""
    return st.one_of(*(_floats(dtype, p - 3, p + 3) for p in points))


def logvars(dtype):
    """Log-variances over the whole range, with emphasis near +-(multiples of) log(max) and near 0."""
    fi = _fi(dtype)
    L = math.log(fi.max)  # 88.7 (float32), 709.8 (float64): exp(L) is max
    S = -math.log(_sub_min(dtype))  # 103.3, 744.4: exp(-S) is the smallest subnormal
    points = [s * p for s in (1, -1) for p in (L, L + math.log(2), 2 * L, 4 * L, 2 * L + S, 4 * math.floor(L))]
    points += [-4 * math.floor(-math.log(fi.tiny)), 4 * math.floor(-math.log(fi.tiny))]
    return st.one_of(
        _floats(dtype),
        _floats(dtype, -5 * L, 5 * L),
        _near(dtype, points),
        _floats(dtype, -1e-3, 1e-3),
        _floats(dtype, -50, 50),
    )


def means(dtype):
    """Means over the whole range, with emphasis on tiny (subnormal) and huge values, and near sqrt(max)."""
    fi = _fi(dtype)
    root = math.sqrt(fi.max)
    return st.one_of(
        _floats(dtype),
        _floats(dtype, -1e3, 1e3),
        _floats(dtype, -1e4 * fi.tiny, 1e4 * fi.tiny),
        _floats(dtype, -4 * root, 4 * root),
        st.sampled_from([_round(v, dtype) for v in (0.0, _sub_min(dtype), -fi.max, fi.max, root, -2 * root)]),
    )


@st.composite
def point_and_mean(draw, dtype):
    """(x, mu): x independent of mu, equal to it, or near it (a tiny difference against a tiny sigma)."""
    mu = draw(means(dtype))
    how = draw(st.sampled_from(["any", "equal", "near"]))
    if how == "any":
        return draw(means(dtype)), mu
    if how == "equal":
        return mu, mu
    x = torch.tensor(mu, dtype=dtype)
    toward = torch.tensor(draw(st.sampled_from([-math.inf, math.inf])), dtype=dtype)
    for _ in range(draw(st.integers(1, 3))):  # 1 to 3 ulps away (never beyond max: max steps down)
        step = torch.nextafter(x, toward)
        x = step if torch.isfinite(step) else torch.nextafter(x, -toward)
    return float(x), mu


def _vec(values, dtype) -> torch.Tensor:
    return torch.tensor([values], dtype=dtype)  # (1, D)


def _mpf(v: float):
    return mpmath.mpf(v)


def _check(got: float, exact, bound, dtype, what: str) -> None:
    """The contract of the module docstring for one result."""
    big = mpmath.mpf(_fi(dtype).max)
    assert not math.isnan(got), f"{what}: NaN, exact {mpmath.nstr(exact, 8)}"
    if abs(exact) + bound < big:
        assert math.isfinite(got), f"{what}: {got}, exact {mpmath.nstr(exact, 8)} is representable"
        err = abs(_mpf(got) - exact)
        assert err <= bound, (
            f"{what}: {got}, exact {mpmath.nstr(exact, 17)}, error {mpmath.nstr(err, 3)} > {mpmath.nstr(bound, 3)}"
        )
    elif abs(exact) - bound > big:
        assert got == math.copysign(math.inf, exact), f"{what}: {got}, exact {mpmath.nstr(exact, 8)} overflows"


# --- exact references ------------------------------------------------------------------------------------


def _ref_log_normal(x, mu, lv):
    """(exact log-density, A = sum of |summands| / 2, whether some |x - mu| exceeds ``max``)."""
    log_2pi = mpmath.log(2 * mpmath.pi)
    total, scale = mpmath.mpf(0), mpmath.mpf(0)
    for xj, mj, lj in zip(x, mu, lv):
        sq = (_mpf(xj) - _mpf(mj)) ** 2 * mpmath.exp(-_mpf(lj))
        total += log_2pi + lj + sq
        scale += log_2pi + abs(_mpf(lj)) + sq
    return -total / 2, scale / 2


def _ref_kl(mq, lq, mp_, lp):
    """(exact KL, A = sum of |summands| / 2, sum of |rho| |expm1 rho| / 2)."""
    total, scale, ratio = mpmath.mpf(0), mpmath.mpf(0), mpmath.mpf(0)
    for a, la, b, lb in zip(mq, lq, mp_, lp):
        sq = (_mpf(a) - _mpf(b)) ** 2 * mpmath.exp(-_mpf(lb))
        rho = _mpf(la) - _mpf(lb)
        em1 = mpmath.expm1(rho)
        total += sq + em1 - rho
        scale += sq + abs(em1) + abs(rho)
        ratio += abs(rho) * abs(em1)
    return total / 2, scale / 2, ratio / 2


def _softplus(u):
    u = _mpf(u)
    return u + mpmath.log1p(mpmath.exp(-u)) if u > 0 else mpmath.log1p(mpmath.exp(u))


def _diff_overflows(a, b, dtype) -> bool:
    """Whether some ``a_j - b_j`` overflows in ``dtype`` (rounds to +-inf: beyond max + ulp(max)/2)."""
    return not bool(torch.isfinite(torch.tensor(a, dtype=dtype) - torch.tensor(b, dtype=dtype)).all())


# --- properties over the whole range ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_log_normal_whole_range_against_mpmath(dtype):
    @SETTINGS
    @given(st.lists(st.tuples(point_and_mean(dtype), logvars(dtype)), min_size=1, max_size=4))
    def check(rows):
        x, mu = zip(*(r[0] for r in rows))
        lv = [r[1] for r in rows]
        got = float(log_normal(_vec(x, dtype), _vec(mu, dtype), _vec(lv, dtype)))
        with mpmath.workdps(MP_DPS):
            exact, scale = _ref_log_normal(x, mu, lv)
            d = len(lv)
            if _diff_overflows(x, mu, dtype):  # the documented limit: x - mu itself overflows
                assert got == -math.inf
                return
            bound = (8 + d) * _fi(dtype).eps * scale + 8 * d * _mpf(_sub_min(dtype))
            _check(got, exact, bound, dtype, f"log_normal({x}, {mu}, {lv})")

    check()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_gaussian_kl_whole_range_against_mpmath(dtype):
    @SETTINGS
    @given(st.lists(st.tuples(means(dtype), logvars(dtype)), min_size=1, max_size=4))
    def check(rows):
        mu, lv = (list(v) for v in zip(*rows))
        got = float(gaussian_kl(_vec(mu, dtype), _vec(lv, dtype)))
        with mpmath.workdps(MP_DPS):
            zeros = [0.0] * len(mu)
            exact, scale, _ = _ref_kl(mu, lv, zeros, zeros)
            d = len(mu)
            # logvar / 2 is exact (bar subnormals): no ratio term in the bound.
            bound = (8 + d) * _fi(dtype).eps * scale + 8 * d * _mpf(_sub_min(dtype))
            assert got >= 0
            _check(got, exact, bound, dtype, f"gaussian_kl({mu}, {lv})")

    check()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_kl_normal_whole_range_against_mpmath(dtype):
    @SETTINGS
    @given(st.lists(st.tuples(point_and_mean(dtype), logvars(dtype), logvars(dtype)), min_size=1, max_size=4),
           st.booleans())
    def check(rows, tie):
        mq, mp_ = (list(v) for v in zip(*(r[0] for r in rows)))
        lq, lp = [r[1] for r in rows], [r[2] for r in rows]
        if tie:  # equal log-variances in the first dimension (rho = 0): the mean term alone
            lq[0] = lp[0]
        got = float(kl_normal(*(_vec(v, dtype) for v in (mq, lq, mp_, lp))))
        with mpmath.workdps(MP_DPS):
            exact, scale, ratio = _ref_kl(mq, lq, mp_, lp)
            if _diff_overflows(mq, mp_, dtype):  # the documented limit: mu_q - mu_p itself overflows
                assert got == math.inf
                return
            d = len(mq)
            eps = _fi(dtype).eps
            bound = (8 + d) * eps * scale + eps * ratio + 8 * d * _mpf(_sub_min(dtype))
            assert got >= 0
            _check(got, exact, bound, dtype, f"kl_normal({mq}, {lq}, {mp_}, {lp})")

    check()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_log_bernoulli_whole_range_against_mpmath(dtype):
    L = math.log(_fi(dtype).max)
    logits = st.one_of(_floats(dtype), _floats(dtype, -120, 120), _near(dtype, [40, -40, L, -L]))

    @SETTINGS
    @given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), logits), min_size=1, max_size=6))
    def check(rows):
        x, l = (list(v) for v in zip(*rows))
        got = float(log_bernoulli(_vec(x, dtype), _vec(l, dtype)))
        with mpmath.workdps(MP_DPS):
            exact = -mpmath.fsum(_softplus(lj if xj == 0 else -lj) for xj, lj in zip(x, l))
            d = len(x)
            bound = (4 + d) * _fi(dtype).eps * abs(exact) + 8 * d * _mpf(_sub_min(dtype))
            assert got <= 0
            _check(got, exact, bound, dtype, f"log_bernoulli({x}, {l})")

    check()


# --- the reported failures, as regressions ------------------------------------------------------------------

F32, F64 = torch.float32, torch.float64


def _t(*v, dtype=F32):
    return torch.tensor(v, dtype=dtype)


def test_regression_kl_normal_at_tiny_equal_variances_is_zero():
    # Was NaN in float32 (0 * exp(90)... inf - inf); torch.distributions gives 0.
    assert float(kl_normal(_t(0.0), _t(-90.0), _t(0.0), _t(-90.0))) == 0.0
    ref = kl_divergence(Normal(_t(0.0), torch.exp(0.5 * _t(-90.0))), Normal(_t(0.0), torch.exp(0.5 * _t(-90.0))))
    assert float(ref.sum()) == 0.0
    # float64 failed the same way below log-variance -710.
    for lv in (-710.0, -720.0, -1500.0, -2900.0, -1e300):
        assert float(kl_normal(_t(0.0, dtype=F64), _t(lv, dtype=F64), _t(0.0, dtype=F64), _t(lv, dtype=F64))) == 0.0


def test_regression_log_normal_at_a_tiny_variance_and_zero_difference():
    # Was NaN (0 * inf); exact -(log 2pi - 90) / 2 = 44.08.
    got = float(log_normal(_t(0.5), _t(0.5), _t(-90.0)))
    assert got == pytest.approx(-(math.log(2 * math.pi) - 90) / 2, rel=1e-6)
    assert got == pytest.approx(44.0811, abs=1e-4)
    for lv in (-710.0, -720.0, -3000.0, -1e300):  # float64
        got = float(log_normal(_t(0.5, dtype=F64), _t(0.5, dtype=F64), _t(lv, dtype=F64)))
        assert got == pytest.approx(-(math.log(2 * math.pi) + lv) / 2, rel=1e-14)


def test_regression_kl_normal_with_a_huge_mean_and_a_huge_variance():
    # Was inf: (1e20)^2 overflows float32 although (1e20)^2 e^-100 / 2 = 1.86e-4.
    got = float(kl_normal(_t(1e20), _t(100.0), _t(0.0), _t(100.0)))
    exact = float(mpmath.mpf(float(_t(1e20))) ** 2 * mpmath.exp(-100) / 2)
    assert got == pytest.approx(exact, rel=1e-5)
    assert got == pytest.approx(1.86e-4, rel=1e-2)
    got = float(log_normal(_t(1e20), _t(0.0), _t(100.0)))
    assert got == pytest.approx(-(math.log(2 * math.pi) + 100 + exact * 2) / 2, rel=1e-6)


def test_regression_overflowing_intermediates_with_representable_results():
    big = torch.finfo(F32).max
    # mu^2 overflows float32, mu^2 / 2 does not.
    got = float(gaussian_kl(_t(2e19), _t(0.0)))
    assert got == pytest.approx(float(_t(2e19)) ** 2 / 2, rel=1e-6) and got < big
    # expm1(89) overflows float32, (e^89 - 1 - 89) / 2 does not.
    got = float(gaussian_kl(_t(0.0), _t(89.0)))
    assert got == pytest.approx((math.exp(89) - 90) / 2, rel=1e-5) and got < big
    # logvar_q - logvar_p overflows, the KL (-rho - 1) / 2 = 3e38 does not.
    got = float(kl_normal(_t(0.0), _t(-3e38), _t(0.0), _t(3e38)))
    assert got == pytest.approx(float(_t(3e38)), rel=1e-6)
    # A log-density of -2.4e38: (x - mu)^2 overflows, its half does not.
    got = float(log_normal(_t(2.2e19), _t(0.0), _t(0.0)))
    assert got == pytest.approx(-(float(_t(2.2e19)) ** 2) / 2, rel=1e-6)
    # Log-variances of +-3e38 cancelling across 16 dimensions (summed in vector lanes): was inf or NaN.
    lv = _t(*([3e38] * 8 + [-3e38] * 8))
    got = float(log_normal(torch.zeros(16), torch.zeros(16), lv))
    # Exact -8 log 2pi = -14.7; log 2pi is below the rounding of 3e38, so within (8 + D) eps A of that.
    assert math.isfinite(got) and abs(got + 8 * math.log(2 * math.pi)) <= 24 * torch.finfo(F32).eps * 8 * 3e38
    # Two logits of 3e38 for two ones: x . l - sum softplus(l) was inf - inf = NaN; exact -2 e^-3e38.
    assert float(log_bernoulli(torch.ones(2), _t(3e38, 3e38))) == 0.0
    assert float(log_bernoulli(torch.ones(2), _t(-3e38, -3e38))) == -math.inf  # exact -6e38
    assert float(log_bernoulli(torch.ones(2), _t(-1e38, -1e38))) == pytest.approx(-2e38, rel=1e-6)


def test_results_that_overflow_are_infinite_of_the_right_sign():
    assert float(log_normal(_t(1.0), _t(0.0), _t(-200.0))) == -math.inf  # e^200 / 2
    assert float(log_normal(torch.zeros(3), torch.zeros(3), _t(-3e38, -3e38, -3e38))) == math.inf  # +4.5e38
    assert float(gaussian_kl(_t(3e19), _t(0.0))) == math.inf
    assert float(gaussian_kl(_t(0.0), _t(90.0))) == math.inf
    assert float(kl_normal(_t(0.0), _t(3e38), _t(0.0), _t(-3e38))) == math.inf
    assert float(kl_normal(_t(1.0), _t(0.0), _t(0.0), _t(-3e38))) == math.inf


def test_documented_limit_an_overflowing_difference_of_means():
    # |x - mu| = 6e38 > max: the difference overflows and the result is -inf (KL: +inf), never NaN. That
    # is exact for sigma^2 below max (here 1); for a variance of e^100 the exact value is finite, the
    # documented limit.
    x, mu = _t(3e38), _t(-3e38)
    for lv in (0.0, 100.0, 3e38):
        assert float(log_normal(x, mu, _t(lv))) == -math.inf
        assert float(kl_normal(x, _t(lv), mu, _t(lv))) == math.inf
    # Just inside the limit (|x - mu| = max) everything is computed.
    m = torch.finfo(F32).max / 2
    got = float(kl_normal(_t(m), _t(100.0), _t(-m), _t(100.0)))
    assert got == pytest.approx(float(mpmath.mpf(2 * m) ** 2 * mpmath.exp(-100) / 2), rel=1e-5)


def test_infinite_points_and_gradients_stay_nan_free():
    assert float(log_normal(_t(math.inf), _t(0.0), _t(3e38))) == -math.inf
    assert float(log_normal(_t(-math.inf), _t(0.0), _t(-3e38))) == -math.inf
    # Gradients at the extremes are finite where the value is (no 0 * inf in the backward pass).
    for lv in (-90.0, -400.0, 0.0, 400.0):
        mu = _t(0.5).requires_grad_()
        logvar = _t(lv).requires_grad_()
        log_normal(_t(0.5), mu, logvar).backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
        assert float(logvar.grad) == -0.5
        mq, lq = _t(0.0).requires_grad_(), _t(lv).requires_grad_()
        kl_normal(mq, lq, _t(0.0), _t(lv)).backward()
        assert float(mq.grad) == 0.0 and float(lq.grad) == 0.0


# --- spot checks against torch.distributions, where it is accurate ------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_against_torch_distributions_in_the_moderate_range(seed):
    g = torch.Generator().manual_seed(seed)
    mu, x, mu_p = (1e3 * torch.randn(6, 5, generator=g, dtype=F64) for _ in range(3))
    lv, lv_p = (torch.empty(6, 5, dtype=F64).uniform_(-40, 40, generator=g) for _ in range(2))

    def normal(m, l):
        return Independent(Normal(m, torch.exp(0.5 * l)), 1)

    def terms_scale(*terms):  # rounding is relative to the summands, as in the module docstring
        return sum(t.abs() for t in terms).sum(-1) + 1

    z2 = (x - mu) ** 2 * torch.exp(-lv)
    torch.testing.assert_close(log_normal(x, mu, lv), normal(mu, lv).log_prob(x), rtol=0,
                               atol=float(1e-12 * terms_scale(lv, z2).max()))
    rho = lv - lv_p
    zq = (mu - mu_p) ** 2 * torch.exp(-lv_p)
    torch.testing.assert_close(kl_normal(mu, lv, mu_p, lv_p), kl_divergence(normal(mu, lv), normal(mu_p, lv_p)),
                               rtol=0, atol=float(1e-12 * terms_scale(zq, rho.exp(), rho).max()))
    zeros = torch.zeros_like(mu)
    torch.testing.assert_close(gaussian_kl(mu, lv), kl_divergence(normal(mu, lv), normal(zeros, zeros)), rtol=0,
                               atol=float(1e-12 * terms_scale(mu**2, lv.exp(), lv).max()))
    # float32 agrees with the float64 reference to float32 rounding of the same terms.
    got32 = log_normal(x.float(), mu.float(), lv.float()).double()
    exact = log_normal(x.float().double(), mu.float().double(), lv.float().double())
    assert ((got32 - exact).abs() <= 13 * torch.finfo(F32).eps * terms_scale(lv, z2)).all()


# --- the broadcasting rule -----------------------------------------------------------------------------------


def _expanded(shape, *tensors):
    return [t.expand(shape).contiguous() for t in tensors]


def test_allowed_broadcasts_give_the_numbers_of_the_expanded_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    for mu, lv in [
        (torch.randn(3, generator=g, dtype=F64), torch.tensor(0.3, dtype=F64)),  # (D,) and 0-d
        (torch.randn(4, 1, generator=g, dtype=F64), torch.randn(1, 3, generator=g, dtype=F64)),  # size-1 dims
        (torch.randn(2, 4, 3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)),  # sample axis
    ]:
        shape = torch.broadcast_shapes(x.shape, mu.shape, lv.shape)
        got = log_normal(x, mu, lv)
        assert got.shape == shape[:-1]
        torch.testing.assert_close(got, log_normal(*_expanded(shape, x, mu, lv)), rtol=1e-15, atol=1e-13)
    # Points (G, 1, 1) against mixture components (K, 1): one density per point and component.
    pts, comp = torch.linspace(-3, 3, 7, dtype=F64)[:, None, None], torch.tensor([[-1.0], [2.0]], dtype=F64)
    got = log_normal(pts, comp, torch.zeros(2, 1, dtype=F64))
    assert got.shape == (7, 2)
    torch.testing.assert_close(got, Normal(comp[:, 0], 1.0).log_prob(pts[:, :, 0]), rtol=1e-14, atol=1e-14)

    xb = (torch.rand(4, 3, generator=g) < 0.5).double()
    for logits in [torch.randn(5, 4, 3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64),
                   torch.randn(4, 1, generator=g, dtype=F64)]:
        shape = torch.broadcast_shapes(xb.shape, logits.shape)
        got = log_bernoulli(xb, logits)
        assert got.shape == shape[:-1]
        torch.testing.assert_close(got, log_bernoulli(*_expanded(shape, xb, logits)), rtol=1e-15, atol=1e-14)

    mu_q, lv_q = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    for mu_p, lv_p in [(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)),
                       (torch.randn(1, 3, generator=g, dtype=F64), torch.tensor(0.5, dtype=F64)),
                       (torch.randn(4, 1, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64))]:
        got = kl_normal(mu_q, lv_q, mu_p, lv_p)
        assert got.shape == (4,)
        torch.testing.assert_close(got, kl_normal(mu_q, lv_q, *_expanded(mu_q.shape, mu_p, lv_p)), rtol=1e-15,
                                   atol=1e-14)


Z = torch.zeros
DISALLOWED = [
    # (function, arguments by name): the summed last dimension broadcast onto the data, or p adding dims to q
    ("log_normal", {"x": Z(4, 1), "mu": Z(3), "logvar": Z(3)}),
    ("log_normal", {"x": Z(4, 1), "mu": Z(4, 1), "logvar": Z(4, 3)}),
    ("log_normal", {"x": Z(1), "mu": Z(2, 5), "logvar": Z(())}),
    ("log_normal", {"x": Z(3, 4), "mu": Z(3, 5), "logvar": Z(3, 4)}),  # no broadcast at all
    ("log_bernoulli", {"x": Z(4, 1), "logits": Z(3)}),
    ("log_bernoulli", {"x": Z(2, 1), "logits": Z(5, 2, 6)}),
    ("log_bernoulli", {"x": Z(3, 4), "logits": Z(3, 5)}),
    ("kl_normal", {"mu_q": Z(4, 1), "logvar_q": Z(4, 1), "mu_p": Z(3), "logvar_p": Z(3)}),
    ("kl_normal", {"mu_q": Z(4, 3), "logvar_q": Z(4, 3), "mu_p": Z(2, 4, 3), "logvar_p": Z(3)}),
    ("kl_normal", {"mu_q": Z(4, 3), "logvar_q": Z(4, 3), "mu_p": Z(3), "logvar_p": Z(5, 1, 1)}),
    ("kl_normal", {"mu_q": Z(3), "logvar_q": Z(3), "mu_p": Z(4, 3), "logvar_p": Z(4, 3)}),
    ("kl_normal", {"mu_q": Z(3, 2), "logvar_q": Z(3, 2), "mu_p": Z(4), "logvar_p": Z(4)}),  # no broadcast
]
FUNCS = {"log_normal": log_normal, "log_bernoulli": log_bernoulli, "kl_normal": kl_normal}


@pytest.mark.parametrize("name, args", DISALLOWED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(DISALLOWED)])
def test_disallowed_broadcasts_raise_naming_every_shape(name, args):
    with pytest.raises(ValueError) as info:
        FUNCS[name](**args)
    msg = str(info.value)
    assert "broadcast" in msg
    for arg, t in args.items():
        if arg == "logvar_q":  # the same shape as mu_q, checked separately
            continue
        assert arg in msg and str(tuple(t.shape)) in msg, (arg, msg)
