"""Saving and loading a trained VAE, safely.

A checkpoint is a ``torch.save`` file holding only plain data: a format tag, the ``vaelib`` version, what
the model is (its class name, ``x_dim``, ``z_dim``, likelihood, and for the built-in MLP its ``hidden``
widths), its tensors, and a SHA-256 digest of all of these. :func:`load` reads it with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler, so a file from the internet can never
run code; anything else (a truncated file, another program's pickle, another architecture) is rejected
with a clear error. :func:`save` writes to a temporary file and renames it, so an interrupted save never
destroys the previous checkpoint.

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
that took 3.5 ms without them (of which 1.6 ms is the random initialisation that the loaded values then
overwrite). Both are kept: 2 ms is imperceptible for a file loaded once per session, and only check 2
covers rewrites and makes "harmless" provable rather than an argument about two zip parsers.

A format-2 file without a digest (written by vaelib before it recorded one) still loads, protected by
check 1 alone; a file with one loads in those older versions too, which ignore the extra field.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import tempfile
import zipfile
import zlib
from typing import Any

import torch
from torch import Tensor

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

    Args:
        model: a :class:`vaelib.VAE`: the built-in MLP, a subclass, or one built from your own modules.
        path: the checkpoint file; its folder must exist.

    Raises:
        ValueError: the model's ``state_dict`` holds something other than tensors (extra state), which a
            safe checkpoint cannot carry, or tensors without plain bytes to checksum (sparse CSR, ...).
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
        **_training_fields(model),
    }
    try:
        payload[DIGEST_KEY] = _digest(payload)
    except (TypeError, RuntimeError) as err:  # e.g. a sparse CSR or a quantized tensor: no plain bytes
        raise ValueError(
            f"cannot save the model: a checkpoint holds plain data and dense or sparse COO tensors only ({err})"
        ) from err
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
        model = _rebuild(path, config, state)
    else:
        _check_fits(path, payload, model)
    fit_state = _fit_state(path, payload)
    with torch.no_grad():
        model.load_state_dict(state)
    model.fit_state = fit_state
    if device is not None:
        model.to(device)
    model.eval()
    return model


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


def _rebuild(path: str, config: dict[str, Any], state: dict[str, Tensor]) -> VAE:
    """A built-in VAE of the recorded configuration, in the recorded dtype, after checking its shapes."""
    try:
        with torch.device("meta"):  # shapes only: a forged config must not allocate (or move) anything
            skeleton = VAE(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model configuration {config}: {err}") from err
    _check_tensors(path, skeleton.state_dict(), state, f"the architecture {config}", dtypes=False)
    model = VAE(**config, seed=0)  # seeded in a forked generator: loading leaves PyTorch's global one alone
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
