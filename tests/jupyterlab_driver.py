"""Drive JupyterLab in headless Chromium (Playwright for Python), for tests/test_browser.py.

A JupyterLab server on a temporary copy of the repository (its own Jupyter and JupyterLab
settings, no network), one Chromium with a fresh profile, and a `Notebook` that does what a person
does there (menus, toolbar buttons, pasting into a cell, file pickers) and reads what a person
sees (prompts, the text and pictures of each output area, the tab's unsaved-changes dot, colours).
`JupyterLab.stop()` and `Browser.close()` end every process they started, also after a failure."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

# Debian's package (Playwright cannot download browsers here); BROWSER_CHROMIUM points elsewhere.
CHROMIUM = Path(os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium"))
# Without these, Chromium's background connections (updates, sync, QUIC) are refused on a closed
# network, and it waits for them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COPY_SKIP = {
    ".git",
    "results",
    ".browser-artifacts",
    "__pycache__",
    ".pytest_cache",
    ".ipynb_checkpoints",
}
COPY_MAX_BYTES = 50_000_000  # a large model or data file: not what the notebook needs


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.is_file():
        return (
            f"no browser: {CHROMIUM} is missing (Debian: apt-get install chromium chromium-driver)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing (pip install playwright)"
    if shutil.which("jupyter-lab") is None:
        return "jupyter-lab is missing (pip install -r requirements.txt)"
    return None


# --------------------------------------------------------------------------- the copy, its cells


def copy_repository(source: Path, dest: Path) -> Path:
    """Copy the working tree as it is (tracked and untracked files, not what git ignores)."""
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-z", "-co", "--exclude-standard"],
                cwd=source,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
        files = [Path(name) for name in listed if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything
        files = [p.relative_to(source) for p in source.rglob("*") if p.is_file()]
    for rel in files:
        src = source / rel
        if COPY_SKIP & set(rel.parts) or not src.is_file() or src.stat().st_size > COPY_MAX_BYTES:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


def parameters_cell(notebook: dict) -> int:
    """The index (among all cells) of the cell tagged `parameters`."""
    tagged = [
        i for i, c in enumerate(notebook["cells"]) if "parameters" in c["metadata"].get("tags", [])
    ]
    assert len(tagged) == 1, "the notebook should have one cell tagged 'parameters'"
    return tagged[0]


def python_only(source: str) -> str:
    """A cell's source with its IPython magics and shell lines blanked (line numbers kept)."""
    return "".join(
        "\n" if line.lstrip().startswith(("%", "!")) else line
        for line in source.splitlines(keepends=True)
    )


def assigned(source: str) -> dict[str, object]:
    """The names a cell assigns at its top level, with their values where they are literals."""
    found: dict[str, object] = {}
    for node in ast.parse(python_only(source)).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        found[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        found[target.id] = None
    return found


def with_values(source: str, **values) -> str:
    """`source` with the value of each one-line `name = value` replaced (its comment kept); names
    it does not assign are appended."""
    lines = source.splitlines(keepends=True)
    todo = dict(values)
    for node in ast.parse(python_only(source)).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in todo
            and node.lineno == node.end_lineno
        ):
            line, value = lines[node.lineno - 1], repr(todo.pop(node.targets[0].id))
            lines[node.lineno - 1] = (
                line[: node.value.col_offset] + value + line[node.value.end_col_offset :]
            )
    text = "".join(lines)
    tail = "".join(f"{name} = {value!r}\n" for name, value in todo.items())
    return text + ("\n" if tail and not text.endswith("\n") else "") + tail


