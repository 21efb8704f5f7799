"""Saving and loading a trained VAE, safely.

A checkpoint is a ``torch.save`` file holding only plain data: a format tag, the ``vaelib`` version, what
the model is (its class name, ``x_dim``, ``z_dim``, likelihood, and for the built-in MLP its ``hidden``
widths), its tensors, and a SHA-256 digest of all of these. :func:`load` reads it with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler, so a file from the internet can never
run code; anything else (a truncated file, another program's pickle, another architecture) is rejected
with a clear error. :func:`save` writes to a temporary file and renames it, so an interrupted save never
destroys the previous checkpoint, and :func:`load` into a model fills it completely or leaves it as it
was; their docstrings say exactly what is guaranteed (file modes, symbolic links, temporary files, errors,
interrupts).

The built-in MLP (``VAE(x_dim, z_dim, hidden, likelihood)``) is rebuilt from its configuration:
``load(path)``. A model with your own modules, or a subclass, cannot be rebuilt from data without running
code, so you construct it and the checkpoint fills it: ``load(path, model=MyVAE())``, which checks that
the class, dimensions, likelihood and every tensor's name, shape and dtype match.

Integrity. PyTorch's loader does not check the CRC-32 that the zip container stores for each member, so a
flipped bit in a tensor loads silently as a different weight (-0.315 became -1.07e38). :func:`load`
therefore rejects a damaged file with a ``ValueError`` (it is "damaged (corrupt)", or "not a readable
vaelib checkpoint") by two independent checks, before and after unpickling:

1. every member's CRC-32 (the zip's own checksum, from its central directory) is recomputed over its bytes
   in place, before ``torch.load`` sees them. This catches any damage of up to 32 consecutive bits in any
   member (the pickled record as well as the tensors), misses random damage with probability 2^-32, and
   protects every checkpoint, including format-2 files written before the digest below existed. Members
   must not overlap, so the work is bounded by the file's size, nor be marked as directories (PyTorch's
   reader then extracts nothing and returns uninitialised memory as the tensor, with intact data).
2. the SHA-256 (field ``sha256``) that :func:`save` records is recomputed from what ``torch.load``
   returned: every other field, and each tensor's name, dtype, shape and bytes (little-endian). It is
   end to end: it verifies the very values the model receives, whichever bytes PyTorch's zip reader
   picked (it parses the container independently of the Python ``zipfile`` that check 1 relies on), and
   it catches damage that a rewrite recomputing the zip's CRCs would hide (a zip "repair" or repacking
   tool, an edit). It is a checksum, not a signature: whoever can write the file can recompute it.

Damage outside the members, in zip metadata that neither reader uses (timestamps, version and flag
fields, the local copies of the CRCs and sizes, the data descriptors, the alignment padding, the classic
end record that the zip64 one supersedes), is harmless: such a file fails to parse or loads the identical
model, which check 2 proves. Costs on the book's model (784-400-20, a 2.6 MB file, one thread): check 1
0.45 ms, check 2 1.5 ms (SHA-256 at ~1.8 GB/s, the fastest hash in the standard library here), on a load
that took 3.5 ms without them (of which 1.6 ms was a random initialisation that the loaded values then
overwrote, which :func:`load` no longer does). Both are kept: 2 ms is imperceptible for a file loaded once
per session, and only check 2 covers rewrites and makes "harmless" provable rather than an argument about
two zip parsers.

A format-2 file without a digest (written by vaelib before it recorded one) still loads, protected by
check 1 alone; a file with one loads in those older versions too, which ignore the extra field.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import socket
import stat
import struct
import sys
import zipfile
import zlib
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._validate import check_path
from ._version import __version__
from .model import VAE, _check_device, has_builtin_architecture

FORMAT = "vaelib-checkpoint"
FORMAT_VERSION = 3
#: Formats :func:`load` reads: 3 adds the training run (:class:`vaelib.train.FitState`) to 2.
READABLE_VERSIONS = (2, 3)
#: What a checkpoint records about the model: the constructor arguments of the built-in MLP
#: (:attr:`vaelib.VAE.config`), or, for any other model, all of those but ``hidden``.
CONFIG_KEYS = ("x_dim", "z_dim", "hidden", "likelihood")
CUSTOM_CONFIG_KEYS = ("x_dim", "z_dim", "likelihood")
#: The payload field holding the SHA-256 digest (hex) of all the others (see ``_digest``).
DIGEST_KEY = "sha256"


def _class_name(model: VAE) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save(model: VAE, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (what it is, and its parameters and buffers) to ``path`` atomically.

    What is guaranteed:

    - **Atomic.** The checkpoint is written to a temporary file in the same folder, flushed to disk and
      renamed over ``path``: every reader, at every moment, sees either the previous file whole or the new
      one whole, even if the save fails, is interrupted or its process is killed.
    - **Permissions.** A new file gets the mode that your umask gives any new file (``0o666 & ~umask``:
      0644 under the usual umask 022, so that other users can load a shared checkpoint); saving over an
      existing file keeps that file's mode. (Its owner and group are those of whoever saves.)
    - **Symbolic links.** If ``path`` is a symbolic link, the file it points to (through any chain of links)
      is replaced, atomically, and the link stays a link. A hard link elsewhere keeps the previous contents.
    - **No temporary file outlives a failure.** A save that fails or is interrupted removes its temporary
      file. One that cannot (its process killed) leaves a file ``.vaelib-tmp-<pid>-...`` in the folder,
      which the next save to that folder from this machine removes once it has made sure that the process
      which wrote it is gone (a save in progress, in this or another process, is never disturbed).
      Temporary files written from another machine on a shared network folder are left to the saves made
      there.
    - **Errors** of the file system (a full disk, a quota, a missing or read-only folder) raise an
      ``OSError`` of the usual kind (``errno`` kept, e.g. ``ENOSPC``) whose message names ``path`` and the
      cause, and leave the previous file as it was.

    Args:
        model: a :class:`vaelib.VAE`: the built-in MLP, a subclass, or one built from your own modules.
        path: the checkpoint file (or a symbolic link to it); its folder must exist.

    Raises:
        ValueError: the model's ``state_dict`` holds something other than tensors (extra state), which a
            safe checkpoint cannot carry, or tensors without plain bytes to checksum (sparse CSR, ...).
        FileNotFoundError: the folder of ``path`` does not exist (this error is also a ``ValueError``, as
            it was in earlier versions).
        OSError: the file cannot be written (``errno`` and the cause kept, ``path`` named).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    path = check_path("path", path)
    target = _save_target(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise _folder_missing(path, target)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, f"cannot save to path {_where(path, target)}: it is a folder")
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
        **_training_fields(model),
    }
    try:
        payload[DIGEST_KEY] = _digest(payload)
    except (TypeError, RuntimeError) as err:  # e.g. a sparse CSR or a quantized tensor: no plain bytes
        raise ValueError(
            f"cannot save the model: a checkpoint holds plain data and dense or sparse COO tensors only ({err})"
        ) from err
    _remove_stale_temporaries(folder)  # before writing: a killed save's file may be what fills the disk
    _write_atomically(path, target, payload)


# --- Writing ------------------------------------------------------------------------------------------------
#
# A temporary file is named ``.vaelib-tmp-<pid>-<start>-<host>-<random>.pt``: the process that writes it (its
# id, and its start time where the system tells it, so that a reused process id is not mistaken for the
# writer), and a tag of the machine's name (process ids mean nothing on another machine sharing the folder).
# While it writes, the process also holds an exclusive ``flock`` on the file (released by the system when
# the process dies, however it dies). A save removes another save's temporary file only if it was written
# on this machine, its process is gone (no such process, a zombie, or another process with the same id),
# and nobody holds its lock.

_TEMP_PREFIX = ".vaelib-tmp-"
_TEMP_NAME = re.compile(r"\.vaelib-tmp-(\d+)-(\d+)-([0-9a-f]{8})-[0-9a-f]+\.(?:pt|json)\Z")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _process_start(pid: int) -> tuple[bool, int]:
    """Whether process ``pid`` is alive (a zombie is not), and its start time (0 where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # fields[0] is the state (field 3 of proc(5)), fields[19] the start time (field 22), in clock ticks.
        return fields[0] not in (b"Z", b"X"), int(fields[19])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):  # a Linux /proc: no entry, no process
            return False, 0
    except (OSError, IndexError, ValueError):  # an unusual /proc: ask the kernel below
        pass
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False, 0
    except OSError:  # PermissionError: it exists, and belongs to another user
        pass
    return True, 0


