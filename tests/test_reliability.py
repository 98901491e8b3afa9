"""Issue 20, reliability and security round 3: each numbered case as tests, with its neighbours.

Cases (numbers of issue 20): 1 no untrusted file reaches Ghostscript; 2 OutputDir names stay in
their folder; 3 uploads only into the checked output folder; 4 https only, redirects included;
5 no empty or partial file under a final name (Ctrl-C, SIGKILL); 6 settings that would lose the
run at its end (long names, gif_frame_ms, full disk); 7 planted or foreign temporaries; 8
protect paths fixed at creation, parallel overwrite; 9 a run's files share one stem; 10 data
checks of save_image and features; 11 a misspelt knob; 12 FIFOs and dripping servers; 13 our
errors instead of raw ones. The tests of the cases fail on the module before the fix (e1cbeed);
their neighbours also keep what already held. Messages are checked only for what they must name.
"""

from __future__ import annotations

import ast
import email.message
import errno
import hashlib
import http.server
import io
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image

import nst_utils as nst

ROOT = Path(__file__).resolve().parents[1]
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
    b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"
)
SIBLINGS = [".json", ".gif", "-overview.png"]  # what the notebook saves next to its picture
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX fork and signals")


# ------------------------------------------------------------------------------------- helpers
def forget_downloads() -> None:
    """Empty the per-session download cache (tests serve different bodies at one URL)."""
    getattr(getattr(nst, "_fetch", None), "cache_clear", lambda: None)()


def colour(i: int) -> tuple[int, int, int]:
    return (37 * i % 256, 255 - 23 * i % 256, 90 + 41 * i % 166)


def png_bytes(i: int = 0, size: tuple[int, int] = (40, 36), noise: bool = False) -> bytes:
    if noise:
        arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr)
    else:
        img = Image.new("RGB", size, colour(i))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as im:
        return im.convert("RGB").getpixel((0, 0))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> content); symlinks not followed."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def final_files(folder: Path) -> list[Path]:
    """The files under final names: hidden temporaries left out."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def within(seconds: float, fn):
    """(hung, outcome) of ``fn()`` run in a daemon thread for at most ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 - the test inspects whatever came out
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), box


def code_cells() -> list[str]:
    notebook = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def cell_with(text: str) -> str:
    cells = [c for c in code_cells() if text in c]
    assert len(cells) == 1, f"style_transfer.ipynb: expected one code cell with {text!r}"
    return cells[0]


def run_imports_cell(ns: dict) -> None:
    """The notebook's imports cell (its %magics left out), run in the namespace ``ns``."""
    imports = cell_with("import nst_utils as nst")
    exec("\n".join(line for line in imports.splitlines() if not line.startswith("%")), ns)


def notebook_setup(monkeypatch, tmp_path: Path, **overrides) -> dict:
    """The notebook's parameters cell, ``overrides`` (as papermill's -p injects them), its imports
    cell, its KNOBS cell and its set-up cell, run from the repository root; the namespace."""
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(cell_with("content_path = "), ns)
    ns.update(output_dir=str(tmp_path / "results"))
    ns.update(overrides)
    run_imports_cell(ns)
    exec(cell_with("KNOBS = {"), ns)
    exec(cell_with("nst.check_settings(globals()"), ns)
    return ns


def saving_cell(tmp_path: Path, name: str, art: str, frames: int = 2) -> dict:
    """The notebook's saving cell run on a tiny fake result; its namespace."""
    h, w = 24, 32
    cfg = SimpleNamespace(
        output_dir=tmp_path / "results",
        overwrite=False,
        content_path=str(tmp_path / f"{name}.jpg"),
        style_path=str(tmp_path / f"{art}.jpg"),
        content_path_2=None,
        style_path_2=None,
        mask_path=None,
        mask_path_2=None,
        gif_frame_ms=60,
        gif_size=32,
        weights="caffe",
    )
    image = torch.rand(1, 3, h, w)
    result = nst.RunResult(
        image=image,
        best_loss=1.0,
        history=[{"eval": 1, "loss": 1.0}],
        frames=[np.full((h, w, 3), 40 * k, np.uint8) for k in range(frames)],
        stop_reason="budget",
        seconds=1.0,
        evaluations=1,
        changed=True,
    )
    ns: dict = {}  # the notebook's own imports cell, then the names the saving cell reads
    run_imports_cell(ns)
    ns.update(
        cfg=cfg,
        result=result,
        content=torch.rand(1, 3, h, w),
        style=torch.rand(1, 3, h, w),
        name=name,
        art=art,
        device=torch.device("cpu"),
        started=time.perf_counter(),
    )
    exec(cell_with("out.save_json("), ns)
    return ns


# ------------------------------------------------------- 1. no untrusted image reaches Ghostscript
@pytest.fixture
def ghostscript(monkeypatch):
    """Pretend Ghostscript is installed; record every program Pillow would start."""
    calls: list = []

    def spy(command, *args, **kwargs):
        calls.append(command)
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")
    monkeypatch.setattr(subprocess, "check_call", spy)
    monkeypatch.setattr(subprocess, "Popen", spy)
    with pytest.raises(Exception):  # noqa: B017 - the sample really reaches gs through plain Pillow
        Image.open(io.BytesIO(EPS)).load()
    assert calls, "the EPS sample should make plain Pillow start Ghostscript"
    calls.clear()
    return calls


EPS_VARIANTS = {
    "EPSF": EPS,
    "PS": EPS.replace(b" EPSF-3.0", b""),
    "DOS EPS": b"\xc5\xd0\xd3\xc6"
    + (30).to_bytes(4, "little")
    + len(EPS).to_bytes(4, "little")
    + bytes(18)
    + EPS,  # a 30-byte header, then the PostScript
}


@pytest.mark.parametrize("variant", sorted(EPS_VARIANTS))
@pytest.mark.parametrize("how", ["path named photo.jpg", "bytes", "mask", "https body"])
def test_eps_is_refused_and_ghostscript_never_runs(tmp_path, ghostscript, web, variant, how):
    data = EPS_VARIANTS[variant]
    with pytest.raises(Exception):  # noqa: B017 - plain Pillow does hand this one to gs
        Image.open(io.BytesIO(data)).load()
    assert ghostscript
    ghostscript.clear()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    url = f"https://pictures.example/{variant.replace(' ', '')}/photo.jpg"
    web.pages[url] = {"body": data}
    with pytest.raises(nst.ImageError) as caught:
        if how == "bytes":
            nst.load_image(data)
        elif how == "mask":
            nst.load_mask(path, (32, 32))
        else:
            nst.load_image(url if how == "https body" else path)
    assert ghostscript == []
    if how != "bytes":
        assert "photo.jpg" in str(caught.value)


