r"""Live figures for the HTML book: chapter 6's latent explorer and chapter 12's sampler, exported for JavaScript.

Chapter 6 trains a VAE with a two-dimensional latent space. In the HTML book a reader drags a point over
that plane and sees the decoder's image for the code under it, computed in the browser by
``_static/latent_explorer.js`` from the weights of the model trained when the page was built. This module
writes what that script reads:

* :func:`export_decoder` turns the built-in MLP decoder (:class:`vaelib.model.MLPDecoder`:
  ``Linear, ReLU, ..., Linear, ReLU`` then ``to_x``) into a JSON-ready ``dict``; every weight and bias is
  base64 of little-endian float32, a weight ``(out, in)`` in row-major order, exactly as PyTorch stores it;
* :func:`explorer_html` wraps that, the codes to draw behind the point and their labels into an HTML
  fragment: a ``<div class="vaelib-explorer">`` holding the data in an inert
  ``<script type="application/json">`` (no ``fetch``, so it works from ``file://``) and a sentence shown
  where no script runs (Jupyter, or JavaScript off).

The script computes, in float64, what :meth:`vaelib.VAE.mean` computes for a Bernoulli decoder,

.. math::

    h_0 = z,\qquad h_\ell = \operatorname{relu}(W_\ell h_{\ell-1} + b_\ell),\qquad
    p(x_j = 1 \mid z) = \sigma\bigl((W_\text{out} h_L + b_\text{out})_j\bigr),

so it agrees with the float32 PyTorch decoder to about :math:`10^{-6}` (``tests/test_book_html.py``
checks :math:`10^{-5}`, far outside the prior too). For the built-in 2-400-784 decoder the weights are
315,584 numbers: 1.26 MB as float32, 1.68 MB as base64 in the page.

Only the built-in Bernoulli MLP can be exported: the script knows that computation and no other, so a
learner's own decoder, a subclass that overrides :meth:`~vaelib.VAE.decode` or :meth:`~vaelib.VAE.mean`,
a hook, or a Gaussian likelihood is refused with a ``ValueError`` that says why.

Chapter 12's diffusion model gets the same treatment: :func:`reverse_process_html` writes a
``<div class="vaelib-diffusion">`` that ``_static/diffusion_explorer.js`` turns into a live sampler. Its
payload is :func:`vaelib.diffusion.export_reverse_process` (the :class:`~vaelib.diffusion.DenoisingMLP`'s
weights, its embedding frequencies and the log-SNR at each step of the grid) with the plane, the number of
points and a seed; the script draws fresh noise in the reader's browser and runs the whole reverse process
there, in float64, on a slider from :math:`t = 1` (pure noise) to :math:`t = 0` (samples).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._validate import check_float, check_int, check_tensor
from .model import VAE, MLPDecoder, _has_hooks, _overrides

#: Names the payload's layout; the script refuses any other.
FORMAT = "vaelib-explorer/1"

_DECODER_TYPES = (MLPDecoder, nn.Sequential, nn.Linear, nn.ReLU)


def _b64_float32(t: Tensor) -> str:
    """Base64 of ``t`` as contiguous little-endian float32, row-major."""
    a = t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return base64.b64encode(a.tobytes()).decode("ascii")


def decoder_linears(model: VAE) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of a built-in Bernoulli MLP decoder, in order (the last is ``to_x``).

    Every layer but the last is followed by a ReLU. Raises ``TypeError`` if ``model`` is not a
    :class:`vaelib.VAE`, and ``ValueError`` (saying what differs) if its decoder is not exactly the
    built-in :class:`vaelib.model.MLPDecoder` with ``Linear``/``ReLU`` layers, as ``VAE(...)`` builds it.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    why = None
    dec = model.decoder
    overridden = [name for name in ("decode", "likelihood", "tensor_likelihood") if _overrides(model, name)]
    if model.likelihood_name != "bernoulli":
        why = f"its likelihood is {model.likelihood_name!r}, not 'bernoulli' (the explorer draws sigmoid(logits))"
    elif overridden:
        why = f"{type(model).__name__} replaces {' and '.join(overridden)}"
    elif type(dec) is not MLPDecoder:
        why = f"its decoder is a {type(dec).__name__}, not the built-in MLPDecoder"
    else:
        for module in dec.modules():
            if type(module) not in _DECODER_TYPES:
                why = f"its decoder contains a {type(module).__name__} (only Linear and ReLU are exported)"
                break
            if _has_hooks(module) or "forward" in vars(module):
                why = f"a {type(module).__name__} of its decoder has a hook or a replaced forward"
                break
    if why is None:
        body = list(dec.body)
        pairs_ok = len(body) % 2 == 0 and all(
            type(lin) is nn.Linear and type(act) is nn.ReLU for lin, act in zip(body[::2], body[1::2])
        )
        if not pairs_ok:
            why = "its decoder body is not Linear, ReLU, Linear, ReLU, ..."
    if why is None:
        linears = [*list(dec.body)[::2], dec.to_x]
        n_in = model.z_dim
        for i, lin in enumerate(linears):
            if lin.bias is None:
                why = f"decoder layer {i} has no bias"
                break
            if lin.in_features != n_in:
                why = f"decoder layer {i} takes {lin.in_features} inputs, expected {n_in}"
                break
            n_in = lin.out_features
        else:
            if n_in != model.x_dim:
                why = f"the decoder outputs {n_in} values, expected x_dim = {model.x_dim}"
    if why is not None:
        raise ValueError(
            "the latent explorer exports only the built-in Bernoulli MLP decoder "
            f"(VAE(x_dim, z_dim, hidden=...), Linear and ReLU layers): {why}"
        )
    for i, lin in enumerate(linears):
        for name, p in (("weight", lin.weight), ("bias", lin.bias)):
            if not p.is_floating_point() or not bool(torch.isfinite(p).all()):
                raise ValueError(f"decoder layer {i} has a non-finite {name}: train the model to a finite result first")
    return linears


def export_decoder(model: VAE) -> dict[str, Any]:
    """The decoder of a built-in Bernoulli MLP as a JSON-ready ``dict`` (what the browser script reads).

    Returns:
        ``{"z_dim", "x_dim", "layers": [{"in", "out", "activation", "weight", "bias"}, ...]}``, one entry
        per ``nn.Linear`` of the decoder in order; ``activation`` is ``"relu"`` for the body's layers and
        ``"sigmoid"`` for ``to_x`` (pixel probability = sigmoid(logit)); ``weight`` ``(out, in)`` and
        ``bias`` ``(out,)`` are base64 of little-endian float32, row-major. A float64 model is rounded to
        float32.

    Raises:
        TypeError, ValueError: see :func:`decoder_linears`.
    """
    linears = decoder_linears(model)
    layers = []
    for i, lin in enumerate(linears):
        layers.append({
            "in": lin.in_features,
            "out": lin.out_features,
            "activation": "sigmoid" if i == len(linears) - 1 else "relu",
            "weight": _b64_float32(lin.weight),
            "bias": _b64_float32(lin.bias),
        })
    return {"z_dim": model.z_dim, "x_dim": model.x_dim, "layers": layers}


def explorer_html(
    model: VAE,
    codes: Tensor,
    labels: Tensor | None = None,
    *,
    extent: float = 3.5,
    image_shape: Sequence[int] = (28, 28),
    start: Sequence[float] = (0.0, 0.0),
) -> str:
    """An HTML fragment that ``_static/latent_explorer.js`` turns into a live latent explorer.

    Args:
        model: a built-in Bernoulli MLP VAE with ``z_dim=2`` (see :func:`decoder_linears`).
        codes: ``(n, 2)`` latent codes drawn behind the point (the test digits' posterior means).
        labels: ``(n,)`` integer classes 0-9 that colour ``codes`` (``None``: one colour).
        extent: the plane shown is ``[-extent, extent]^2``.
        image_shape: ``(H, W)`` of the decoded image, ``H * W = x_dim``.
        start: the code shown first.

    Returns:
        The fragment as a ``str``: show it with ``IPython.display.HTML``. Where the script does not run
        (Jupyter, JavaScript off) it reads as one sentence that points to the static figure.
    """
    payload = export_decoder(model)
    if model.z_dim != 2:
        raise ValueError(f"the latent explorer needs a model with z_dim=2, got {model.z_dim}")
    codes = check_tensor("codes", codes, ndim=2, last_dim=2)
    if codes.shape[0] > 100_000:
        raise ValueError(f"codes holds {codes.shape[0]} points: at most 100,000 keep the page small")
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.shape != (codes.shape[0],):
            raise ValueError(f"labels must have shape ({codes.shape[0]},) to match codes, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integer classes, got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
            raise ValueError("labels must be classes 0-9 (the explorer has ten colours)")
    extent = check_float("extent", extent)
    if not 0 < extent <= 100:
        raise ValueError(f"extent must lie in (0, 100], got {extent}")
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 2:
        raise ValueError(f"image_shape must be a pair (H, W), got {image_shape!r}")
    h, w = (check_int(f"image_shape[{i}]", s) for i, s in enumerate(image_shape))
    if h * w != model.x_dim:
        raise ValueError(f"image_shape {(h, w)} does not match x_dim = {model.x_dim}")
    if isinstance(start, (str, bytes)) or not isinstance(start, Sequence) or len(start) != 2:
        raise ValueError(f"start must be a pair (z1, z2), got {start!r}")
    start = [check_float(f"start[{i}]", s) for i, s in enumerate(start)]
    if max(abs(s) for s in start) > extent:
        raise ValueError(f"start {tuple(start)} lies outside the plane [-{extent}, {extent}]^2")

    payload.update({
        "format": FORMAT,
        "image_shape": [h, w],
        "extent": extent,
        "start": start,
        "points": {
            "n": int(codes.shape[0]),
            "z": _b64_float32(codes),
            "labels": None if labels is None else base64.b64encode(
                labels.detach().cpu().numpy().astype(np.uint8).tobytes()).decode("ascii"),
        },
    })
    # JSON of numbers, base64 and fixed names holds no "<", so it cannot end the <script> element early.
    data = json.dumps(payload, separators=(",", ":"))
    fallback = html.escape(
        "The live latent explorer runs in the HTML book (it needs JavaScript); "
        "the decoded grid above shows the same decoder."
    )
    return (
        '<div class="vaelib-explorer">'
        f'<p class="vaelib-explorer-fallback">{fallback}</p>'
        f'<script type="application/json" class="vaelib-explorer-data">{data}</script>'
        "</div>"
    )


# --- chapter 12: the reverse process of a 2-D diffusion model, run in the reader's browser ------------------
#: The methods of :class:`vaelib.diffusion.Diffusion` whose computation the sampler's script repeats.
_DIFFUSION_METHODS = ("eps", "x_hat", "reverse")
#: The most work a page may ask of the reader's browser: ``n * steps`` network evaluations.
_MAX_POINT_STEPS = 500_000


def _check_exportable_diffusion(model: Any) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``model`` computes exactly what the sampler's script does."""
    from .diffusion import DenoisingMLP, Diffusion

    if not isinstance(model, Diffusion):
        raise TypeError(f"model must be a vaelib.diffusion.Diffusion, got {type(model).__name__}")
    if model.x_dim != 2:
        raise ValueError(f"the in-page sampler draws a plane: model must have x_dim=2, got {model.x_dim}")
    net = model.net
    if type(net) is not DenoisingMLP:
        raise ValueError("the in-page sampler computes only vaelib.diffusion.DenoisingMLP: "
                         f"model.net is a {type(net).__name__}")
    if net.x_dim != model.x_dim:
        raise ValueError(f"model.net takes x_dim={net.x_dim} but the model has x_dim={model.x_dim}")
    replaced = [name for name in _DIFFUSION_METHODS
                if getattr(type(model), name) is not getattr(Diffusion, name) or name in vars(model)]
    if replaced:
        raise ValueError(f"the in-page sampler computes Diffusion's own reverse step: "
                         f"{type(model).__name__} replaces {' and '.join(replaced)}")
    for module in net.modules():
        if type(module) not in (DenoisingMLP, nn.ModuleList, nn.Linear):
            raise ValueError(f"model.net contains a {type(module).__name__} (the sampler knows Linear layers only)")
        if _has_hooks(module) or "forward" in vars(module):
            raise ValueError(f"a {type(module).__name__} of model.net has a hook or a replaced forward")
        if isinstance(module, nn.Linear) and module.bias is None:
            raise ValueError("a Linear layer of model.net has no bias")


def reverse_process_html(
    model: Any,
    *,
    steps: int = 100,
    n: int = 500,
    seed: int = 0,
    data: Tensor | None = None,
    extent: float = 2.0,
) -> str:
    r"""An HTML fragment that ``_static/diffusion_explorer.js`` turns into a live sampler (chapter 12).

    The script draws ``n`` points :math:`z_1 \sim \mathcal{N}(0, I)` and the noise of every step with its
    own seeded generator (``seed`` for the first draw; the reader's "New samples" button continues that
    stream), and runs :func:`vaelib.diffusion.reverse_process` on the grid :math:`t_i = i/T`, ``T = steps``:
    for :math:`k = 1..T`, with :math:`t = 1 - (k-1)/T`, :math:`s = 1 - k/T`,

    .. math::

        &\hat\epsilon = \hat\epsilon_\theta(z_t; \lambda_t),\quad
        \hat x = (z_t - \sigma_t\hat\epsilon)/\alpha_t, \\
        &z_s = \frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} z_t + \alpha_s(1 - e^{\lambda_t - \lambda_s})\,\hat x
        + \sigma_s\sqrt{1 - e^{\lambda_t - \lambda_s}}\;\epsilon_k,

    in float64 with the library's formulas (log-sigmoid and ``expm1``, so no :math:`\lambda` overflows),
    from the float32 weights of :func:`vaelib.diffusion.export_reverse_process`. On the same noise it
    agrees with ``reverse_process`` of the same weights in float64 to rounding (:math:`10^{-15}` of the
    cloud's scale after 100 steps; ``tests/test_book_html.py`` checks it on the built page). A slider
    shows :math:`z_t` at each step, from :math:`t = 1` (noise) to :math:`t = 0` (the samples), over faint
    points of the true density (``data``).

    The payload is small: the network's weights (19,010 numbers for ``DenoisingMLP(2, width=64,
    blocks=2)``: 76 kB as float32, 101 kB as base64), ``steps + 1`` log-SNRs, and ``data`` (8 bytes a point as
    float32, 11 as base64). The browser's work is ``n * steps`` network evaluations (50,000 for the defaults:
    0.6 to 0.9 s in headless Chromium on a busy two-core machine), done in slices of about 12 ms so that the
    page never freezes, the plane following the computation from noise to samples.

    Args:
        model: a :class:`vaelib.diffusion.Diffusion` with ``x_dim=2`` whose network is a
            :class:`vaelib.diffusion.DenoisingMLP` (any schedule: its log-SNRs on the grid are exported).
        steps: :math:`T`, the steps of the reverse process (1 to 1000).
        n: the points drawn (1 to 5000; ``n * steps`` at most 500,000).
        seed: seeds the script's generator (0 to :math:`2^{32} - 1`): the first cloud a reader sees is the
            same on every load.
        data: ``(m, 2)`` points of the true density drawn faintly behind the cloud (at most 100,000), or
            ``None``.
        extent: the plane shown is ``[-extent, extent]^2``.

    Returns:
        The fragment as a ``str``: show it with ``IPython.display.HTML``. Where the script does not run
        (Jupyter, JavaScript off) it reads as one sentence.

    Raises:
        TypeError: ``model`` is not a ``Diffusion``, an argument has the wrong type.
        ValueError: a model the script cannot compute (``x_dim != 2``, another network, a replaced method,
            non-finite weights), an argument out of range, ``data`` not ``(m, 2)`` or not finite.
    """
    _check_exportable_diffusion(model)
    steps = check_int("steps", steps, maximum=1000)
    n = check_int("n", n, maximum=5000)
    if n * steps > _MAX_POINT_STEPS:
        raise ValueError(f"n * steps = {n * steps:,} network evaluations is too much work for a reader's "
                         f"browser: keep it at most {_MAX_POINT_STEPS:,}")
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    extent = check_float("extent", extent)
    if not 0 < extent <= 100:
        raise ValueError(f"extent must lie in (0, 100], got {extent}")
    if data is not None:
        data = check_tensor("data", data, ndim=2, last_dim=2)
        if data.shape[0] > 100_000:
            raise ValueError(f"data holds {data.shape[0]} points: at most 100,000 keep the page small")
    from .diffusion import export_reverse_process

    payload = export_reverse_process(model, steps)  # checks the weights are finite
    payload.update({
        "extent": extent,
        "n": n,
        "seed": seed,
        "data": None if data is None else {"m": int(data.shape[0]), "x": _b64_float32(data)},
    })
    # JSON of numbers, base64 and fixed names holds no "<", so it cannot end the <script> element early.
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    fallback = html.escape(
        "The live reverse process runs in the HTML book (it needs JavaScript): there a slider takes "
        f"{n} points from noise at t = 1 to samples at t = 0."
    )
    return (
        '<div class="vaelib-diffusion">'
        f'<p class="vaelib-diffusion-fallback">{fallback}</p>'
        f'<script type="application/json" class="vaelib-diffusion-data">{text}</script>'
        "</div>"
    )
