"""The notebook in a real browser (issue 21): JupyterLab in headless Chromium, driven by Playwright
as a person would use it, on a temporary copy of the repository at tiny sizes.

The steps run in order on one JupyterLab and one browser: open the notebook, Run All and watch
the progress and the preview, Interrupt mid-way (toolbar) and twice in a row, Interrupt at the
very start of a run (Kernel menu), the upload pickers with two files, Restart Kernel and Run All
(with the tour), then save, close and reopen with a new kernel. After each step: the pictures on
disk (new ones written, none overwritten), no traceback or error text in any output, and
screenshots in a folder that is kept, and printed, when a step fails (tests/.browser-artifacts/,
or $BROWSER_ARTIFACTS); steps.log there says what each step saw.

Skipped where Chromium or Playwright is missing, unless CI=true: then it fails (CI must run it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import jupyterlab_driver as lab_driver
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "style_transfer.ipynb"
# Tiny sizes: a 2-core CPU makes the main picture in seconds; 60 evaluations leave time to watch
# the progress and to interrupt mid-way. Restart Kernel and Run All runs the tour as well.
TINY = dict(
    image_size=64,
    num_evals=60,
    preview_every=10,
    device="cpu",
    sections="core",
    extra_size=96,
    hires_size=192,
    layers_size=64,
    extra_evals=4,
    layers_evals=2,
)
EARLIER_RESULT = "results/dog_starry_night.png"  # a picture of an "earlier run": it must survive


class Session:
    """The copy of the repository, JupyterLab, the browser, and what the steps have seen."""

    def __init__(self, tmp: Path, shots: Path) -> None:
        self.tmp, self.shots = tmp, shots
        self.repo = lab_driver.copy_repository(ROOT, tmp / "repo")
        self.params_source = lab_driver.set_parameters(self.repo / NOTEBOOK, **TINY)
        cells = json.loads((self.repo / NOTEBOOK).read_text(encoding="utf-8"))["cells"]
        self.n_cells = len(cells)
        self.params = lab_driver.parameters_cell({"cells": cells})
        self.code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
        self.sources = {i: "".join(cells[i]["source"]) for i in self.code}
        # Where things are (README's names): the upload cell (it calls nst.ask_for_pictures), the
        # cell that sets `upload` (that one, else the parameters cell), the main run (the first
        # cell that calls stylize); the default pictures, as the parameters cell names them.
        self.upload = next(i for i in self.code if "ask_for_pictures(" in self.sources[i])
        in_cell = "upload" in lab_driver.assigned(self.sources[self.upload])
        self.upload_knob = self.upload if in_cell else self.params
        self.stylize = next(
            i for i in self.code if re.search(r"(?<!def )\bstylize\(", self.sources[i])
        )
        self.after_stylize = [i for i in self.code if i > self.stylize]
        knobs = lab_driver.assigned(self.params_source)
        self.defaults = [Path(str(knobs[k])).name for k in ("content_path", "style_path")]
        earlier = self.repo / EARLIER_RESULT
        earlier.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (1, 2, 3)).save(earlier)
        self.known = self.files()
        self.lab = lab_driver.JupyterLab(self.repo, tmp / "jupyter", shots / "jupyterlab.log")
        try:
            self.browser = lab_driver.Browser(tmp / "chromium-profile")
        except BaseException:
            self.lab.stop()
            raise
        self.nb = lab_driver.Notebook(self.lab, self.browser, NOTEBOOK, shots)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self.lab.stop()

    def log(self, step: str, text: str) -> None:
        """What a step saw, for the developer: steps.log next to the screenshots."""
        with open(self.shots / "steps.log", "a", encoding="utf-8") as f:
            f.write(f"[{step}] {text.rstrip()}\n")

    def files(self) -> dict[str, str]:
        """The sha256 of every file under results/ and assets/ of the copy."""
        return {
            str(p.relative_to(self.repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("results", "assets")
            for p in sorted((self.repo / top).rglob("*"))
            if p.is_file()
        }

    def disk_step(self, problems: Problems, pictures: int = 0) -> list[str]:
        """Since the last step: no file changed or removed, no temporary left, at least `pictures`
        new PNGs in results/. Returns the new files."""
        now = self.files()
        changed = [p for p, h in self.known.items() if now.get(p) != h]
        new = [p for p in now if p not in self.known]
        self.known = now
        problems.check(not changed, f"files overwritten or removed: {changed}")
        hidden = [p for p in new if Path(p).name.startswith(".")]
        problems.check(not hidden, f"temporary files left behind: {hidden}")
        pngs = [
            p
            for p in new
            if p.startswith("results/") and p.endswith(".png") and "/uploads/" not in p
        ]
        problems.check(
            len(pngs) >= pictures,
            f"expected at least {pictures} new picture(s) in results/, found {pngs}",
        )
        return new


class Problems:
    """What one step found wrong: every check runs, then the step fails with all of them."""

    def __init__(self, session: Session, step: str) -> None:
        self.session, self.step, self.items, self.note = session, step, [], ""
        session.nb.screenshot(f"{step}-start")
        self.started = time.monotonic()

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.items.append(message)
        return ok

    def errors(self, cells: list[int] | None, where: str) -> None:
        """No output area (of `cells`, None: all) shows a traceback or error text; what goes to
        stderr without one (a warning) is noted in steps.log."""
        nb = self.session.nb
        for i, text in nb.error_outputs(cells).items():
            indented = text.replace("\n", "\n    ")[:800]
            self.check(False, f"{where}: cell {i} shows error text:\n    {indented}")
        for i, cell in enumerate(nb.cells()):
            for o in cell["outputs"]:
                if (cells is None or i in cells) and o["mime"].endswith("stderr") and o["text"]:
                    self.session.log(self.step, f"{where}: cell {i} writes to stderr:\n{o['text']}")

    def done(self, cell: int | None = None) -> None:
        """A last screenshot (showing `cell`), then fail with everything found, if anything."""
        last = self.session.nb.screenshot(f"{self.step}-end{'-FAILED' if self.items else ''}", cell)
        for item in self.items:
            self.session.log(self.step, f"FAILED: {item}")
        self.session.log(self.step, f"took {time.monotonic() - self.started:.1f} s")
        if self.items:
            note = f"\n({self.note})" if self.note else ""
            pytest.fail(
                f"[{self.step}] "
                + "\n".join(self.items)
                + note
                + f"\n(screenshot {last}; all in {self.session.shots})",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def lab(request):
    reason = lab_driver.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the browser test must run here, but {reason}", pytrace=False)
        pytest.skip(reason)
    base = os.environ.get("BROWSER_ARTIFACTS")
    shots = Path(base or ROOT / "tests" / ".browser-artifacts") / time.strftime("%Y%m%d-%H%M%S")
    shots.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="nst-browser-"))
    failed_before = request.session.testsfailed
    session = None
    try:
        session = Session(tmp, shots)
        yield session
    finally:
        if session is not None:
            with contextlib.suppress(OSError):  # the notebook as the steps left it
                shutil.copy2(session.repo / NOTEBOOK, shots / f"saved-{NOTEBOOK}")
            session.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if request.session.testsfailed > failed_before or base or session is None:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"browser test: screenshots and logs in {shots}")
        else:
            shutil.rmtree(shots, ignore_errors=True)


def run_and_wait(nb: lab_driver.Notebook, action, timeout: float = 240) -> list[int]:
    """Do `action` (which sets cells running) and wait until they have all finished; return the
    cells that ran."""
    nb.watch_runs()
    last = max(i for i, c in enumerate(nb.cells()) if c["code"])
    prompt = nb.cells()[last]["prompt"]
    action()
    end = time.monotonic() + 30
    while nb.cells()[last]["prompt"] == prompt and time.monotonic() < end:  # queued: [*]
        time.sleep(0.05)
    nb.wait_idle(timeout)
    return nb.ran()


def ensure_idle(nb: lab_driver.Notebook) -> None:
    """Anything a failed step left running: interrupt it and wait."""
    if nb.busy_cells() or not nb.kernel_idle():
        nb.toolbar("interrupt")
        nb.wait_idle(60)


def wait_until_running(
    nb: lab_driver.Notebook, cell: int, previous: int, timeout: float = 120
) -> None:
    """Wait until `cell` runs: it shows [*] while the code cell before it shows its number."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        cells = nb.cells()
        if "*" in cells[cell]["prompt"] and re.search(r"\[\d+\]", cells[previous]["prompt"]):
            return
        time.sleep(0.02)
    raise TimeoutError(f"cell {cell} did not start within {timeout} s")