def set_parameters(path: Path, **values) -> str:
    """Rewrite the parameters cell of the notebook at `path` with `values`; return its source."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cell = notebook["cells"][parameters_cell(notebook)]
    cell["source"] = with_values("".join(cell["source"]), **values)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return cell["source"]


# --------------------------------------------------------------------------- processes


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every living descendant of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


def kill_all(processes: list[tuple[int, str]]) -> None:
    """SIGKILL each (pid, start time) that is still that process (a pid may have been reused)."""
    for pid, start in processes:
        if _start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """`jupyter-lab` on 127.0.0.1 (a free port, a token, --no-browser) serving `root`, with its own
    Jupyter, JupyterLab and IPython folders under `home`: no news or update checks, no autosave
    (saving is a step of the test), every cell kept in the page (no windowing)."""

    SETTINGS = {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "docmanager-extension/plugin": {"autosave": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }

    def __init__(self, root: Path, home: Path, log: Path) -> None:
        self.root, self.log_path = root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
        for var in (
            "JUPYTER_CONFIG_DIR",
            "JUPYTER_DATA_DIR",
            "JUPYTER_RUNTIME_DIR",
            "JUPYTERLAB_SETTINGS_DIR",
            "JUPYTERLAB_WORKSPACES_DIR",
            "IPYTHONDIR",
            "MPLCONFIGDIR",
        ):
            (home / var.lower()).mkdir(parents=True, exist_ok=True)
            env[var] = str(home / var.lower())
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")  # one core for the kernel: the machine is shared
        for plugin, values in self.SETTINGS.items():
            path = Path(
                env["JUPYTERLAB_SETTINGS_DIR"], "@jupyterlab", f"{plugin}.jupyterlab-settings"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        command = [
            "jupyter-lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            "--ServerApp.jpserver_extensions={'jupyter_lsp': False}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout=90)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.url}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"jupyter-lab exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                self.api("status")
                return
            time.sleep(0.3)
        raise RuntimeError(f"jupyter-lab did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        """Shut its kernels down, stop it, then kill whatever is left of its process tree (kernels
        run in sessions of their own, so they are found by parentage, before the server goes)."""
        tree = descendants(self.process.pid)
        with contextlib.suppress(Exception):
            for kernel in self.api("kernels"):  # type: ignore[union-attr]
                self.api(f"kernels/{kernel['id']}", method="DELETE")
        tree += [p for p in descendants(self.process.pid) if p not in tree]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        kill_all(tree)
        self._log.close()


class Browser:
    """Playwright driving Debian's Chromium with a fresh profile in `profile`; one page."""

    def __init__(self, profile: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.profile = profile
        self._playwright = sync_playwright().start()
        try:
            self.context = self._playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1400, "height": 1000},
                accept_downloads=False,
            )
        except BaseException:
            self.close()
            raise
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(30_000)

    def close(self) -> None:
        """Close the browser and Playwright; kill any of this profile's Chromium processes left."""
        tree = [p for p in descendants(os.getpid()) if str(self.profile) in _cmdline(p[0])]
        with contextlib.suppress(Exception):
            self.context.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()
        kill_all(tree)


# --------------------------------------------------------------------------- a notebook in the page

_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show
_CELLS = f"() => [...document.querySelectorAll('{_PANEL} .jp-Notebook .jp-Cell')]"

# For each cell: code or not, its prompt, and each output's mime type, visible text and pictures.
_READ_CELLS = (
    _CELLS
    + """.map(c => ({
    code: c.classList.contains('jp-CodeCell'),
    prompt: (c.querySelector('.jp-InputArea-prompt') || {innerText: ''}).innerText.trim(),
    outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        mime: o.dataset.mimeType
              || (o.querySelector('[data-mime-type]') || {dataset: {}}).dataset.mimeType || '',
        text: o.innerText,
        images: [...o.querySelectorAll('img')].map(i => i.src.length + ':' + i.src.slice(-64)),
    })),
}))"""
)

