r"""Training once for several chapters: :func:`fit_cached`, a memo of :func:`vaelib.fit`.

Chapter 6 trains the book's model and chapter 7 evaluates the same model. Each chapter must run on its
own in a fresh kernel, yet training twice wastes half a minute. :func:`fit_cached` is :func:`vaelib.fit`
with a memory: it computes a key from *everything the result depends on*, and

- if a sound entry under that key exists, loads its checkpoint into ``model`` (through :func:`vaelib.load`,
  which never unpickles code and checks every tensor's name, shape and dtype), moves the model to
  ``device`` if one is given (as :func:`vaelib.fit` does), and returns the stored :class:`vaelib.History`,
  with ``from_cache=True``;
- otherwise trains with :func:`vaelib.fit` and stores the checkpoint and the history under the key.

Training is seeded end to end, so the two branches give the same parameters (and the same ``fit_state``,
eval mode, device and dtype).

**The key** is a SHA-256 of

1. the source of every module of ``vaelib`` as it was read when ``vaelib`` was imported, that is, of the
   code that runs (a change anywhere in the library makes every entry stale; a kernel that imported the
   library before an edit keeps keying by the code it runs), and the layout of an entry
   (:data:`ENTRY_VERSION`);
2. the versions of PyTorch and Python;
3. the model's class and configuration, the ``key=`` string, the name, dtype, shape and bytes of every
   tensor of its ``state_dict`` *before* training (so two initialisations never share an entry, and a
   model of your own is keyed by its initial weights as well as its class name), which parameters require
   a gradient (a frozen part stays as it is: ``decoder.requires_grad_(False)`` is another training), and
   the buffers that the ``state_dict`` leaves out (non-persistent ones);
4. the training and validation data (dtype, shape, bytes; for :class:`vaelib.data.Digits`, also the
   labels; for a pair ``(x, c)``, the context too);
5. every other argument of :func:`vaelib.fit`, with its default filled in when left out (``epochs``,
   ``batch_size``, ``lr``, ``seed``, ``objective``, ...), and the device it trains on (``device``, else the
   model's);
6. the float32 matmul precision (``torch.set_float32_matmul_precision``) and, on CUDA, the TF32, reduced
   precision and determinism switches: the global settings that change the numbers a training computes.

Not in the key, because they do not change the result: ``progress`` (a progress bar), the train/eval
mode of the model's modules (:func:`vaelib.fit` puts the whole model in train mode, then eval mode), and
``restart`` (see the next paragraph). The number of CPU threads is not in it either: it may change the
last bits of a sum, so an entry trained with another thread count can differ in its last bits from what
this process would compute (the book and the tests train with one thread).

**A model that carries a training run is refused.** :func:`vaelib.fit` leaves its run on the model
(``model.fit_state``, also restored by :func:`vaelib.load` and by a cache hit), and a second ``fit`` on it
*continues* that run. A second ``fit_cached`` on the same object, the usual result of re-running a
notebook cell, would thus silently train again from the trained weights, so :func:`fit_cached` raises a
``ValueError`` instead, and says what to do: build the model afresh (re-run the cell that creates it) to get
the cached training, pass ``restart=True`` to train a new run from the current weights (keyed by those
weights), or continue the run with :func:`vaelib.fit`. A model whose run ended (``patience`` restores the
best parameters and ends its run) carries none: a second call on it is a new run from its current weights,
keyed by them, exactly what :func:`vaelib.fit` would do.

What the key cannot see is code outside ``vaelib`` that the model runs: the ``forward`` of your own
encoder and decoder classes. Two classes with the same name and the same initial weights but different
``forward`` methods would share an entry. So :func:`fit_cached` refuses models that are not the built-in
MLP unless you pass ``key=`` (any string: change it when you change your modules' code).

**An entry** is two files named by the key: the checkpoint (``<key>.pt``, written by :func:`vaelib.save`)
and its record (``<key>.json``: the key, the SHA-256 of the checkpoint file, the :class:`vaelib.History`).
The record is the entry's seal: it is removed before a checkpoint is written and written, atomically,
only after it, so an interrupted or failed store leaves no entry (a checkpoint without a record is a
miss). Before an entry is trusted, its record must be this key's and well formed (every field of the
history of its type, its lists of one length), and the checkpoint's SHA-256 must be the one the record
holds. Then:

- a record that is missing is a miss; a record that cannot be read, is not JSON, is another entry's, or
  has a field of the wrong type vouches for nothing: a :class:`CacheWarning` names it, the training runs
  and the entry is written anew;
- a checkpoint that is not the file its record was written with (its SHA-256 differs: another training's
  checkpoint, or a damaged one), or that :func:`vaelib.load` rejects, is a damaged entry: a ``ValueError``
  names its two files and says to delete them (nothing is loaded). Damage there is never repaired
  silently: it may be a failing disk, or a copy that mixed two caches.

**Where entries live**: ``cache_dir``, else the environment variable ``VAELIB_CACHE``, else
``$XDG_CACHE_HOME/vaelib``, else ``~/.cache/vaelib``; a leading ``~`` is the home folder in all of them.
The folder is created if needed. ``make test`` points ``VAELIB_CACHE`` at a folder it empties at the start
of every run, so a test run never reads an entry from an earlier one.

**A cache that cannot be used never costs a training.** A read-only cache (a read-only mount, or a folder
you may read but not write) still serves its entries. When the folder cannot be created (it is a file, a
dangling symbolic link, under a home you cannot write), or an entry cannot be read or stored (a full
disk, a folder deleted while the model trained), a :class:`CacheWarning` names the folder as you gave it
(``cache_dir=``, ``VAELIB_CACHE=``, or the default folder) and the cause, and :func:`fit_cached` returns
the trained model and its :class:`vaelib.History` as :func:`vaelib.fit` would.

**Two processes training the same key at once** are serialised by a lock file, ``<key>.lock``, on POSIX
systems (elsewhere both train, and the last one to finish writes the identical result). A call that has
to wait says so at once on ``stderr``, naming the lock file, the process that holds it (as that process
recorded in the file: its pid, host and start time) and the training it waits for; it then waits as long
as that process holds the lock, without a timeout: a process that ends, however it ends, releases the
lock, and a stopped one (a paused kernel, a debugger) holds it until it is resumed or ended, which the
message says. Interrupting the waiting call is safe. Never delete a lock file to "unblock" a wait: the two
processes would then both write. Delete the folder, when no process uses it, to reclaim the space (one
entry of the book's model is 2.6 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ._validate import check_path, check_tensor
from .checkpoint import _lock, _remove_stale_temporaries, _temporary_name, load, save
from .data import Digits
from .model import VAE, _check_device, has_builtin_architecture
from .train import FitState, History, fit

#: Bumped when the layout of an entry changes, so that old entries are never misread (it is part of the key).
ENTRY_VERSION = 2

#: Arguments of :func:`vaelib.fit` that are not keyed: ``progress`` changes no number, ``device`` is keyed
#: normalised (``"cpu"`` as the model's CPU), ``restart`` changes nothing once a carried run is refused.
_NOT_KEYED = ("progress", "device", "restart")


class CacheWarning(UserWarning):
    """:func:`fit_cached` could not use its cache as it should (a folder it cannot create or write, an entry
    it cannot read or store, a record that vouches for nothing): the message names the folder or file and
    the cause. The training's result is never affected: it is returned, trained when it could not be read."""