def watch(
    nb: lab_driver.Notebook, cell: int, until, timeout: float = 180
) -> tuple[list, list, int]:
    """Look at `cell`'s outputs every 0.1 s until `until(texts, pictures)` or the cell's end: the
    distinct texts and pictures seen, and the most pictures it showed at once."""
    texts, pictures, most = [], [], 0
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c = nb.cells()[cell]
        text = "\n".join(o["text"] for o in c["outputs"]).strip()
        images = [img for o in c["outputs"] for img in o["images"]]
        most = max(most, len(images))
        texts += [text] if text and text not in texts else []
        pictures += [img for img in dict.fromkeys(images) if img not in pictures]
        if "*" not in c["prompt"] or until(texts, pictures):
            break
        time.sleep(0.1)
    return texts, pictures, most


def not_run(executed: list[int], cells: list[int]) -> list[int]:
    return [i for i in cells if i not in executed]


# --------------------------------------------------------------------------- the steps, in order


def test_opening_the_notebook_does_not_mark_it_modified(lab):
    nb = lab.nb
    nb.open(lab.n_cells)
    problems = Problems(lab, "open")
    time.sleep(3)  # the kernel has started and told its name
    problems.check(
        not nb.is_dirty(),
        "opening the notebook marked it modified (its tab shows the "
        "unsaved-changes dot: closing it asks to save changes nobody made)",
    )
    problems.errors(None, "the stored notebook")
    lab.disk_step(problems)
    problems.done(lab.stylize)