def test_eps_upload_is_refused_leaves_nothing_and_runs_no_program(tmp_path, ghostscript):
    folder = tmp_path / "uploads"
    with pytest.raises(nst.ImageError, match="photo.jpg"):
        nst._save_upload("photo.jpg", EPS, "photo", folder)
    assert ghostscript == []
    assert not folder.exists() or snapshot(folder) == {}


@pytest.mark.parametrize(
    "fmt, suffix",
    [
        ("JPEG", ".jpg"),
        ("PNG", ".png"),
        ("WEBP", ".webp"),
        ("GIF", ".gif"),
        ("BMP", ".bmp"),
        ("TIFF", ".tif"),
        ("PPM", ".ppm"),
        ("MPO", ".mpo"),
    ],
)
def test_the_raster_formats_of_photos_still_load(tmp_path, fmt, suffix):
    path = tmp_path / f"picture{suffix}"
    img = Image.new("RGB", (48, 40), (200, 100, 50))
    extra = {"save_all": True, "append_images": [img]} if fmt == "MPO" else {}
    img.save(path, format=fmt, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPO: "2 frames; using the first"
        loaded = nst.load_image(path)
    assert loaded.size == (48, 40) and loaded.mode == "RGB"


# ---------------------------------------------------------- 2. names stay inside the output folder
SAVERS = {
    ".bin": lambda out, name: out.save_bytes(b"new data", name),
    ".json": lambda out, name: out.save_json({"new": 1}, name),
    ".png": lambda out, name: out.save_image(Image.new("RGB", (32, 32)), name),
    ".gif": lambda out, name: out.save_gif([np.zeros((32, 32, 3), np.uint8)] * 2, name),
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", sorted(SAVERS))
@pytest.mark.parametrize(
    "shape",
    [
        "../victim",
        "absolute",
        "sub/../../victim",
        "./../victim",
        "~/victim",
        "~root/victim",
        "sub/../../../victim",
    ],
)
def test_names_that_leave_the_folder_are_refused_and_nothing_is_written_outside(
    tmp_path, monkeypatch, shape, kind, overwrite
):
    home, folder = tmp_path / "home", tmp_path / "base" / "out"
    home.mkdir()
    folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(folder)
    name = (str(tmp_path / "base" / "victim") if shape == "absolute" else shape) + kind
    for victim in (tmp_path / "base", tmp_path, home):
        (victim / f"victim{kind}").write_bytes(b"the user's own file")
    before = snapshot(tmp_path)
    out = nst.OutputDir(".", overwrite=overwrite)  # "." so that "~" would have meant $HOME
    with pytest.raises(nst.ParameterError):
        SAVERS[kind](out, name)
    assert snapshot(tmp_path) == before
    assert not (folder / "~").exists()


@pytest.mark.parametrize("name", ["", ".", "a\0b.json", "sub/\0.json"])
def test_empty_nul_and_folder_names_are_refused(tmp_path, name):
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(tmp_path).save_bytes(b"x", name)
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "name",
    ["sub/dir/x.bin", "a..b.bin", "x~.bin", "..x.bin", "x..bin", "é" * 50 + ".bin", "~draft.bin"],
)
def test_odd_but_confined_names_are_written_inside(tmp_path, name):
    path = nst.OutputDir(tmp_path).save_bytes(b"data", name)
    assert path.read_bytes() == b"data"
    assert path.resolve().is_relative_to(tmp_path.resolve()) and path.name == Path(name).name


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_subfolder_that_links_out_of_the_folder_is_refused(tmp_path):
    outside, folder = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    folder.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(folder).save_bytes(b"x", "link/x.bin")
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(folder, overwrite=True).save_json({}, "link/deeper/x.json")
    assert list(outside.iterdir()) == []  # not even a folder
    assert nst.OutputDir(folder).save_bytes(b"x", "real/deeper/x.bin").read_bytes() == b"x"


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_overwrite_replaces_a_link_itself_never_the_file_it_points_to(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"the user's own file")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "r.json").symlink_to(victim)
    path = nst.OutputDir(folder, overwrite=True).save_json({"new": 1}, "r.json")
    assert victim.read_bytes() == b"the user's own file"
    assert json.loads(path.read_text()) == {"new": 1} and not path.is_symlink()


# ------------------------------------------------------------- 3. uploads into the checked folder
def test_the_upload_cell_runs_after_the_set_up_cell_into_the_checked_folder():
    cells = code_cells()
    setup = [i for i, c in enumerate(cells) if "nst.check_settings(globals()" in c]
    upload = [i for i, c in enumerate(cells) if "ask_for_pictures(" in c]
    assert len(setup) == len(upload) == 1 and setup[0] < upload[0]
    call = next(
        node
        for node in ast.walk(ast.parse(cells[upload[0]]))
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ask_for_pictures")
    )
    folder = {k.arg: ast.unparse(k.value) for k in call.keywords}.get("folder", "")
    assert "cfg.output_dir" in folder


@pytest.mark.parametrize("output_dir", ["", "   ", None, 0, "a\0b"])
def test_a_bad_output_dir_stops_the_set_up_cell_before_any_upload(
    tmp_path, monkeypatch, output_dir
):
    where = [ROOT / "None", ROOT / "uploads", ROOT / "0", Path("/uploads")]
    before = [p.exists() for p in where]
    with pytest.raises(nst.ParameterError, match="output_dir"):
        notebook_setup(monkeypatch, tmp_path, output_dir=output_dir)
    assert [p.exists() for p in where] == before
    assert not (tmp_path / "results").exists()


def test_asking_for_pictures_with_no_one_to_ask_creates_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_HEADLESS", "1")
    paths = {"photo": "assets/inputs/dog.jpg", "painting": "assets/inputs/scream.jpg"}
    for ask in (True, False, "false"):
        assert nst.ask_for_pictures(paths, ask=ask, folder=tmp_path / "uploads") == paths
    assert not (tmp_path / "uploads").exists()


