r"""The variational autoencoder: a prior :math:`p(z)`, a likelihood :math:`p_\theta(x|z)`, a posterior :math:`q_\phi(z|x)`.

A :class:`VAE` *is* its three distributions, each a ``torch.distributions.Distribution`` (chapter 2
teaches that API), returned by three public methods:

* :meth:`VAE.posterior` ``(x)``: :math:`q_\phi(z|x)`, event shape ``(z_dim,)``, batch shape ``(batch,)``;
* :meth:`VAE.prior` ``()``: :math:`p(z)`, event shape ``(z_dim,)``;
* :meth:`VAE.likelihood` ``(z)``: :math:`p_\theta(x|z)`, event shape ``(x_dim,)``, batch shape ``z.shape[:-1]``
  (leading sample dimensions included).

Every function of :mod:`vaelib` that takes a model (the ELBO, the importance-weighted bound, training,
sampling, the per-image posteriors of chapter 7, the plots, save and load) reaches it through these
three methods, so replacing one replaces it everywhere. Their defaults are the book's model:

* the **encoder** maps ``x`` ``(batch, x_dim)`` to ``(mu, logvar)``, each ``(batch, z_dim)``, and the posterior
  is the diagonal Gaussian :class:`vaelib.distributions.DiagonalNormal` of those (an encoder may instead
  return a ``Distribution``: a ``Normal(loc, scale)`` as in Pyro, a ``MultivariateNormal``, a flow);
* the **prior** is :math:`\mathcal{N}(0, I)` (:class:`vaelib.distributions.StandardNormal`), or the
  ``Distribution`` that a ``prior`` module returns (a learned mixture, say: its parameters are trained,
  saved and loaded with the model);
* the **decoder** maps codes ``z`` ``(n, z_dim)`` to ``(n, x_dim)``: the logits of independent Bernoullis
  (``likelihood="bernoulli"``, :class:`vaelib.distributions.BernoulliLogits`), or the mean of an isotropic
  Gaussian :math:`\mathcal{N}(\text{mean}, \sigma_x^2 I)` whose log-variance ``obs_logvar`` is learned
  (``likelihood="gaussian"``); or a ``Distribution`` of its own (``Bernoulli(probs=...)`` as in the PyTorch
  example, a 256-way ``Categorical``, a Gaussian with a variance per pixel).

Replace any of them by composition, ``VAE(x_dim, z_dim, encoder=..., decoder=..., prior=...)``, or override
:meth:`~VAE.encode`, :meth:`~VAE.decode`, :meth:`~VAE.posterior`, :meth:`~VAE.prior` or :meth:`~VAE.likelihood`
in a subclass. A *context* ``c`` (labels, for a conditional VAE) is passed on as ``posterior(x, c)``,
``prior(c)``, ``likelihood(z, c)`` (and ``encoder(x, c)``, ``prior_module(c)``, ``decoder(z, c)``) by every
function that is given one. :meth:`~VAE.mean`, :meth:`~VAE.log_px_z` and ``forward`` are derived from the
three methods and cannot be overridden (a subclass that tries is refused when it is defined).

The one exception to "through the three methods" is exact: for the built-in MLP with all three defaults
(:func:`is_builtin_mlp`), :func:`vaelib.fit` and :func:`vaelib.log_likelihood` compute the same numbers from
its layers directly, faster (:mod:`vaelib.backprop`, :mod:`vaelib.folding`).

Chapter 3 uses the linear special case (``hidden=()``, Gaussian), which is probabilistic PCA with an
amortised Gaussian posterior; chapters 4 and 6 train the MLP; chapter 6 also trains a convolutional one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ._validate import check_binary, check_device, check_int, check_tensor
from .distributions import BernoulliLogits, DiagonalNormal, DiscretisedGaussian, StandardNormal, Unflattened, as_event

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")

#: Hidden widths of the built-in MLP when neither ``hidden`` nor both modules are given.
DEFAULT_HIDDEN: tuple[int, ...] = (400,)

#: The three methods that are the model, and the two its defaults are built from: what a subclass overrides.
MODEL_METHODS: tuple[str, ...] = ("posterior", "prior", "likelihood", "encode", "decode")
#: Methods derived from those, which vaelib never calls in place of them: a subclass may not override them.
DERIVED_METHODS: tuple[str, ...] = ("mean", "log_px_z", "forward")


#: The re-entrant lock that vaelib holds whenever it seeds PyTorch's global generators and uses them:
#: :func:`seeded` (so ``VAE(..., seed=...)`` and the other seeded constructors), :func:`vaelib.fit`, and
#: :func:`probe_likelihood` (which forks them: restoring them must not rewind another thread's block).
#: PyTorch has one global generator per device, shared by all threads: two threads that seed it and draw
#: from it at once get each other's numbers (4 threads building ``VAE(..., seed=0)`` at once gave 67
#: different initialisations out of 80). vaelib's own seeded blocks therefore run one at a time, in any
#: number of threads. What the lock does NOT protect against: code that is not vaelib's drawing from, or
#: seeding, the global generator in another thread at the same moment (an unseeded ``nn.Linear(...)``,
#: ``torch.manual_seed``, a ``DataLoader`` shuffling without its own generator). Such a draw takes numbers
#: out of the seeded block's stream (the block's result changes), and the block's restoring the
#: generator afterwards hands that thread's numbers out again. Code of yours that uses the global
#: generator from several threads can hold this lock too (``with vaelib.model.GLOBAL_RNG_LOCK: ...``);
#: it is re-entrant, so a seeded block inside another (or inside a model's module during ``fit``) is fine,
#: but a module that, during ``fit``, waits for another thread that builds a seeded model would wait forever.
GLOBAL_RNG_LOCK = threading.RLock()


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose generator code on ``device`` draws from (none for another device type)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def _forked_global_rng(device: torch.device | str | None = None) -> Iterator[Callable[[int], None]]:
    """Hold :data:`GLOBAL_RNG_LOCK` and fork PyTorch's global CPU generator (and, for a CUDA ``device``, that
    device's generator) for the block: whatever the block seeds or draws, both are restored exactly on
    exit, even on an error or ``KeyboardInterrupt``. Yields ``reseed(seed)``, which seeds exactly those
    generators (not the other GPUs', which ``torch.manual_seed`` would seed and the fork would not
    restore). ``device`` defaults to PyTorch's default device (where modules built in the block go)."""
    device = torch.get_default_device() if device is None else torch.device(device)
    cuda = _cuda_indices(device)

    def reseed(seed: int) -> None:
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)

    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=cuda):
        yield reseed


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with PyTorch's global generator seeded by ``seed`` and restore its state afterwards
    (even on an error); ``seed=None`` runs it unchanged. Modules built inside get seeded initial weights.

    The generators are those of the CPU and, when PyTorch's default device is a GPU, of that GPU (no
    other's). The block holds :data:`GLOBAL_RNG_LOCK`, so seeded blocks in several threads run one at a
    time and each gets exactly the numbers of its seed (read the lock's note for what it cannot prevent).
    """
    if seed is None:
        yield
        return
    seed = check_int("seed", seed, minimum=0)
    with _forked_global_rng() as reseed:
        reseed(seed)
        yield


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


class GreyLevelDecoder(nn.Module):
    r"""A decoder for quantised grey levels: ``z_dim → hidden… → (loc, log scale)`` per pixel, returning a
    :class:`vaelib.distributions.DiscretisedGaussian` on ``levels`` values in ``[-1, 1]`` (chapter 12's VAE,
    which shares the diffusion model's likelihood family). The scale is ``exp`` of the second half of the
    output, floored at :math:`e^{-7}`. Pass it as ``VAE(..., decoder=GreyLevelDecoder(...))``."""

    def __init__(self, z_dim: int, hidden: Sequence[int], x_dim: int, levels: int = 17) -> None:
        super().__init__()
        # Checked here, not first in forward: a bad levels would otherwise surface at the first batch.
        self.levels = check_int("levels", levels, minimum=2)
        sizes = (check_int("z_dim", z_dim), *hidden)
        self.body = _relu_mlp(sizes)
        self.to_x = nn.Linear(sizes[-1], 2 * check_int("x_dim", x_dim))

    def forward(self, z: Tensor) -> Distribution:
        loc, log_scale = self.to_x(self.body(z)).chunk(2, dim=-1)
        return DiscretisedGaussian(loc, torch.exp(log_scale.clamp(min=-7.0)), self.levels)


class VAE(nn.Module):
    r"""A VAE: the three distributions of the module's text, built from an encoder, a decoder and a prior.

    * ``VAE(784, 20, hidden=(400,))``: the book's MLP, ``784 → 400 → (20, 20)`` and ``20 → 400 → 784``,
      the prior :math:`\mathcal{N}(0, I)`. With ``hidden=()`` encoder and decoder are linear, and the
      Gaussian VAE is the linear VAE of chapter 3.
    * ``VAE(784, 8, encoder=my_encoder, decoder=my_decoder, prior=my_prior)``: your own modules.
      ``encoder(x)`` returns ``(mu, logvar)``, each ``(batch, z_dim)``, or a ``Distribution`` over ``z``;
      ``decoder(z)`` returns ``(n, x_dim)`` for ``z`` ``(n, z_dim)`` (logits, or the Gaussian mean), or a
      ``Distribution`` over ``x``; ``prior()`` returns a ``Distribution`` over ``z``. A family whose
      coordinates are its batch (``Normal(loc, scale)``, ``Bernoulli(probs=p)`` with ``p`` ``(n, x_dim)``)
      is read with ``Independent(..., 1)``. Give one of encoder and decoder and the other is the
      built-in MLP with ``hidden`` (default ``(400,)``).
    * A subclass may override :meth:`posterior`, :meth:`prior`, :meth:`likelihood`, :meth:`encode` or
      :meth:`decode`; everything in :mod:`vaelib` calls them.

    Args:
        x_dim: data dimension ``D`` (784 for 28×28 images).
        z_dim: latent dimension ``d``.
        hidden: hidden-layer widths of the built-in encoder (the built-in decoder mirrors them); only for
            a part that you do not supply.
        likelihood: what a decoder's *tensor* output means: ``"bernoulli"`` (logits) or ``"gaussian"``
            (the mean; adds the learned scalar ``obs_logvar``). Kept as :attr:`likelihood_name`.
        encoder: your encoder module (default: :class:`MLPEncoder`).
        decoder: your decoder module (default: :class:`MLPDecoder`).
        prior: your prior, a module whose call returns a ``Distribution`` over ``z`` (default:
            :math:`\mathcal{N}(0, I)`); its parameters are the model's.
        device: where to put the parameters (default: where the modules are, the CPU for built-in ones).
        seed: seeds the initial parameters of the built-in parts (``None`` uses PyTorch's global generator),
            in :func:`seeded`: the same seed gives the same parameters in any thread, also when several
            threads build models at once, and PyTorch's global generator is left as it was.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in DERIVED_METHODS:
            if name in vars(cls):
                raise TypeError(
                    f"{cls.__name__} overrides VAE.{name}, which is derived from the model's three distributions "
                    f"and which vaelib does not call in their place: override likelihood(z) (or decode) and "
                    "posterior(x) (or encode) instead, and every function of vaelib uses them"
                )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in DERIVED_METHODS:
            raise TypeError(
                f"VAE.{name} is derived from the model's three distributions and vaelib does not call it in their "
                "place: replace likelihood (or decode) and posterior (or encode) instead"
            )
        super().__setattr__(name, value)

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] | None = None,
        likelihood: Likelihood = "bernoulli",
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: nn.Module | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if seed is not None:
            seed = check_int("seed", seed, minimum=0)
        self.x_dim = check_int("x_dim", x_dim)
        self.z_dim = check_int("z_dim", z_dim)
        for name, module in (("encoder", encoder), ("decoder", decoder), ("prior", prior)):
            if module is not None and not isinstance(module, nn.Module):
                hint = (" (wrap a fixed distribution in a module whose forward returns it, so that it moves with "
                        "the model)" if isinstance(module, Distribution) else "")
                raise TypeError(f"{name} must be a torch.nn.Module or None, got {type(module).__name__}{hint}")
        if hidden is None:
            hidden = () if encoder is not None and decoder is not None else DEFAULT_HIDDEN
        elif encoder is not None and decoder is not None:
            raise ValueError("hidden describes the built-in MLP: leave it out when you give both encoder and decoder")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
        self.hidden = tuple(check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden))
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        #: ``"bernoulli"`` or ``"gaussian"``: what a decoder's tensor output means (see :meth:`likelihood`).
        self.likelihood_name: Likelihood = likelihood
        if device is not None:
            device = _check_device(device)

        with seeded(seed):  # one at a time across threads (GLOBAL_RNG_LOCK), the caller's generator restored
            self.encoder = MLPEncoder(self.x_dim, self.hidden, self.z_dim) if encoder is None else encoder
            self.decoder = MLPDecoder(self.z_dim, tuple(reversed(self.hidden)), self.x_dim) if decoder is None else decoder
        #: The prior module given to the constructor (``None``: :math:`\mathcal{N}(0, I)`).
        self.prior_module = prior
        #: Where training stands (:class:`vaelib.train.FitState`), for :func:`vaelib.fit` to continue it.
        self.fit_state: Any = None
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
            "likelihood": self.likelihood_name,
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
        return f"x_dim={self.x_dim}, z_dim={self.z_dim}, likelihood={self.likelihood_name!r}"

    # --- input checks -------------------------------------------------------------------------
    def _check_dtype(self, name: str, t: Tensor) -> None:
        dtype = self.dtype
        if t.dtype != dtype:
            raise TypeError(f"{name} must have the model's dtype {dtype}, got {t.dtype}")

    def check_x(self, x: object, name: str = "x") -> Tensor:
        """Validate data for this model: a finite ``(batch, x_dim)`` tensor in the model's floating dtype.
        (Whether it lies in the likelihood's support, binary for a Bernoulli, is checked against
        :meth:`likelihood` by the functions that score it: :func:`check_support`.)"""
        return self.check_data(x, name)

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

    # --- the networks the default distributions are built from ----------------------------------
    def encode(self, x: Tensor, c: Any = None) -> tuple[Tensor, Tensor] | Distribution:
        r"""The encoder's output for ``x``: ``self.encoder(x)`` (``self.encoder(x, c)`` with a context).

        Args:
            x: data, ``(batch, x_dim)``.
            c: context (a conditional VAE's labels), or ``None``.

        Returns:
            ``(mu, logvar)``, each ``(batch, z_dim)``, or a ``Distribution`` over ``z``.
        """
        x = self.check_data(x)
        if c is None:
            return self.encoder(x)
        if type(self.encoder) is MLPEncoder:
            raise TypeError("the built-in MLP encoder takes no context c: give the model an encoder whose forward "
                            "takes (x, c), or leave the context out")
        return self.encoder(x, c)

    def decode(self, z: Tensor, c: Any = None) -> Tensor | Distribution:
        r"""The decoder's output for latent codes ``z``: ``self.decoder(z)`` (``self.decoder(z, c)``).

        Args:
            z: latent codes, ``(n, z_dim)`` (the built-in decoder also takes ``(..., z_dim)``).
            c: context, or ``None``.

        Returns:
            ``(n, x_dim)`` logits (Bernoulli) or means (Gaussian), or a ``Distribution`` over ``x``.

        Codes that are NaN or infinite (from an encoder whose training diverged) are decoded, not refused,
        so that the loss they lead to is non-finite and :func:`vaelib.fit` reports the divergence the same
        way for every model; :meth:`mean` refuses them.
        """
        z = self.check_z(z, finite=False)
        if c is None:
            return self.decoder(z)
        if type(self.decoder) is MLPDecoder:
            raise TypeError("the built-in MLP decoder takes no context c: give the model a decoder whose forward "
                            "takes (z, c), or leave the context out")
        return self.decoder(z, c)

    # --- the model: three distributions ---------------------------------------------------------
    def posterior(self, x: Tensor, c: Any = None) -> Distribution:
        r""":math:`q_\phi(z|x)`, event shape ``(z_dim,)``, batch shape ``(batch,)``.

        Default: :meth:`encode`'s ``(mu, logvar)`` as a :class:`vaelib.distributions.DiagonalNormal`, or the
        ``Distribution`` it returns.
        """
        out = self.encode(x) if c is None else self.encode(x, c)
        if isinstance(out, Distribution):
            return as_event(out, self.z_dim)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            raise TypeError(
                f"{_name(self)}.encode must return a pair (mu, logvar) of tensors or a torch.distributions."
                f"Distribution, got {type(out).__name__}"
            )
        mu, logvar = out
        want = (x.shape[0], self.z_dim)
        for what, t in (("mu", mu), ("logvar", logvar)):
            if tuple(t.shape) != want:
                raise ValueError(f"{_name(self)}.encode returned {what} of shape {tuple(t.shape)}; expected {want}")
            if t.dtype != x.dtype:
                raise TypeError(f"{_name(self)}.encode returned {what} of dtype {t.dtype}; expected {x.dtype}")
        return DiagonalNormal(mu, logvar)

    def prior(self, c: Any = None) -> Distribution:
        r""":math:`p(z)`, event shape ``(z_dim,)``: :math:`\mathcal{N}(0, I)`, or what the ``prior`` module returns."""
        if self.prior_module is not None:
            out = self.prior_module() if c is None else self.prior_module(c)
            if not isinstance(out, Distribution):
                raise TypeError(f"the prior module must return a torch.distributions.Distribution, got {type(out).__name__}")
            return as_event(out, self.z_dim)
        p = _first_parameter(self)
        return StandardNormal(self.z_dim, p.dtype, p.device)

    def likelihood(self, z: Tensor, c: Any = None) -> Distribution:
        r""":math:`p_\theta(x|z)`, event shape ``(x_dim,)``, batch shape ``z.shape[:-1]``.

        Default: :meth:`decode` on the codes flattened to ``(n, z_dim)`` (a decoder written for a plain batch
        works unchanged); a tensor output is read as ``likelihood_name`` says (Bernoulli logits, or the
        Gaussian mean with variance ``exp(obs_logvar)``), a ``Distribution`` is taken as it is.

        Args:
            z: codes ``(..., z_dim)``.
            c: context for ``z``'s last batch dimension (its first dimension is that size), or ``None``.
        """
        z = check_tensor("z", z, last_dim=self.z_dim, finite=False)  # (its dtype: decode checks it)
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.z_dim)
        if c is None:
            out = self.decode(flat)
        else:
            out = self.decode(flat, _flat_context(c, lead))
        n = flat.shape[0]
        if not isinstance(out, (Tensor, Distribution)):
            raise TypeError(f"{_name(self)}.decode must return a tensor or a torch.distributions.Distribution, got "
                            f"{type(out).__name__}")
        if isinstance(out, Distribution):
            out = as_event(out, self.x_dim)
            if out.event_shape != (self.x_dim,) or out.batch_shape not in (lead, (n,)):
                raise ValueError(
                    f"{_name(self)}.decode returned a {type(out).__name__} of batch shape {tuple(out.batch_shape)} and "
                    f"event shape {tuple(out.event_shape)} for z of shape {(n, self.z_dim)}; the likelihood needs batch "
                    f"shape ({n},) and event shape ({self.x_dim},)"
                )
            return out if out.batch_shape == lead else Unflattened(out, lead)
        if tuple(out.shape) != (n, self.x_dim):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{_name(self)}.decode returned {got} for z of shape {(n, self.z_dim)}; "
                             f"expected {(n, self.x_dim)} or a Distribution")
        if out.dtype != z.dtype:
            raise TypeError(f"{_name(self)}.decode returned dtype {out.dtype}; expected {z.dtype}")
        out = out.reshape(*lead, self.x_dim)
        if type(self).tensor_likelihood is VAE.tensor_likelihood and "tensor_likelihood" not in vars(self):
            return self._tensor_likelihood(out)  # checked just above
        return self.tensor_likelihood(out)

    def tensor_likelihood(self, out: Tensor) -> Distribution:
        """The distribution that a decoder's tensor output ``out`` ``(..., x_dim)`` stands for: Bernoulli
        logits, or a Gaussian mean with the learned ``obs_logvar`` (as ``likelihood_name`` says)."""
        out = check_tensor("out", out, last_dim=self.x_dim, finite=False)
        self._check_dtype("out", out)
        return self._tensor_likelihood(out)

    def _tensor_likelihood(self, out: Tensor) -> Distribution:
        if self.likelihood_name == "bernoulli":
            return BernoulliLogits(out)
        return DiagonalNormal(out, self.obs_logvar)

    # --- derived from the three methods (not to be overridden) ----------------------------------
    def mean(self, z: Tensor, c: Any = None) -> Tensor:
        r"""The mean of :math:`p_\theta(x|z)` for codes ``(..., z_dim)``: pixel probabilities (Bernoulli) or
        the Gaussian mean (:func:`vaelib.distributions.mean`)."""
        from .distributions import mean

        return mean(run_likelihood(self, self.check_z(z), c))

    def log_px_z(self, x: Tensor, z: Tensor, c: Any = None) -> Tensor:
        r""":math:`\log p_\theta(x|z)` in nats, summed over the ``x_dim`` pixels: ``likelihood(z).log_prob(x)``.

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
        lik = run_likelihood(self, z, c)
        check_support(lik, x)
        return lik.log_prob(x)

    def linear_gaussian_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(W, b, obs_logvar)`` of a linear Gaussian decoder :math:`p_\theta(x|z) = \mathcal{N}(Wz + b, \sigma_x^2 I)`.

        For ``likelihood="gaussian"`` with the built-in decoder of ``hidden=()`` or a plain ``nn.Linear``
        decoder, the default :meth:`decode`, :meth:`likelihood` and :meth:`prior` (none overridden);
        :meth:`vaelib.toy.LinearGaussian.from_vae` uses it.

        Raises:
            ValueError: the decoder is not a single linear layer, the likelihood is not Gaussian, or the
                prior or likelihood is not the default.
        """
        dec = self.decoder
        linear = dec.to_x if type(dec) is MLPDecoder and len(dec.body) == 0 else dec
        overridden = any(_overrides(self, name) for name in ("decode", "likelihood", "prior", "tensor_likelihood"))
        if (self.likelihood_name != "gaussian" or type(linear) is not nn.Linear or linear.bias is None or overridden
                or self.prior_module is not None or _has_hooks(linear) or _has_hooks(dec)):
            raise ValueError(
                "model must be a linear Gaussian VAE with the N(0, I) prior, VAE(..., hidden=(), likelihood="
                f"'gaussian') or one whose decoder is an nn.Linear; got decoder {type(dec).__name__}, "
                f"likelihood={self.likelihood_name!r}" + (", a prior of its own" if self.prior_module is not None else "")
                + (", an overridden decode/likelihood/prior" if overridden else "")
            )
        return linear.weight, linear.bias, self.obs_logvar

    def forward(self, x: Tensor, c: Any = None) -> Tensor:
        r"""Reconstruct ``x``: the likelihood's mean at the posterior's mean, :math:`\mathbb{E}[x|z=\mathbb{E}_q[z]]`."""
        from .distributions import mean

        q = run_posterior(self, self.check_data(x), c)
        return self.mean(mean(q), c)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _first_parameter(model: nn.Module) -> Tensor:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters: its encoder and decoder must have some")
    return p