def test_run_all_shows_progress_and_preview_in_place_and_saves(lab):
    nb = lab.nb
    ensure_idle(nb)
    problems = Problems(lab, "run-all")
    nb.watch_runs()
    nb.menu("Run", "Run All Cells")
    wait_until_running(nb, lab.stylize, max(i for i in lab.code if i < lab.stylize))
    texts, pictures, most = watch(nb, lab.stylize, lambda t, p: False)
    nb.screenshot("run-all-stylize-finished", lab.stylize)
    nb.wait_idle(180)
    problems.check(len(texts) >= 3, f"the progress display did not move while stylize ran: {texts}")
    problems.check(len(pictures) >= 2, f"the preview did not change while stylize ran: {pictures}")
    problems.check(most <= 1, f"the preview was not updated in place: {most} pictures at once")
    executed = nb.ran()
    problems.check(
        not not_run(executed, lab.code), f"cells that did not run: {not_run(executed, lab.code)}"
    )
    problems.errors(executed, "Run All")
    lab.log("run-all", f"stylize's output at its end:\n{nb.output_text(lab.stylize)}")
    lab.disk_step(problems, pictures=1)
    problems.done(lab.stylize)


def interrupt_mid_run(lab: Session, problems: Problems, second_press: bool) -> None:
    """Run from the stylize cell on; press the toolbar's Interrupt once the preview has changed
    (a tenth of the budget), and with `second_press` once more as the run ends (at most 1 s)."""
    nb = lab.nb
    nb.select(lab.stylize)
    nb.watch_runs()
    nb.menu("Run", "Run Selected Cell and All Below")
    end = time.monotonic() + 30
    while "*" not in nb.cells()[lab.stylize]["prompt"] and time.monotonic() < end:
        time.sleep(0.02)
    watch(nb, lab.stylize, lambda texts, pictures: len(pictures) >= 2 and len(texts) >= 3)
    problems.check(
        "*" in nb.cells()[lab.stylize]["prompt"],
        "the run ended before it could be interrupted (too fast for this test?)",
    )
    nb.toolbar("interrupt")
    pressed = time.monotonic()
    if second_press:
        while "*" in nb.cells()[lab.stylize]["prompt"] and time.monotonic() - pressed < 1.0:
            time.sleep(0.02)
        waiting = nb.busy_cells()
        nb.toolbar("interrupt")
        nb.screenshot("second-interrupt-pressed", waiting[0] if waiting else lab.stylize)
        problems.note = (
            f"the second Interrupt came {time.monotonic() - pressed:.1f} s after the "
            f"first, while cells {waiting[:3]} were running or queued"
        )
        lab.log(problems.step, problems.note)
    nb.wait_idle(120)
    executed = nb.ran()
    skipped = not_run(executed, lab.after_stylize)
    problems.check(not skipped, f"cells after the interrupted run did not run: {skipped}")
    problems.errors(executed, "after Interrupt")
    red = nb.red_things(lab.stylize)
    problems.check(not red, f"after Interrupt the progress display looks like an error: {red}")
    text = nb.output_text(lab.stylize)
    problems.check(bool(text.strip()), "the interrupted run shows no text")
    lab.log(problems.step, f"stylize's output after Interrupt:\n{text}")
    lab.disk_step(problems, pictures=1)  # the best image so far, kept and saved


def test_interrupt_mid_run_keeps_the_picture_and_runs_on(lab):
    ensure_idle(lab.nb)
    problems = Problems(lab, "interrupt-mid-run")
    interrupt_mid_run(lab, problems, second_press=False)
    problems.done(lab.stylize)


