"""vaelib.explorer.reverse_process_html: chapter 12's in-page sampler, its payload and its refusals.

The payload is read back from the fragment as the browser does (the JSON inside the inert
``<script type="application/json">``), decoded with NumPy from the documented layout (base64
little-endian float32, a weight ``(out, in)`` row-major), and run through the documented computation
(:class:`vaelib.diffusion.DenoisingMLP`'s forward, then the reverse step of ``reverse_process``) in
NumPy float64: on the same noise it gives what :func:`vaelib.diffusion.reverse_process` gives for the
model in float64. The browser side (``_static/diffusion_explorer.js``) is checked against vaelib on the
built page in ``tests/test_book_html.py``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from vaelib.diffusion import CosineLogSNR, DenoisingMLP, Diffusion, LinearLogSNR, reverse_process
from vaelib.explorer import reverse_process_html

_DATA = re.compile(r'<script type="application/json" class="vaelib-diffusion-data">([^<]*)</script>')


def small_model(width: int = 16, blocks: int = 2, schedule=None, seed: int = 0) -> Diffusion:
    """A 2-D diffusion model with weights spread a little (a fresh init is tame) so that each layer matters."""
    net = DenoisingMLP(2, width=width, blocks=blocks, frequencies=4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return Diffusion(net, 2, LinearLogSNR(7, -9) if schedule is None else schedule)


def payload_of(fragment: str) -> dict:
    found = _DATA.findall(fragment)
    assert len(found) == 1, fragment[:200]
    return json.loads(found[0])


def floats(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape).astype(np.float64)


def logsigmoid(x):
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def silu(x):
    with np.errstate(over="ignore"):  # x / inf = -0 for very negative x, as in PyTorch
        return x / (1 + np.exp(-x))


def numpy_eps(payload: dict, z: np.ndarray, lam: float) -> np.ndarray:
    """The documented network in float64: inp(z, sin, cos), residual blocks of silu, out(silu(h))."""
    layers = payload["layers"]
    omega = np.array(payload["omega"])
    w = [(floats(layer["weight"], (layer["out"], layer["in"])), floats(layer["bias"], (layer["out"],)))
         for layer in layers]
    emb = np.concatenate([np.sin(lam * omega), np.cos(lam * omega)])
    x = np.concatenate([z, np.broadcast_to(emb, (z.shape[0], emb.size))], axis=1)
    h = x @ w[0][0].T + w[0][1]
    for b in range(payload["blocks"]):
        (w1, b1), (w2, b2) = w[1 + 2 * b], w[2 + 2 * b]
        h = h + silu(silu(h) @ w1.T + b1) @ w2.T + b2
    return silu(h) @ w[-1][0].T + w[-1][1]


def numpy_reverse(payload: dict, noise: np.ndarray) -> np.ndarray:
    """The documented reverse process in float64 from the payload alone (its log-SNRs, its weights)."""
    lam = np.array(payload["logsnr"])
    out = [noise[0]]
    z = noise[0]
    for k in range(1, payload["steps"] + 1):
        lt, ls = lam[k - 1], lam[k]
        log_alpha_t, logvar_t = 0.5 * logsigmoid(lt), logsigmoid(-lt)
        log_alpha_s, logvar_s = 0.5 * logsigmoid(ls), logsigmoid(-ls)
        one_minus = -math.expm1(lt - ls)
        x_hat = (z - np.exp(0.5 * logvar_t) * numpy_eps(payload, z, lt)) * np.exp(-log_alpha_t)
        loc = np.exp(log_alpha_t - log_alpha_s + logvar_s - logvar_t) * z + np.exp(log_alpha_s) * one_minus * x_hat
        z = loc + np.exp(0.5 * (logvar_s + math.log(one_minus))) * noise[k]
        out.append(z)
    return np.stack(out)


@pytest.mark.parametrize("schedule", [LinearLogSNR(7, -9), CosineLogSNR(5, -7)], ids=["linear", "cosine"])
def test_payload_layout_and_the_documented_computation(schedule):
    model = small_model(schedule=schedule)
    data = torch.randn(50, 2, generator=torch.Generator().manual_seed(4))
    fragment = reverse_process_html(model, steps=20, n=30, seed=7, data=data, extent=2.5)
    assert fragment.startswith('<div class="vaelib-diffusion">') and fragment.endswith("</div>")
    assert '<p class="vaelib-diffusion-fallback">' in fragment
    p = payload_of(fragment)
    assert p["format"] == "vaelib-diffusion/1"
    assert (p["x_dim"], p["steps"], p["blocks"], p["n"], p["seed"], p["extent"]) == (2, 20, 2, 30, 7, 2.5)
    t = torch.tensor([1 - k / 20 for k in range(21)], dtype=torch.float64)
    np.testing.assert_allclose(p["logsnr"], schedule.logsnr(t).numpy(), rtol=0, atol=1e-12)
    assert p["logsnr"][0] == pytest.approx(schedule.logsnr_min)
    assert p["logsnr"][-1] == pytest.approx(schedule.logsnr_max)
    np.testing.assert_array_equal(p["omega"], model.net.omega.double().numpy())
    assert [(layer["in"], layer["out"]) for layer in p["layers"]] == [(10, 16), (16, 16), (16, 16), (16, 16),
                                                                      (16, 16), (16, 2)]
    linears = [model.net.inp, *[lin for block in model.net.hidden for lin in block], model.net.out]
    for layer, lin in zip(p["layers"], linears, strict=True):
        weight = floats(layer["weight"], (layer["out"], layer["in"]))
        np.testing.assert_array_equal(weight, lin.weight.detach().double())
        np.testing.assert_array_equal(floats(layer["bias"], (layer["out"],)), lin.bias.detach().double())
    assert p["data"]["m"] == 50
    np.testing.assert_array_equal(floats(p["data"]["x"], (50, 2)), data.double().numpy())

    # the documented computation, from the payload alone, is vaelib's reverse process (in float64)
    noise = torch.randn(21, 30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = reverse_process(model.double(), 30, 20, noise=noise).numpy()
    got = numpy_reverse(p, noise.numpy())
    assert np.abs(got - want).max() < 1e-10 * (1 + np.abs(want).max())
    z = np.array([[0.3, -1.2], [5.0, 4.0]])
    with torch.no_grad():
        for lam in (-9.0, 0.3, 7.0):
            want_eps = model.net(torch.from_numpy(z), torch.full((2,), lam, dtype=torch.float64)).numpy()
            assert np.abs(numpy_eps(p, z, lam) - want_eps).max() < 1e-12


def test_defaults_and_the_chapters_model():
    model = Diffusion(DenoisingMLP(2, width=64, blocks=2, seed=0), 2, LinearLogSNR(7, -9))
    fragment = reverse_process_html(model)
    p = payload_of(fragment)
    assert (p["steps"], p["n"], p["seed"], p["extent"], p["data"]) == (100, 500, 0, 2.0, None)
    assert len(p["logsnr"]) == 101 and p["logsnr"][0] == -9.0 and p["logsnr"][-1] == 7.0
    assert sum(layer["in"] * layer["out"] + layer["out"] for layer in p["layers"]) == 19_010
    assert len(fragment) < 110_000  # about 101 kB of weights as base64
    # the fallback is plain text (no markup from the arguments) and the JSON cannot end the <script> early
    fallback = re.search(r'<p class="vaelib-diffusion-fallback">([^<]*)</p>', fragment).group(1)
    assert "JavaScript" in html.unescape(fallback)
    assert "<" not in _DATA.findall(fragment)[0]
    # a float64 model is exported as float32, the same weights rounded
    p64 = payload_of(reverse_process_html(model.double(), steps=3, n=2))
    assert p64["layers"][0]["weight"] == p["layers"][0]["weight"]


def test_the_model_is_left_alone():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    reverse_process_html(model, steps=5, n=3)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _OwnNet(nn.Module):
    def forward(self, z, logsnr):
        return z


class _Sub(Diffusion):
    def eps(self, z_t, t):
        return super().eps(z_t, t) * 0


class _SubMLP(DenoisingMLP):
    pass


def _bad_models():
    three = Diffusion(DenoisingMLP(3, width=8, blocks=1), 3)
    own = Diffusion(_OwnNet(), 2)
    sub = _Sub(DenoisingMLP(2, width=8, blocks=1), 2)
    sub_mlp = Diffusion(_SubMLP(2, width=8, blocks=1), 2)
    mismatch = Diffusion(DenoisingMLP(2, width=8, blocks=1), 2)
    mismatch.net = DenoisingMLP(3, width=8, blocks=1)  # swapped after the constructor's check
    hooked = small_model(width=8)
    hooked.net.inp.register_forward_hook(lambda *a: None)
    patched = small_model(width=8)
    patched.x_hat = lambda z, t: z
    nan = small_model(width=8)
    with torch.no_grad():
        nan.net.out.bias[0] = float("nan")
    extra = small_model(width=8)
    extra.net.hidden[0].append(nn.Tanh())
    return [
        (three, ValueError, "x_dim=2"),
        (own, ValueError, "DenoisingMLP"),
        (sub, ValueError, "replaces eps"),
        (sub_mlp, ValueError, "DenoisingMLP"),
        (mismatch, ValueError, "x_dim=3"),
        (hooked, ValueError, "hook"),
        (patched, ValueError, "replaces x_hat"),
        (nan, ValueError, "non-finite"),
        (extra, ValueError, "Tanh"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_models_the_script_cannot_compute_are_refused(case):
    model, error, match = _bad_models()[case]
    with pytest.raises(error, match=match):
        reverse_process_html(model, steps=4, n=3)


@pytest.mark.parametrize("model", ["a string", nn.Linear(2, 2), None])
def test_not_a_diffusion_model(model):
    with pytest.raises(TypeError, match="model must be a vaelib.diffusion.Diffusion"):
        reverse_process_html(model)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"steps": 1001}, ValueError, "steps must be <= 1000"),
        ({"steps": 2.0}, TypeError, "steps must be an integer"),
        ({"steps": True}, TypeError, "steps must be an integer"),
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"n": 5001}, ValueError, "n must be <= 5000"),
        ({"n": "500"}, TypeError, "n must be an integer"),
        ({"n": 1000, "steps": 1000}, ValueError, "n \\* steps"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": 2**32}, ValueError, "seed must be <="),
        ({"seed": 0.5}, TypeError, "seed must be an integer"),
        ({"extent": 0.0}, ValueError, "extent must lie in"),
        ({"extent": -1}, ValueError, "extent must lie in"),
        ({"extent": 101}, ValueError, "extent must lie in"),
        ({"extent": float("nan")}, ValueError, "extent must be finite"),
        ({"extent": float("inf")}, ValueError, "extent must be finite"),
        ({"extent": "2"}, TypeError, "extent must be a real number"),
        ({"data": [[0.0, 1.0]]}, TypeError, "data must be a torch.Tensor"),
        ({"data": torch.zeros(5, 3)}, ValueError, "data must have last dimension 2"),
        ({"data": torch.zeros(10)}, ValueError, "data must have 2 dimensions"),
        ({"data": torch.zeros(0, 2)}, ValueError, "data must not be empty"),
        ({"data": torch.zeros(5, 2, dtype=torch.int64)}, TypeError, "data must be a floating-point tensor"),
        ({"data": torch.tensor([[0.0, float("nan")]])}, ValueError, "data contains NaN"),
        ({"data": torch.tensor([[0.0, float("inf")]])}, ValueError, "data contains NaN or infinite"),
        ({"data": torch.zeros(100_001, 2)}, ValueError, "at most 100,000"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        reverse_process_html(small_model(width=8), **kwargs)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        reverse_process_html(small_model(width=8), 10)  # type: ignore[misc]