_check_device = check_device


# --- how the library calls a model ------------------------------------------------------------
def _flat_context(c: Any, lead: torch.Size) -> Any:
    """The context of a batch for codes with leading dimensions ``lead`` (the last one the batch), flattened
    as the codes are: a tensor ``(batch, ...)`` is repeated over the sample dimensions."""
    if not isinstance(c, Tensor) or len(lead) <= 1:
        return c
    if c.shape[0] != lead[-1]:
        raise ValueError(f"the context has {c.shape[0]} rows, the codes a batch of {lead[-1]}")
    return c.expand(*lead[:-1], *c.shape).reshape(-1, *c.shape[1:])


def _overrides(model: nn.Module, name: str) -> bool:
    """Whether ``model`` replaces ``VAE.<name>``: in a subclass, or on the instance."""
    return getattr(type(model), name) is not getattr(VAE, name) or name in vars(model)


def _call(method: Any, *args: Any, c: Any = None) -> Any:
    return method(*args) if c is None else method(*args, c)


def run_posterior(model: VAE, x: Tensor, c: Any = None) -> Distribution:
    r"""``model.posterior(x)`` (``(x, c)`` with a context), checked: a ``Distribution`` with event shape
    ``(z_dim,)`` and batch shape ``(batch,)``. Every function of :mod:`vaelib` reaches :math:`q_\phi(z|x)` here."""
    q = _call(model.posterior, x, c=c)
    if not isinstance(q, Distribution):
        raise TypeError(f"{_name(model)}.posterior must return a torch.distributions.Distribution, got {type(q).__name__}")
    q = as_event(q, model.z_dim)
    want = (x.shape[0],)
    if tuple(q.event_shape) != (model.z_dim,) or tuple(q.batch_shape) != want:
        raise ValueError(
            f"{_name(model)}.posterior returned a {type(q).__name__} of batch shape {tuple(q.batch_shape)} and event "
            f"shape {tuple(q.event_shape)}; expected batch shape {want} and event shape ({model.z_dim},)"
        )
    return q