@dataclass(frozen=True)
class _Place:
    """The cache folder, and how the caller named it (for messages)."""

    folder: Path
    named: str

    def __str__(self) -> str:
        return self.named


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

    Guarantees (the module's documentation says how): a hit gives the parameters, ``fit_state``, device,
    dtype and eval mode that the training gives; everything that changes the result is in the key; an
    entry is used only after its record and checkpoint are checked against each other; a cache that cannot
    be used costs a :class:`CacheWarning`, never the training; a model carrying a training run is refused
    rather than silently trained further; a call waiting for another process's lock says so on ``stderr``.

    Args:
        model: trained in place (or filled from the cache), as by :func:`vaelib.fit`. It must not carry a
            training run (``model.fit_state``) unless ``restart=True``.
        train: training data, as for :func:`vaelib.fit` (a tensor, a :class:`vaelib.data.Digits` or a pair
            ``(x, c)``: the cache hashes it, so not an iterable of batches).
        epochs: as for :func:`vaelib.fit`.
        cache_dir: folder of the entries (default: ``$VAELIB_CACHE``, else ``$XDG_CACHE_HOME/vaelib``, else
            ``~/.cache/vaelib``); a leading ``~`` is the home folder.
        key: required for a model that is not the built-in MLP: a string naming the version of your
            modules' code (the cache cannot read a ``forward`` method); mixed into the key.
        **fit_kwargs: every other argument of :func:`vaelib.fit` (``valid``, ``batch_size``, ``lr``,
            ``seed``, ``device``, ...), part of the key (but for ``progress``, which changes no number).

    Returns:
        The :class:`vaelib.History` of the training (``seconds`` are those of the run that trained), with
        ``from_cache`` telling whether it was read from the cache.

    Raises:
        ValueError: a custom model without ``key``; a model carrying a training run (``model.fit_state``)
            without ``restart=True`` (the message says what to do); a damaged entry (its checkpoint is not
            the file its record was written with, or :func:`vaelib.load` rejects it: the message names the
            two files to delete); or what :func:`vaelib.fit` raises for a bad argument (nothing is stored
            for a training that fails, so a bad argument always reaches ``fit``).
        TypeError: a model that is not a :class:`vaelib.VAE`, a ``key``, ``cache_dir`` or ``restart`` of the
            wrong type, data that cannot be hashed (an iterable of batches).

    Warns:
        CacheWarning: the cache folder cannot be created, or an entry cannot be read or stored, or a
            record vouches for nothing (then the training runs and the entry is written anew).
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
    restart = fit_kwargs.get("restart", False)
    if not isinstance(restart, bool):
        raise TypeError(f"restart must be True or False, got {type(restart).__name__}")
    device = fit_kwargs.get("device")
    device = None if device is None else _check_device(device)  # as fit checks it: on a hit too
    place = _place(cache_dir)
    digest = _key(model, train, epochs, key, fit_kwargs, model.device if device is None else device)
    if not restart:
        _refuse_a_carried_run(model)
    problem = _usable(place.folder)
    if problem is not None:
        warnings.warn(f"fit_cached cannot use {place} as its cache: {problem}. The model is trained without "
                      "the cache (nothing is read or stored); set VAELIB_CACHE or pass cache_dir= to use another "
                      "folder", CacheWarning, stacklevel=2)
        return fit(model, train, epochs, **fit_kwargs)
    checkpoint, record = place.folder / f"{digest}.pt", place.folder / f"{digest}.json"
    with _locked(place.folder / f"{digest}.lock", _describe(model, epochs, key, digest)):
        history, note = _read_entry(model, checkpoint, record, digest, device)
        if note is not None:
            warnings.warn(note, CacheWarning, stacklevel=2)
        if history is not None:
            return history
        history = fit(model, train, epochs, **fit_kwargs)
        note = _store(model, history, checkpoint, record, digest, place)
        if note is not None:
            warnings.warn(note, CacheWarning, stacklevel=2)
    return history


def cache_dir() -> Path:
    """The folder :func:`fit_cached` uses by default (``$VAELIB_CACHE``, else ``$XDG_CACHE_HOME/vaelib``, else
    ``~/.cache/vaelib``; ``~`` expanded, made absolute). Nothing is created."""
    return _place(None).folder


# --- what the training is ---------------------------------------------------------------------------------

def _refuse_a_carried_run(model: VAE) -> None:
    state = getattr(model, "fit_state", None)
    if state is None:
        return
    if not isinstance(state, FitState):
        raise TypeError(f"model.fit_state must be a vaelib.FitState or None, got {type(state).__name__}")
    raise ValueError(
        f"the model carries a training run (model.fit_state: {state.epoch} epochs, {state.step} updates), left "
        "by vaelib.fit, an earlier fit_cached or vaelib.load, which vaelib.fit would continue: this call would "
        "train the trained model further (a re-run notebook cell does that) and not the training its arguments "
        "describe. fit_cached memoises a training from the weights it is given: build the model afresh (re-run "
        "the cell that creates it) to get this training, pass restart=True to train a new run from the current "
        "weights, or continue the run with vaelib.fit"
    )


def _fit_defaults() -> dict[str, Any]:
    """:func:`vaelib.fit`'s keyword arguments and their defaults (an argument left out is keyed as its default)."""
    return {name: p.default for name, p in inspect.signature(fit).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


_FIT_DEFAULTS = _fit_defaults()


def _sources() -> bytes:
    """A digest of the source of every module of ``vaelib``, read once, when ``vaelib`` is imported: the code
    that runs. (Read at each call, a library edited under a running kernel would key the old code's training
    by the new code, and a fresh kernel would read it back as the new code's.)"""
    h = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        text = source.read_bytes()
        h.update(f"{source.name}:{len(text)}:".encode())
        h.update(text)
    return h.digest()


_SOURCES = _sources()


def _key(model: VAE, train: Tensor | Digits, epochs: int, key: str | None, fit_kwargs: dict[str, Any],
         device: torch.device) -> str:
    h = hashlib.sha256()

    def add(label: str, value: bytes) -> None:
        h.update(f"{label}:{len(value)}:".encode())
        h.update(value)

    add("entry", str(ENTRY_VERSION).encode())
    add("sources", _SOURCES)
    add("torch", torch.__version__.encode())
    add("python", platform.python_version().encode())
    add("class", f"{type(model).__module__}.{type(model).__qualname__}".encode())
    add("config", json.dumps(model.config, sort_keys=True, default=str).encode())
    add("user key", b"" if key is None else key.encode())
    state = model.state_dict()
    for name, tensor in state.items():
        _add_tensor(add, f"state {name}", tensor)
    add("requires_grad", json.dumps([[name, p.requires_grad] for name, p in model.named_parameters()]).encode())
    for name, buffer in model.named_buffers():
        if name not in state:  # a non-persistent buffer: no checkpoint holds it, yet forward may read it
            _add_tensor(add, f"buffer {name}", buffer)
    _add_data(add, "train", train)
    arguments = {"epochs": epochs, **{k: v for k, v in {**_FIT_DEFAULTS, **fit_kwargs}.items() if k not in _NOT_KEYED}}
    for name in sorted(arguments):
        value = arguments[name]
        if name == "valid" or isinstance(value, (Tensor, Digits, tuple)):
            _add_data(add, f"argument {name}", value)
        else:
            add(f"argument {name}", repr(value).encode())
    if device.type == "cuda" and device.index is None:  # "cuda" is the current CUDA device, as model.to has it
        device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "cpu":
        device = torch.device("cpu")
    add("device", str(device).encode())
    numerics: dict[str, Any] = {"float32 matmul precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        numerics.update({
            "cuda matmul tf32": torch.backends.cuda.matmul.allow_tf32,
            "cuda matmul fp16 reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            "cuda matmul bf16 reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            "cudnn tf32": torch.backends.cudnn.allow_tf32,
            "cudnn deterministic": torch.backends.cudnn.deterministic,
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        })
    add("numerics", json.dumps(numerics, sort_keys=True, default=str).encode())
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


def _describe(model: VAE, epochs: int, key: str | None, digest: str) -> str:
    """The training an entry holds, in words (for the message of a call waiting for the lock)."""
    what = f"a {type(model).__name__} {json.dumps(model.config, default=str)}, {epochs} epochs"
    return f"{what}, key={key!r}; entry {digest}" if key is not None else f"{what}; entry {digest}"


# --- where the entries live ------------------------------------------------------------------------------

def _place(cache_dir: str | os.PathLike[str] | None) -> _Place:
    """The cache folder (``~`` expanded, made absolute), and how the caller named it. Creates nothing."""
    if cache_dir is not None:
        raw = check_path("cache_dir", cache_dir)
        if not raw:
            raise ValueError("cache_dir is an empty path: pass a folder, or leave it out (VAELIB_CACHE, else "
                             "~/.cache/vaelib)")
        named: str | None = f"the folder cache_dir={raw!r}"
    elif os.environ.get("VAELIB_CACHE"):
        raw, named = os.environ["VAELIB_CACHE"], f"the folder VAELIB_CACHE={os.environ['VAELIB_CACHE']!r}"
    else:
        raw, named = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "vaelib"), None
    expanded = os.path.expanduser(raw)
    folder = Path(expanded if expanded.startswith("~") else os.path.abspath(expanded))
    if named is None:
        named = f"the default cache folder {folder} (VAELIB_CACHE is not set)"
    elif str(folder) != raw:
        named += f" ({folder})"
    return _Place(folder, named)


