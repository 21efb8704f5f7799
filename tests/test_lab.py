"""``make lab``: JupyterLab on the chapters, checked without a browser.

The test starts the server with the Makefile's own command,

    make -o .venv/.installed-lab lab LAB_ARGS="--no-browser --port=<free> --IdentityProvider.token=<t>"

(``-o`` so that the test never installs anything: JupyterLab must already be in ``.venv``, which
``make lab-install`` does and ``make test`` does before this test), with ``HOME`` pointed at an empty
folder, and then talks to it over its REST and websocket API, as the browser would:

* it listens on 127.0.0.1 only, and serves ``book/`` (the kernels' working directory, as in the build);
* its contents manager is Jupytext's: every chapter (each MyST notebook of ``_toc.yml``) is listed as
  type ``notebook``, and reading one as a notebook gives the cells ``jupytext.read`` gives;
* a double-click opens a chapter as a notebook: JupyterLab's default viewer for Markdown is
  "Jupytext Notebook" (from ``jupyter-config/labconfig``), and the extension that provides it is loaded;
* a kernel started through ``/api/sessions`` and driven over ``/api/kernels/<id>/channels`` runs the
  first code cell of the first chapter without error, with ``book/`` as working directory and the
  project's ``.venv`` as its Python;
* nothing is written to ``~/.jupyter``: every setting lives in the project's ``jupyter-config/``;
* the chapters render as in the book: jupyterlab-myst (MyST in Markdown cells) is loaded, and the
  news pop-up (a request to a website) is off;
* opening is not editing: JupyterLab saves an open notebook (autosave) even when the learner changed
  nothing, by a PUT of the model it got from a GET. For every page of ``_toc.yml`` that opens as a
  notebook, such a save, of the model as read and of the model as JupyterLab holds it once a kernel
  has started (kernelspec from the kernel, ``language_info`` added), leaves the file byte for byte as
  it was (each chapter's header as JupyterLab and Jupytext write it, with a ``notebook_metadata_filter``
  that keeps the Jupytext version out, and ``book/jupytext.toml``);
* ``book/jupytext.toml`` does not change what ``jupytext --to ipynb`` writes for a chapter (the notebook
  downloads use ``jupytext.read``/``jupytext.writes``, which read no configuration file).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jupytext
import pytest

from book_toc import myst_notebooks, toc_docnames

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
VENV = ROOT / ".venv"
START_TIMEOUT = 180.0  # seconds for the server to answer (a busy 2-core machine: about 15 s)
CELL_TIMEOUT = 300.0  # seconds for the first code cell (imports torch, matplotlib, myst_nb)



def chapter_notebooks() -> list[Path]:
    """The ``.md`` sources in _toc.yml that are MyST notebooks (myst-nb's own test)."""
    return [ROOT / f"{name}.md" for name in myst_notebooks()]


CHAPTERS = chapter_notebooks()
# Every page of _toc.yml with a .md source: the chapters and the plain-Markdown appendices, which
# JupyterLab opens as notebooks too (one Markdown cell per block).
PAGES = [ROOT / f"{name}.md" for name in toc_docnames() if (ROOT / f"{name}.md").is_file()]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running ``make lab`` server: its URL, token, log and the ``HOME`` it ran with."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log: Path, home: Path):
        self.proc, self.port, self.token, self.log, self.home = proc, port, token, log, home
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-n:]

    def request(self, method: str, path: str, body=None, timeout: float = 60.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text and "json" in resp.headers.get(
                "Content-Type", "") else text)

    def get(self, path: str):
        status, value = self.request("GET", path)
        assert status == 200, (path, status)
        return value


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not (VENV / "bin" / "jupyter-lab").exists():
        pytest.fail(
            "JupyterLab is not installed in .venv: run `make lab-install` (make test does it before "
            "this test; the test itself installs nothing)",
            pytrace=False,
        )
    if shutil.which("make") is None:
        pytest.fail("`make` is needed: the test starts the server with `make lab`", pytrace=False)
    home = tmp_path_factory.mktemp("home")
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    port, token = _free_port(), secrets.token_hex(16)
    # Nothing of the caller's Jupyter set-up may leak in: the Makefile sets what make lab needs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env["HOME"] = str(home)
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed-lab", "lab", f"LAB_ARGS={args}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: make, jupyter and the kernels
        )
    server = Lab(proc, port, token, log, home)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"make lab exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            try:
                if server.request("GET", "/api/status", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer in {START_TIMEOUT:.0f} s:\n{server.log_tail()}", pytrace=False)
            time.sleep(0.5)
        yield server
    finally:
        try:
            server.request("POST", "/api/shutdown", timeout=10)
            proc.wait(timeout=30)
        except Exception:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_chapters_are_found():
    assert CHAPTERS, "no MyST notebook in _toc.yml"


def test_listens_on_localhost_only(lab):
    assert f"http://127.0.0.1:{lab.port}/" in lab.log_tail(100_000), lab.log_tail()
    assert "version" in lab.get("/api/")
    addresses = set()
    try:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(sockaddr[0])
    except socket.gaierror:
        pass
    for address in sorted(a for a in addresses if not a.startswith("127.")):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            assert sock.connect_ex((address, lab.port)) != 0, f"the server answers on {address}"


def test_serves_book_folder(lab):
    listing = lab.get("/api/contents?content=1")
    names = {entry["name"]: entry["type"] for entry in listing["content"]}
    for chapter in CHAPTERS:
        assert names.get(chapter.name) == "notebook", (chapter.name, names)
    assert "_toc.yml" not in names and "Makefile" not in names, "the root is not book/"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_opens_as_notebook(lab, chapter):
    model = lab.get(f"/api/contents/{chapter.name}?type=notebook&content=1")
    assert model["type"] == "notebook", model["type"]
    got = [(c["cell_type"], c["source"]) for c in model["content"]["cells"]]
    want = [(c.cell_type, c.source) for c in jupytext.read(str(chapter)).cells]
    assert got == want, f"{chapter.name}: the server's notebook differs from jupytext.read"


def test_double_click_opens_notebook(lab):
    settings = lab.get("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("markdown") == "Jupytext Notebook", viewers
    # The "Jupytext Notebook" viewer is jupytext's JupyterLab extension: it must be loaded.
    page = lab.get("/lab")
    start = page.index('id="jupyter-config-data"')
    config = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    extensions = {ext["name"] for ext in config.get("federated_extensions", [])}
    assert "jupyterlab-jupytext" in extensions, extensions


def _execute(ws, session: str, code: str, timeout: float) -> dict:
    """Run ``code`` on the kernel behind websocket ``ws``; return its reply, stdout and errors."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": session, "version": "5.3",
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    reply, idle, stdout, errors = None, False, [], []
    deadline = time.monotonic() + timeout
    while reply is None or not idle:
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise AssertionError(f"no reply in {timeout:.0f} s; stdout so far: {''.join(stdout)}")
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "execute_reply":
            reply = content
        elif kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content.get("traceback", [])) or content.get("evalue", ""))
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return {"reply": reply, "stdout": "".join(stdout), "errors": errors}


def test_kernel_runs_first_cell(lab):
    import websocket  # websocket-client, a dependency of jupyter_server

    chapter = next((c for c in CHAPTERS if c.stem.startswith("ch")), CHAPTERS[0])
    cells = [c.source for c in jupytext.read(str(chapter)).cells if c.cell_type == "code"]
    assert cells, f"{chapter.name} has no code cell"
    status, session = lab.request("POST", "/api/sessions", {
        "path": chapter.name, "name": chapter.name, "type": "notebook",
        "kernel": {"name": "python3"},
    })
    assert status == 201, session
    kernel = session["kernel"]["id"]
    client_session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel}/channels?session_id={client_session}",
        header=[f"Authorization: token {lab.token}"], timeout=60,
    )
    try:
        first = _execute(ws, client_session, cells[0], CELL_TIMEOUT)
        assert not first["errors"], f"{chapter.name}, first code cell:\n" + "\n".join(first["errors"])
        assert first["reply"]["status"] == "ok", first["reply"]
        where = _execute(ws, client_session, "import os, sys; print(os.getcwd()); print(sys.prefix)", 60)
        assert where["reply"]["status"] == "ok", where
        cwd, prefix = where["stdout"].split()
        assert Path(cwd).resolve() == BOOK, f"the kernel runs in {cwd}, not in book/"
        assert Path(prefix).resolve() == VENV.resolve(), f"the kernel's Python is {prefix}, not .venv"
    finally:
        ws.close()
        lab.request("DELETE", f"/api/sessions/{session['id']}")


def test_chapters_render_as_myst(lab):
    """jupyterlab-myst (requirements-lab.txt) renders the chapters' Markdown cells: admonitions,
    theorems and proofs, exercises with collapsed solutions, numbered equations, and the book's macros
    from each chapter's first cell (tests/test_lab_macros.py). The news pop-up, which would ask to
    fetch from a website and cover the page, is off (jupyter-config/labconfig)."""
    page = lab.get("/lab")
    start = page.index('id="jupyter-config-data"')
    config = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    extensions = {ext["name"] for ext in config.get("federated_extensions", [])}
    assert "jupyterlab-myst" in extensions, f"jupyterlab-myst is not loaded: {sorted(extensions)}"
    disabled = config.get("disabledExtensions") or []
    assert not any(name.startswith("jupyterlab-myst") for name in disabled), disabled
    settings = lab.get("/lab/api/settings/@jupyterlab/apputils-extension:notification")
    properties = settings["schema"]["properties"]
    assert properties["fetchNews"]["default"] == "false", properties["fetchNews"]
    assert properties["checkForUpdates"]["default"] is False, properties["checkForUpdates"]


def _kernel_started_metadata(lab) -> dict:
    """The notebook metadata JupyterLab sets once a chapter's kernel has started: the kernelspec from
    the kernel's spec, and the kernel's language_info (as ipykernel reports it)."""
    specs = lab.get("/api/kernelspecs")["kernelspecs"]
    spec = specs["python3"]["spec"]
    return {
        "kernelspec": {"name": "python3", "display_name": spec["display_name"], "language": spec["language"]},
        "language_info": {
            "codemirror_mode": {"name": "ipython", "version": 3},
            "file_extension": ".py",
            "mimetype": "text/x-python",
            "name": "python",
            "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3",
            "version": platform.python_version(),
        },
    }


def _diff(before: bytes, after: bytes, name: str) -> str:
    lines = difflib.unified_diff(before.decode().splitlines(True), after.decode().splitlines(True),
                                 f"{name} (before)", f"{name} (after the save)", n=1)
    return "".join(list(lines)[:40])


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_saving_an_unchanged_page_keeps_its_bytes(lab, page):
    """Opening is not editing: JupyterLab saves an open notebook every 2 minutes (autosave) even when
    the learner changed nothing, as a PUT of the model a GET gave. Both saves, of the model as read
    and of the model with the metadata a started kernel adds, leave the file byte for byte as it was."""
    before = page.read_bytes()
    try:
        model = lab.get(f"/api/contents/{page.name}?type=notebook&content=1")
        assert model["type"] == "notebook", model["type"]
        started = copy.deepcopy(model["content"])
        started["metadata"].update(_kernel_started_metadata(lab))
        for what, content in (("as read", model["content"]), ("with a started kernel's metadata", started)):
            status, _ = lab.request("PUT", f"/api/contents/{page.name}",
                                    {"type": "notebook", "format": "json", "content": content})
            assert status in (200, 201), status
            after = page.read_bytes()
            assert after == before, (
                f"saving {page.name} {what} changed the file. A page must be in the form Jupytext writes "
                f"(e.g. a blank line after a code cell's :tags: line), and a chapter's header as "
                f"JupyterLab and Jupytext write it (its notebook_metadata_filter, the kernelspec as "
                f"JupyterLab sets it); see also book/jupytext.toml:\n{_diff(before, after, page.name)}")
    finally:
        if page.read_bytes() != before:
            page.write_bytes(before)  # the save rewrote the page: put the original back


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_jupytext_config_leaves_ipynb_alone(chapter):
    """`jupytext --to ipynb` (which reads book/jupytext.toml) writes the notebook that
    jupytext.read/jupytext.writes (the notebook downloads, no configuration file) write."""
    jupytext_cli = VENV / "bin" / "jupytext"
    out = subprocess.run([str(jupytext_cli), "--to", "ipynb", "--output", "-", str(chapter)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    want = json.loads(jupytext.writes(jupytext.read(str(chapter)), fmt="ipynb"))
    got = json.loads(out.stdout)
    for nb in (got, want):  # cell ids are random in both
        for cell in nb["cells"]:
            cell.pop("id", None)
    assert got == want


def test_nothing_written_to_home_jupyter(lab):
    # Runs after the other tests of this module (file order): the server has started, listed,
    # opened notebooks and run a kernel by now.
    assert not (lab.home / ".jupyter").exists(), sorted(
        str(p.relative_to(lab.home)) for p in (lab.home / ".jupyter").rglob("*"))