def _temporary_name(suffix: str = ".pt") -> str:
    """A temporary file's name that says which process on which machine writes it (``suffix``: ``.pt`` for a
    checkpoint, ``.json`` for :mod:`vaelib.cache`'s records)."""
    pid = os.getpid()
    return f"{_TEMP_PREFIX}{pid}-{_process_start(pid)[1]}-{_host_tag()}-{secrets.token_hex(6)}{suffix}"


def _is_stale(name: str) -> bool:
    """Whether ``name`` is the temporary file of a save whose process is gone (by its name alone)."""
    match = _TEMP_NAME.match(name)
    if match is None or match.group(3) != _host_tag():
        return False
    pid, start = int(match.group(1)), int(match.group(2))
    if pid <= 0:  # no process writes such a name (and os.kill would read 0 as "my process group")
        return False
    alive, now = _process_start(pid)
    return not alive or (start != 0 and now != 0 and now != start)


def _remove_stale_temporaries(folder: str) -> None:
    """Remove the temporary files of killed saves in ``folder`` (best effort: never fails a save)."""
    try:
        names = [entry.name for entry in os.scandir(folder)
                 if entry.name.startswith(_TEMP_PREFIX) and entry.is_file(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        if not _is_stale(name):
            continue
        temp = os.path.join(folder, name)
        try:
            fd = os.open(temp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except PermissionError:  # another user's file that we cannot read: the process check decides
            fd = -1
        except OSError:
            continue  # gone already (another save removed it)
        try:
            if fd < 0 or _lock(fd):  # nobody writes it: remove it (while holding its lock)
                os.unlink(temp)
        except OSError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)


def _lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting: ``False`` if another process holds one, ``True``
    if taken (or if this system or file system has no such locks)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no locks here (ENOLCK, EINVAL...): rely on the process check alone
        pass
    return True


class _Sink:
    """The file ``torch.save`` writes to, remembering the ``OSError`` it met (``torch.save`` replaces it by a
    ``RuntimeError`` such as "[enforce fail at inline_container.cc] unexpected pos", losing the cause)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:  # anything else (tell, seek...) is the file's
        return getattr(self.file, name)


def _write_atomically(path: str, target: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to a temporary file next to ``target``, then rename it over ``target``."""
    folder = os.path.dirname(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0)
    doing = "creating a temporary file in its folder"
    tmp, fd, file, replaced = None, -1, None, False
    try:
        while tmp is None:
            name = os.path.join(folder, _temporary_name())
            try:
                fd = os.open(name, flags, 0o666)  # the kernel applies the umask (and a default ACL)
                tmp = name
            except FileExistsError:  # pragma: no cover - 48 random bits collided
                continue
        _lock(fd)
        try:
            previous = os.stat(target)
        except FileNotFoundError:
            previous = None
        if previous is not None and stat.S_ISREG(previous.st_mode) and os.name != "nt":
            doing = "giving the temporary file the mode of the file it replaces"
            os.fchmod(fd, stat.S_IMODE(previous.st_mode))
        doing = f"writing the temporary file {tmp}"
        file = os.fdopen(fd, "wb")
        sink = _Sink(file)
        try:
            torch.save(payload, sink)
        except RuntimeError as err:
            if sink.error is not None:  # torch.save's report of a failed write: raise the write's own error
                raise sink.error from err
            raise
        file.flush()
        doing = "flushing the temporary file to disk"
        os.fsync(fd)
        if os.name == "nt":  # pragma: no cover - Windows cannot rename an open file
            file.close()
        doing = "renaming the temporary file over it"
        os.replace(tmp, target)
        replaced = True
        doing = "closing the file"
        file.close()  # (after the rename: the lock is held until the file is in place)
    except BaseException as err:
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        elif fd >= 0:
            os.close(fd)
        if tmp is not None and not replaced:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(err, OSError):
            raise _save_error(path, target, err, doing) from err
        raise


def _save_target(path: str) -> str:
    """The absolute path of the file that saving to ``path`` replaces: ``path``, or the file that it links
    to, through any chain of symbolic links (which need not exist yet)."""
    target = os.path.realpath(os.path.abspath(path))
    if os.path.islink(target):  # realpath stops at a loop of links
        raise _save_error(path, target, OSError(errno.ELOOP, os.strerror(errno.ELOOP)),
                          "following its symbolic links")
    return target


def _where(path: str, target: str) -> str:
    here = os.path.abspath(path)
    return f"{path}" if target == here else f"{path} (a link to {target})"


class _FolderMissingError(FileNotFoundError, ValueError):
    """The folder to save into does not exist: an ``OSError`` (``ENOENT``), and a ``ValueError`` as before."""


def _folder_missing(path: str, target: str) -> _FolderMissingError:
    folder = os.path.dirname(target)
    return _FolderMissingError(
        errno.ENOENT,
        f"cannot save to path {_where(path, target)}: its folder does not exist ({folder}: "
        f"{os.strerror(errno.ENOENT)})",
    )


def _save_error(path: str, target: str, err: OSError, doing: str) -> OSError:
    """An ``OSError`` like ``err`` (same class, same ``errno``) that names ``path`` and the cause."""
    if err.errno == errno.ENOENT and not os.path.isdir(os.path.dirname(target)):
        return _folder_missing(path, target)  # the folder went away during the save
    cause = err.strerror or str(err) or type(err).__name__
    message = f"cannot save to path {_where(path, target)}: {cause} (while {doing})"
    if err.errno is None:
        return type(err)(message)
    return OSError(err.errno, message)  # OSError(errno, ...) is the matching subclass (FileNotFoundError...)


# --- Loading ------------------------------------------------------------------------------------------------


def load(
    path: str | os.PathLike[str], model: VAE | None = None, device: torch.device | str | None = None
) -> VAE:
    """The :class:`vaelib.VAE` saved by :func:`save`, without executing anything from the file.

    Loading leaves PyTorch's random generators alone (a rebuilt model is not randomly initialised: it is
    allocated, then filled with the saved values).

    Args:
        path: a file written by :func:`save`.
        model: the model to fill, constructed by you (needed for a subclass or your own modules; for the
            built-in MLP it may be left out, and the model is rebuilt from the recorded configuration).
            Filled in place and returned. The file is read and checked completely before ``model`` is
            touched. If ``load`` raises, for any reason (a damaged file, an interrupt such as Ctrl-C or
            ``KeyboardInterrupt``, any exception at any moment), ``model`` is as it was: the same parameter
            and buffer objects holding the same values, bit for bit, on the same devices, the same
            gradients, training flags and ``fit_state``. For that, filling the model keeps a copy of its
            tensors (memory for one more copy of the model, where it is) and, if filling fails, puts them
            back; an interrupt arriving while they are put back does not stop that (it goes on from where
            it was, then the first exception propagates). The one case that Python cannot rule out: a third
            interrupt arriving within the same few bytecodes as the second; and if putting back itself
            fails (an exception other than an interrupt, three times), a ``RuntimeError`` says that the
            model's state is unknown.
        device: where to put the parameters (default: the CPU for a rebuilt model, where ``model`` is
            otherwise).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a vaelib checkpoint (truncated, foreign, or an unsafe pickle), damaged (a member's
            bytes do not match their CRC-32, or the contents the SHA-256 recorded at saving), its tensors do
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
        built = _rebuild(path, config, state, device)  # nobody else sees it: on an error it is dropped
        _fill(built, state, _fit_state(path, payload), None)
        return built
    _check_fits(path, payload, model)
    fit_state = _fit_state(path, payload)
    backup = _Backup(model)  # an interrupt until here: the model has not been touched
    try:
        _fill(model, state, fit_state, device)
        return model
    except BaseException as err:
        # Put the model back. This loop is written here, not in a function called from here: an interrupt
        # checked on entering that function would escape before its own ``try``.
        failures = 0
        while True:
            try:
                backup.restore()  # resumes where an interrupted attempt stopped
                break
            except KeyboardInterrupt:
                continue  # Ctrl-C again while the model is put back: finish putting it back first
            except BaseException as again:
                failures += 1
                if failures == 3:
                    raise RuntimeError(
                        f"loading {path} into the model failed ({type(err).__name__}: {err}), and its previous "
                        f"parameters could not be put back ({type(again).__name__}: {again}): the model's "
                        "state is unknown, load it again"
                    ) from again
        raise


def _fill(model: VAE, state: dict[str, Tensor], fit_state: Any, device: torch.device | None) -> None:
    """Fill ``model`` with the checkpoint's tensors and training run, move it to ``device``, set it to
    evaluation mode. Not atomic by itself: :func:`load` backs the model up first."""
    with torch.no_grad():
        model.load_state_dict(state)
    model.fit_state = fit_state
    if device is not None:
        model.to(device)
    model.eval()


_MISSING = object()


class _Backup:
    """What :func:`_fill` may change in a model, kept to put it back: every parameter and buffer (the object,
    its storage, a copy of its values, its gradient), each module's training flag, and ``fit_state``.

    :meth:`restore` is a list of steps, each of which may be repeated without harm and records that it is
    done, so that an attempt interrupted part-way is taken up again where it stopped.
    """

    def __init__(self, model: VAE) -> None:
        steps: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        seen: set[int] = set()
        modules = list(model.modules())
        for module in modules:
            members = [*module.named_parameters(recurse=False, remove_duplicate=False),
                       *module.named_buffers(recurse=False, remove_duplicate=False)]
            for name, tensor in members:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
                    steps.append((_put_back_tensor, (tensor, tensor.detach(), tensor.detach().clone(), grad,
                                                     None if grad is None else grad.detach())))
                steps.append((_put_back_member, (module, name, tensor)))
        steps.append((_put_back_modes, (tuple((module, module.training) for module in modules),)))
        steps.append((_put_back_fit_state, (model, model.__dict__.get("fit_state", _MISSING))))
        self.steps = steps
        self.done = 0

    def restore(self) -> None:
        while self.done < len(self.steps):
            step, args = self.steps[self.done]
            step(*args)
            self.done += 1


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same view of the same memory."""
    return (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.data_ptr() == b.data_ptr())


def _put_back_tensor(tensor: Tensor, storage: Tensor, values: Tensor, grad: Tensor | None,
                     grad_storage: Tensor | None) -> None:
    storage.copy_(values)  # (``storage`` is detached: no autograd record, whatever the grad mode)
    if not _same(tensor, storage):  # moved by ``model.to(device)``
        tensor.data = storage
    if grad is not None and grad_storage is not None:
        if not _same(grad, grad_storage):
            grad.data = grad_storage
    if isinstance(tensor, nn.Parameter) and tensor.grad is not grad:
        tensor.grad = grad


def _put_back_member(module: nn.Module, name: str, tensor: Tensor) -> None:
    if getattr(module, name) is not tensor:  # replaced (``.to`` replaces buffers)
        setattr(module, name, tensor)


def _put_back_modes(modes: tuple[tuple[nn.Module, bool], ...]) -> None:
    for module, training in modes:
        module.training = training


def _put_back_fit_state(model: VAE, fit_state: Any) -> None:
    if fit_state is _MISSING:
        model.__dict__.pop("fit_state", None)
    else:
        model.fit_state = fit_state


def _training_fields(model: VAE) -> dict[str, Any]:
    """The model's training run (``model.fit_state``) as plain data: ``training`` (numbers, strings, lists)
    and ``training_tensors`` (name -> tensor), or nothing if it has none."""
    state = getattr(model, "fit_state", None)
    if state is None:
        return {}
    tensors = {"generator": state.generator.detach().cpu().clone()}
    for index, slots in state.optimizer["state"].items():
        for slot, value in slots.items():
            tensors[f"optimizer.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in state.optimizer["param_groups"]]
    training = {"epoch": state.epoch, "step": state.step, "settings": state.settings, "param_groups": groups}
    return {"training": training, "training_tensors": tensors}


def _fit_state(path: str, payload: dict[str, Any]) -> Any:
    """The :class:`vaelib.train.FitState` recorded in ``payload`` (``None`` if none), its structure checked."""
    from .train import FitState

    training, tensors = payload.get("training"), payload.get("training_tensors")
    if training is None and tensors is None:
        return None
    try:
        state: dict[int, dict[str, Tensor]] = {}
        for name, value in tensors.items():
            if name == "generator":
                continue
            _, index, slot = name.split(".")
            state.setdefault(int(index), {})[slot] = value
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in group.items()} for group in training["param_groups"]]
        return FitState(epoch=int(training["epoch"]), step=int(training["step"]),
                        optimizer={"state": state, "param_groups": groups},
                        generator=tensors["generator"], settings=dict(training["settings"]))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} holds a training run it cannot describe ({err})") from err