def run_prior(model: VAE, c: Any = None, batch: int | None = None) -> Distribution:
    r"""``model.prior()`` (``prior(c)``), checked: event shape ``(z_dim,)``, a batch shape of ``()`` or, with
    a context, ``(batch,)``."""
    p = _call(model.prior, c=c)
    if not isinstance(p, Distribution):
        raise TypeError(f"{_name(model)}.prior must return a torch.distributions.Distribution, got {type(p).__name__}")
    p = as_event(p, model.z_dim)
    allowed = [()] if batch is None else [(), (batch,)]
    if tuple(p.event_shape) != (model.z_dim,) or tuple(p.batch_shape) not in allowed:
        raise ValueError(
            f"{_name(model)}.prior returned a {type(p).__name__} of batch shape {tuple(p.batch_shape)} and event shape "
            f"{tuple(p.event_shape)}; expected event shape ({model.z_dim},) and batch shape "
            + " or ".join(str(a) for a in allowed)
        )
    return p


def run_likelihood(model: VAE, z: Tensor, c: Any = None) -> Distribution:
    r"""``model.likelihood(z)`` (``(z, c)``), checked: event shape ``(x_dim,)``, batch shape ``z.shape[:-1]``."""
    lik = _call(model.likelihood, z, c=c)
    if not isinstance(lik, Distribution):
        raise TypeError(f"{_name(model)}.likelihood must return a torch.distributions.Distribution, got {type(lik).__name__}")
    lik = as_event(lik, model.x_dim)
    if tuple(lik.event_shape) != (model.x_dim,) or lik.batch_shape != z.shape[:-1]:
        raise ValueError(
            f"{_name(model)}.likelihood returned a {type(lik).__name__} of batch shape {tuple(lik.batch_shape)} and "
            f"event shape {tuple(lik.event_shape)} for z of shape {tuple(z.shape)}; expected batch shape "
            f"{tuple(z.shape[:-1])} and event shape ({model.x_dim},)"
        )
    return lik