def test_a_rejected_upload_leaves_nothing_a_good_one_is_saved_inside(tmp_path):
    folder = tmp_path / "results" / "uploads"
    for data in (b"<html>not a picture</html>", b"", png_bytes()[:60], EPS):
        with pytest.raises(nst.ImageError, match="photo.jpg"):
            nst._save_upload("photo.jpg", data, "photo", folder)
        assert not folder.exists() or snapshot(folder) == {}
    path = nst._save_upload("../../../etc/x\0y\n.png", png_bytes(3), "photo", folder)
    assert path.parent == folder and path.read_bytes() == png_bytes(3)
    assert "\0" not in path.name and "\n" not in path.name and ".." not in path.parts


def test_the_upload_picker_shows_every_error_as_text(tmp_path, monkeypatch):
    import IPython.display
    import ipywidgets

    handles, pickers = {}, []

    class Handle:
        def __init__(self):
            self.shown = []

        def update(self, obj, raw=False):
            self.shown.append(obj.get("text/plain") if raw else obj)

    def display(obj, raw=False, display_id=False):
        handles[id(obj)] = Handle()
        return handles[id(obj)]

    class Picker:
        def __init__(self, **kwargs):
            self.callbacks = []
            pickers.append(self)

        def observe(self, callback, names=None):
            self.callbacks.append(callback)

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(ipywidgets, "FileUpload", Picker)
    folder = tmp_path / "uploads"
    chosen = {"photo": "assets/inputs/dog.jpg", "painting": "assets/inputs/scream.jpg"}
    nst._pickers(chosen, folder)
    photo_picker = pickers[0]
    shown = handles[id(photo_picker)].shown  # the text that replaces the photo's picker
    for item in (
        {"name": "holiday.jpg", "content": b"not a picture"},
        {"name": "eps.jpg", "content": EPS},
        {"name": "none.jpg", "content": None},
    ):  # bytes(None): a TypeError
        before = len(shown)
        photo_picker.callbacks[0]({"new": [item]})  # must not raise
        assert len(shown) == before + 1 and isinstance(shown[-1], str)
        assert item["name"] in shown[-1] or "photo" in shown[-1]
    assert chosen["photo"] == "assets/inputs/dog.jpg"
    assert not folder.exists() or snapshot(folder) == {}

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(nst, "_save_upload", broken)
    photo_picker.callbacks[0]({"new": [{"name": "x.png", "content": png_bytes()}]})
    assert "disk on fire" in shown[-1]
    monkeypatch.undo()
    monkeypatch.setattr(IPython.display, "display", display)
    photo_picker.callbacks[0]({"new": [{"name": "mine.png", "content": png_bytes(5)}]})
    assert Path(chosen["photo"]).read_bytes() == png_bytes(5)


# ------------------------------------------------------------------------------ 4. https only
class FakeResponse:
    """What an opener's https handler returns: a status, headers, a body (or a dripping one)."""

    def __init__(self, url, code=200, body=b"", location=None, drip=None):
        self.url, self.code, self.status = url, code, code
        self.msg, self.reason = ("OK" if code == 200 else "Found"), "test"
        self.headers = email.message.Message()
        if location:
            self.headers["Location"] = location
        self._body, self._drip = io.BytesIO(body), drip

    def info(self):
        return self.headers

    def geturl(self):
        return self.url

    def read1(self, n=-1):
        return self._drip() if self._drip else self._body.read1(n)

    def read(self, n=-1):  # as a socket: blocks until n bytes or the end
        if not self._drip:
            return self._body.read(n)
        chunks = []
        while (chunk := self._drip()) and (n is None or n < 0 or sum(map(len, chunks)) < n):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def web(monkeypatch):
    """A fake internet for urllib: ``web.pages[url] = {"body": ..., "code": ..., "location": ...}``
    served by https; ``web.asked``: the https URLs requested; ``web.elsewhere``: any request by
    another scheme (refused)."""
    site = SimpleNamespace(pages={}, asked=[], elsewhere=[])

    def https_open(handler, request):
        site.asked.append(request.full_url)
        page = site.pages.get(request.full_url, {"code": 404})
        return FakeResponse(request.full_url, **page)

    def elsewhere(handler, request):
        site.elsewhere.append(request.full_url)
        raise urllib.error.URLError("the test serves https only")

    monkeypatch.setattr(urllib.request.HTTPSHandler, "https_open", https_open)
    for cls, method in (
        (urllib.request.HTTPHandler, "http_open"),
        (urllib.request.FTPHandler, "ftp_open"),
        (urllib.request.FileHandler, "file_open"),
        (urllib.request.DataHandler, "data_open"),
    ):
        monkeypatch.setattr(cls, method, elsewhere)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen builds one with the fakes
    forget_downloads()
    yield site
    forget_downloads()


@pytest.fixture
def http_server():
    """A real plain-http server that serves a picture, on 127.0.0.2: a loopback address, but not
    one that names this machine; (base URL, paths asked)."""
    asked: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    except OSError as exc:
        pytest.skip(f"cannot serve on 127.0.0.2 here ({exc})")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    forget_downloads()
    yield f"http://127.0.0.2:{server.server_port}", asked
    server.shutdown()
    server.server_close()
    forget_downloads()


def test_plain_http_is_refused_without_asking_the_server(http_server):
    base, asked = http_server
    url = f"{base}/dog.png"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    direct.open(url, timeout=5).close()  # the server is there
    asked.clear()
    with pytest.raises(nst.ImageError, match="127.0.0.2"):
        nst.load_image(url)
    with pytest.raises(nst.ParameterError, match="content_path"):
        nst.image_source("content_path", url)
    with pytest.raises(nst.ImageError):
        nst.load_mask(url, (32, 32))
    assert asked == []


@pytest.mark.parametrize(
    "url",
    [
        "http://pictures.example/dog.png",
        "HTTP://203.0.113.9/a.png",
        "http://[2001:db8::1]/a.png",
        "ftp://pictures.example/dog.png",
        "FTP://pictures.example/a.png",
        "file:///etc/hostname",
        "data:image/png;base64,iVBORw0KGgo=",
        "https:///no-host.png",
    ],
)
def test_other_schemes_are_refused(web, url):
    with pytest.raises(nst.ImageError):
        nst.load_image(url)
    with pytest.raises(nst.ParameterError, match="style_path"):
        nst.image_source("style_path", url)
    assert web.elsewhere == [] and web.asked == []