def test_a_second_interrupt_right_after_the_first_does_not_land_in_a_later_cell(lab):
    ensure_idle(lab.nb)
    problems = Problems(lab, "interrupt-twice")
    interrupt_mid_run(lab, problems, second_press=True)
    problems.done(lab.stylize)


def test_interrupt_at_the_very_start_of_a_run(lab):
    # In a fresh kernel the first run spends its first second or so building torch.optim.LBFGS.
    nb = lab.nb
    ensure_idle(nb)
    problems = Problems(lab, "interrupt-at-start")
    nb.watch_runs()
    nb.menu("Kernel", "Restart Kernel and Run All Cells")
    nb.accept_dialog()
    wait_until_running(nb, lab.stylize, max(i for i in lab.code if i < lab.stylize))
    nb.menu("Kernel", "Interrupt Kernel")
    nb.screenshot("interrupt-at-start-pressed", lab.stylize)
    nb.wait_idle(120)
    executed = nb.ran()
    skipped = not_run(executed, lab.after_stylize)
    problems.check(
        not skipped, f"Interrupt at the start of stylize cancelled the cells after it: {skipped}"
    )
    problems.errors(executed, "Interrupt at the start")
    red = nb.red_things(lab.stylize)
    problems.check(not red, f"after Interrupt the progress display looks like an error: {red}")
    text = nb.output_text(lab.stylize)
    problems.check(
        bool(text.strip()),
        "the interrupted run says nothing (neither that it kept a "
        "picture nor that none exists yet)",
    )
    lab.log(problems.step, f"stylize's output after Interrupt:\n{text}")
    lab.disk_step(problems)  # a picture only if an evaluation happened
    # Then, as a person would, run it again from there: the same kernel must still work.
    nb.screenshot("interrupt-at-start-then-again", lab.stylize)
    nb.select(lab.stylize)
    executed = run_and_wait(nb, lambda: nb.menu("Run", "Run Selected Cell and All Below"))
    problems.check(
        not not_run(executed, lab.after_stylize),
        f"run again after that Interrupt: cells that did not run: "
        f"{not_run(executed, lab.after_stylize)}",
    )
    problems.errors(executed, "run again after an Interrupt at the start")
    lab.disk_step(problems, pictures=1)
    problems.done(lab.stylize)


def make_picture(path: Path, seed: int) -> Path:
    """A small picture with coloured shapes (a photo or a painting to choose in a picker)."""
    img = Image.new("RGB", (160, 120), (40 + 60 * seed, 90, 200 - 60 * seed))
    draw = ImageDraw.Draw(img)
    for k in range(12):
        x, y = (k * 37 + seed * 11) % 140, (k * 23 + seed * 7) % 100
        colour = (k * 50 % 256, (k * 90 + seed * 40) % 256, 120)
        draw.ellipse([x, y, x + 20 + k, y + 16 + k], fill=colour)
    img.save(path)
    return path


def test_upload_pickers_then_the_chosen_pictures_are_used(lab):
    nb = lab.nb
    ensure_idle(nb)
    problems = Problems(lab, "upload")
    # As the text says: set upload = True (where the notebook sets it), then run the upload cell.
    original = lab.params_source if lab.upload_knob == lab.params else lab.sources[lab.upload_knob]
    nb.replace_source(lab.upload_knob, lab_driver.with_values(original, upload=True))
    try:
        choose_and_run_on(lab, problems)
    finally:
        ensure_idle(nb)
        nb.replace_source(lab.upload_knob, original)  # upload = False again for the next steps
    problems.done(lab.stylize)