def _usable(folder: Path) -> str | None:
    """``None`` if ``folder`` is a folder (created if needed: it may still be read-only), else why not."""
    if str(folder).startswith("~"):
        return "its leading ~ cannot be expanded: no home folder is known for it (is HOME set?)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return None
    except OSError as err:
        if os.path.isdir(folder):  # it exists (a read-only file system may still say so by an error)
            return None
        if os.path.islink(folder) and not os.path.exists(folder):
            return f"it is a dangling symbolic link (to {os.readlink(folder)}, which does not exist)"
        if os.path.lexists(folder):
            return "it is a file, not a folder"
        return f"it cannot be created ({_why(err)})"


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# --- reading and storing an entry ---------------------------------------------------------------------

def _read_entry(model: VAE, checkpoint: Path, record: Path, digest: str,
                device: torch.device | None) -> tuple[History | None, str | None]:
    """The stored History (the model filled and moved) or ``None`` for a miss, and a warning's text or ``None``.

    Raises ``ValueError`` for a damaged entry: a sound record beside a checkpoint that is not its own."""
    try:
        text = record.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None  # no record: no entry (a checkpoint alone is what an interrupted store leaves)
    except (OSError, UnicodeDecodeError) as err:
        return None, _miss(record, f"it cannot be read ({_why(err)})")
    try:
        stored = json.loads(text)
    except ValueError:
        return None, _miss(record, "it is not JSON")
    problem = _record_problem(stored, digest)
    if problem is not None:
        return None, _miss(record, problem)
    try:
        actual = _file_sha256(checkpoint)
    except FileNotFoundError:
        return None, _miss(record, f"its checkpoint {checkpoint.name} is missing")
    except OSError as err:
        return None, f"fit_cached cannot read the checkpoint {checkpoint} ({_why(err)}): it trains the model instead"
    if actual != stored["checkpoint_sha256"]:
        raise _damaged(checkpoint, record, "the checkpoint is not the file its record was written with (their "
                                           "SHA-256 digests differ): another training's checkpoint, or a damaged one")
    try:
        load(checkpoint, model=model)  # leaves the model untouched if it raises
    except ValueError as err:
        raise _damaged(checkpoint, record, f"vaelib.load rejects the checkpoint ({err})") from err
    except OSError as err:
        return None, f"fit_cached cannot read the checkpoint {checkpoint} ({_why(err)}): it trains the model instead"
    if device is not None:
        model.to(device)  # as fit moves it
    for p in model.parameters():  # as fit leaves them: no gradient outlives a training
        if p.requires_grad:
            p.grad = None
    fields_ = stored["history"]
    history = History(**{f.name: fields_[f.name] for f in fields(History) if f.name != "from_cache"})
    history.from_cache = True
    return history, None


