"""vaelib.explorer: the decoder exported for the browser's latent explorer (chapter 6).

The export is checked against the model it came from: the documented layout (base64 little-endian
float32, weight ``(out, in)`` row-major), read back with NumPy and run through the documented formula
(ReLU layers, then a sigmoid) in float64, gives ``model.mean(z)``; and the same numbers loaded into a
fresh :class:`vaelib.VAE` give it exactly. The browser side (``_static/latent_explorer.js``) is checked
against vaelib in ``tests/test_book_html.py``.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import vaelib
from vaelib.explorer import FORMAT, decoder_linears, explorer_html, export_decoder

CODES = [[0.0, 0.0], [1.5, -0.7], [-2.5, 2.2], [8.0, -8.0], [30.0, 30.0], [-100.0, 40.0]]


def floats(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape)


def numpy_decode(payload: dict, z: np.ndarray) -> np.ndarray:
    """The documented computation, in float64: relu layers, then a sigmoid (stable for any logit)."""
    h = z.astype(np.float64)
    for layer in payload["layers"]:
        w = floats(layer["weight"], (layer["out"], layer["in"])).astype(np.float64)
        b = floats(layer["bias"], (layer["out"],)).astype(np.float64)
        h = h @ w.T + b
        if layer["activation"] == "relu":
            h = np.maximum(h, 0.0)
    e = np.exp(-np.abs(h))
    return np.where(h >= 0, 1 / (1 + e), e / (1 + e))


def load_into_vae(payload: dict) -> vaelib.VAE:
    hidden = tuple(layer["out"] for layer in payload["layers"][:-1])
    model = vaelib.VAE(payload["x_dim"], payload["z_dim"], hidden=tuple(reversed(hidden)), seed=1)
    linears = [*list(model.decoder.body)[::2], model.decoder.to_x]
    with torch.no_grad():
        for lin, layer in zip(linears, payload["layers"], strict=True):
            lin.weight.copy_(torch.from_numpy(floats(layer["weight"], (layer["out"], layer["in"])).copy()))
            lin.bias.copy_(torch.from_numpy(floats(layer["bias"], (layer["out"],)).copy()))
    return model


def trained_like(model: vaelib.VAE) -> vaelib.VAE:
    """Spread the weights a little so that logits are far from 0 at far codes (a fresh init is tame)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("hidden", [(400,), (32, 16), ()])
def test_export_layers_and_numbers(hidden):
    model = trained_like(vaelib.VAE(784, 2, hidden=hidden, seed=0))
    payload = export_decoder(model)
    assert payload["z_dim"] == 2 and payload["x_dim"] == 784
    sizes = [2, *reversed(hidden), 784]
    assert [(layer["in"], layer["out"]) for layer in payload["layers"]] == list(zip(sizes[:-1], sizes[1:]))
    assert [layer["activation"] for layer in payload["layers"]] == ["relu"] * len(hidden) + ["sigmoid"]
    json.dumps(payload)  # JSON-ready

    z = torch.tensor(CODES)
    with torch.no_grad():
        want32 = model.mean(z)
        want64 = model.double().mean(z.double())
    got = numpy_decode(payload, z.numpy())
    assert np.abs(got - want64.numpy()).max() < 1e-12  # same weights, same formula, float64
    assert np.abs(got - want32.double().numpy()).max() < 1e-5  # against vaelib's float32 decoder
    # the far codes are really far: some pixels saturate there, so the sigmoid must be stable
    assert np.isfinite(got).all() and ((got < 1e-6) | (got > 1 - 1e-6)).any()


def test_export_loads_back_into_the_same_model():
    model = trained_like(vaelib.VAE(784, 2, hidden=(64, 48), seed=0))
    back = load_into_vae(export_decoder(model))
    z = torch.tensor(CODES)
    with torch.no_grad():
        assert torch.equal(back.mean(z), model.mean(z))


def test_float64_model_is_rounded_to_float32():
    model = vaelib.VAE(10, 2, hidden=(5,), seed=0).double()
    payload = export_decoder(model)
    w = floats(payload["layers"][0]["weight"], (5, 2))
    assert np.array_equal(w, model.decoder.body[0].weight.detach().float().numpy())


class OwnDecode(vaelib.VAE):
    def decode(self, z):
        return super().decode(z) * 2


class OwnLikelihood(vaelib.VAE):
    def likelihood(self, z, c=None):
        return super().likelihood(z)


def _with_tanh():
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    model.decoder.body[1] = nn.Tanh()
    return model