def choose_and_run_on(lab: Session, problems: Problems) -> None:
    nb = lab.nb
    nb.run_cell(lab.upload)
    nb.wait_idle(60)
    # a picker: a button (or a file input) in the upload cell's outputs that opens a file chooser
    pickers = (
        nb.cell(lab.upload)
        .locator(".jp-OutputArea-output")
        .locator("button:visible, input[type=file]:visible")
    )
    where = "the parameters cell" if lab.upload_knob == lab.params else "the upload cell"
    if not problems.check(
        pickers.count() >= 2,
        f"upload = True set in {where}, then the upload "
        "cell run: no file pickers appear; it shows:\n" + nb.output_text(lab.upload),
    ):
        nb.screenshot("upload-no-pickers", lab.upload_knob)
        if lab.upload_knob != lab.params:
            return
        nb.run_cell(lab.params)  # the work-around: run the parameters cell, then the upload cell
        nb.wait_idle(60)
        nb.run_cell(lab.upload)
        nb.wait_idle(60)
        if not problems.check(
            pickers.count() >= 2, "no file pickers even after running the parameters cell again"
        ):
            return
    nb.screenshot("upload-pickers", lab.upload)
    pictures = lab.tmp / "pictures"
    pictures.mkdir(exist_ok=True)
    buttons = pickers.element_handles()  # a picker may give way to a line of text once used
    for k, name in enumerate(("my_photo.png", "my_painting.png")):  # click, choose a file
        with nb.page.expect_file_chooser(timeout=10_000) as chooser:
            buttons[k].click()
        chooser.value.set_files(str(make_picture(pictures / name, k)))
        time.sleep(0.5)
    uploads = lab.repo / "results" / "uploads"
    end = time.monotonic() + 30
    while time.monotonic() < end and len(list(uploads.glob("*"))) < 2:
        time.sleep(0.2)
    time.sleep(1)  # what the cell says about them
    nb.screenshot("upload-chosen", lab.upload)
    saved = sorted(p.name for p in uploads.glob("*"))
    problems.check(
        any("my_photo" in n for n in saved) and any("my_painting" in n for n in saved),
        f"the chosen files were not copied into results/uploads/: {saved}",
    )
    text = nb.output_text(lab.upload)
    lab.log("upload", f"the upload cell after choosing two files shows:\n{text}")
    last = [line for line in text.splitlines() if line.strip()][-1:]
    problems.check(
        not any(d in line for d in lab.defaults for line in last),
        f"after choosing files the upload cell still says it uses the defaults: {last}",
    )
    problems.errors([lab.upload], "upload")
    # As the text says: once chosen, run the notebook on from the next cell.
    executed = run_and_wait(
        nb, lambda: (nb.select(lab.upload + 1), nb.menu("Run", "Run Selected Cell and All Below"))
    )
    problems.errors(executed, "the run with the chosen pictures")
    new = lab.disk_step(problems, pictures=1)
    mine = [
        p
        for p in new
        if p.endswith(".png") and "my_photo" in p and "my_painting" in p and "/uploads/" not in p
    ]
    problems.check(bool(mine), f"the run after choosing files did not use them: new files {new}")


def test_restart_kernel_and_run_all_with_the_tour(lab):
    nb = lab.nb
    ensure_idle(nb)
    problems = Problems(lab, "restart-run-all")
    # The whole notebook this once (at the tiny sizes the tour takes about half a minute).
    nb.replace_source(lab.params, lab_driver.with_values(lab.params_source, sections="all"))
    try:
        executed = run_and_wait(
            nb,
            lambda: (nb.menu("Kernel", "Restart Kernel and Run All Cells"), nb.accept_dialog()),
            timeout=600,
        )
    finally:
        ensure_idle(nb)
        nb.replace_source(lab.params, lab.params_source)
    problems.check(
        not not_run(executed, lab.code), f"cells that did not run: {not_run(executed, lab.code)}"
    )
    problems.errors(executed, "Restart Kernel and Run All")
    red = [f"cell {i}: {r}" for i in executed for r in nb.red_things(i)]
    problems.check(not red, f"the progress display of a finished run looks like an error: {red}")
    lab.disk_step(problems, pictures=4)  # the main picture and the tour's figures
    problems.done(lab.stylize)


def test_saved_closed_and_reopened_notebook_shows_no_errors(lab):
    nb = lab.nb
    ensure_idle(nb)
    problems = Problems(lab, "reopen")
    nb.page.keyboard.press("Control+s")
    end = time.monotonic() + 20
    while nb.is_dirty() and time.monotonic() < end:
        time.sleep(0.2)
    problems.check(not nb.is_dirty(), "the notebook could not be saved")
    nb.menu("Kernel", "Shut Down Kernel")
    nb.accept_dialog(timeout=3)
    time.sleep(1)
    nb.menu("File", "Close Tab")
    nb.accept_dialog(timeout=3)
    nb.page.wait_for_selector(".jp-NotebookPanel", state="detached", timeout=20_000)
    nb.screenshot("reopen-closed")
    nb.reopen_from_file_browser(lab.n_cells)  # a new kernel starts
    time.sleep(3)  # time for widgets, if any, to render
    nb.screenshot("reopen-opened", lab.stylize)
    lab.log("reopen", f"stylize's output in the reopened notebook:\n{nb.output_text(lab.stylize)}")
    problems.errors(None, "the reopened notebook")
    shown = nb.cells()[lab.stylize]["outputs"]
    problems.check(
        any(o["text"].strip() or o["images"] for o in shown),
        "the reopened notebook shows nothing where the run's progress was",
    )
    problems.check(not nb.is_dirty(), "reopening the saved notebook marked it modified")
    lab.disk_step(problems)
    problems.done(lab.stylize)