def _miss(record: Path, why: str) -> str:
    return (f"fit_cached ignores the cache record {record}: {why}. The entry is treated as missing: the model is "
            "trained and the entry written anew")


def _damaged(checkpoint: Path, record: Path, why: str) -> ValueError:
    return ValueError(
        f"the fit_cached entry {checkpoint.stem} is damaged: {why}. It is not used: delete its two files, "
        f"{checkpoint} and {record}, and call again: the model is then trained and a sound entry stored"
    )


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # (JSON's true and false are bools, not numbers)


def _record_problem(stored: Any, digest: str) -> str | None:
    """Why ``stored`` is not a sound record of the entry ``digest`` (``None`` if it is)."""
    if not isinstance(stored, dict):
        return f"it holds a JSON {type(stored).__name__}, not an object"
    if stored.get("entry_version") != ENTRY_VERSION:
        return f"its entry_version is {stored.get('entry_version')!r}, not {ENTRY_VERSION}"
    if stored.get("key") != digest:
        return f"it is the record of another entry (its key is {stored.get('key')!r})"
    sha = stored.get("checkpoint_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return "its checkpoint_sha256 is not a SHA-256 digest (64 hexadecimal digits)"
    history = stored.get("history")
    if not isinstance(history, dict):
        return "its history is not a JSON object"
    expected = {f.name: f for f in fields(History) if f.name != "from_cache"}
    missing, unknown = sorted(set(expected) - set(history)), sorted(set(history) - set(expected) - {"from_cache"})
    if missing or unknown:
        return f"its history lacks the fields {missing} or has unknown ones {unknown}"
    lengths = set()
    for name, f in expected.items():
        value = history[name]
        if f.default_factory is list:  # type: ignore[comparison-overlap]  # the per-epoch lists
            if not (isinstance(value, list) and all(_is_number(v) for v in value)):
                return f"its history's {name} is not a list of numbers"
            if value or name != "valid_elbo":  # (valid_elbo is empty without validation data)
                lengths.add(len(value))
        elif isinstance(f.default, bool):
            if type(value) is not bool:
                return f"its history's {name} is not true or false"
        elif f.default is None:
            if not (value is None or _is_number(value)):
                return f"its history's {name} is neither null nor a number"
        elif _is_number(f.default):
            if not _is_number(value):
                return f"its history's {name} is not a number"
        else:  # a kind of field added to History that this check does not know: never trusted unchecked
            return f"its history's {name} is of a kind that fit_cached cannot check (vaelib.cache needs updating)"
    if len(lengths) != 1 or 0 in lengths:
        return "its history's per-epoch lists are empty or of different lengths"
    best = history.get("best_epoch")
    if best is not None and not (type(best) is int and 1 <= best <= lengths.pop()):
        return "its history's best_epoch is not one of its epochs"
    return None


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _store(model: VAE, history: History, checkpoint: Path, record: Path, digest: str, place: _Place) -> str | None:
    """Store the entry: the record removed, the checkpoint written, then the record. ``None``, or the text of a
    warning if it could not be stored (the entry is then missing: nothing half-written is ever trusted)."""
    try:
        with contextlib.suppress(FileNotFoundError):
            record.unlink()  # no record while the checkpoint changes: a failure below leaves a miss
        save(model, checkpoint)
        _write_json(record, {"entry_version": ENTRY_VERSION, "key": digest, "checkpoint": checkpoint.name,
                             "checkpoint_sha256": _file_sha256(checkpoint), "history": asdict(history)})
        return None
    except Exception as err:  # noqa: BLE001 - storing is an economy; its failure must not cost the training
        for leftover in (record, checkpoint):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return (f"fit_cached trained the model but cannot store it in {place}: {_why(err)}. The "
                "trained model and its History are returned as usual; a later call trains again")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` atomically, as :func:`vaelib.save` writes a checkpoint: a temporary file in
    the same folder named after this process (created with the mode the umask gives, an existing record's
    mode kept, locked while it is written), flushed and renamed; temporaries of killed writers are removed
    first, and this one on any error."""
    folder = str(path.parent)
    _remove_stale_temporaries(folder)
    tmp = os.path.join(folder, _temporary_name(".json"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        _lock(fd)
        with contextlib.suppress(OSError):
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)  # keep an existing record's mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the lock ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """Hold ``path``'s lock (``flock``) while the entry is read, trained and stored.

    Without a lock file that can be opened (a read-only folder that has none, where no process can write
    an entry either) or on a file system without locks, it goes on unlocked. A call that must wait says
    so on ``stderr`` at once."""
    if sys.platform == "win32":  # no fcntl: both processes train; the entry is written atomically
        yield
        return
    import fcntl

    cloexec = getattr(os, "O_CLOEXEC", 0)
    writable = True
    try:
        fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | cloexec, 0o666)
    except OSError:  # a read-only folder or lock file: a shared lock on a read-only descriptor still works
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY | cloexec)
        except OSError:
            fd = None
    if fd is None:
        yield
        return
    try:
        locked = _acquire(fd, path, what)
        if locked and writable:  # who holds it, for the message of a process that waits
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            note = f"pid {os.getpid()} on {platform.node() or 'this machine'}, since {since}"
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode(), 0)
        try:
            yield
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)  # (explicitly: a forked child may share the descriptor)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, what: str) -> bool:
    """Take the lock on ``fd``, waiting for it if another process holds it; whether it is held."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    except OSError:  # no locks on this file system (ENOLCK, ...): go on unlocked, as on Windows
        return False
    try:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        holder = ""
    _say(f"vaelib.fit_cached: waiting for the lock {path}, held by another process "
         f"({'it recorded: ' + holder if holder else 'which recorded nothing about itself'}) that is training or "
         f"reading the same entry ({what}). This call waits until that process is done, however long it takes. "
         "If that process is stopped (a paused kernel, a debugger), resume or end it; or interrupt this call. "
         "Do not delete the lock file: both processes would then write the entry.")
    start = time.monotonic()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    _say(f"vaelib.fit_cached: the lock {path} is free after {time.monotonic() - start:.0f} s; going on")
    return True


def _say(message: str) -> None:
    if sys.stderr is not None:
        print(message, file=sys.stderr, flush=True)
