"""Saving and loading a trained VAE, safely.

A checkpoint is a ``torch.save`` file holding only plain data: a format tag, the ``vaelib`` version, what
the model is (its class name, ``x_dim``, ``z_dim``, likelihood, and for the built-in MLP its ``hidden``
widths) and its tensors. :func:`load` reads it with ``torch.load(weights_only=True)``, PyTorch's
restricted unpickler, so a file from the internet can never run code; anything else (a truncated file,
another program's pickle, another architecture) is rejected with a clear error. :func:`save` writes to a
temporary file and renames it, so an interrupted save never destroys the previous checkpoint.

The built-in MLP (``VAE(x_dim, z_dim, hidden, likelihood)``) is rebuilt from its configuration:
``load(path)``. A model with your own modules, or a subclass, cannot be rebuilt from data without running
code, so you construct it and the checkpoint fills it: ``load(path, model=MyVAE())``, which checks that
the class, dimensions, likelihood and every tensor's name, shape and dtype match.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import torch
from torch import Tensor

from ._validate import check_path
from ._version import __version__
from .model import VAE, _check_device, has_builtin_architecture

FORMAT = "vaelib-checkpoint"
FORMAT_VERSION = 2
#: What a checkpoint records about the model: the constructor arguments of the built-in MLP
#: (:attr:`vaelib.VAE.config`), or, for any other model, all of those but ``hidden``.
CONFIG_KEYS = ("x_dim", "z_dim", "hidden", "likelihood")
CUSTOM_CONFIG_KEYS = ("x_dim", "z_dim", "likelihood")


def _class_name(model: VAE) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save(model: VAE, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (what it is, and its parameters and buffers) to ``path`` atomically.

    Args:
        model: a :class:`vaelib.VAE`: the built-in MLP, a subclass, or one built from your own modules.
        path: the checkpoint file; its folder must exist.

    Raises:
        ValueError: the model's ``state_dict`` holds something other than tensors (extra state), which a
            safe checkpoint cannot carry.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    path = check_path("path", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path's folder does not exist: {folder}")
    state = model.state_dict()
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"cannot save {name}: a checkpoint holds tensors only, and the model's state_dict has a "
                f"{type(value).__name__} there"
            )
    builtin = has_builtin_architecture(model)
    config = model.config if builtin else {k: model.config[k] for k in CUSTOM_CONFIG_KEYS}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vaelib_version": __version__,
        "class": _class_name(model),
        "builtin": builtin,
        "config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(
    path: str | os.PathLike[str], model: VAE | None = None, device: torch.device | str | None = None
) -> VAE:
    """The :class:`vaelib.VAE` saved by :func:`save`, without executing anything from the file.

    Args:
        path: a file written by :func:`save`.
        model: the model to fill, constructed by you (needed for a subclass or your own modules; for the
            built-in MLP it may be left out, and the model is rebuilt from the recorded configuration).
            Filled in place and returned; on any error it is left untouched.
        device: where to put the parameters (default: the CPU for a rebuilt model, where ``model`` is
            otherwise).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a vaelib checkpoint (truncated, foreign, or an unsafe pickle), its tensors do
            not fit the architecture it declares or the ``model`` given (names, shapes, dtypes), or it
            holds a custom model and no ``model`` was given.
    """
    path = check_path("path", path)
    if model is not None and not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE or None, got {type(model).__name__}")
    if device is not None:
        device = _check_device(device)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _read(path)
    config, state = payload["config"], payload["state_dict"]
    if model is None:
        if not payload["builtin"]:
            raise ValueError(
                f"{path} holds a {payload['class']} with its own modules, which cannot be rebuilt from data: "
                "construct one and pass it, load(path, model=...)"
            )
        model = _rebuild(path, config, state)
    else:
        _check_fits(path, payload, model)
    with torch.no_grad():
        model.load_state_dict(state)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _read(path: str) -> dict[str, Any]:
    """The checkpoint's payload, its structure checked."""
    with open(path, "rb") as f:  # errors of the file system itself (permissions) surface here
        raw = f.read()
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # the bytes are in memory: whatever fails now is the file's content
        raise ValueError(
            f"{path} is not a readable vaelib checkpoint (truncated, corrupt, or containing objects "
            f"other than plain data, which are never unpickled): "
            f"{(str(err).splitlines() or [type(err).__name__])[0]}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vaelib checkpoint (no '{FORMAT}' tag)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {payload.get('format_version')}, this vaelib reads {FORMAT_VERSION}"
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} lacks a model configuration or parameters")
    if not isinstance(payload.get("builtin"), bool) or not isinstance(payload.get("class"), str):
        raise ValueError(f"{path} does not say what model it holds (its class and whether it is built in)")
    keys = CONFIG_KEYS if payload["builtin"] else CUSTOM_CONFIG_KEYS
    if set(config) != set(keys):
        raise ValueError(f"{path} holds an invalid model configuration {config}: its keys must be {keys}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: unexpected entries {bad} among the parameters (names and tensors only)")
    return payload


def _rebuild(path: str, config: dict[str, Any], state: dict[str, Tensor]) -> VAE:
    """A built-in VAE of the recorded configuration, in the recorded dtype, after checking its shapes."""
    try:
        with torch.device("meta"):  # shapes only: a forged config must not allocate (or move) anything
            skeleton = VAE(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model configuration {config}: {err}") from err
    _check_tensors(path, skeleton.state_dict(), state, f"the architecture {config}", dtypes=False)
    model = VAE(**config)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point:
        model.to(next(iter(dtypes)))  # a float64 model comes back as float64, not rounded to float32
    return model


def _check_fits(path: str, payload: dict[str, Any], model: VAE) -> None:
    """Raise ``ValueError`` unless the checkpoint is of ``model``'s class, dimensions and tensors."""
    if payload["class"] != _class_name(model):
        raise ValueError(f"{path} holds a {payload['class']}, not a {_class_name(model)}")
    mine = model.config
    for key, value in payload["config"].items():
        if mine[key] != value:
            raise ValueError(f"{path} holds a model with {key}={value!r}; the model given has {key}={mine[key]!r}")
    _check_tensors(path, model.state_dict(), payload["state_dict"], "the model given", dtypes=True)


def _check_tensors(path: str, ref: dict[str, Tensor], state: dict[str, Tensor], what: str, dtypes: bool) -> None:
    missing = sorted(set(ref) - set(state))
    extra = sorted(set(state) - set(ref))
    if missing or extra:
        raise ValueError(f"{path}: parameters do not match {what}: missing {missing}, unexpected {extra}")
    for name, want in ref.items():
        got = state[name]
        if got.shape != want.shape:
            raise ValueError(f"{path}: parameter {name} has shape {got.shape}, {what} needs {tuple(want.shape)}")
        if dtypes and got.dtype != want.dtype:
            raise ValueError(
                f"{path}: parameter {name} is {got.dtype}, in {what} it is {want.dtype} (convert the model "
                "first, e.g. model.double(), so that no value is rounded)"
            )