# What in a cell's outputs is filled with an error red (a red progress bar): 'tag.class colour'.
# (Red text belongs to a traceback, which is reported as error text.)
_RED_THINGS = (
    """(i) => {
    const cell = ("""
    + _CELLS
    + """)()[i];
    const red = (c) => {
        const m = c.match(/rgba?\\((\\d+), (\\d+), (\\d+)(?:, ([\\d.]+))?/);
        return m && (m[4] === undefined || +m[4] > 0.3)
               && +m[1] > 150 && +m[2] < 110 && +m[3] < 110;
    };
    const found = [];
    for (const el of cell.querySelectorAll('.jp-OutputArea-output, .jp-OutputArea-output *')) {
        const colour = getComputedStyle(el).backgroundColor;
        if (el.offsetWidth > 0 && el.offsetHeight > 0 && red(colour))
            found.push(el.tagName.toLowerCase() + '.' + [...el.classList].join('.') + ' ' + colour);
    }
    return found;
}"""
)

# From now on, note the index of every code cell whose prompt shows [*], however briefly.
_WATCH_RUNS = (
    """() => {
    if (window.__nstObserver) window.__nstObserver.disconnect();
    window.__nstRan = new Set();
    const note = () => ("""
    + _CELLS
    + """)().forEach((c, i) => {
        const p = c.querySelector('.jp-InputArea-prompt');
        if (p && p.textContent.includes('*')) window.__nstRan.add(i);
    });
    window.__nstObserver = new MutationObserver(note);
    window.__nstObserver.observe(document.querySelector('"""
    + _PANEL
    + """ .jp-Notebook'),
                                 {subtree: true, childList: true, characterData: true});
    note();
}"""
)

ERROR_TEXT = re.compile(r"Traceback|Error|Exception")  # in a traceback, "Error displaying widget"


