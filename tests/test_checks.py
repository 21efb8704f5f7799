"""vaelib.checks: the one-line self-checks assert what they say, and record the value and the margin.

Recording is observed as a reader's notebook sees it: in a Jupyter kernel (an IPython shell here) each
check displays myst-nb's glue output (``display_data`` with ``scrapbook`` metadata naming the key); in
plain Python it records nothing and only asserts.
"""

from __future__ import annotations

import math

import pytest
import torch

from vaelib.checks import CheckFailed, close, holds, record


@pytest.fixture
def glued(monkeypatch):
    """The glue outputs displayed while a check runs inside an IPython shell: {key: text/plain}."""
    from IPython.core.interactiveshell import InteractiveShell
    import IPython.core.display_functions as display_functions

    shell = InteractiveShell.instance()
    seen: dict[str, str] = {}

    class Publisher:
        def publish(self, data, metadata=None, **kwargs):
            key = (metadata or {}).get("scrapbook", {}).get("name")
            assert key is not None, f"a check displayed something other than a glue output: {data}"
            # myst-nb prefixes each mime type with application/papermill.record/
            by_type = {mime.rsplit("/", 2)[-2] + "/" + mime.rsplit("/", 1)[-1]: v for mime, v in data.items()}
            seen[key] = "<figure>" if "image/png" in by_type else by_type["text/plain"]

        def clear_output(self, wait=False):
            pass

    monkeypatch.setattr(shell, "display_pub", Publisher())
    yield seen
    InteractiveShell.clear_instance()
    del display_functions


def test_holds_asserts_and_records_value_and_margin(glued):
    assert holds("t-small", torch.tensor(2e-13, dtype=torch.float64), below=1e-12) == 2e-13
    assert float(glued["t-small"]) == 2e-13
    assert float(glued["t-small-margin"]) == pytest.approx(5.0)
    holds("t-big", 12.0, above=3.0)
    assert float(glued["t-big-margin"]) == pytest.approx(4.0)
    holds("t-both", 2.0, above=1.0, below=10.0)
    assert float(glued["t-both-margin"]) == pytest.approx(2.0)  # the smaller of 5 and 2
    holds("t-zero", 0.0, below=1e-9)
    assert glued["t-zero-margin"] == "inf"


@pytest.mark.parametrize("value, bounds, words", [
    (1e-11, {"below": 1e-12}, "is not below"),
    (1e-12, {"below": 1e-12}, "is not below"),  # strict
    (2.0, {"above": 3.0}, "is not above"),
    (math.nan, {"below": 1.0}, "nan is not below"),
    (torch.tensor([math.nan]), {"above": -1.0}, "nan is not above"),
])
def test_holds_fails_with_the_numbers(value, bounds, words):
    with pytest.raises(CheckFailed, match=words) as info:
        holds("t-fail", value, **bounds)
    assert "t-fail" in str(info.value)
    assert isinstance(info.value, AssertionError)  # the chapter stops like at an assert


@pytest.mark.parametrize("value, error", [
    (torch.ones(3), ValueError), ("0.1", TypeError), (True, TypeError), (None, TypeError),
])
def test_holds_refuses_what_is_not_one_number(value, error):
    with pytest.raises(error, match="t-bad"):
        holds("t-bad", value, below=1.0)


def test_holds_needs_a_bound_and_a_name():
    with pytest.raises(ValueError, match="give a bound"):
        holds("t", 1.0)
    with pytest.raises(ValueError, match="name"):
        holds("two words", 1.0, below=2.0)


def test_close_is_torch_isclose_and_records_the_worst_difference(glued):
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    e = a + torch.tensor([1e-9, -4e-9, 2e-9], dtype=torch.float64)
    assert close("t-close", a, e, atol=1e-8) == pytest.approx(4e-9)
    assert float(glued["t-close"]) == pytest.approx(4e-9)
    assert float(glued["t-close-margin"]) == pytest.approx(2.5)
    # relative tolerance, broadcast against a number, agrees with torch.isclose
    x = torch.tensor([100.0, 101.0])
    assert torch.isclose(x, torch.tensor(100.0), rtol=0.011, atol=0).all()
    close("t-rel", x, 100.0, rtol=0.011)
    with pytest.raises(CheckFailed, match=r"t-rel2: 101 differs from 100 at index \(1,\) by 1"):
        close("t-rel2", x, 100.0, rtol=0.009)


def test_close_fails_on_nan_and_names_the_count():
    with pytest.raises(CheckFailed, match="2 of 3 elements outside"):
        close("t-nan", torch.tensor([1.0, math.nan, 5.0]), torch.tensor([1.0, 1.0, 1.0]), atol=0.1)
    with pytest.raises(ValueError, match="atol and rtol"):
        close("t", 1.0, 1.0)


def test_record_names_converts_and_closes_figures(glued):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    record("ch0", gap=torch.tensor(0.25), kl_end=3, label="mean-field", fig=fig)
    assert float(glued["ch0-gap"]) == 0.25
    assert glued["ch0-kl-end"] == "3"
    assert glued["ch0-label"] == "'mean-field'"
    assert "ch0-fig" in glued  # (its PNG form needs the inline backend of a real kernel)
    assert not plt.fignum_exists(fig.number)  # closed: shown once, where the text places it
    with pytest.raises(ValueError, match="at least one value"):
        record("ch0")


def test_outside_a_kernel_checks_only_assert(capsys):
    holds("t-plain", 1.0, below=2.0)
    close("t-plain2", 1.0, 1.0, atol=1e-12)
    record("t", value=1.0)
    assert capsys.readouterr().out == ""


def test_a_check_on_a_cells_last_line_shows_the_statement():
    """A cell ending with a check displays what held, not a bare number; the value is still a float."""
    from IPython.lib.pretty import pretty

    value = holds("t-shown", 8.9e-16, below=1e-10)
    assert pretty(value) == "t-shown: 8.9e-16 < 1e-10, holds"
    assert repr(value) == "8.9e-16" and f"{value:.0e}" == "9e-16" and type(value * 2) is float
    assert pretty(holds("t-both", 1.5, above=1, below=2)) == "t-both: 1 < 1.5 < 2, holds"
    shown = pretty(close("t-close-shown", 1.0, 1.0 + 1e-9, atol=1e-6))
    assert shown == "t-close-shown: largest difference 1e-09 <= 1e-06, holds"


def test_negative_values_below_zero_and_underscore_keys(glued):
    holds("t-neg", -0.5, below=0)
    assert glued["t-neg-margin"] == "inf"
    record("base", sep="_", elbo_se=0.25)
    assert float(glued["base_elbo_se"]) == 0.25
    with pytest.raises(ValueError, match="sep"):
        record("base", sep=".", a=1.0)