@pytest.mark.parametrize(
    "target",
    [
        "ftp://pictures.example/dog.png",
        "http://pictures.example/a",
        "file:///etc/passwd",
        "data:,x",
        "gopher://x.example/",
        "http://127.0.0.1:8888/api/x",
        "http://localhost/x.png",
    ],
)
def test_https_only_refuses_a_redirect_off_https(target):
    request = urllib.request.Request("https://pictures.example/dog.png")
    with pytest.raises(nst.ImageError, match="pictures.example/dog.png"):
        nst._HttpsOnly().redirect_request(request, None, 302, "Found", {}, target)
    new = nst._HttpsOnly().redirect_request(
        request, None, 301, "Moved", {}, "https://cdn.example/dog.png"
    )
    assert new.full_url == "https://cdn.example/dog.png"


def test_a_loopback_http_server_may_redirect_on_this_machine():
    request = urllib.request.Request("http://127.0.0.1:8000/dog.png")
    for target in ("http://localhost:8000/b.png", "https://cdn.example/dog.png"):
        assert (
            nst._HttpsOnly().redirect_request(request, None, 302, "Found", {}, target).full_url
            == target
        )
    with pytest.raises(nst.ImageError):
        nst._HttpsOnly().redirect_request(request, None, 302, "Found", {}, "http://x.example/")


@pytest.mark.parametrize(
    "target",
    [
        "ftp://files.example/dog.png",
        "http://files.example/dog.png",
        "http://127.0.0.1:8888/api/contents",
    ],
)
def test_a_redirect_off_https_is_not_followed(web, target):
    url = f"https://pictures.example/moved-{abs(hash(target))}.png"
    web.pages[url] = {"code": 302, "location": target}
    with pytest.raises(nst.ImageError, match="pictures.example"):
        nst.load_image(url)
    assert web.elsewhere == []


def test_a_redirect_that_stays_on_https_is_followed(web):
    web.pages["https://pictures.example/old.png"] = {
        "code": 301,
        "location": "https://cdn.example/new.png",
    }
    web.pages["https://cdn.example/new.png"] = {"body": png_bytes(2)}
    assert nst.load_image("https://pictures.example/old.png").getpixel((0, 0)) == colour(2)


# ------------------------------------------------- 5. no empty or partial file under a final name
def test_ctrl_c_between_writing_and_naming_leaves_no_file(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = nst.OutputDir(tmp_path)
    monkeypatch.setattr(os, "link", interrupt)
    monkeypatch.setattr(os, "replace", interrupt)
    for save in (
        lambda: out.save_json({"a": 1}, "r.json"),
        lambda: out.save_image(Image.new("RGB", (32, 32)), "r.png"),
        lambda: out.save_gif([np.zeros((32, 32, 3), np.uint8)] * 2, "r.gif"),
    ):
        with pytest.raises(KeyboardInterrupt):
            save()
    assert snapshot(tmp_path) == {}  # no empty claim, no temporary


def test_ctrl_c_in_the_middle_of_writing_leaves_no_final_file(tmp_path, monkeypatch):
    real_open = open

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(nst, "open", lambda *a, **k: HalfWriter(real_open(*a, **k)), raising=False)
    with pytest.raises(KeyboardInterrupt):
        nst.OutputDir(tmp_path).save_json({"loss": list(range(500))}, "r.json")
    assert final_files(tmp_path) == []


@needs_fork
def test_ctrl_c_at_random_moments_of_save_json_never_leaves_a_broken_file(tmp_path):
    out, record = nst.OutputDir(tmp_path), {"loss": [i / 7 for i in range(3000)]}
    rng, armed, interrupted = random.Random(20), [False], 0

    def alarm(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and interrupted < 1500:
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00005, 0.004))
                    out.save_json(record, "r.json")
                    armed[0] = False
                finally:
                    armed[0] = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    files = final_files(tmp_path)
    assert interrupted >= 100 and files
    for path in files:
        assert json.loads(path.read_bytes()) == record, path


def _save_forever(folder: Path, pictures: list[bytes]) -> None:
    out = nst.OutputDir(folder)
    for i in range(10**9):
        png = out.save_bytes(pictures[i % len(pictures)], "run.png")
        out.save_json(
            {"run": i % len(pictures), "picture": png.name, "loss": [0.5] * 400 * (1 + i % 3)},
            f"{png.stem}.json",
        )


@needs_fork
def test_sigkill_at_random_moments_never_leaves_an_empty_or_partial_file(tmp_path):
    pictures = [png_bytes(i, (48 + 16 * i, 40), noise=True) for i in range(4)]
    rng, kills, deadline = random.Random(5), 0, time.monotonic() + 10
    while kills < 100 and time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:  # the child saves until killed
            try:
                _save_forever(tmp_path / f"kill{kills}", pictures)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.001, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
    files = final_files(tmp_path)
    assert kills >= 40 and len(files) > kills
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data in pictures, f"{path}: {len(data)} bytes, not a whole picture"
        else:
            record = json.loads(data)  # complete, or this fails
            assert record["picture"] == f"{path.stem}.png"
            assert (path.parent / record["picture"]).read_bytes() == pictures[record["run"]]


def test_a_second_ctrl_c_right_after_an_interrupt_is_absorbed(monkeypatch):
    previous = signal.getsignal(signal.SIGINT)
    try:
        monitor = nst.Monitor(torch.rand(1, 3, 32, 32), 10, print_every=0)
        monitor.interrupt()
        handler = signal.getsignal(signal.SIGINT)
        try:  # what a second press does (called directly: a real one could stop pytest)
            handler(signal.SIGINT, None)
        except KeyboardInterrupt:
            pytest.fail("a Ctrl-C right after the interrupt would break the next cell")
        real = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: real() + 3)  # 2 s later: Ctrl-C works again
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        assert monitor.result().stop_reason == "interrupted"
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------- 6. settings that would lose the run at its end
@pytest.mark.parametrize(
    "name, art",
    [("n" * 200, "a" * 200), ("é" * 120, "ü" * 120), ("photo", "p" * 240), ("~dog", "~scream")],
    ids=["ascii 200+200", "utf-8 240+240 bytes", "short+240", "tilde"],
)
def test_the_saving_cell_saves_a_run_with_long_or_odd_input_names(tmp_path, name, art):
    png, folder = saving_cell(tmp_path, name, art)["png"], tmp_path / "results"
    assert len(list(folder.iterdir())) == 1 + len(SIBLINGS)
    for suffix in SIBLINGS:
        assert (folder / f"{png.stem}{suffix}").is_file(), suffix
    assert json.loads((folder / f"{png.stem}.json").read_text())["picture"] == png.name


