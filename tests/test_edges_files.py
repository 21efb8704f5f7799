"""Damaged and hostile files: checkpoints with flipped bits, gzip bombs, truncated and endless IDX files.

Checkpoints. A ``vaelib.save`` file is a ``torch.save`` zip. PyTorch's reader does not check the zip's
CRC-32s, so on its own it loads a flipped bit in a weight as a different weight (the control below).
:func:`vaelib.load` must reject every damaged file with a ``ValueError`` or, only where the damage lies
in zip metadata that no reader uses, load the very model that was saved. :func:`_regions` labels every
byte of a checkpoint (the labels cover the file exactly) as one of

* bytes that hold or locate the content: each member's data (the pickled record, every tensor, the small
  records), the signatures, name lengths and names of the local headers, and the central directory's
  signatures, compression methods, CRCs, sizes, name lengths, offsets and names, the zip64 end record's
  counts, size and offset: damage there must be rejected;
* inert metadata: the local headers' version, flags, method, time and date, and their CRC and sizes
  (zeros: ``torch.save`` writes those after the data, in a data descriptor), the extra fields that pad
  each member to a 64-byte boundary ("FB" then "Z"s), the data descriptors, the central directory's
  versions, flags, time, date, disk number and attributes, the zip64 end record's own size and versions,
  the zip64 locator's fields and the classic end record's fields (the zip64 record supersedes them):
  damage there may load, and then it must load the identical model (class, configuration, and every
  tensor's name, dtype, shape and bytes), which the recorded SHA-256 proves. One bit there is not inert:
  the "directory" bit of the external attributes, which makes PyTorch's reader return uninitialised
  memory as the tensor; it is rejected (:func:`test_a_member_marked_as_a_directory_is_rejected`).

The same holds for a "legacy" file without the SHA-256, which only the CRC-32s protect. Every bit of
every byte of the three files below was flipped once (about two minutes each); the tests here flip a
strided subset and hypothesis-drawn positions.

IDX files. :func:`vaelib.data.read_idx` reads no more than one byte past the data its header announces:
a 300 KiB gzip that inflates to 300 MiB is rejected after a few bytes, in well under a second and with
a small peak of traced memory (``tracemalloc`` sees Python's and numpy's allocations).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import threading
import time
import tempfile
import tracemalloc
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HYPOTHESIS_EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

import vaelib
import vaelib.checkpoint
from vaelib import VAE, load, save
from vaelib.data import read_idx

SETTINGS = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)


# --- checkpoints: the files and what they hold --------------------------------------------------------


class SubVAE(VAE):
    """A subclass: saved as a custom model (class name, no ``hidden``), filled by ``load(path, model=)``."""


def _builtin() -> VAE:
    model = VAE(6, 2, hidden=(5,), likelihood="gaussian", seed=0)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.1 * (i + 1))  # not the seeded initialisation: the file must carry the values
    return model


def _custom() -> SubVAE:
    return SubVAE(4, 3, hidden=(3,), seed=1).double()


#: The checkpoints damaged: a built-in MLP, a subclass (float64), and a "legacy" file, a format-2 file
#: without the SHA-256 (as vaelib wrote them before it recorded one), where the CRC-32s must suffice.
MODELS = {"builtin": _builtin, "custom": _custom, "legacy": _builtin}


@lru_cache(maxsize=None)
def _saved(kind: str) -> tuple[VAE, bytes]:
    """The model and the bytes of its checkpoint (saved once, in a folder of its own)."""
    model = MODELS[kind]()
    with tempfile.TemporaryDirectory() as folder:
        save(model, os.path.join(folder, "m.pt"))
        raw = Path(folder, "m.pt").read_bytes()
    if kind == "legacy":
        payload = torch.load(io.BytesIO(raw), weights_only=True)
        del payload["sha256"]
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # to a file object, as vaelib.save does: the same member names
        raw = buffer.getvalue()
    return model, raw


def _load(path: Path, kind: str) -> VAE:
    return load(path, model=_custom()) if kind == "custom" else load(path)


def _assert_identical(loaded: VAE, model: VAE) -> None:
    """The same class, configuration and tensors: names, order, dtypes, shapes, and bytes."""
    assert type(loaded) is type(model) and loaded.config == model.config
    got, want = loaded.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)), name


def _regions(raw: bytes) -> list[tuple[int, int, str, bool]]:
    """``(start, end, label, must_reject)`` for every byte of a checkpoint, parsed independently of vaelib
    (signatures checked, no zipfile): the ranges tile the file exactly."""
    out: list[tuple[int, int, str, bool]] = []

    def add(start: int, end: int, label: str, must_reject: bool) -> None:
        if end > start:
            out.append((start, end, label, must_reject))

    e = len(raw) - 22  # the classic end record, no comment
    assert raw[e : e + 4] == b"PK\x05\x06"
    y = e - 20  # the zip64 locator and, before it, the zip64 end record
    assert raw[y : y + 4] == b"PK\x06\x07"
    z = y - 56
    assert raw[z : z + 4] == b"PK\x06\x06"
    count, cd_size, cd_offset = struct.unpack("<QQQ", raw[z + 32 : z + 56])
    entries = []
    c = cd_offset
    for _ in range(count):
        assert raw[c : c + 4] == b"PK\x01\x02"
        crc, size, usize, n, x, k = struct.unpack("<IIIHHH", raw[c + 16 : c + 34])
        (offset,) = struct.unpack("<I", raw[c + 42 : c + 46])
        name = raw[c + 46 : c + 46 + n].decode()
        entries.append((offset, size, name))
        add(c, c + 4, "central directory: signature", True)
        add(c + 4, c + 10, "central directory: versions and flags", False)
        add(c + 10, c + 12, "central directory: compression method", True)
        add(c + 12, c + 16, "central directory: time and date", False)
        add(c + 16, c + 34, "central directory: CRC, sizes, and name/extra/comment lengths", True)
        add(c + 34, c + 42, "central directory: disk number and attributes", False)
        add(c + 42, c + 46, "central directory: offset of the local header", True)
        add(c + 46, c + 46 + n + x, f"central directory: name (and extra field) of {name}", True)
        add(c + 46 + n + x, c + 46 + n + x + k, "central directory: comment", False)
        c += 46 + n + x + k
    assert c == cd_offset + cd_size == z
    entries.sort()
    for i, (offset, size, name) in enumerate(entries):
        assert raw[offset : offset + 4] == b"PK\x03\x04"
        n, x = struct.unpack("<HH", raw[offset + 26 : offset + 30])
        data = offset + 30 + n + x
        following = entries[i + 1][0] if i + 1 < len(entries) else cd_offset
        add(offset, offset + 4, "local header: signature", True)
        add(offset + 4, offset + 26, "local header: versions, flags, method, time, date, (zero) CRC and sizes", False)
        add(offset + 26, offset + 30, "local header: name and extra-field lengths", True)
        add(offset + 30, offset + 30 + n, f"local header: name of {name}", True)
        add(offset + 30 + n, data, "local header: alignment padding (extra field)", False)
        add(data, data + size, f"data of {name}", True)
        assert raw[data + size : data + size + 4] == b"PK\x07\x08" and following - data - size in (16, 24)
        add(data + size, following, "data descriptor (the CRC and sizes again)", False)
    add(z, z + 4, "zip64 end record: signature", True)
    add(z + 4, z + 16, "zip64 end record: its size and versions", False)
    add(z + 16, z + 56, "zip64 end record: disk numbers, entry counts, directory size and offset", True)
    add(y, y + 4, "zip64 locator: signature", True)
    add(y + 4, y + 20, "zip64 locator: disk numbers and offset", False)
    add(e, e + 4, "end record: signature", True)
    add(e + 4, e + 22, "end record: fields the zip64 record supersedes", False)
    out.sort()
    assert out[0][0] == 0 and out[-1][1] == len(raw)
    assert all(a[1] == b[0] for a, b in zip(out, out[1:])), "the labels must tile the file"
    return out


def _region(raw: bytes, pos: int) -> tuple[str, bool]:
    for start, end, label, must_reject in _regions_of(raw):
        if start <= pos < end:
            return label, must_reject
    raise AssertionError(pos)


@lru_cache(maxsize=4)
def _regions_of(raw: bytes) -> tuple[tuple[int, int, str, bool], ...]:
    return tuple(_regions(raw))


def _outcome(path: Path, kind: str, damaged: bytes) -> str:
    """``"rejected"`` or ``"identical"``; fails the test on anything else."""
    path.write_bytes(damaged)
    model, _ = _saved(kind)
    try:
        loaded = _load(path, kind)
    except ValueError as err:
        assert str(path) in str(err)
        assert any(word in str(err) for word in ("corrupt", "damaged")), str(err)
        return "rejected"
    _assert_identical(loaded, model)
    return "identical"


def _flip(raw: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(raw)
    b[pos] ^= 1 << bit
    return bytes(b)


# --- checkpoints: the tests ---------------------------------------------------------------------------


def test_torch_alone_loads_a_flipped_bit_in_a_weight_silently(tmp_path):
    # The control: the defect the CRC and digest checks exist for.
    model, raw = _saved("builtin")
    regions = [r for r in _regions(raw) if r[2] == "data of archive/data/1"]  # encoder.body.0.weight
    start = regions[0][0]
    path = tmp_path / "m.pt"
    path.write_bytes(_flip(raw, start + 3, 6))  # the high exponent bit of the first float32
    weight = torch.load(path, weights_only=True)["state_dict"]["encoder.body.0.weight"]
    assert not torch.equal(weight, model.encoder.body[0].weight)
    with pytest.raises(ValueError, match=r"damaged \(corrupt\): the bytes of its member 'archive/data/1' do not"):
        load(path)


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_member_rejects_a_flip_of_each_bit_at_its_start_middle_and_end(tmp_path, kind):
    _, raw = _saved(kind)
    members = [(s, e, label) for s, e, label, _ in _regions(raw) if label.startswith("data of ")]
    assert len(members) > len(_saved(kind)[0].state_dict())  # the tensors, the pickle, small records
    for start, end, label in members:
        for pos in sorted({start, (start + end) // 2, end - 1}):
            for bit in range(8):
                assert _outcome(tmp_path / "m.pt", kind, _flip(raw, pos, bit)) == "rejected", (label, pos, bit)


@pytest.mark.parametrize("kind", ["builtin", "legacy"])
def test_a_strided_sweep_of_flips_over_the_whole_file(tmp_path, kind):
    """Every other byte of those that locate or check the data (so every field), every third byte of the
    data, every seventh of the inert metadata, each with a bit that cycles through the 8 positions:
    rejected where it must be, else rejected or harmless."""
    _, raw = _saved(kind)
    seen: dict[str, set[str]] = {}
    flips = 0
    for start, end, label, must_reject in _regions(raw):
        step = 3 if label.startswith("data of ") else 2 if must_reject else 7
        for pos in range(start, end, step):
            outcome = _outcome(tmp_path / "m.pt", kind, _flip(raw, pos, (pos * 5) % 8))
            flips += 1
            if must_reject:
                assert outcome == "rejected", (label, pos)
            seen.setdefault(label.split(" of ")[0], set()).add(outcome)
    assert flips > 1000
    # Every kind of region was hit, and the inert metadata is really inert: some flips there load.
    assert "identical" in seen["local header: alignment padding (extra field)"]
    assert "identical" in seen["data descriptor (the CRC and sizes again)"]
    assert set(seen) == {label.split(" of ")[0] for _, _, label, _ in _regions(raw)}


@SETTINGS
@given(kind=st.sampled_from(list(MODELS)), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_rejected_or_harmless(tmp_path_factory, kind, where, bit):
    _, raw = _saved(kind)
    pos = int(where * len(raw))
    outcome = _outcome(tmp_path_factory.mktemp("flip") / "m.pt", kind, _flip(raw, pos, bit))
    label, must_reject = _region(raw, pos)
    assert outcome == "rejected" or not must_reject, label


@SETTINGS
@given(
    kind=st.sampled_from(list(MODELS)),
    where=st.floats(0, 1, exclude_max=True),
    junk=st.binary(min_size=1, max_size=64),
)
def test_burst_damage_is_rejected_or_harmless(tmp_path_factory, kind, where, junk):
    # Up to 64 bytes overwritten by arbitrary ones, as a bad sector or a botched copy would.
    _, raw = _saved(kind)
    pos = int(where * len(raw))
    damaged = raw[:pos] + junk + raw[pos + len(junk) :]
    damaged = damaged[: len(raw)]
    outcome = _outcome(tmp_path_factory.mktemp("burst") / "m.pt", kind, damaged)
    changed = [i for i in range(pos, min(pos + len(junk), len(raw))) if damaged[i] != raw[i]]
    if any(_region(raw, i)[1] for i in changed):
        assert outcome == "rejected"


@pytest.mark.parametrize("kind", ["builtin", "legacy"])
def test_a_member_marked_as_a_directory_is_rejected(tmp_path, kind):
    # Bit 4 of a central-directory entry's external attributes (MS-DOS "directory"): PyTorch's reader
    # then extracts nothing and returns the tensor's storage uninitialised, although its data and CRC
    # are intact. Found by the exhaustive sweep of a legacy file (no digest to catch it).
    model, raw = _saved(kind)
    path = tmp_path / "m.pt"
    names = {
        s: label.split(" of ")[1] for s, e, label, _ in _regions(raw) if label.startswith("central directory: name")
    }
    for start, member in names.items():  # the entry's attributes are at 38..42, its name from 46
        path.write_bytes(_flip(raw, start - 8, 4))  # the low byte of the external attributes
        if "/data/" in member:
            torch.load(path, weights_only=True)  # a tensor: no complaint from PyTorch
        with pytest.raises(ValueError, match=f"its member '{member}' is marked as a directory"):
            load(path)
    path.write_bytes(raw)
    _assert_identical(load(path), model)


def _rewrite_member(raw: bytes, member: str, new_data: bytes) -> bytes:
    """``raw`` with ``member``'s data replaced (same length) and its CRCs recomputed: a "repair" tool's
    output, consistent as a zip."""
    regions = _regions(raw)
    start, end = next((s, e) for s, e, label, _ in regions if label == f"data of {member}")
    assert len(new_data) == end - start
    crc = struct.pack("<I", zlib.crc32(new_data))
    out = bytearray(raw)
    out[start:end] = new_data
    out[end + 4 : end + 8] = crc  # the data descriptor
    for s, e, label, _ in regions:
        if label == f"central directory: name (and extra field) of {member}":
            out[s - 30 : s - 26] = crc  # the central directory's CRC field, 46 - 16 bytes before the name
    return bytes(out)


def test_a_rewrite_that_recomputes_the_crcs_is_caught_by_the_digest(tmp_path):
    model, raw = _saved("builtin")
    data = bytearray(model.encoder.body[0].weight.detach().numpy().tobytes())
    data[3] ^= 0x40
    rewritten = _rewrite_member(raw, "archive/data/1", bytes(data))
    path = tmp_path / "m.pt"
    path.write_bytes(rewritten)
    with zipfile.ZipFile(io.BytesIO(rewritten)) as z:
        assert z.testzip() is None  # a sound zip: every CRC matches
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["encoder.body.0.weight"],
                           model.encoder.body[0].weight)
    with pytest.raises(ValueError, match="do not match the SHA-256 digest recorded when it was saved"):
        load(path)


@pytest.mark.parametrize(
    "edit",
    ["a weight", "the configuration", "the class", "the vaelib version", "a parameter's dtype", "the order"],
)
def test_a_resaved_payload_whose_digest_no_longer_matches_is_rejected(tmp_path, edit):
    path = tmp_path / "m.pt"
    save(_builtin(), path)
    p = torch.load(path, weights_only=True)
    state = p["state_dict"]
    if edit == "a weight":
        state["decoder.to_x.bias"][0] += 1e-7
    elif edit == "the configuration":
        p["config"]["likelihood"] = "bernoulli"
    elif edit == "the class":
        p["class"] = "vaelib.model.Other"
    elif edit == "the vaelib version":
        p["vaelib_version"] = "0.0.0"
    elif edit == "a parameter's dtype":
        state["obs_logvar"] = state["obs_logvar"].double()  # the same value, in float64
    else:
        p["state_dict"] = dict(reversed(list(state.items())))
    torch.save(p, path)  # fresh CRCs, the old digest
    with pytest.raises(ValueError, match=r"damaged \(corrupt\): its contents do not match the SHA-256 digest"):
        load(path)


@pytest.mark.parametrize("digest", [None, 7, "0" * 63, "é" * 64, "0" * 64])
def test_a_forged_digest_is_rejected(tmp_path, digest):
    path = tmp_path / "m.pt"
    save(_builtin(), path)
    p = torch.load(path, weights_only=True)
    p["sha256"] = digest
    torch.save(p, path)
    with pytest.raises(ValueError, match=r"damaged \(corrupt\): its (recorded SHA-256 digest is not|contents do not)"):
        load(path)


def test_a_forged_directory_listing_a_member_many_times_is_refused_at_once(tmp_path):
    # Overlapping members (a "zip bomb" of the directory): refused, not CRC-checked once per listing.
    model, raw = _saved("builtin")
    regions = _regions(raw)
    first = next(s for s, e, label, _ in regions if label == "central directory: signature")
    entry = next(s for s, e, label, _ in regions if label.startswith("central directory: name") and "data/8" in label)
    entry_start = entry - 46
    entry_end = next(s for s, e, label, _ in regions if s > entry and label == "central directory: signature")
    copy = raw[entry_start:entry_end]
    extra = 1000
    z = len(raw) - 22 - 20 - 56
    cd = raw[first:z] + copy * extra
    (count,) = struct.unpack("<Q", raw[z + 32 : z + 40])
    zip64 = bytearray(raw[z : z + 56])
    zip64[24:48] = struct.pack("<QQQ", count + extra, count + extra, len(cd))
    locator = bytearray(raw[z + 56 : z + 76])
    locator[8:16] = struct.pack("<Q", first + len(cd))
    end = bytearray(raw[-22:])
    end[8:12] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    path = tmp_path / "m.pt"
    path.write_bytes(raw[:first] + cd + bytes(zip64) + bytes(locator) + bytes(end))
    with pytest.raises(ValueError, match="overlaps another one"):
        load(path)


def test_a_format_2_file_without_a_digest_still_loads_and_its_crcs_are_checked(tmp_path):
    # Written as vaelib wrote checkpoints before it recorded a digest.
    model, raw = _saved("legacy")
    assert "sha256" not in torch.load(io.BytesIO(raw), weights_only=True)
    path = tmp_path / "old.pt"
    path.write_bytes(raw)
    _assert_identical(load(path), model)
    start = next(s for s, e, label, _ in _regions(raw) if label == "data of archive/data/1")
    path.write_bytes(_flip(raw, start, 0))
    with pytest.raises(ValueError, match="CRC-32"):
        load(path)


def test_the_digest_survives_every_dtype_and_layout_a_state_dict_may_hold():
    state = {
        "f32": torch.randn(3, 4),
        "f64_transposed": torch.randn(4, 3, dtype=torch.float64).t(),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(5).bfloat16(),
        "c64": torch.randn(2, dtype=torch.complex64),
        "i64": torch.arange(4),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "sparse": torch.randn(4, 4).relu().to_sparse(),
    }
    payload = {"format": "vaelib-checkpoint", "config": {"x_dim": 3}, "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    again = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    digest = vaelib.checkpoint._digest(payload)
    assert vaelib.checkpoint._digest(again) == digest and len(digest) == 64
    # Any change of a value, a name, a dtype, a shape or the order changes it.
    for changed in (
        {**state, "i64": torch.tensor([0, 1, 2, 5])},
        {("F32" if k == "f32" else k): v for k, v in state.items()},
        {**state, "i64": torch.arange(4, dtype=torch.int32)},
        {**state, "f32": state["f32"].reshape(4, 3)},
        dict(reversed(list(state.items()))),
    ):
        assert vaelib.checkpoint._digest({**payload, "state_dict": changed}) != digest


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_save_refuses_tensors_without_plain_bytes(tmp_path):
    model = _custom()
    model.register_buffer("csr", torch.eye(3).to_sparse_csr())
    with pytest.raises(ValueError, match="dense or sparse COO tensors only"):
        save(model, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_the_checks_cost_little_on_the_books_model(tmp_path):
    # The book's model, 784-400-20 (a 2.6 MB file): both checks together stay a few milliseconds.
    model = VAE(784, 20, hidden=(400,), seed=0)
    path = tmp_path / "book.pt"
    save(model, path)
    raw = path.read_bytes()
    payload = torch.load(io.BytesIO(raw), weights_only=True)

    def best(f, n=5):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    assert best(lambda: vaelib.checkpoint._check_members(str(path), raw)) < 0.05
    assert best(lambda: vaelib.checkpoint._check_digest(str(path), payload)) < 0.05
    _assert_identical(load(path), model)


# --- IDX files ---------------------------------------------------------------------------------------------

MIB = 1 << 20


def _header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)


def _single_member_bomb(path: Path, head: bytes, mib: int) -> None:
    """One gzip member that inflates to ``head`` and ``mib`` MiB of zeros, built in milliseconds and
    ~1 KiB of memory per MiB it claims: after a full flush the deflate stream forgets its past, so the
    compressed form of 1 MiB of zeros is the same bytes every time, and is simply repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; the gzip header and trailer are ours
    first = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MIB)
    segment = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH) == segment
    crc = zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first)
        for _ in range(mib):
            f.write(segment)
            crc = zlib.crc32(zeros, crc)
        f.write(co.flush() + struct.pack("<II", crc, (len(head) + mib * MIB) & 0xFFFFFFFF))