def _name(model: nn.Module) -> str:
    return type(model).__name__


def check_data_support(model: VAE, x: Tensor, c: Any = None, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` lies in the support of the model's likelihood (probed at the code
    ``z = 0``, for the first row's context): data checked once before a loop that scores them."""
    check_support(probe_likelihood(model, c), x, name)


def probe_likelihood(model: VAE, c: Any = None) -> Distribution:
    """The model's likelihood at the code ``z = 0`` (for the first row's context), to learn its support.

    A probe leaves no trace: it runs without gradient, in evaluation mode (no dropout draw, no batch-norm
    statistic updated; each module's previous mode is restored) and with PyTorch's global generators forked
    (under :data:`GLOBAL_RNG_LOCK`: restoring them must not rewind a seeded block of another thread).
    """
    z0 = torch.zeros(1, model.z_dim, dtype=model.dtype, device=model.device)
    first = c[:1] if isinstance(c, Tensor) else c
    modes = [(module, module.training) for module in model.modules()]  # each module's own mode
    try:
        model.eval()
        with torch.no_grad(), _forked_global_rng(model.device):
            return run_likelihood(model, z0, first)
    finally:
        for module, training in modes:
            module.training = training


def check_support(lik: Distribution, x: Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless every row of ``x`` lies in the support of the likelihood ``lik`` (binary
    for a Bernoulli, integers in range for a categorical...)."""
    support = lik.support
    base = getattr(support, "base_constraint", support)
    if isinstance(base, type(torch.distributions.constraints.boolean)):
        check_binary(name, x)
        return
    if isinstance(base, type(torch.distributions.constraints.real)):
        return  # finite data (checked with the data) are real
    try:
        ok = bool(torch.as_tensor(support.check(x)).all())
    except Exception as err:  # a support that cannot check this shape: leave it to log_prob
        del err
        return
    if not ok:
        raise ValueError(f"{name} lies outside the support of the likelihood {type(lik).__name__} ({support})")


# --- the built-in architecture, recognised exactly --------------------------------------------
#: Module types that make up a model built by ``VAE(x_dim, z_dim, hidden, likelihood)``.
_BUILTIN_TYPES = (MLPEncoder, MLPDecoder, nn.Sequential, nn.Linear, nn.ReLU)
#: Methods of VAE that the hand-written paths reproduce: overriding any of them on an instance disqualifies it.
_VAE_METHODS = (*MODEL_METHODS, *DERIVED_METHODS, "tensor_likelihood")


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
    built-in order and sizes, with the three default distributions (no ``prior`` module; no
    :meth:`VAE.posterior`, :meth:`VAE.prior`, :meth:`VAE.likelihood`, :meth:`VAE.encode` or
    :meth:`VAE.decode` replaced on the instance), no hook, no extra parameter or buffer, every parameter
    requiring a gradient, all of one floating dtype and device. Those are the conditions under which :func:`vaelib.elbo_backward` (the chain rule written
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
    if model.prior_module is not None:
        return False
    if model.likelihood_name == "gaussian":
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