@pytest.mark.parametrize(
    "name, art",
    [("漢" * 80, "字" * 80), ("🎨" * 60, "🖼" * 60), ("漢" * 40, "字" * 36)],
    ids=["cjk", "emoji", "cjk 40+36"],
)
def test_the_saving_cell_saves_a_run_with_long_multibyte_names(tmp_path, name, art):
    ns = saving_cell(tmp_path, name, art)
    for suffix in SIBLINGS:
        assert (tmp_path / "results" / f"{ns['png'].stem}{suffix}").is_file()


def test_a_picture_whose_sibling_names_would_be_too_long_is_refused_before_writing(tmp_path):
    stem = "s" * 229  # s...s.png fits (233 bytes), s...s-overview.png (242) does not
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(tmp_path).save_image(
            Image.new("RGB", (32, 32)), f"{stem}.png", siblings=SIBLINGS
        )
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "name",
    ["x" * 241 + ".bin", "é" * 121 + ".bin", "sub/" + "y" * 300],
    ids=["245 bytes", "246 bytes utf-8", "300 bytes in sub/"],
)
def test_a_name_over_240_bytes_is_a_parameter_error_and_writes_nothing(tmp_path, name):
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(tmp_path).save_bytes(b"x", name)
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "ms, ok", [(655_350, True), (655_351, False), (10**7, False), (9, False), (10, True)]
)
def test_the_notebook_refuses_gif_frame_ms_a_gif_cannot_store(tmp_path, monkeypatch, ms, ok):
    if ok:
        assert notebook_setup(monkeypatch, tmp_path, gif_frame_ms=ms)["cfg"].gif_frame_ms == ms
    else:
        with pytest.raises(nst.ParameterError, match="gif_frame_ms"):
            notebook_setup(monkeypatch, tmp_path, gif_frame_ms=ms)
        assert not (tmp_path / "results").exists()  # refused before the output folder is made


def test_save_gif_stores_the_longest_frames_and_refuses_longer_ones(tmp_path):
    out, frames = nst.OutputDir(tmp_path), [np.full((32, 32, 3), v, np.uint8) for v in (0, 255)]
    path = out.save_gif(frames, "slow.gif", duration_ms=655_350, last_frame_ms=655_350)
    with Image.open(path) as gif:
        assert gif.info["duration"] == 655_350
    for knob in ("duration_ms", "last_frame_ms"):
        with pytest.raises(nst.ParameterError, match=knob):
            out.save_gif(frames, "too_slow.gif", **{knob: 655_351})
    assert [p.name for p in final_files(tmp_path)] == ["slow.gif"]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_is_found_by_the_writability_probe(tmp_path, monkeypatch, where):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            full()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(
            nst, "open", lambda *a, **k: FullFile(real_open(*a, **k)), raising=False
        )
    folder = tmp_path / "results"
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", str(folder))
    assert snapshot(folder) == {}  # the probe is gone
    with pytest.raises(nst.ParameterError, match="output_dir"):
        notebook_setup(monkeypatch, tmp_path, output_dir=str(folder))


