"""Saving and loading a trained VAE, safely.

A checkpoint is a ``torch.save`` file holding only plain data: a format tag, the ``vaelib`` version,
the model's constructor arguments and its tensors. :func:`load` reads it with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler, so a file from the internet can never
run code; anything else (a truncated file, another program's pickle, another architecture) is rejected
with a clear error. :func:`save` writes to a temporary file and renames it, so an interrupted save
never destroys the previous checkpoint.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import torch

from ._validate import check_path
from .model import VAE

FORMAT = "vaelib-checkpoint"
FORMAT_VERSION = 1
#: The constructor arguments a checkpoint records (:attr:`vaelib.VAE.config`), and nothing else.
CONFIG_KEYS = ("x_dim", "z_dim", "hidden", "likelihood")


def save(model: VAE, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (configuration and parameters) to ``path`` atomically.

    Args:
        model: a :class:`vaelib.VAE`.
        path: the checkpoint file; its folder must exist.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    from . import __version__

    path = check_path("path", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path's folder does not exist: {folder}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vaelib_version": __version__,
        "config": model.config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
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


def load(path: str | os.PathLike[str], device: torch.device | str | None = None) -> VAE:
    """Rebuild the :class:`vaelib.VAE` saved by :func:`save`, without executing anything from the file.

    Args:
        path: a file written by :func:`save`.
        device: where to put the parameters (default CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a vaelib checkpoint (truncated, foreign, or an unsafe pickle), or its
            parameters do not fit the architecture it declares.
    """
    path = check_path("path", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
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
    if set(config) != set(CONFIG_KEYS):
        raise ValueError(f"{path} holds an invalid model configuration {config}: its keys must be {CONFIG_KEYS}")
    try:
        with torch.device("meta"):  # shapes only: a forged config must not allocate (or move) anything
            skeleton = VAE(**config).state_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model configuration {config}: {err}") from err
    missing = sorted(set(skeleton) - set(state), key=str)
    extra = sorted(set(state) - set(skeleton), key=str)
    if missing or extra:
        raise ValueError(f"{path}: parameters do not match {config}: missing {missing}, unexpected {extra}")
    for name, ref in skeleton.items():
        if not isinstance(state[name], torch.Tensor) or state[name].shape != ref.shape:
            got = getattr(state[name], "shape", type(state[name]).__name__)
            raise ValueError(f"{path}: parameter {name} has shape {got}, the architecture needs {tuple(ref.shape)}")
    model = VAE(**config)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point:
        model.to(next(iter(dtypes)))  # a float64 model comes back as float64, not rounded to float32
    model.load_state_dict(state)
    if device is not None:
        model.to(device)
    model.eval()
    return model