class Notebook:
    """One notebook open in JupyterLab, read and driven as a person does."""

    def __init__(self, lab: JupyterLab, browser: Browser, path: str, shots: Path) -> None:
        self.lab, self.page, self.path, self.shots = lab, browser.page, path, shots
        self.n_shots = 0

    def cell(self, i: int):
        """Cell `i` (among all cells) as a Playwright locator."""
        return self.page.locator(f"{_PANEL} .jp-Notebook .jp-Cell").nth(i)

    # ---------------------------------------------------------------- looking
    def screenshot(self, name: str, cell: int | None = None) -> Path:
        """A picture of the page (scrolled to show `cell` first, if given) in the shots folder."""
        self.n_shots += 1
        target = self.shots / f"{self.n_shots:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
        with contextlib.suppress(Exception):
            if cell is not None:
                self.page.evaluate(f"() => ({_CELLS})()[{cell}].scrollIntoView({{block: 'start'}})")
            self.page.screenshot(path=str(target))
        return target

    def cells(self) -> list[dict]:
        return self.page.evaluate(_READ_CELLS)

    def execution_counts(self) -> list[int | None]:
        """Each cell's execution count as its prompt shows it (None: markdown, not run, queued)."""
        counts = []
        for cell in self.cells():
            m = re.search(r"\[(\d+)\]", cell["prompt"]) if cell["code"] else None
            counts.append(int(m.group(1)) if m else None)
        return counts

    def watch_runs(self) -> None:
        """From now on, note every code cell whose prompt shows [*] (queued or running)."""
        self.page.evaluate(_WATCH_RUNS)

    def ran(self) -> list[int]:
        """The code cells that were queued or running since watch_runs() and now show a number."""
        seen = set(self.page.evaluate("() => [...(window.__nstRan || [])]"))
        return [i for i, n in enumerate(self.execution_counts()) if i in seen and n is not None]

    def busy_cells(self) -> list[int]:
        return [i for i, c in enumerate(self.cells()) if c["code"] and "*" in c["prompt"]]

    def output_text(self, i: int) -> str:
        return "\n".join(o["text"] for o in self.cells()[i]["outputs"])

    def error_outputs(self, only: list[int] | None = None) -> dict[int, str]:
        """{cell: text} of the output areas (of cells `only`, None: all) that show error text."""
        found = {}
        for i, cell in enumerate(self.cells()):
            bad = [o["text"].strip() for o in cell["outputs"] if ERROR_TEXT.search(o["text"])]
            if bad and (only is None or i in only):
                found[i] = "\n".join(bad)[:1500]
        return found

    def red_things(self, i: int) -> list[str]:
        return self.page.evaluate(_RED_THINGS, i)

    def is_dirty(self) -> bool:
        """Whether the notebook's tab shows the unsaved-changes dot."""
        label = self.page.get_by_text(Path(self.path).name, exact=True)
        tab = self.page.locator("#jp-main-dock-panel .lm-TabBar-tab").filter(has=label).first
        return "jp-mod-dirty" in (tab.get_attribute("class") or "")

    def kernel_idle(self) -> bool:
        return (
            self.page.evaluate(
                f"() => (document.querySelector('{_PANEL} .jp-Notebook-ExecutionIndicator')"
                " || {dataset: {}}).dataset.status"
            )
            == "idle"
        )

    # ---------------------------------------------------------------- doing
    def open(self, n_cells: int, timeout: float = 90) -> None:
        """Open the notebook at its address; wait until all its cells show and its kernel idles."""
        self.page.goto(f"{self.lab.url}/lab/tree/{self.path}?token={self.lab.token}")
        self._wait_shown(n_cells, timeout)

    def reopen_from_file_browser(self, n_cells: int, timeout: float = 90) -> None:
        """Double-click the notebook in JupyterLab's file browser; wait as open() does."""
        label = self.page.get_by_text(Path(self.path).name, exact=True)
        self.page.locator(".jp-DirListing-item").filter(has=label).first.dblclick()
        self._wait_shown(n_cells, timeout)

    def _wait_shown(self, n_cells: int, timeout: float) -> None:
        self.page.wait_for_function(
            f"() => ({_CELLS})().length >= {n_cells}", timeout=timeout * 1000
        )
        self.wait_idle(timeout)

    def menu(self, *labels: str) -> None:
        """Click through the menu bar: menu("Run", "Run All Cells")."""
        top = self.page.locator(
            "#jp-menu-panel .lm-MenuBar-item", has_text=re.compile(f"^{re.escape(labels[0])}$")
        )
        top.click()
        for label in labels[1:]:
            name = self.page.locator(
                ".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(label)}")
            )
            self.page.locator(".lm-Menu:visible .lm-Menu-item", has=name).first.click()

    def accept_dialog(self, timeout: float = 10) -> bool:
        """Press the accept button (Restart, Shut Down, ...) of a dialog, if one comes in time."""
        button = self.page.locator(".jp-Dialog .jp-mod-accept").first
        try:
            button.wait_for(timeout=timeout * 1000)
        except Exception:
            return False
        button.click()
        return True

    def toolbar(self, name: str) -> None:
        """Click a button of the notebook's toolbar ('interrupt', 'restart', 'save', ...)."""
        item = f"{_PANEL} .jp-NotebookPanel-toolbar [data-jp-item-name='{name}']"
        self.page.locator(f"{item} jp-button, {item} button").first.click()

    def select(self, i: int) -> None:
        """Select cell `i` (a click in its prompt area), in command mode."""
        cell = self.cell(i)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")

    def run_cell(self, i: int) -> None:
        """Select cell `i` and run it in place (Ctrl+Enter)."""
        self.select(i)
        self.page.keyboard.press("Control+Enter")

    def replace_source(self, i: int, text: str) -> None:
        """Click into cell `i`'s editor, select all and paste `text` over it."""
        cell = self.cell(i)
        cell.scroll_into_view_if_needed()
        cell.locator(".cm-content").first.click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.insert_text(text)
        self.page.keyboard.press("Escape")

    def wait_idle(self, timeout: float = 180, settle: float = 1.5) -> None:
        """Wait until the kernel idles and no cell is running or queued, `settle` s in a row."""
        end, quiet_since = time.monotonic() + timeout, None
        while time.monotonic() < end:
            now = time.monotonic()
            if self.kernel_idle() and not self.busy_cells():
                quiet_since = quiet_since or now
                if now - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(0.2)
        raise TimeoutError(f"still running after {timeout} s (cells {self.busy_cells()})")
