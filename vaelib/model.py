r"""The variational autoencoder: an encoder :math:`q_\phi(z|x)`, a decoder :math:`p_\theta(x|z)`, a likelihood.

A :class:`VAE` is two modules and the name of a likelihood:

* the **encoder** maps data ``x`` ``(batch, x_dim)`` to the parameters ``(mu, logvar)`` of the diagonal
  Gaussian :math:`q_\phi(z|x) = \mathcal{N}(\mu, \operatorname{diag}\sigma^2)`, each ``(batch, z_dim)``;
* the **decoder** maps codes ``z`` ``(n, z_dim)`` to ``(n, x_dim)``: the logits of independent Bernoullis
  (``likelihood="bernoulli"``), or the mean of an isotropic Gaussian :math:`\mathcal{N}(\text{mean},
  \sigma_x^2 I)` whose log-variance ``obs_logvar`` is learned (``likelihood="gaussian"``).

``VAE(x_dim, z_dim, hidden=...)`` builds the book's multilayer perceptrons (:class:`MLPEncoder`,
:class:`MLPDecoder`); ``VAE(x_dim, z_dim, encoder=..., decoder=...)`` takes any ``nn.Module`` a learner
writes (a convolutional network, another activation, dropout); a subclass may instead override
:meth:`VAE.encode` and :meth:`VAE.decode`. Every function of :mod:`vaelib` that takes a model reaches it
through those two methods only (:func:`run_encoder`, :func:`run_decoder`), so whatever the model computes
is what gets trained, scored, sampled and saved. The one exception is exact: for the built-in MLP left as
built (:func:`is_builtin_mlp`), :func:`vaelib.fit` and :func:`vaelib.log_likelihood` compute the same
numbers from its layers directly, faster.

Chapter 3 uses the linear special case (``hidden=()``, Gaussian), which is probabilistic PCA with an
amortised Gaussian posterior; chapters 4 and 6 train the MLP; chapter 6 also trains a convolutional one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_binary, check_int, check_tensor
from .densities import _log_normal

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")

#: Hidden widths of the built-in MLP when neither ``hidden`` nor both modules are given.
DEFAULT_HIDDEN: tuple[int, ...] = (400,)


def _relu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by a ReLU (an empty ``Sequential`` for one size)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    r"""The book's encoder: ``x_dim → hidden… → (to_mu, to_logvar)``, a ReLU after every hidden layer."""

    def __init__(self, x_dim: int, hidden: Sequence[int], z_dim: int) -> None:
        super().__init__()
        sizes = (x_dim, *hidden)
        self.body = _relu_mlp(sizes)
        self.to_mu = nn.Linear(sizes[-1], z_dim)
        self.to_logvar = nn.Linear(sizes[-1], z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.to_mu(h), self.to_logvar(h)


class MLPDecoder(nn.Module):
    r"""The book's decoder: ``z_dim → hidden… → to_x``, a ReLU after every hidden layer, none after ``to_x``."""

    def __init__(self, z_dim: int, hidden: Sequence[int], x_dim: int) -> None:
        super().__init__()
        sizes = (z_dim, *hidden)
        self.body = _relu_mlp(sizes)
        self.to_x = nn.Linear(sizes[-1], x_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.to_x(self.body(z))


class VAE(nn.Module):
    r"""A VAE with a diagonal-Gaussian encoder and a Bernoulli or Gaussian decoder (see the module's text).

    * ``VAE(784, 20, hidden=(400,))``: the book's MLP, ``784 → 400 → (20, 20)`` and ``20 → 400 → 784``.
      With ``hidden=()`` encoder and decoder are linear, and the Gaussian VAE is the linear VAE of chapter 3.
    * ``VAE(784, 8, encoder=my_encoder, decoder=my_decoder)``: your own modules. ``encoder(x)`` must
      return ``(mu, logvar)``, each ``(batch, z_dim)``, for ``x`` ``(batch, x_dim)``; ``decoder(z)`` must
      return ``(n, x_dim)`` for ``z`` ``(n, z_dim)``. Give one of them and the other is the built-in MLP
      with ``hidden`` (default ``(400,)``).
    * A subclass may override :meth:`encode` and :meth:`decode` instead; everything in :mod:`vaelib`
      calls them.

    The prior is :math:`p(z) = \mathcal{N}(0, I)`.

    Args:
        x_dim: data dimension ``D`` (784 for 28×28 images).
        z_dim: latent dimension ``d``.
        hidden: hidden-layer widths of the built-in encoder (the built-in decoder mirrors them); only for
            a part that you do not supply.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        encoder: your encoder module (default: :class:`MLPEncoder`).
        decoder: your decoder module (default: :class:`MLPDecoder`).
        device: where to put the parameters (default: where the modules are, the CPU for built-in ones).
        seed: seeds the initial parameters of the built-in parts (``None`` uses PyTorch's global generator).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] | None = None,
        likelihood: Likelihood = "bernoulli",
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if seed is not None:
            seed = check_int("seed", seed, minimum=0)
        self.x_dim = check_int("x_dim", x_dim)
        self.z_dim = check_int("z_dim", z_dim)
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module or None, got {type(module).__name__}")
        if hidden is None:
            hidden = () if encoder is not None and decoder is not None else DEFAULT_HIDDEN
        elif encoder is not None and decoder is not None:
            raise ValueError("hidden describes the built-in MLP: leave it out when you give both encoder and decoder")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
        self.hidden = tuple(check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden))
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood: Likelihood = likelihood
        if device is not None:
            device = _check_device(device)

        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.encoder = MLPEncoder(self.x_dim, self.hidden, self.z_dim) if encoder is None else encoder
            self.decoder = MLPDecoder(self.z_dim, tuple(reversed(self.hidden)), self.x_dim) if decoder is None else decoder
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros((), dtype=self.dtype if _has_parameters(self) else None))
        if device is not None:
            self.to(device)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments of a built-in model (what :func:`vaelib.save` records to rebuild it)."""
        return {
            "x_dim": self.x_dim,
            "z_dim": self.z_dim,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood,
        }

    @property
    def device(self) -> torch.device:
        """The device the parameters live on."""
        return _first_parameter(self).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the parameters (data and codes must have it)."""
        return _first_parameter(self).dtype

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, z_dim={self.z_dim}, likelihood={self.likelihood!r}"

    # --- input checks -------------------------------------------------------------------------
    def _check_dtype(self, name: str, t: Tensor) -> None:
        dtype = self.dtype
        if t.dtype != dtype:
            raise TypeError(f"{name} must have the model's dtype {dtype}, got {t.dtype}")

    def check_x(self, x: object, name: str = "x") -> Tensor:
        """Validate data for this model: a finite ``(batch, x_dim)`` tensor in the model's floating dtype,
        binary if Bernoulli."""
        x = self.check_data(x, name)
        if self.likelihood == "bernoulli":
            check_binary(name, x)
        return x

    def check_data(self, x: object, name: str = "x") -> Tensor:
        """Validate inputs of the encoder: a finite ``(batch, x_dim)`` tensor in the model's floating dtype."""
        x = check_tensor(name, x, ndim=2, last_dim=self.x_dim)
        self._check_dtype(name, x)
        return x

    def check_z(self, z: object, name: str = "z", finite: bool = True) -> Tensor:
        """Validate latent codes: a ``(..., z_dim)`` tensor in the model's floating dtype (finite, unless
        ``finite=False``)."""
        z = check_tensor(name, z, last_dim=self.z_dim, finite=finite)
        self._check_dtype(name, z)
        return z

    # --- the two methods everything goes through (override them, or pass your own modules) -----
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The parameters of :math:`q_\phi(z|x)`: ``self.encoder(x)``.

        Args:
            x: data, ``(batch, x_dim)``.

        Returns:
            ``(mu, logvar)``, each ``(batch, z_dim)``.
        """
        return self.encoder(self.check_data(x))

    def decode(self, z: Tensor) -> Tensor:
        r"""The decoder's output for latent codes ``z``: Bernoulli logits, or the Gaussian mean.

        Args:
            z: latent codes, ``(n, z_dim)`` (the built-in decoder also takes ``(..., z_dim)``).

        Returns:
            ``(n, x_dim)``. For a Bernoulli decoder use :meth:`mean` for pixel probabilities.

        Codes that are NaN or infinite (from an encoder whose training diverged) are decoded, not refused,
        so that the loss they lead to is non-finite and :func:`vaelib.fit` reports the divergence the same
        way for every model; :meth:`mean` and :meth:`log_px_z` refuse them.
        """
        return self.decoder(self.check_z(z, finite=False))

    # --- derived from encode and decode ---------------------------------------------------------
    def mean(self, z: Tensor) -> Tensor:
        r"""The mean of :math:`p_\theta(x|z)` for codes ``(..., z_dim)``: pixel probabilities (Bernoulli) or
        the Gaussian mean."""
        out = run_decoder(self, self.check_z(z))
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px_z(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x|z)` in nats, summed over the ``x_dim`` pixels.

        Args:
            x: data, ``(batch, x_dim)``.
            z: latent codes, ``(..., batch, z_dim)`` (leading sample dimensions broadcast over ``x``).

        Returns:
            ``(..., batch)``.
        """
        x = self.check_x(x)
        z = self.check_z(z)
        if z.dim() < 2 or z.shape[-2] != x.shape[0]:
            raise ValueError(
                f"z must have shape (..., {x.shape[0]}, {self.z_dim}) to match x, got {tuple(z.shape)}"
            )
        return log_px_given(self, x, run_decoder(self, z))

    def linear_gaussian_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(W, b, obs_logvar)`` of a linear Gaussian decoder :math:`p_\theta(x|z) = \mathcal{N}(Wz + b, \sigma_x^2 I)`.

        For ``likelihood="gaussian"`` with the built-in decoder of ``hidden=()`` or a plain ``nn.Linear``
        decoder, :meth:`decode` not overridden; :meth:`vaelib.toy.LinearGaussian.from_vae` uses it.

        Raises:
            ValueError: the decoder is not a single linear layer, or the likelihood is not Gaussian.
        """
        dec = self.decoder
        linear = dec.to_x if type(dec) is MLPDecoder and len(dec.body) == 0 else dec
        overridden = type(self).decode is not VAE.decode or "decode" in vars(self)
        if (self.likelihood != "gaussian" or type(linear) is not nn.Linear or linear.bias is None or overridden
                or _has_hooks(linear) or _has_hooks(dec)):
            raise ValueError(
                "model must be a linear Gaussian VAE, VAE(..., hidden=(), likelihood='gaussian') or one whose "
                f"decoder is an nn.Linear; got decoder {type(dec).__name__}, likelihood={self.likelihood!r}"
            )
        return linear.weight, linear.bias, self.obs_logvar

    def forward(self, x: Tensor) -> Tensor:
        r"""Reconstruct ``x``: the decoder's mean at the posterior mean, :math:`\mathbb{E}[x|z=\mu_\phi(x)]`."""
        mu, _ = run_encoder(self, self.check_data(x))
        return self.mean(mu)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _first_parameter(model: nn.Module) -> Tensor:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters: its encoder and decoder must have some")
    return p


def _check_device(device: object) -> torch.device:
    """``device`` as a ``torch.device`` that holds data here (a ``str`` or a device, never a dtype)."""
    if isinstance(device, torch.dtype) or not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a str such as 'cpu', got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device: {err}") from err
    if device.type == "meta":
        raise ValueError("device 'meta' holds shapes but no values: moving a model there would erase it")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # e.g. CUDA asked for on a machine without it
        raise ValueError(f"device {str(device)!r} is not available here: {str(err).splitlines()[0]}") from err
    return device


# --- how the library calls a model ------------------------------------------------------------
def run_encoder(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""``model.encode(x)``, with its result checked: two ``(batch, z_dim)`` tensors of the model's dtype.

    Every function of :mod:`vaelib` encodes through this, so an override of :meth:`VAE.encode` (or a
    custom ``encoder``) is always what runs, and a wrong output shape is a clear error, not a silently
    broadcast number.
    """
    out = model.encode(x)
    want = (x.shape[0], model.z_dim)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise TypeError(f"{_name(model)}.encode must return a pair (mu, logvar) of tensors, got {type(out).__name__}")
    mu, logvar = out
    for what, t in (("mu", mu), ("logvar", logvar)):
        if tuple(t.shape) != want:
            raise ValueError(f"{_name(model)}.encode returned {what} of shape {tuple(t.shape)}; expected {want}")
        if t.dtype != x.dtype:
            raise TypeError(f"{_name(model)}.encode returned {what} of dtype {t.dtype}; expected {x.dtype}")
    return mu, logvar


def run_decoder(model: VAE, z: Tensor) -> Tensor:
    r"""``model.decode`` applied to codes ``z`` ``(..., z_dim)``: returns ``(..., x_dim)``.

    The decoder always receives a plain batch ``(n, z_dim)`` (leading sample dimensions are flattened
    into ``n`` and restored afterwards), so a decoder written for batches, such as a convolutional one
    that reshapes to images, works unchanged. Its result is checked to be ``(n, x_dim)``.
    """
    lead = z.shape[:-1]
    flat = z.reshape(-1, model.z_dim)
    out = model.decode(flat)
    want = (flat.shape[0], model.x_dim)
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{_name(model)}.decode returned {got} for z of shape {tuple(flat.shape)}; expected {want}")
    if out.dtype != z.dtype:
        raise TypeError(f"{_name(model)}.decode returned dtype {out.dtype}; expected {z.dtype}")
    return out.reshape(*lead, model.x_dim)


def log_px_given(model: VAE, x: Tensor, out: Tensor) -> Tensor:
    r""":math:`\log p_\theta(x|z)` ``(..., batch)`` from the decoder's output ``out`` ``(..., batch, x_dim)``.

    Bernoulli: :math:`x \cdot o - \sum_j \operatorname{softplus}(o_j)` (see :func:`vaelib.log_bernoulli`);
    Gaussian: :func:`vaelib.log_normal` with the model's ``obs_logvar``.
    """
    if model.likelihood == "bernoulli":
        # The dot product never materialises x * logits: with many samples of z (importance sampling) a
        # batched matrix-vector product is fastest, with one (training) a row-wise vecdot.
        if out.dim() > 2 and out.shape[0] > 1:
            x_dot_logits = torch.einsum("...bj,bj->...b", out, x)
        else:
            x_dot_logits = torch.linalg.vecdot(out, x)
        return x_dot_logits - F.softplus(out, threshold=40.0).sum(-1)
    return _log_normal(x, out, model.obs_logvar)


def _name(model: nn.Module) -> str:
    return type(model).__name__


# --- the built-in architecture, recognised exactly --------------------------------------------
#: Module types that make up a model built by ``VAE(x_dim, z_dim, hidden, likelihood)``.
_BUILTIN_TYPES = (MLPEncoder, MLPDecoder, nn.Sequential, nn.Linear, nn.ReLU)
#: Methods of VAE that the hand-written paths reproduce: overriding any of them on an instance disqualifies it.
_VAE_METHODS = ("encode", "decode", "mean", "log_px_z", "forward")


def _has_hooks(module: nn.Module) -> bool:
    # nn.Module offers no public query for registered hooks; these dicts are where register_*_hook puts
    # them (read only, never modified).
    return any(
        bool(getattr(module, name, None))
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def is_builtin_mlp(model: object) -> bool:
    r"""Whether ``model`` is exactly the MLP that ``VAE(x_dim, z_dim, hidden, likelihood)`` builds.

    True only for an instance of :class:`VAE` itself (not a subclass) whose encoder and decoder are the
    built-in :class:`MLPEncoder` and :class:`MLPDecoder`, made of ``nn.Linear`` and ``nn.ReLU`` in the
    built-in order and sizes, with no module replaced, no method overridden on an instance, no hook,
    no extra parameter or buffer, every parameter requiring a gradient, all of one floating dtype and
    device. Those are the conditions under which :func:`vaelib.elbo_backward` (the chain rule written
    out) and the folded decoder of :func:`vaelib.log_likelihood` compute exactly what autograd and
    :meth:`VAE.decode` compute; :func:`vaelib.fit` and :func:`vaelib.log_likelihood` take those fast
    paths only when this is true.
    """
    return has_builtin_architecture(model) and all(p.requires_grad for p in model.parameters())


def has_builtin_architecture(model: object) -> bool:
    """:func:`is_builtin_mlp` without the condition on ``requires_grad``: ``VAE(**model.config)`` rebuilds
    the same computation (what :func:`vaelib.save` needs to record a configuration instead of a class)."""
    if type(model) is not VAE:
        return False
    enc, dec = model.encoder, model.decoder
    if type(enc) is not MLPEncoder or type(dec) is not MLPDecoder:
        return False
    for module in model.modules():
        if type(module) not in (VAE, *_BUILTIN_TYPES) or _has_hooks(module) or "forward" in vars(module):
            return False
    if any(name in vars(model) for name in _VAE_METHODS):
        return False
    enc_sizes = (model.x_dim, *model.hidden) if model.hidden else ()
    dec_sizes = (model.z_dim, *reversed(model.hidden)) if model.hidden else ()
    if _relu_stack_sizes(enc.body) != enc_sizes or _relu_stack_sizes(dec.body) != dec_sizes:
        return False
    width = model.hidden[-1] if model.hidden else model.x_dim
    back = model.hidden[0] if model.hidden else model.z_dim
    heads = ((enc.to_mu, width, model.z_dim), (enc.to_logvar, width, model.z_dim), (dec.to_x, back, model.x_dim))
    if any(layer.bias is None or (layer.in_features, layer.out_features) != (n_in, n_out)
           for layer, n_in, n_out in heads):
        return False
    expected = [p for m in (enc, dec) for p in m.parameters()]
    if model.likelihood == "gaussian":
        if not isinstance(getattr(model, "obs_logvar", None), nn.Parameter) or model.obs_logvar.shape != ():
            return False
        expected.append(model.obs_logvar)
    params = list(model.parameters())
    if len(params) != len(expected) or {id(p) for p in params} != {id(p) for p in expected}:
        return False
    if next(model.buffers(), None) is not None:
        return False
    p0 = params[0]
    return p0.is_floating_point() and all(
        p.dtype == p0.dtype and p.device == p0.device and p.layout == torch.strided for p in params
    )


def _relu_stack_sizes(body: nn.Sequential) -> tuple[int, ...] | None:
    """The sizes of a ``Linear, ReLU, Linear, ReLU, ...`` stack (``()`` if empty, ``None`` if it is anything
    else)."""
    layers = list(body)
    if len(layers) % 2:
        return None
    sizes: list[int] = []
    for linear, relu in zip(layers[::2], layers[1::2]):
        if type(linear) is not nn.Linear or type(relu) is not nn.ReLU or linear.bias is None:
            return None
        if sizes and sizes[-1] != linear.in_features:
            return None
        sizes = [linear.in_features] if not sizes else sizes
        sizes.append(linear.out_features)
    return tuple(sizes)