def test_the_writability_probe_writes_and_syncs_real_data(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = nst.output_folder("output_dir", str(tmp_path / "a" / "b"))
    assert folder.is_absolute() and folder.is_dir() and snapshot(folder) == {}
    assert synced and synced[0] >= 2**16


def test_a_full_disk_mid_save_keeps_the_earlier_file(tmp_path, monkeypatch):
    out, out_over = nst.OutputDir(tmp_path), nst.OutputDir(tmp_path, overwrite=True)
    out.save_json({"run": 1}, "r.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", full)
    monkeypatch.setattr(os, "replace", full)
    for saver in (out, out_over):
        with pytest.raises(nst.ParameterError, match="r.json"):
            saver.save_json({"run": 2}, "r.json")
    assert snapshot(tmp_path) == {"r.json": json.dumps({"run": 1}, indent=1).encode()}


# ------------------------------------------------------------ 7. planted or foreign temporaries
def test_planted_and_foreign_temporaries_neither_break_saves_nor_are_deleted(tmp_path):
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    planted = [
        ".x.99999999999999999999-1-abcd.nst-tmp",
        f".x.{host}-99999999999999999999-abcd.nst-tmp",
        f".r.png.{host}-{dead}-0123abcd.nst-tmp",  # "dead" here, alive in another container
        f".r.json.{host}-4194305-0123abcd.nst-tmp",
        ".r.json.nonsense.nst-tmp",
        ".write-test.0123456789ab.nst-tmp",
    ]
    for name in planted:
        (tmp_path / name).write_bytes(b"another process's temporary")
    out = nst.OutputDir(tmp_path)
    out.save_image(Image.new("RGB", (32, 32)), "r.png")
    out.save_json({"a": 1}, "r.json")
    out.save_gif([np.zeros((32, 32, 3), np.uint8)] * 2, "r.gif")
    for name in planted:
        assert (tmp_path / name).read_bytes() == b"another process's temporary", name
    assert sorted(p.name for p in final_files(tmp_path)) == ["r.gif", "r.json", "r.png"]


# ------------------------------------------------------------------ 8. protect, parallel overwrite
def test_relative_protect_paths_are_fixed_when_the_folder_is_made(tmp_path, monkeypatch):
    inputs, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    inputs.mkdir()
    elsewhere.mkdir()
    (inputs / "photo.png").write_bytes(png_bytes(1))
    monkeypatch.chdir(inputs)
    out = nst.OutputDir(
        inputs, overwrite=True, protect=["photo.png", None, "https://x.example/a.png"]
    )
    relative = nst.OutputDir(".", overwrite=True, protect=["./photo.png"])
    monkeypatch.chdir(elsewhere)  # a %cd between the set-up and the saving cells
    (elsewhere / "photo.png").write_bytes(b"elsewhere")
    for o in (out, relative):
        written = o.save_image(Image.new("RGB", (32, 32), colour(4)), "photo.png")
        assert written.parent == inputs and written.name != "photo.png"
    assert (inputs / "photo.png").read_bytes() == png_bytes(1)
    assert (elsewhere / "photo.png").read_bytes() == b"elsewhere"
    assert relative.save_json({}, "x.json") == inputs / "x.json"


def test_a_save_never_replaces_what_a_parallel_overwrite_save_wrote(tmp_path, monkeypatch):
    out, rival = nst.OutputDir(tmp_path), nst.OutputDir(tmp_path, overwrite=True)
    real_link, real_replace, armed = os.link, os.replace, [True]

    def race(real):
        def op(src, dst, *args, **kwargs):
            if armed[0] and Path(dst).name == "r.bin":
                armed[0] = False  # the rival's save lands right before ours
                rival.save_bytes(b"the rival's data", "r.bin")
            return real(src, dst, *args, **kwargs)

        return op

    monkeypatch.setattr(os, "link", race(real_link))
    monkeypatch.setattr(os, "replace", race(real_replace))
    mine = out.save_bytes(b"my data", "r.bin")
    assert not armed[0]
    assert sorted(snapshot(tmp_path).values()) == [b"my data", b"the rival's data"]
    assert mine.read_bytes() == b"my data"


# ---------------------------------------------------------------- 9. one stem per run, paired
@pytest.mark.parametrize("stale", [[".json"], [".gif"], ["-overview.png"], [".json", "-1.gif"]])
def test_a_stale_sibling_moves_the_whole_run_to_a_new_stem(tmp_path, stale):
    for suffix in stale:
        (tmp_path / f"dog_starry_night{suffix}").write_bytes(b"an earlier run")
    out = nst.OutputDir(tmp_path)
    png = out.save_image(Image.new("RGB", (32, 32)), "dog_starry_night.png", siblings=SIBLINGS)
    assert png.stem == ("dog_starry_night-2" if len(stale) == 2 else "dog_starry_night-1")
    for suffix in SIBLINGS:
        assert not (tmp_path / f"{png.stem}{suffix}").exists()
    for suffix in stale:
        assert (tmp_path / f"dog_starry_night{suffix}").read_bytes() == b"an earlier run"


def test_the_saving_cell_names_the_json_after_its_picture_despite_a_stale_json(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "dog_starry_night.json").write_text('{"stale": true}')
    first = saving_cell(tmp_path, "dog", "starry_night")["png"]
    second = saving_cell(tmp_path, "dog", "starry_night")["png"]
    assert (first.name, second.name) == ("dog_starry_night-1.png", "dog_starry_night-2.png")
    for png in (first, second):
        record = json.loads((folder / f"{png.stem}.json").read_text())
        assert record["picture"] == png.name
        assert (folder / f"{png.stem}.gif").is_file()
        assert (folder / f"{png.stem}-overview.png").is_file()
    assert json.loads((folder / "dog_starry_night.json").read_text()) == {"stale": True}


def test_forty_parallel_runs_each_pair_their_picture_and_json(tmp_path):
    out, barrier, errors = nst.OutputDir(tmp_path), threading.Barrier(40), []

    def run(i: int) -> None:
        try:
            barrier.wait()
            png = out.save_image(
                Image.new("RGB", (32, 32), colour(i)), "dog_starry_night.png", siblings=SIBLINGS
            )
            out.save_json({"run": i, "picture": png.name}, f"{png.stem}.json")
            out.save_gif([np.full((32, 32, 3), colour(i), np.uint8)] * 2, f"{png.stem}.gif")
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    records = [json.loads(p.read_text()) | {"stem": p.stem} for p in tmp_path.glob("*.json")]
    assert sorted(r["run"] for r in records) == list(range(40))
    for r in records:
        assert r["picture"] == f"{r['stem']}.png"
        assert colour_of(tmp_path / r["picture"]) == colour(r["run"])
        assert colour_of(tmp_path / f"{r['stem']}.gif") == colour(r["run"])


# ------------------------------------------------------------ 10. data that is not what it says
@pytest.mark.parametrize(
    "low, high", [(-1.0, 1.0), (0.0, 2.0), (-0.5, 0.5), (0.0, 255.0), (-0.02, 1.0), (0.0, 1.02)]
)
def test_float_data_outside_0_1_is_refused_and_nothing_written(tmp_path, low, high):
    image = torch.linspace(low, high, 3 * 32 * 32).reshape(1, 3, 32, 32)
    out = nst.OutputDir(tmp_path)
    with pytest.raises(nst.ParameterError):
        out.save_image(image, "r.png")
    with pytest.raises(nst.ParameterError):
        out.save_gif([image, image], "r.gif")
    with pytest.raises(nst.ParameterError):
        nst.tensor_to_image(image[0].double())
    assert snapshot(tmp_path) == {}


def test_float_data_a_rounding_error_outside_0_1_is_clipped(tmp_path):
    image = torch.linspace(-0.005, 1.005, 32 * 32).reshape(1, 1, 32, 32).expand(1, 3, 32, 32)
    path = nst.OutputDir(tmp_path).save_image(image, "r.png")
    with Image.open(path) as saved:
        assert saved.getextrema() == ((0, 255),) * 3


@pytest.mark.parametrize("bad", ["[3, H, W]", "uint8", "[H, W]", "numpy", "int64", "list"])
def test_features_refuses_anything_but_a_float_batch_of_images(bad):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    good = torch.rand(1, 3, 16, 16)
    assert nst.features(net, good, ["0"])["0"].shape == (1, 4, 14, 14)
    image = {
        "[3, H, W]": good[0],
        "uint8": (good * 255).to(torch.uint8),
        "[H, W]": good[0, 0],
        "numpy": good.numpy(),
        "int64": good.long(),
        "list": good.tolist(),
    }[bad]
    with pytest.raises(nst.ParameterError, match="features"):
        nst.features(net, image, ["0"])


# ---------------------------------------------------------------------------- 11. misspelt knobs
def spec() -> dict:
    return {
        "style_weight": nst.number(0),
        "content_weight": nst.number(0),
        "content_path": nst.ignored,
    }


@pytest.mark.parametrize(
    "typo",
    [
        "style_wieght",
        "styel_weight",
        "style_weigth",
        "contnet_path",
        "Style_weight",
        "content_weights",
    ],
)
def test_a_misspelt_setting_is_refused(typo):
    settings = {"style_weight": 5.0, "content_weight": 1.0, "content_path": "x.jpg", typo: 1e20}
    with pytest.raises(nst.ParameterError, match=typo):
        nst.check_settings(settings, spec())


def test_other_names_pass_the_typo_check():
    settings = {
        "style_weight": 5.0,
        "content_weight": 1.0,
        "content_path": "x.jpg",
        "upload": False,
        "REPO_URL": "https://x.example",
        "_style_wieght": 1.0,
        "style_weights": lambda: 0,
        "photo": "mine.jpg",
        "n": 3,
    }
    cfg = nst.check_settings(settings, spec())
    assert cfg.style_weight == 5.0 and not hasattr(cfg, "upload")


def test_the_notebook_stops_a_misspelt_knob_in_its_set_up_cell(tmp_path, monkeypatch):
    with pytest.raises(nst.ParameterError, match="style_wieght"):
        notebook_setup(monkeypatch, tmp_path, style_wieght=1e20)
    assert not (tmp_path / "results").exists()
    cfg = notebook_setup(monkeypatch, tmp_path, style_weight=20.0)["cfg"]  # no false alarm
    assert cfg.style_weight == 20.0


# ---------------------------------------------------------------------- 12. hangs: FIFO, drip
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize(
    "call", ["load_image", "load_mask", "image_source", "check_settings", "symlink"]
)
def test_a_fifo_as_a_picture_is_refused_at_once(tmp_path, call):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    if call == "symlink":
        (tmp_path / "link.jpg").symlink_to(fifo)
    calls = {
        "load_image": lambda: nst.load_image(fifo),
        "load_mask": lambda: nst.load_mask(fifo, (32, 32)),
        "image_source": lambda: nst.image_source("content_path", str(fifo)),
        "check_settings": lambda: nst.check_settings(
            {"content_path": str(fifo)}, {"content_path": nst.image_source}
        ),
        "symlink": lambda: nst.load_image(tmp_path / "link.jpg"),
    }
    try:
        hung, outcome = within(5, calls[call])
    finally:  # unblock a reader stuck in open() (as the old code was)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert not hung, "reading a FIFO hung"
    assert isinstance(outcome.get("error"), nst.NSTError)
    assert "photo.jpg" in str(outcome["error"]) or "link.jpg" in str(outcome["error"])
    if call in ("image_source", "check_settings"):
        assert "content_path" in str(outcome["error"])


@pytest.mark.parametrize("device_file", ["/dev/null", "/dev/zero", "/dev/urandom"])
def test_device_files_are_refused(device_file):
    if not Path(device_file).exists():
        pytest.skip(f"no {device_file}")
    hung, outcome = within(5, lambda: nst.load_image(device_file))
    assert not hung and isinstance(outcome.get("error"), nst.ImageError)
    assert device_file in str(outcome["error"])


def test_a_dripping_server_hits_the_overall_deadline(web, monkeypatch):
    stop = threading.Event()

    def drip():
        time.sleep(0.05)
        return b"" if stop.is_set() else b"x"

    url = "https://slow.example/drip.png"
    web.pages[url] = {"drip": drip}
    monkeypatch.setattr(nst, "DOWNLOAD_SECONDS", 0.6)
    started = time.monotonic()
    try:
        hung, outcome = within(8, lambda: nst.load_image(url))
    finally:
        stop.set()
    assert not hung, "the download was never timed out"
    assert isinstance(outcome.get("error"), nst.ImageError) and "slow.example" in str(
        outcome["error"]
    )
    assert time.monotonic() - started < 4


def test_a_download_over_the_size_limit_is_refused(web, monkeypatch):
    url = "https://big.example/huge.png"
    web.pages[url] = {"body": png_bytes(0, (400, 400), noise=True)}
    monkeypatch.setattr(nst, "MAX_DOWNLOAD_BYTES", 10_000)
    with pytest.raises(nst.ImageError, match="big.example"):
        nst.load_image(url)


def test_a_picture_is_downloaded_once_per_session(web):
    url = "https://pictures.example/once.png"
    web.pages[url] = {"body": png_bytes(6)}
    for size in (None, 38, 36):
        nst.load_image(url, size)
    assert web.asked == [url]


# -------------------------------------------------------------- 13. our errors, not raw ones
@pytest.mark.parametrize(
    "url, host",
    [
        ("https://bücher.example/ägypten/bild 1.png?größe=groß", "xn--bcher-kva.example"),
        ("https://example.com/Fotos/Straße mit Bäumen.png", "example.com"),
        ("https://例え.テスト/画像.png", "xn--r8jz45g.xn--zckzah"),
        (" https://EXAMPLE.com:8443/a%20b/ü.png ", "example.com:8443"),
    ],
)
def test_a_non_ascii_url_is_made_ascii(web, url, host):
    ascii_url = nst._checked_url(url)
    assert ascii_url.isascii() and ascii_url.startswith(f"https://{host}/")
    assert ("%20" in ascii_url or " " not in url.strip()) and "%2520" not in ascii_url
    web.pages[ascii_url] = {"body": png_bytes(7)}
    assert nst.load_image(url).getpixel((0, 0)) == colour(7)
    assert web.asked == [ascii_url]


def test_an_invalid_host_name_is_an_image_error():
    with pytest.raises(nst.ImageError):
        nst._checked_url("https://" + "a" * 70 + ".example/x.png")  # a label over 63 characters


def _permission_cases(base: Path) -> dict:
    """What nst_utils does with a folder one may not enter, an unreadable file and a read-only
    folder, as {case: [error type, message]}; run as a user without root's privileges."""
    cases = {
        "locked": lambda: nst.load_image(base / "locked" / "photo.png"),
        "locked source": lambda: nst.image_source(
            "content_path", str(base / "locked" / "photo.png")
        ),
        "unreadable": lambda: nst.load_image(base / "unreadable.png"),
        "unreadable mask": lambda: nst.load_mask(base / "unreadable.png", (32, 32)),
        "read-only output": lambda: nst.output_folder("output_dir", str(base / "ro")),
        "read-only save": lambda: nst.OutputDir(base / "ro").save_bytes(b"x", "x.bin"),
        "read-only upload": lambda: nst._save_upload(
            "p.png", png_bytes(), "photo", base / "ro" / "uploads"
        ),
    }
    outcome = {}
    for case, call in cases.items():
        try:
            call()
            outcome[case] = ["no error", ""]
        except BaseException as exc:  # noqa: B036 - reported to the parent
            outcome[case] = [type(exc).__name__, str(exc)]
    return outcome


def _as_unprivileged(fn, *args) -> dict:
    """``fn(*args)`` in a forked child that has given up root (uid and gid 65534)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = fn(*args)
        except BaseException as exc:  # noqa: B036 - reported to the parent
            result = {"child": [type(exc).__name__, str(exc)]}
        try:
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 2**16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)


@needs_fork
def test_permission_errors_are_our_errors_naming_the_path():
    base = Path(tempfile.mkdtemp(prefix="nst-perm-"))
    try:
        base.chmod(0o755)
        (base / "locked").mkdir(mode=0o700)
        (base / "locked" / "photo.png").write_bytes(png_bytes())
        (base / "unreadable.png").write_bytes(png_bytes())
        (base / "unreadable.png").chmod(0)
        (base / "ro").mkdir(mode=0o555)
        if os.geteuid() == 0:  # root may read anything: test as an ordinary user
            outcome = _as_unprivileged(_permission_cases, base)
            if "child" in outcome:
                pytest.skip(f"cannot give up root here: {outcome['child']}")
        else:
            outcome = _permission_cases(base)
    finally:
        for path in (base / "locked", base / "ro"):
            path.chmod(0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    for case, (kind, message) in outcome.items():
        expected = (
            "ImageError"
            if case in ("locked", "unreadable", "unreadable mask")
            else ("ParameterError")
        )
        assert kind == expected, (case, kind, message)
        assert "corrupt" not in message, (case, message)
        where = {
            "locked": "photo.png",
            "locked source": "content_path",
            "unreadable": "unreadable",
            "unreadable mask": "unreadable",
            "read-only output": "output_dir",
            "read-only save": "x.bin",
            "read-only upload": "uploads",
        }[case]
        assert where in message, (case, message)


def test_a_file_that_cannot_be_opened_is_not_called_corrupt(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes())
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)  # e.g. an ACL or a race after the check
    with pytest.raises(nst.ImageError, match="photo.png") as caught:
        nst.load_image(path)
    assert "corrupt" not in str(caught.value)
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.fspath(p) != os.fspath(path))
    with pytest.raises(nst.ImageError, match="photo.png"):
        nst.load_image(path)
    with pytest.raises(nst.ParameterError, match="content_path"):
        nst.image_source("content_path", str(path))


@pytest.mark.parametrize("source", ["~nosuchuser_nst/photo.png", "~nosuchuser_nst"])
def test_an_unknown_home_folder_is_our_error(source):
    with pytest.raises(nst.ImageError, match="nosuchuser_nst"):
        nst.load_image(source)
    with pytest.raises(nst.ParameterError, match="content_path"):
        nst.image_source("content_path", source)
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", source)
    with pytest.raises(nst.ParameterError, match="nosuchuser_nst"):
        nst.OutputDir(source)


@pytest.mark.parametrize(
    "value, ok",
    [
        (2**64 - 1, True),
        (0, True),
        (2**64, False),
        (-1, False),
        (True, False),
        (1.0, False),
        ("1", False),
    ],
)
def test_the_seed_is_a_whole_number_torch_accepts(value, ok):
    check = nst.whole(0, 2**64 - 1)
    if ok:
        assert check("seed", value) == value
        torch.Generator().manual_seed(value)  # the range is the one torch takes
    else:
        with pytest.raises(nst.ParameterError, match="seed"):
            check("seed", value)


def test_the_notebook_refuses_seed_2_64_in_its_set_up_cell(tmp_path, monkeypatch):
    with pytest.raises(nst.ParameterError, match="seed"):
        notebook_setup(monkeypatch, tmp_path, seed=2**64)
    assert notebook_setup(monkeypatch, tmp_path, seed=2**64 - 1)["cfg"].seed == 2**64 - 1


@pytest.mark.parametrize("name", ["photo\0.png", "\0", "dir\0/photo.png"])
def test_a_nul_byte_in_a_name_is_our_error(tmp_path, name):
    with pytest.raises(nst.ImageError):
        nst.load_image(name)
    with pytest.raises(nst.ImageError):
        nst.load_mask(name, (32, 32))
    with pytest.raises(nst.ParameterError, match="content_path"):
        nst.image_source("content_path", name)
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", str(tmp_path / name))
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(tmp_path).save_bytes(b"x", name)
    with pytest.raises(nst.ParameterError):
        nst.OutputDir(tmp_path / name).save_bytes(b"x", "x.bin")


@pytest.mark.parametrize(
    "name",
    ["x" * 256 + ".png", "é" * 200 + ".png", "/".join(["d" * 200] * 30) + "/p.png"],
    ids=["260 bytes", "404 bytes utf-8", "path over 4096 bytes"],
)
def test_a_name_too_long_for_the_file_system_is_our_error(tmp_path, name):
    source = str(tmp_path / name)
    with pytest.raises(nst.ImageError) as caught:
        nst.load_image(source)
    assert source[:60] in str(caught.value)
    with pytest.raises(nst.ParameterError, match="content_path"):
        nst.image_source("content_path", source)
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", source)


@pytest.mark.parametrize("size", [244, 247, 250, 255])
def test_legal_long_utf8_names_are_read_and_uploaded(tmp_path, size):
    stem = "é" * ((size - 4) // 2) + "a" * ((size - 4) % 2)
    path = tmp_path / f"{stem}.png"
    assert len(path.name.encode()) == size
    try:
        path.write_bytes(png_bytes(8))
    except OSError as exc:
        pytest.skip(f"this file system refuses {size}-byte names ({exc})")
    assert nst.load_image(path).getpixel((0, 0)) == colour(8)
    assert nst.image_source("content_path", str(path)) == path
    saved = nst._save_upload(path.name, png_bytes(8), "painting", tmp_path / "uploads")
    assert saved.read_bytes() == png_bytes(8) and saved.suffix == ".png"
    assert len(saved.name.encode()) <= 240
    again = nst._save_upload(path.name, png_bytes(9), "painting", tmp_path / "uploads")
    assert again != saved and again.read_bytes() == png_bytes(9)


def test_a_folder_as_a_picture_is_our_error(tmp_path):
    with pytest.raises(nst.ImageError, match=tmp_path.name):
        nst.load_image(tmp_path)
    with pytest.raises(nst.ParameterError, match="style_path"):
        nst.image_source("style_path", str(tmp_path))


def test_a_file_as_the_output_folder_is_our_error(tmp_path):
    (tmp_path / "results").write_bytes(b"a file")
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", str(tmp_path / "results"))
    with pytest.raises(nst.ParameterError, match="output_dir"):
        nst.output_folder("output_dir", str(tmp_path / "results" / "sub"))
    assert stat.S_ISREG((tmp_path / "results").stat().st_mode)