def _with_hook():
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    model.decoder.to_x.register_forward_hook(lambda m, i, o: o + 1)
    return model


def _instance_likelihood():
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    model.likelihood = lambda z: torch.distributions.Independent(torch.distributions.Bernoulli(logits=z), 1)
    return model


def _nan_weight():
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    with torch.no_grad():
        model.decoder.to_x.weight[0, 0] = float("nan")
    return model


def _no_bias():
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    model.decoder.body[0] = nn.Linear(2, 8, bias=False)
    return model


@pytest.mark.parametrize("make, reason", [
    (lambda: vaelib.VAE(784, 2, hidden=(8,), likelihood="gaussian"), "likelihood is 'gaussian'"),
    (lambda: vaelib.VAE(784, 2, decoder=nn.Sequential(nn.Linear(2, 784))), "not the built-in MLPDecoder"),
    (lambda: OwnDecode(784, 2, hidden=(8,)), "replaces decode"),
    (lambda: OwnLikelihood(784, 2, hidden=(8,)), "replaces likelihood"),
    (_instance_likelihood, "replaces likelihood"),
    (_with_tanh, "contains a Tanh"),
    (_with_hook, "hook"),
    (_no_bias, "has no bias"),
])
def test_refuses_what_the_script_cannot_compute(make, reason):
    with pytest.raises(ValueError, match="built-in Bernoulli MLP decoder") as err:
        export_decoder(make())
    assert reason in str(err.value)


def test_refuses_non_finite_weights_and_non_models():
    with pytest.raises(ValueError, match="non-finite weight"):
        export_decoder(_nan_weight())
    with pytest.raises(TypeError, match="vaelib.VAE"):
        decoder_linears(nn.Linear(2, 3))


def _data(fragment: str) -> dict:
    m = re.fullmatch(
        r'<div class="vaelib-explorer"><p class="vaelib-explorer-fallback">[^<]+</p>'
        r'<script type="application/json" class="vaelib-explorer-data">([^<]*)</script></div>',
        fragment,
    )
    assert m, fragment[:300]
    return json.loads(m.group(1))


def test_explorer_html_carries_the_decoder_and_the_codes():
    model = vaelib.VAE(784, 2, hidden=(16,), seed=0)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(50, 2, generator=g)
    labels = torch.randint(0, 10, (50,), generator=g)
    fragment = explorer_html(model, codes, labels, extent=3.0, start=(0.5, -1.0))
    data = _data(fragment)
    assert data["format"] == FORMAT
    assert data["layers"] == export_decoder(model)["layers"]
    assert data["extent"] == 3.0 and data["start"] == [0.5, -1.0] and data["image_shape"] == [28, 28]
    assert data["points"]["n"] == 50
    assert np.array_equal(floats(data["points"]["z"], (50, 2)), codes.numpy())
    assert np.array_equal(np.frombuffer(base64.b64decode(data["points"]["labels"]), np.uint8), labels.numpy())
    assert "needs JavaScript" in fragment  # what Jupyter shows

    unlabelled = _data(explorer_html(model, codes))
    assert unlabelled["points"]["labels"] is None


@pytest.mark.parametrize("kwargs, error, match", [
    ({"codes": torch.zeros(5, 3)}, ValueError, "codes"),
    ({"labels": torch.zeros(4, dtype=torch.long)}, ValueError, "labels must have shape"),
    ({"labels": torch.zeros(5)}, TypeError, "integer classes"),
    ({"labels": torch.full((5,), 10)}, ValueError, "classes 0-9"),
    ({"extent": 0.0}, ValueError, "extent"),
    ({"extent": float("nan")}, ValueError, "extent"),
    ({"image_shape": (27, 28)}, ValueError, "does not match x_dim"),
    ({"image_shape": "28x28"}, ValueError, "image_shape"),
    ({"start": (5.0, 0.0)}, ValueError, "outside the plane"),
    ({"start": (0.0,)}, ValueError, "start"),
])
def test_explorer_html_validates_its_inputs(kwargs, error, match):
    model = vaelib.VAE(784, 2, hidden=(8,), seed=0)
    args = {"codes": torch.zeros(5, 2), "labels": torch.zeros(5, dtype=torch.long), **kwargs}
    with pytest.raises(error, match=match):
        explorer_html(model, args.pop("codes"), args.pop("labels"), **args)


def test_explorer_html_needs_a_plane():
    model = vaelib.VAE(784, 3, hidden=(8,), seed=0)
    with pytest.raises(ValueError, match="z_dim=2"):
        explorer_html(model, torch.zeros(5, 3))
