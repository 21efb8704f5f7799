r"""Training once for several chapters: :func:`fit_cached`, a memo of :func:`vaelib.fit`.

Chapter 6 trains the book's model and chapter 7 evaluates the same model. Each chapter must run on its
own in a fresh kernel, yet training twice wastes half a minute. :func:`fit_cached` is :func:`vaelib.fit`
with a memory: it computes a key from *everything the result depends on*, and

- if a checkpoint under that key exists, loads it into ``model`` (through :func:`vaelib.load`, which never
  unpickles code and checks every tensor's name, shape and dtype) and returns the stored
  :class:`vaelib.History`, with ``from_cache=True``;
- otherwise trains with :func:`vaelib.fit` and stores the checkpoint and the history under the key.

Training is seeded end to end, so the two branches give the same parameters. The key is a SHA-256 of

1. the source of every module of ``vaelib`` (a change anywhere in the library makes every entry stale);
2. the versions of PyTorch and Python;
3. the model's class and configuration, and the name, dtype, shape and bytes of every tensor of its
   ``state_dict`` *before* training (so two initialisations never share an entry, and a model of your own
   is keyed by its initial weights as well as its class name);
4. the training and validation data (dtype, shape, bytes; for :class:`vaelib.data.Digits`, also the
   labels);
5. every other argument of :func:`vaelib.fit` (``epochs``, ``batch_size``, ``lr``, ``seed``, ...), and the
   device.

What it cannot see is code outside ``vaelib`` that the model runs: the ``forward`` of your own encoder and
decoder classes. Two classes with the same name and the same initial weights but different ``forward``
methods would share an entry. So :func:`fit_cached` refuses models that are not the built-in MLP unless you
pass ``key=`` (any string: change it when you change your modules' code).

Where entries live: ``cache_dir``, else the environment variable ``VAELIB_CACHE``, else
``~/.cache/vaelib`` (``$XDG_CACHE_HOME/vaelib``). ``make test`` points ``VAELIB_CACHE`` at a folder it
empties at the start of every run, so a test run never reads an entry from an earlier one. Two processes
training the same key at once are serialised by a lock file on POSIX systems (elsewhere both train, and
the last one to finish writes the identical result). Entries are written atomically, so an interrupted
run leaves no half-written entry; delete the folder to reclaim the space (one entry of the book's model
is 2.6 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ._validate import check_path, check_tensor
from .checkpoint import load, save
from .data import Digits
from .model import VAE, has_builtin_architecture
from .train import History, fit

#: Bumped when the layout of an entry changes, so that old entries are never misread.
ENTRY_VERSION = 1


def fit_cached(
    model: VAE,
    train: Tensor | Digits,
    epochs: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    key: str | None = None,
    **fit_kwargs: Any,
) -> History:
    """:func:`vaelib.fit`, or its stored result if exactly this training has been run before.

    Args:
        model: trained in place (or filled from the cache), as by :func:`vaelib.fit`.
        train: training data, as for :func:`vaelib.fit`.
        epochs: as for :func:`vaelib.fit`.
        cache_dir: folder of the entries (default: ``$VAELIB_CACHE``, else ``~/.cache/vaelib``).
        key: required for a model that is not the built-in MLP: a string naming the version of your
            modules' code (the cache cannot read a ``forward`` method); mixed into the key.
        **fit_kwargs: every other argument of :func:`vaelib.fit` (``valid``, ``batch_size``, ``lr``,
            ``seed``, ...), part of the key.

    Returns:
        The :class:`vaelib.History` of the training (``seconds`` are those of the run that trained), with
        ``from_cache`` telling whether it was read from the cache.

    Raises:
        ValueError: a custom model without ``key``; or what :func:`vaelib.fit` raises for a bad argument
            (nothing is stored for a training that fails, so a bad argument always reaches ``fit``); or a
            stored checkpoint is damaged (:func:`vaelib.load`'s error, naming the file).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    builtin = has_builtin_architecture(model) and type(model) is VAE  # (no prior module, no override)
    if not builtin and key is None:
        raise ValueError(
            f"{type(model).__name__} runs code outside vaelib (its modules' forward methods), which the cache "
            "cannot see: pass key='...' naming that code's version, or train with vaelib.fit"
        )
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a string, got {type(key).__name__}")
    folder = _cache_dir(cache_dir)
    digest = _key(model, train, epochs, key, fit_kwargs)
    checkpoint, record = folder / f"{digest}.pt", folder / f"{digest}.json"
    with _locked(folder / f"{digest}.lock"):
        history = _read_entry(model, checkpoint, record)
        if history is not None:
            return history
        history = fit(model, train, epochs, **fit_kwargs)
        save(model, checkpoint)
        _write_json(record, {"entry_version": ENTRY_VERSION, "history": asdict(history)})
    return history


def cache_dir() -> Path:
    """The folder :func:`fit_cached` uses by default (``$VAELIB_CACHE``, else ``~/.cache/vaelib``)."""
    return _cache_dir(None)


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        cache_dir = check_path("cache_dir", cache_dir)
    if cache_dir is None:
        cache_dir = os.environ.get("VAELIB_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        ) / "vaelib"
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _key(model: VAE, train: Tensor | Digits, epochs: int, key: str | None, fit_kwargs: dict[str, Any]) -> str:
    h = hashlib.sha256()

    def add(label: str, value: bytes) -> None:
        h.update(f"{label}:{len(value)}:".encode())
        h.update(value)

    add("entry", str(ENTRY_VERSION).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        add(f"source {source.name}", source.read_bytes())
    add("torch", torch.__version__.encode())
    add("python", platform.python_version().encode())
    add("class", f"{type(model).__module__}.{type(model).__qualname__}".encode())
    add("config", json.dumps(model.config, sort_keys=True, default=str).encode())
    add("user key", b"" if key is None else key.encode())
    for name, tensor in model.state_dict().items():
        _add_tensor(add, f"state {name}", tensor)
    state = getattr(model, "fit_state", None)  # a run that fit would continue
    if state is not None:
        add("run", json.dumps({"epoch": state.epoch, "step": state.step, "settings": state.settings},
                              sort_keys=True, default=str).encode())
        _add_tensor(add, "run generator", state.generator)
        for index, slots in sorted(state.optimizer["state"].items()):
            for slot, value in sorted(slots.items()):
                _add_tensor(add, f"run optimizer {index} {slot}", torch.as_tensor(value))
    _add_data(add, "train", train)
    arguments = {"epochs": epochs, **fit_kwargs}
    for name in sorted(arguments):
        value = arguments[name]
        if name == "valid" or isinstance(value, (Tensor, Digits, tuple)):
            _add_data(add, f"argument {name}", value)
        else:
            add(f"argument {name}", repr(value).encode())
    add("device", str(model.device if fit_kwargs.get("device") is None else fit_kwargs["device"]).encode())
    return h.hexdigest()


def _add_data(add: Any, label: str, data: Any) -> None:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):  # (x, c): data and context
        _add_data(add, f"{label} x", data[0])
        _add_tensor(add, f"{label} c", data[1])
        return
    if data is None and label == "argument valid":
        add(label, b"None")
        return
    if not isinstance(data, (Tensor, Digits)) and label in ("train", "argument valid"):
        raise TypeError(
            f"fit_cached keys a training by its data, so {label.removeprefix('argument ')} must be a tensor, a "
            f"Digits or a pair (x, c), not a {type(data).__name__} (an iterable of batches cannot be hashed): "
            "train it with vaelib.fit"
        )
    if isinstance(data, Tensor):  # what fit would refuse (sparse, meta, ...) is refused before hashing
        check_tensor(label.removeprefix("argument "), data, finite=False, nonempty=False)
    if isinstance(data, Digits):
        _add_tensor(add, f"{label} images", data.images)
        _add_tensor(add, f"{label} labels", data.labels)
    elif isinstance(data, Tensor):
        _add_tensor(add, label, data)
    else:
        add(label, repr(data).encode())  # fit rejects it with its own message


def _add_tensor(add: Any, label: str, tensor: Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    add(f"{label} {t.dtype} {tuple(t.shape)}", t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _read_entry(model: VAE, checkpoint: Path, record: Path) -> History | None:
    if not (checkpoint.is_file() and record.is_file()):
        return None
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
        if stored.get("entry_version") != ENTRY_VERSION:
            return None
        names = {f.name for f in fields(History)}
        history = History(**{k: v for k, v in stored["history"].items() if k in names})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable record is a miss: train again and overwrite it
    load(checkpoint, model=model)  # a damaged checkpoint raises, naming the file (never a silent miss)
    history.from_cache = True
    return history


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if sys.platform == "win32":  # no fcntl: both processes train; the entry is written atomically
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