def _multi_member_bomb(path: Path, head: bytes, mib: int) -> None:
    """A gzip of many members (still one .gz: it inflates to their concatenation)."""
    zeros = gzip.compress(bytes(MIB), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(mib):
            f.write(zeros)


def _traced(f):
    """``(result or exception, seconds, peak traced bytes)`` of ``f()``."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        result = f()
    except Exception as err:  # noqa: BLE001 - the caller checks what it was
        result = err
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


@pytest.mark.parametrize("build", [_single_member_bomb, _multi_member_bomb])
def test_the_bombs_are_valid_gzip_files(tmp_path, build):
    path = tmp_path / "bomb.gz"
    build(path, b"head", 3)
    assert gzip.decompress(path.read_bytes()) == b"head" + bytes(3 * MIB)
    assert os.path.getsize(path) < 4 * 1024


@pytest.mark.parametrize("build", [_single_member_bomb, _multi_member_bomb])
def test_read_idx_rejects_a_gzip_bomb_without_inflating_it(tmp_path, build):
    path = tmp_path / "bomb.idx.gz"
    build(path, _header((4,)), 300)  # the header promises 4 bytes; 300 MiB of zeros follow
    assert os.path.getsize(path) < 400 * 1024
    err, seconds, peak = _traced(lambda: read_idx(path))
    assert isinstance(err, ValueError) and "longer than its header says" in str(err) and str(path) in str(err)
    assert peak < 2 * MIB and seconds < 1.0, (peak, seconds)


def test_read_idx_never_decompresses_more_than_the_data_claimed(tmp_path):
    # A header that claims 1 MiB: the reader inflates that much (and one byte), not the 300 MiB there.
    path = tmp_path / "bomb.idx.gz"
    _single_member_bomb(path, _header((MIB,)), 300)
    err, seconds, peak = _traced(lambda: read_idx(path))
    assert isinstance(err, ValueError) and "longer than its header says" in str(err)
    assert peak < 4 * MIB and seconds < 1.0, (peak, seconds)


def test_read_idx_does_not_read_an_uncompressed_file_longer_than_its_header_says(tmp_path):
    path = tmp_path / "long.idx"
    with open(path, "wb") as f:
        f.write(_header((4,)) + bytes(4))
        f.truncate(300 * MIB)  # sparse: nothing is written
    err, seconds, peak = _traced(lambda: read_idx(path))
    assert isinstance(err, ValueError)
    assert f"header says shape (4,) (12 bytes), file has {300 * MIB} bytes" in str(err)
    assert peak < MIB and seconds < 0.5, (peak, seconds)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_read_idx_reads_an_endless_stream_only_one_byte_past_its_data(tmp_path):
    # A pipe has no length: the reader must stop one byte past the data, not read until the end.
    path = tmp_path / "pipe"
    os.mkfifo(path)
    written = []

    def writer() -> None:
        try:
            with open(path, "wb") as f:
                f.write(_header((2, 3)) + bytes(range(6)))
                for _ in range(1000):  # up to ~64 MiB, far more than a pipe holds
                    f.write(bytes(64 * 1024))
                    written.append(1)
        except BrokenPipeError:  # the reader closed its end
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    message = r"longer than its header says: header says shape \(2, 3\) \(18 bytes\), file has more"
    with pytest.raises(ValueError, match=message):
        read_idx(path)
    thread.join(timeout=10)
    assert not thread.is_alive() and len(written) < 100


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_read_idx_reads_a_pipe_holding_exactly_the_data(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    array = np.arange(12, dtype=">i2").reshape(3, 4)

    def writer() -> None:
        with open(path, "wb") as f:
            f.write(_header((3, 4), 0x0B) + array.tobytes())

    threading.Thread(target=writer, daemon=True).start()
    np.testing.assert_array_equal(read_idx(path), array)


def _gz_idx() -> tuple[np.ndarray, bytes]:
    array = np.arange(300, dtype=np.uint8).reshape(3, 10, 10)
    return array, gzip.compress(_header(array.shape) + array.tobytes(), mtime=0)


def test_read_idx_rejects_every_truncation_of_a_gzip(tmp_path):
    array, data = _gz_idx()
    path = tmp_path / "cut.idx.gz"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        # A cut inside the gzip magic leaves no gzip (and no IDX magic) to read.
        message = "not an IDX file" if n < 2 else "truncated or corrupt gzip data"
        with pytest.raises(ValueError, match=message):
            read_idx(path)


@SETTINGS
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_flipped_bit_in_a_gzip_idx_file_is_rejected_or_harmless(tmp_path_factory, where, bit):
    # The gzip trailer's CRC-32 covers the inflated header and data: a flip that changes them is caught,
    # as long as the reader goes on to the end of the stream, which it must (one byte past the data).
    array, data = _gz_idx()
    pos = int(where * len(data))
    path = tmp_path_factory.mktemp("gz") / "a.idx.gz"
    path.write_bytes(_flip(data, pos, bit))
    try:
        got = read_idx(path)
    except ValueError:
        return
    # Inert bytes: the gzip header's flags, mtime, extra flags and OS byte, and the unused padding bits
    # after the deflate stream's end-of-block code in its last byte (hypothesis found pos = len - 9,
    # bit 7). Whatever was read must then be the original array: never a silently different one.
    deflate_end = len(data) - 8  # the 8-byte trailer (CRC-32, size) follows the deflate stream
    assert 3 <= pos < 10 or pos == deflate_end - 1, (pos, len(data))
    np.testing.assert_array_equal(got, array)


def test_a_corrupt_deflate_stream_is_a_value_error(tmp_path):
    # zlib.error is no OSError: it escaped read_idx before.
    _, data = _gz_idx()
    damaged = bytearray(data)
    damaged[12] ^= 0xFF
    path = tmp_path / "bad.idx.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="truncated or corrupt gzip data"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_in_chunks_exactly(tmp_path, monkeypatch, gz):
    # With 7-byte chunks, every read crosses chunk boundaries; the result is the same array.
    monkeypatch.setattr(vaelib.data, "_IDX_CHUNK", 7)
    cases = [((5, 7), ">f4", 0x0D), ((49,), np.uint8, 0x08), ((0, 3), ">i4", 0x0C), ((2, 3, 1), ">f8", 0x0E)]
    for shape, dtype, code in cases:
        array = (np.arange(int(np.prod(shape))) - 3).astype(dtype).reshape(shape)
        raw = _header(shape, code) + array.tobytes()
        path = tmp_path / "a.idx"
        path.write_bytes(gzip.compress(raw) if gz else raw)
        got = read_idx(path)
        assert got.dtype.isnative and got.shape == shape and got.flags.writeable
        np.testing.assert_array_equal(got, array)
        if array.size == 0:
            continue
        path.write_bytes(gzip.compress(raw[:-1]) if gz else raw[:-1])
        with pytest.raises(ValueError, match=f"truncated: header says shape .* file has {len(raw) - 1} bytes"):
            read_idx(path)