def _read(path: str) -> dict[str, Any]:
    """The checkpoint's payload, its structure checked."""
    with open(path, "rb") as f:  # errors of the file system itself (permissions) surface here
        raw = f.read()
    _check_members(path, raw)
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
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has checkpoint format {payload.get('format_version')}, this vaelib reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} lacks a model configuration or parameters")
    if not isinstance(payload.get("builtin"), bool) or not isinstance(payload.get("class"), str):
        raise ValueError(f"{path} does not say what model it holds (its class and whether it is built in)")
    keys = CONFIG_KEYS if payload["builtin"] else CUSTOM_CONFIG_KEYS
    if set(config) != set(keys):
        raise ValueError(f"{path} holds an invalid model configuration {config}: its keys must be {keys}")
    training_tensors = payload.get("training_tensors", {})
    if not isinstance(training_tensors, dict):
        raise ValueError(f"{path}: its training run's tensors are not a table of names and tensors")
    bad = [k for k, v in (*state.items(), *training_tensors.items()) if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: unexpected entries {bad} among the parameters (names and tensors only)")
    if DIGEST_KEY in payload:  # absent only in format-2 files written before vaelib recorded it
        _check_digest(path, payload)
    return payload


def _unreadable(path: str, why: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable vaelib checkpoint (truncated, corrupt, or not written by vaelib.save): {why}"
    )


def _damaged(path: str, what: str) -> ValueError:
    return ValueError(
        f"{path} is damaged (corrupt): {what}, so it changed after vaelib.save wrote it (a disk or transfer "
        "error, or an edit); it is not a readable vaelib checkpoint"
    )


def _check_members(path: str, raw: bytes) -> None:
    """Raise ``ValueError`` unless ``raw`` is a zip whose every member matches its CRC-32 (check 1).

    The CRCs are computed over views of ``raw``, copying nothing (~0.15 ms per MB). Members must not
    overlap (``torch.save`` never writes such a zip), so the work is bounded by the file's size even for
    a forged directory listing one large member many times.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = archive.infolist()
    except Exception as err:  # the bytes are in memory: whatever fails is the file's content
        raise _unreadable(path, f"not a sound zip archive ({err})") from err
    if not members:
        raise _unreadable(path, "an empty zip archive")
    view = memoryview(raw)
    end = 0  # where the previous member's data end
    for info in sorted(members, key=lambda i: i.header_offset):
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _unreadable(path, f"its member {name!r} is compressed, which vaelib.save never does")
        if info.external_attr & 0x10 or name.endswith("/"):
            # PyTorch's reader extracts nothing for a directory and hands back uninitialised memory as the
            # tensor: one flipped bit in these attributes would load garbage, its data intact.
            raise _damaged(path, f"its member {name!r} is marked as a directory, which vaelib.save never writes")
        start = info.header_offset
        local = raw[start : start + 30]
        if start < end:
            raise _unreadable(path, f"its member {name!r} overlaps another one or starts before the file")
        if len(local) < 30 or local[:4] != zipfile.stringFileHeader:
            raise _unreadable(path, f"no local header where the zip's directory puts member {name!r}")
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"  # as zipfile decoded the name
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        if raw[start + 30 : start + 30 + name_len] != info.orig_filename.encode(encoding):
            raise _damaged(path, f"the local header of member {name!r} names another member")
        begin = start + 30 + name_len + extra_len
        end = begin + info.compress_size
        if end > len(raw):
            raise _unreadable(path, f"member {name!r} runs past the end of the file")
        if zlib.crc32(view[begin:end]) != info.CRC:
            raise _damaged(path, f"the bytes of its member {name!r} do not match their CRC-32 checksum")


def _tensor_bytes(tensor: Tensor) -> Tensor:
    """The tensor's values as little-endian bytes, in row-major order (a view where possible)."""
    flat = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    unit = tensor.element_size() // (2 if tensor.is_complex() else 1)
    if sys.byteorder == "big" and unit > 1:  # pragma: no cover - no big-endian machine runs the tests
        flat = flat.reshape(-1, unit).flip(1).reshape(-1)
    return flat


def _parts(tensor: Tensor) -> tuple[Tensor, ...]:
    """The dense tensors that hold ``tensor``'s values: itself, or a sparse tensor's indices and values."""
    if tensor.layout == torch.strided:
        return (tensor,)
    if tensor.layout == torch.sparse_coo:
        return (tensor._indices(), tensor._values())
    raise TypeError(f"a tensor of layout {tensor.layout}")


def _digest(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) of every field of ``payload`` but the digest: the others as canonical JSON, then for
    each tensor, in the ``state_dict``'s order, its name, dtype, shape and layout (JSON), then the shape
    (JSON) and bytes of each dense part. The encoding is unambiguous: each shape fixes how many bytes
    follow it."""
    state = payload["state_dict"]
    fields = {k: v for k, v in payload.items() if k not in ("state_dict", "training_tensors", DIGEST_KEY)}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    h.update(json.dumps(len(state)).encode())
    tensors = list(state.items())
    if "training_tensors" in payload:  # format 3 with a training run: its tensors follow the model's
        h.update(b"\ntraining " + json.dumps(len(payload["training_tensors"])).encode())
        tensors += list(payload["training_tensors"].items())
    for name, tensor in tensors:
        h.update(b"\n" + json.dumps([name, str(tensor.dtype), list(tensor.shape), str(tensor.layout)]).encode())
        for part in _parts(tensor):
            h.update(b"\n" + json.dumps(list(part.shape)).encode() + b"\n")
            h.update(_tensor_bytes(part).numpy())
    return h.hexdigest()


def _check_digest(path: str, payload: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless the recorded SHA-256 matches what was unpickled (check 2)."""
    recorded = payload[DIGEST_KEY]
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise _damaged(path, "its recorded SHA-256 digest is not 64 hexadecimal digits")
    try:
        actual = _digest(payload)
    except (TypeError, ValueError, RuntimeError) as err:  # fields JSON cannot encode, tensors without bytes
        raise _damaged(path, f"its contents cannot be checked against their SHA-256 digest ({err})") from err
    if recorded != actual:  # a checksum, not a secret: no need for a constant-time comparison
        raise _damaged(path, "its contents do not match the SHA-256 digest recorded when it was saved")


def _rebuild(path: str, config: dict[str, Any], state: dict[str, Tensor], device: torch.device | None) -> VAE:
    """A built-in VAE of the recorded configuration, in the recorded dtype, on ``device`` (default: the CPU),
    after checking its shapes. Its memory is allocated but not initialised (no random draw, so PyTorch's
    generators are left alone, and no time spent on values that are overwritten): :func:`load` fills every
    tensor, which this checks that the checkpoint holds."""
    try:
        with torch.device("meta"):  # shapes only: a forged config must not allocate (or move) anything
            model = VAE(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model configuration {config}: {err}") from err
    _check_tensors(path, model.state_dict(), state, f"the architecture {config}", dtypes=False)
    names = [name for name, _ in (*model.named_parameters(remove_duplicate=False),
                                  *model.named_buffers(remove_duplicate=False))]
    unfilled = sorted(set(names) - set(state))
    if unfilled:  # pragma: no cover - the built-in MLP has no tensor outside its state_dict
        raise RuntimeError(f"cannot rebuild {config}: {unfilled} would not be filled from the checkpoint")
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point:
        model.to(next(iter(dtypes)))  # a float64 model comes back as float64, not rounded to float32
    return model.to_empty(device=torch.device("cpu") if device is None else device)


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
