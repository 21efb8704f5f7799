"""vaelib.fit_cached under faults: what may reach the key, the record's check of its checkpoint, caches that
cannot be written (read-only, a file, a dangling link, an unwritable home, a full disk, a folder deleted
mid-training), ``~`` in the folder's name, a stopped process holding the lock, and ``device=`` on a hit.

The cases that need another process run in subprocesses with timeouts: the lock (a holder stopped with
SIGSTOP), a read-only mount and a full disk (a private mount namespace, ``unshare -m``: nothing leaks to
the machine's mounts; root, which permissions do not stop, cannot write a read-only mount either). They
are skipped, saying why, where the machine does not allow them.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import nn

import vaelib

ARGS = dict(epochs=2, batch_size=16, lr=1e-2, seed=0, progress=False)
SUBPROCESS_TIMEOUT = 120  # seconds; a tiny model trains in well under one


from test_cache import data, model, same_state  # noqa: E402  (test_cache's small data, model and comparison)


def fitted(seed=0, x=None, prepare=lambda m: None, **args):
    """A model of ``model(seed)`` after ``prepare`` and a plain ``vaelib.fit``: the reference result."""
    m = model(seed)
    prepare(m)
    vaelib.fit(m, data() if x is None else x, **{**ARGS, **args})
    return m


def entries(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix in (".pt", ".json"))


def cache_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


# Scripts run in a subprocess: the same data and models as above.
PRELUDE = textwrap.dedent("""
    import hashlib, json, os, sys, warnings
    import torch, vaelib
    torch.set_num_threads(1)
    ARGS = dict(epochs=2, batch_size=16, lr=1e-2, seed=0, progress=False)
    def data(seed=0):
        return (torch.rand(40, 12, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    def model(seed=0):
        return vaelib.VAE(12, 2, hidden=(8,), seed=seed)
    def digest(m):
        h = hashlib.sha256()
        for k, v in m.state_dict().items():
            h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()
    def attempt(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                h = call()
                out = {"from_cache": h.from_cache, "epochs": h.epochs}
            except Exception as err:
                out = {"error": f"{type(err).__name__}: {err}"}
        out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return out
""")


def digest(m):
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_script(script, *, env=None, prefix=(), args=(), cwd=None):
    """Run PRELUDE + script in a fresh Python (in ``cwd``); its last line of stdout, as JSON."""
    environment = {**os.environ, "VAELIB_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    command = [*prefix, sys.executable, "-c", PRELUDE + textwrap.dedent(script), *args]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          cwd=cwd)
    assert done.returncode == 0, f"the subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 1. everything that changes the result is in the key ---------------------------------------------

def test_a_frozen_part_is_part_of_the_key(tmp_path):
    x = data()
    vaelib.fit_cached(model(), x, cache_dir=tmp_path, **ARGS)  # the unfrozen training, stored first
    frozen = model()
    frozen.decoder.requires_grad_(False)
    decoder = {k: v.clone() for k, v in frozen.decoder.state_dict().items()}
    h = vaelib.fit_cached(frozen, x, cache_dir=tmp_path, **ARGS)
    assert not h.from_cache, "a frozen decoder was served the unfrozen training"
    assert all(torch.equal(decoder[k], v) for k, v in frozen.decoder.state_dict().items())
    reference = fitted(prepare=lambda m: m.decoder.requires_grad_(False))
    assert same_state(frozen, reference)
    again = model()
    again.decoder.requires_grad_(False)
    assert vaelib.fit_cached(again, x, cache_dir=tmp_path, **ARGS).from_cache and same_state(again, reference)


class ScaledEncoder(nn.Module):
    """An encoder with a non-persistent buffer (not in the state_dict) that changes what it computes."""

    def __init__(self, scale):
        super().__init__()
        self.lin = nn.Linear(12, 4)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, x):
        return (self.lin(x) * self.scale).chunk(2, dim=-1)


def scaled(scale):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return vaelib.VAE(12, 2, encoder=ScaledEncoder(scale), decoder=nn.Linear(2, 12))


def test_a_non_persistent_buffer_is_part_of_the_key(tmp_path):
    vaelib.fit_cached(scaled(1.0), data(), cache_dir=tmp_path, key="v1", **ARGS)
    other = scaled(0.5)
    assert not vaelib.fit_cached(other, data(), cache_dir=tmp_path, key="v1", **ARGS).from_cache
    reference = scaled(0.5)
    vaelib.fit(reference, data(), **ARGS)
    assert same_state(other, reference)


def test_a_model_carrying_a_run_is_refused_not_silently_continued(tmp_path):
    x = data()
    m = model()
    vaelib.fit_cached(m, x, cache_dir=tmp_path, **ARGS)
    trained = {k: v.clone() for k, v in m.state_dict().items()}
    stored = entries(tmp_path)
    with pytest.raises(ValueError, match="restart=True") as err:  # a rerun notebook cell, say
        vaelib.fit_cached(m, x, cache_dir=tmp_path, **ARGS)
    assert "fit_state" in str(err.value) and "vaelib.fit" in str(err.value)
    assert all(torch.equal(trained[k], v) for k, v in m.state_dict().items()) and entries(tmp_path) == stored
    # restart=True: a new run from these weights, keyed by them, as vaelib.fit(..., restart=True)
    reference = fitted()
    vaelib.fit(reference, x, **ARGS, restart=True)
    h = vaelib.fit_cached(m, x, cache_dir=tmp_path, restart=True, **ARGS)
    assert not h.from_cache and same_state(m, reference)


def test_the_key_is_of_the_library_code_that_runs_not_of_files_edited_since(tmp_path):
    """A kernel that imported vaelib, then the library edited: its trainings are the old code's, and must not
    be stored under the new code's key (a fresh kernel would read them back as the new code's)."""
    package = tmp_path / "package"
    shutil.copytree(Path(vaelib.__file__).parent, package / "vaelib", ignore=shutil.ignore_patterns("__pycache__"))
    folder = tmp_path / "cache"
    script = f"""
        assert vaelib.__file__.startswith({str(package)!r}), vaelib.__file__
        out = {{"first": attempt(lambda: vaelib.fit_cached(model(), data(), cache_dir={str(folder)!r}, **ARGS))}}
        if "edit" in sys.argv:
            source = os.path.join(os.path.dirname(vaelib.__file__), "elbo.py")
            with open(source, "a") as f:
                f.write("\\n# edited while a kernel runs\\n")
            out["after the edit"] = attempt(lambda: vaelib.fit_cached(model(), data(), cache_dir={str(folder)!r},
                                                                      **ARGS))
        print(json.dumps(out))
    """
    env = {"PYTHONPATH": str(package)}
    out = run_script(script, env=env, args=("edit",), cwd=package)  # (not the repository's folder: its vaelib)
    assert out["first"]["from_cache"] is False
    assert out["after the edit"]["from_cache"] is True, "the running code's own entry was keyed by the edited files"
    out = run_script(script, env=env, cwd=package)  # a fresh process runs the edited code: not the entry of the old code
    assert out["first"]["from_cache"] is False


def test_what_does_not_change_the_result_does_not_change_the_key(tmp_path):
    """fit puts the model in train mode itself and a progress bar computes nothing: neither is keyed."""
    x = data()
    first = model().train()
    vaelib.fit_cached(first, x, cache_dir=tmp_path, **ARGS)
    second = model().eval()
    assert vaelib.fit_cached(second, x, cache_dir=tmp_path, **{**ARGS, "progress": True}).from_cache
    assert same_state(first, second) and not second.training


# --- 2. a record is checked against its checkpoint before it is trusted -------------------------------

def two_entries(folder):
    """Entries of model(0) and model(1); their (checkpoint, record) paths."""
    vaelib.fit_cached(model(0), data(), cache_dir=folder, **ARGS)
    (a,) = Path(folder).glob("*.pt")
    h_b = vaelib.fit_cached(model(1), data(), cache_dir=folder, **ARGS)
    (b,) = set(Path(folder).glob("*.pt")) - {a}
    return (a, a.with_suffix(".json")), (b, b.with_suffix(".json")), h_b


def test_another_trainings_checkpoint_beside_a_record_is_an_error_naming_the_files_to_delete(tmp_path):
    (a_pt, _), (b_pt, b_json), _ = two_entries(tmp_path)
    shutil.copyfile(a_pt, b_pt)
    m = model(1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError) as err:
        vaelib.fit_cached(m, data(), cache_dir=tmp_path, **ARGS)
    message = str(err.value)
    assert str(b_pt) in message and str(b_json) in message and "delete" in message
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # nothing was loaded


def test_a_damaged_checkpoint_error_says_which_files_to_delete(tmp_path):
    _, (b_pt, b_json), _ = two_entries(tmp_path)
    raw = bytearray(b_pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    b_pt.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as err:
        vaelib.fit_cached(model(1), data(), cache_dir=tmp_path, **ARGS)
    message = str(err.value)
    assert str(b_pt) in message and str(b_json) in message and "delete" in message


@pytest.mark.parametrize("damage", ["another entry's record", "a list of text", "a string for an int",
                                    "a missing field", "a bool for a number"])
def test_a_record_that_does_not_describe_its_entry_is_a_miss_with_a_warning(tmp_path, damage):
    (_, a_json), (b_pt, b_json), h_b = two_entries(tmp_path)
    if damage == "another entry's record":
        shutil.copyfile(a_json, b_json)
    else:
        record = json.loads(b_json.read_text())
        history = record["history"]
        if damage == "a list of text":
            history["train_elbo"] = "oops"
        elif damage == "a string for an int":
            history["best_epoch"] = "1"
        elif damage == "a missing field":
            del history["seconds"]
        else:
            history["lr"] = [True, False]
        b_json.write_text(json.dumps(record))
    m = model(1)
    with pytest.warns(UserWarning) as record:
        h = vaelib.fit_cached(m, data(), cache_dir=tmp_path, **ARGS)
    assert any(str(b_json) in w for w in cache_warnings(record)), cache_warnings(record)
    assert not h.from_cache and h.train_elbo == h_b.train_elbo and same_state(m, fitted(1))
    assert vaelib.fit_cached(model(1), data(), cache_dir=tmp_path, **ARGS).from_cache  # rewritten


# --- 3. caches that cannot be written (or used at all) ----------------------------------------------

@pytest.mark.parametrize("where", ["VAELIB_CACHE a file", "VAELIB_CACHE a dangling link", "cache_dir a file"])
def test_a_cache_folder_that_is_a_file_or_a_dangling_link_warns_naming_it_and_trains(tmp_path, monkeypatch, where):
    target = tmp_path / "target"
    if "link" in where:
        os.symlink(tmp_path / "nowhere", target)
    else:
        target.write_text("a file\n")
    kwargs = {}
    if where.startswith("VAELIB_CACHE"):
        monkeypatch.setenv("VAELIB_CACHE", str(target))
    else:
        kwargs["cache_dir"] = target
    m = model()
    with pytest.warns(UserWarning) as record:
        h = vaelib.fit_cached(m, data(), **kwargs, **ARGS)
    (message,) = cache_warnings(record)
    assert where.split()[0] in message and str(target) in message
    assert ("link" if "link" in where else "file") in message
    assert not h.from_cache and h.epochs == 2 and same_state(m, fitted())
    assert os.path.islink(target) if "link" in where else target.read_text() == "a file\n"
    assert not (tmp_path / "nowhere").exists()


def test_an_unusable_home_warns_naming_the_default_folder_and_trains(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("HOME is a file here: nothing can be created below it\n")
    monkeypatch.delenv("VAELIB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    m = model()
    with pytest.warns(UserWarning) as record:
        h = vaelib.fit_cached(m, data(), **ARGS)
    (message,) = cache_warnings(record)
    assert "default" in message and "VAELIB_CACHE" in message and str(home / ".cache" / "vaelib") in message
    assert not h.from_cache and same_state(m, fitted())


@lru_cache(maxsize=None)
def private_mounts() -> str | None:
    """Why ``unshare -m`` (a private mount namespace, where tmpfs and read-only bind mounts vanish with the
    process) cannot be used here, or None if it can."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs Linux, root and unshare(1) for a private mount namespace"
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare -m failed: {err}"
    return None if done.returncode == 0 else f"unshare -m is not permitted here: {done.stderr.decode()[-200:]}"


def test_read_only_mounts_serve_their_entries_and_a_full_disk_keeps_the_training(tmp_path):
    if private_mounts():
        pytest.skip(private_mounts())
    readonly, full, home = tmp_path / "readonly", tmp_path / "full", tmp_path / "home"
    full.mkdir()
    home.mkdir()
    served = model()
    vaelib.fit_cached(served, data(), cache_dir=readonly, **ARGS)
    stored = entries(readonly)
    # Mounted in a private namespace of the subprocess only: read-only views of the folder with its entry
    # and of a home folder (root cannot write them either), and a one-page tmpfs (a real ENOSPC).
    mounts = " && ".join([*(f"mount --bind {d} {d} && mount -o remount,ro,bind {d}" for d in (readonly, home)),
                          f"mount -t tmpfs -o size=4k tmpfs {full}", 'exec "$@"'])
    out = run_script(f"""
        out = {{}}
        os.environ["VAELIB_CACHE"] = {str(readonly)!r}
        m = model()
        out["hit"] = attempt(lambda: vaelib.fit_cached(m, data(), **ARGS))
        out["hit digest"] = digest(m)
        m = model(1)
        out["miss"] = attempt(lambda: vaelib.fit_cached(m, data(), **ARGS))
        out["miss digest"] = digest(m)
        os.environ["VAELIB_CACHE"] = {str(full)!r}
        m = model(1)
        out["full"] = attempt(lambda: vaelib.fit_cached(m, data(), **ARGS))
        out["full digest"] = digest(m)
        out["full again"] = attempt(lambda: vaelib.fit_cached(m, data(), **ARGS))
        out["full files"] = sorted(os.listdir({str(full)!r}))
        del os.environ["VAELIB_CACHE"]
        os.environ.pop("XDG_CACHE_HOME", None)
        os.environ["HOME"] = {str(home)!r}
        m = model()
        out["home"] = attempt(lambda: vaelib.fit_cached(m, data(), **ARGS))
        out["home digest"] = digest(m)
        print(json.dumps(out))
    """, prefix=("unshare", "-m", "--propagation", "private", "sh", "-c", mounts, "sh"))
    assert out["hit"] == {"from_cache": True, "epochs": 2, "warnings": []}, out["hit"]
    assert out["hit digest"] == digest(served)
    assert out["miss"]["from_cache"] is False and out["miss"]["epochs"] == 2, out["miss"]
    assert any("VAELIB_CACHE" in w and str(readonly) in w for w in out["miss"]["warnings"]), out["miss"]
    reference = fitted(1)
    assert out["miss digest"] == digest(reference)
    assert out["full"]["from_cache"] is False and out["full"]["epochs"] == 2, out["full"]
    assert any("VAELIB_CACHE" in w and str(full) in w for w in out["full"]["warnings"]), out["full"]
    assert out["full digest"] == digest(reference)
    assert "restart=True" in out["full again"].get("error", ""), out["full again"]
    assert not [f for f in out["full files"] if f.endswith((".pt", ".json")) or f.startswith(".tmp")]
    assert out["home"]["from_cache"] is False and out["home"]["epochs"] == 2, out["home"]
    assert any("default" in w and "VAELIB_CACHE" in w and str(home / ".cache" / "vaelib") in w
               for w in out["home"]["warnings"]), out["home"]
    assert out["home digest"] == digest(served)
    assert entries(readonly) == stored and not (home / ".cache").exists()


# --- 4. ~ in the folder's name -------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["VAELIB_CACHE", "cache_dir"])
def test_a_tilde_is_the_home_folder(tmp_path, monkeypatch, given):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    kwargs = {}
    if given == "VAELIB_CACHE":
        monkeypatch.setenv("VAELIB_CACHE", "~/cache")
        assert vaelib.cache.cache_dir() == home / "cache"
    else:
        kwargs["cache_dir"] = "~/cache"
    vaelib.fit_cached(model(), data(), **kwargs, **ARGS)
    assert not (tmp_path / "~").exists(), "a folder literally named ~ was created in the current folder"
    assert len(list((home / "cache").glob("*.pt"))) == 1
    assert vaelib.fit_cached(model(), data(), **kwargs, **ARGS).from_cache


# --- 5. a stopped process holding the lock --------------------------------------------------------------

def _lines(stream, into):
    for line in iter(stream.readline, ""):
        into.put(line)


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is POSIX only (flock)")
def test_waiting_for_a_stopped_lock_holder_says_so_at_once_and_keeps_waiting(tmp_path):
    folder = tmp_path / "cache"
    env = {**os.environ, "VAELIB_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1", "VAELIB_CACHE": str(folder)}
    holder_script = PRELUDE + textwrap.dedent("""
        import time, vaelib.cache
        def stuck(*args, **kwargs):  # inside fit_cached, holding the lock: then stopped (a paused kernel)
            print("holding", flush=True)
            time.sleep(600)
        vaelib.cache.fit = stuck
        vaelib.fit_cached(model(), data(), **ARGS)
    """)
    waiter_script = PRELUDE + "h = vaelib.fit_cached(model(), data(), **ARGS)\nprint(json.dumps(h.from_cache))\n"
    holder = subprocess.Popen([sys.executable, "-c", holder_script], env=env, stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        out: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(holder.stdout, out), daemon=True).start()
        assert out.get(timeout=SUBPROCESS_TIMEOUT).strip() == "holding"
        holder.send_signal(signal.SIGSTOP)
        (lock,) = folder.glob("*.lock")
        waiter = subprocess.Popen([sys.executable, "-c", waiter_script], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        err: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(waiter.stderr, err), daemon=True).start()
        deadline, said = time.monotonic() + 60, ""  # (the waiter's imports take a few seconds)
        while str(lock) not in said:
            try:
                said += err.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the waiter said nothing about the lock in 60 s (stderr: {said[-2000:]!r})")
        assert "wait" in said and str(holder.pid) in said, said
        time.sleep(1)
        assert waiter.poll() is None, "the waiter gave up instead of waiting"
        holder.kill()  # the lock goes with its holder, even a stopped one
        holder.wait(timeout=30)
        stdout, _ = waiter.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert waiter.returncode == 0 and json.loads(stdout.strip().splitlines()[-1]) is False
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)


# --- 6. a cache that cannot be used never costs the training --------------------------------------------

def test_a_cache_folder_deleted_during_training_keeps_the_training(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    real_fit = vaelib.cache.fit

    def fit_then_delete(*args, **kwargs):
        history = real_fit(*args, **kwargs)
        shutil.rmtree(folder)  # "reclaim the space" while a chapter trains
        return history

    monkeypatch.setattr(vaelib.cache, "fit", fit_then_delete)
    m = model()
    with pytest.warns(UserWarning) as record:
        h = vaelib.fit_cached(m, data(), cache_dir=folder, **ARGS)
    assert any(str(folder) in w and "cache_dir" in w for w in cache_warnings(record)), cache_warnings(record)
    assert h.epochs == 2 and not h.from_cache and same_state(m, fitted())
    monkeypatch.setattr(vaelib.cache, "fit", real_fit)
    with pytest.raises(ValueError, match="restart=True"):  # the same object again: never a silent continuation
        vaelib.fit_cached(m, data(), cache_dir=folder, **ARGS)
    assert same_state(m, fitted())


def test_a_full_disk_while_storing_keeps_the_training(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    m = model()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_full)
        with pytest.warns(UserWarning) as record:
            h = vaelib.fit_cached(m, data(), cache_dir=tmp_path, **ARGS)
    assert any("PytorchStreamWriter" in w and str(tmp_path) in w for w in cache_warnings(record))
    assert h.epochs == 2 and not h.from_cache and same_state(m, fitted())
    assert not [p for p in os.listdir(tmp_path) if not p.endswith(".lock")]  # no entry, no temporary file
    with pytest.raises(ValueError, match="restart=True"):
        vaelib.fit_cached(m, data(), cache_dir=tmp_path, **ARGS)
    fresh = model()  # with the disk back, the same training is stored and then read
    assert not vaelib.fit_cached(fresh, data(), cache_dir=tmp_path, **ARGS).from_cache
    assert vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS).from_cache


# --- 7. device= on a hit as on a miss ---------------------------------------------------------------

class Watched(vaelib.VAE):
    """The built-in MLP, recording where it is moved (``to``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moves = []

    def to(self, *args, **kwargs):
        device = args[0] if args and isinstance(args[0], (str, torch.device)) else None
        self.moves.append(torch.device(device) if device is not None else (args, kwargs))
        return super().to(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_hit_moves_the_model_to_the_device_as_a_miss_does(tmp_path, dtype):
    x = data().to(dtype)
    first = Watched(12, 2, hidden=(8,), seed=0).to(dtype)
    first.moves.clear()
    vaelib.fit_cached(first, x, cache_dir=tmp_path, key="watched", device="cpu", **ARGS)
    assert torch.device("cpu") in first.moves  # the miss: fit moves the model there
    second = Watched(12, 2, hidden=(8,), seed=0).to(dtype)
    second.moves.clear()
    h = vaelib.fit_cached(second, x, cache_dir=tmp_path, key="watched", device="cpu", **ARGS)
    assert h.from_cache and same_state(first, second)
    assert torch.device("cpu") in second.moves, "a hit did not move the model to the requested device"
    assert all(t.device.type == "cpu" and t.dtype == dtype for t in second.state_dict().values())


def test_a_bad_device_is_refused_on_a_hit_as_on_a_miss(tmp_path):
    vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS)
    for bad, error in ((torch.float32, TypeError), ("no such device", ValueError)):
        with pytest.raises(error):
            vaelib.fit_cached(model(), data(), cache_dir=tmp_path, device=bad, **ARGS)


# --- the entry's files as a user expects (as vaelib.save writes checkpoints) -----------------------------

def test_entries_get_the_mode_the_umask_gives_and_no_temporary_survives(tmp_path):
    """Another user must be able to read a shared cache: neither the checkpoint nor the JSON record may be
    private (mkstemp's 0600), and a record whose writer was killed leaves no temporary behind for long."""
    from vaelib.checkpoint import _host_tag

    old = os.umask(0o022)
    try:
        dead = tmp_path / f".vaelib-tmp-999999999-5-{_host_tag()}-abcdef.json"  # a killed writer's record
        dead.write_text("{")
        vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS)
    finally:
        os.umask(old)
    entries = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert [name for name in entries if name.startswith(".")] == [], entries
    for path in tmp_path.glob("*"):
        if path.suffix in (".json", ".pt"):
            assert path.stat().st_mode & 0o777 == 0o644, (path.name, oct(path.stat().st_mode))
