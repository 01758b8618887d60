"""Every chapter's explorer, run where a reader runs it: JupyterLab in a real (headless Chromium) browser.

For each notebook with an explorer (an ``ipywidgets`` cell), a small notebook is built from the cells the explorer
needs (found by content: the markers in ``SPEC``), opened in JupyterLab, run cell by cell; then every control of
the explorer is changed the way a reader would (a slider's handle nudged with the arrow keys, a dropdown's next
option, a checkbox clicked) and the explorer's output must change: its text or its plot's PNG bytes. Screenshots
of each state go to test-artifacts/browser/.

One JupyterLab server (loopback, random token, a temporary root) and one browser serve the module. Chromium is
Debian's ``chromium`` package driven by ``playwright`` (no browser download). Without Chromium, playwright or
JupyterLab the tests skip; CI sets DSLEARN_REQUIRE_BROWSER=1 so that they fail instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import require_browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"

FIRST = "<the notebook's first code cell>"  # a setup marker: the chapter's imports cell, whatever it holds


@dataclass(frozen=True)
class Code:
    """A setup cell written here instead of taken from the notebook: stands in for state that is expensive to
    compute (``why`` says what it replaces)."""

    source: str
    why: str


@dataclass(frozen=True)
class Explorer:
    """What the explorer of one notebook needs: ``setup`` (markers: a substring that must occur in exactly one
    code cell, ``FIRST``, or a ``Code`` stand-in), run in order before the ``explorer`` cell (a marker)."""

    explorer: str
    setup: tuple = (FIRST,)


# Notebooks not listed here get ``Explorer(<the cell that calls ipywidgets' interact>, (FIRST,))``; a notebook
# without an explorer cell is skipped.
SPEC = {
    "00_welcome": Explorer("def explore_sampling(", (FIRST, Code(
        "from dslearn.config import ModelConfig\nfrom dslearn.data import ByteTokenizer\n"
        "from dslearn.generate import generate\nfrom dslearn.model import CausalLM\n"
        "tok = ByteTokenizer()\nmodel = CausalLM(ModelConfig.from_preset('tiny'), seed=0)",
        why="an untrained model: the notebook trains one first (slow, and beside the point here)"))),
    "01_scaling_laws": Explorer("def plan(log10_C"),
    "02_multi_head_latent_attention": Explorer("sliders = dict(n_h=", (FIRST, "def draw_cache(")),
    "03_deepseekmoe": Explorer("def draw_routing("),
    "04_v3_load_balancing": Explorer("def draw_bias("),
    "05_fp8_triton": Explorer("ui = widgets.interactive(", (
        FIRST, "import SCHEMES, activations_with_outliers", "def tile_error_panel(", "def accumulation_panel(",
        "def explore(tile_width")),
    "06_dualpipe": Explorer("ui = widgets.interactive(", (FIRST, "def explore(schedule=")),
    "07_multi_token_prediction": Explorer("def draw_speedup(", (FIRST, Code(
        "from dslearn.speculative import expected_tokens_per_step\n"
        "measured_points = [dict(alpha=0.87, tokens_per_step=1.87, label='greedy run', offset=(-30, -18))]",
        why="the measured point: the notebook times speculative decoding for it (slow, and beside the point here)"))),
    "08_grpo_r1_zero": Explorer("def show(r1="),
    "09_r1_recipe": Explorer("def show_weights("),
}
EXPLORER_CALL = re.compile(r"widgets\.interact(ive)?\(|interactive_output\(")

SERVER_START_S = 90  # JupyterLab's first start on a busy machine
PAGE_LOAD_MS = 60_000
FIRST_CELL_MS = 120_000  # the kernel starts, then torch and dslearn import
CELL_MS = 90_000
CHANGE_MS = 45_000  # one control change: the kernel redraws a figure
VIEWPORT = dict(width=1400, height=1200)


def _code_cells(name: str) -> list[str]:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _find(cells: list[str], marker: str, name: str) -> str:
    if marker == FIRST:
        return cells[0]
    hits = [c for c in cells if marker in c]
    if len(hits) != 1:
        pytest.fail(f"{name}: the marker {marker!r} occurs in {len(hits)} code cells, not one; update SPEC in "
                    f"{Path(__file__).name} to the notebook's cells")
    return hits[0]


def explorer_sources(name: str) -> list[str] | None:
    """The sources of the small notebook that runs ``name``'s explorer (setup cells, then the explorer), or None
    when the notebook has no explorer."""
    cells = _code_cells(name)
    spec = SPEC.get(name)
    if spec is None:
        calls = [c for c in cells if EXPLORER_CALL.search(c)]
        if not calls:
            return None
        if len(calls) > 1:
            pytest.fail(f"{name}: {len(calls)} explorer cells; give it an entry in SPEC naming the one to test")
        return [cells[0], calls[0]]
    setup = [s.source if isinstance(s, Code) else _find(cells, s, name) for s in spec.setup]
    return [*setup, _find(cells, spec.explorer, name)]


def _notebook(sources: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {},
                       "outputs": [], "source": s} for i, s in enumerate(sources)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


# --- the server ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read()


def _request(url: str, method: str, timeout: float = 10.0) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout).close()  # noqa: S310


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    browser: object

    def api(self, path: str) -> str:
        return f"{self.url}/api/{path}?token={self.token}"

    def shut_down_kernels(self) -> None:
        for session in json.loads(_get(self.api("sessions"))):
            _request(self.api(f"sessions/{session['id']}"), "DELETE")


def _settings(root: Path) -> Path:
    """JupyterLab user settings for the test: every cell in the DOM (no windowing), no news or update checks."""
    settings = root / ".settings"
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        package, name = plugin.split("/")
        path = settings / "@jupyterlab" / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return settings


def _stop(proc: subprocess.Popen, lab_url: str, token: str) -> None:
    """Shut the server down (it stops its kernels), then kill whatever of it and its kernels is left."""
    try:
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        family = []
    try:
        _request(f"{lab_url}/api/shutdown?token={token}", "POST")
        proc.wait(timeout=20)
    except Exception:
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for p in family:  # kernels run in process groups of their own
        try:
            p.kill()
        except Exception:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    (root / "experiments").symlink_to(ROOT / "experiments")  # the notebooks read ../experiments
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own (inline) backend
    env |= {"PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(_settings(root)), "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces")}
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed in the finally)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                _get(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                f"{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, timeout=60_000,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            try:
                yield Lab(url, token, root, browser)
            finally:
                browser.close()
    finally:
        _stop(proc, url, token)
        log.close()


# --- the page ------------------------------------------------------------------------------------------------

# The explorer's output as the reader sees it: the text and the images of its Output widgets (not the controls,
# whose readouts change with every nudge).
_SNAPSHOT_JS = """cell => Array.from(cell.querySelectorAll('.widget-output')).map(o =>
    [o.innerText, Array.from(o.querySelectorAll('img')).map(i => i.src)])"""


def _snapshot(page, cell) -> tuple:
    """(text, sha256 of each image's bytes) of the explorer's outputs."""
    text, images = [], []
    for out_text, srcs in cell.evaluate(_SNAPSHOT_JS):
        text.append(out_text.strip())
        for src in srcs:
            if src.startswith("data:"):
                data = base64.b64decode(src.split(",", 1)[1])
            else:  # a blob: or other URL, fetched in the page
                data = base64.b64decode(page.evaluate(
                    """async src => { const b = new Uint8Array(await (await fetch(src)).arrayBuffer());
                        let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }""", src))
            images.append(hashlib.sha256(data).hexdigest()[:16])
    return "\n".join(text), tuple(images)


def _kernel_idle(page, timeout_ms: int) -> None:
    page.wait_for_function(
        """() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
                   return s && s.getAttribute('data-status') === 'idle'; }""", timeout=timeout_ms)


def _wait_for_change(page, cell, before: tuple, what: str) -> tuple:
    """Wait until the explorer's output differs from ``before`` and holds still (the kernel idle, the same
    snapshot twice); fail after CHANGE_MS."""
    deadline = time.monotonic() + CHANGE_MS / 1000
    last = None
    while time.monotonic() < deadline:
        now = _snapshot(page, cell)
        if now != before and now[0] + "".join(now[1]) and now == last:
            try:
                _kernel_idle(page, 1_000)
            except Exception:
                pass
            else:
                if _snapshot(page, cell) == now:
                    return now
        last = now
        time.sleep(0.3)
    pytest.fail(f"{what}: the explorer's output did not change within {CHANGE_MS // 1000} s")


def _ascii(label: str) -> str:
    words = [c if c.isascii() else unicodedata.name(c, "x").split()[-1].lower() for c in label]
    return re.sub(r"[^A-Za-z0-9]+", "_", "".join(words)).strip("_") or "control"


def _nudge(page, control, kind: str) -> str:
    """Change one control as a reader would; return what was done."""
    if kind == "slider":
        readout = control.locator(".widget-readout")
        before = readout.inner_text()
        handle = control.locator(".noUi-handle").first
        for key in ("ArrowRight", "ArrowLeft"):  # left only when it already sits at its maximum
            handle.focus()
            page.keyboard.press(key)
            try:
                page.wait_for_function("([el, v]) => el.innerText !== v", arg=[readout.element_handle(), before],
                                       timeout=3_000)
                return f"{key}: {before} → {readout.inner_text()}"
            except Exception:
                continue
        pytest.fail(f"the slider's readout stayed at {before} after ArrowRight and ArrowLeft")
    if kind == "dropdown":
        select = control.locator("select")
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.selectedIndex")
        new = (current + 1) % len(options)
        select.select_option(index=new)
        return f"{options[current]} → {options[new]}"
    control.locator("input[type=checkbox]").click()
    return "clicked"


KINDS = {"slider": ".widget-slider", "dropdown": ".widget-dropdown", "checkbox": ".widget-checkbox"}


def _kind(control) -> str:
    classes = control.get_attribute("class").split()
    return next(kind for kind, css in KINDS.items() if css[1:] in classes)


def _notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_ci_requires_the_browser_tests():
    """CI installs Chromium and turns this module's 'skip: no chromium' into a failure."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'missing="$missing chromium"' in ci and "apt-get install" in ci, "CI must install Debian's chromium"
    assert re.search(r"^export DSLEARN_REQUIRE_BROWSER=1$", ci, re.M), "CI must set DSLEARN_REQUIRE_BROWSER=1"


def test_every_spec_names_a_notebook():
    assert set(SPEC) <= set(_notebook_names()), set(SPEC) - set(_notebook_names())


@pytest.mark.parametrize("name", _notebook_names())
def test_explorer_in_jupyterlab(lab, name):
    sources = explorer_sources(name)
    if sources is None:
        pytest.skip(f"{name} has no explorer cell (no ipywidgets interact/interactive/interactive_output)")
    (lab.root / "notebooks" / f"{name}.ipynb").write_text(json.dumps(_notebook(sources)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{name}-*.png"):
        old.unlink()
    page = lab.browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    try:
        # a workspace of its own, so that no earlier notebook's tab is restored beside it
        page.goto(f"{lab.url}/lab/workspaces/w{name[:2]}/tree/notebooks/{name}.ipynb?reset&token={lab.token}",
                  timeout=PAGE_LOAD_MS)
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell")
        cells.nth(len(sources) - 1).wait_for(timeout=PAGE_LOAD_MS)
        assert cells.count() == len(sources)
        _kernel_idle(page, FIRST_CELL_MS)  # the kernel has started
        for i in range(len(sources)):
            cell = cells.nth(i)
            first = sources[i].splitlines()[0][:60]
            for _ in range(3):  # a key press the page was not ready for is lost: press again
                cell.locator(".jp-InputPrompt").click()
                page.keyboard.press("Control+Enter")  # run the selected cell, stay on it
                try:
                    cell.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[(\*|\d+)\]")).wait_for(
                        timeout=5_000)
                    break
                except Exception:
                    continue
            try:
                cell.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[\d+\]")).wait_for(
                    timeout=FIRST_CELL_MS if i == 0 else CELL_MS)
            except Exception:
                page.screenshot(path=ARTIFACTS / f"{name}-timeout.png")
                pytest.fail(f"{name}: cell {i} ({first!r}) did not finish in time")
            errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, f"{name}: cell {i} ({first!r}) failed:\n{tracebacks[0][-2000:]}"
        explorer = cells.nth(len(sources) - 1)
        explorer.locator(".widget-output").first.wait_for(timeout=CELL_MS)
        _kernel_idle(page, CELL_MS)
        assert "Error displaying widget" not in explorer.inner_text(), explorer.inner_text()[-2000:]
        state = _snapshot(page, explorer)
        assert state[0] or state[1], f"{name}: the explorer shows no output"
        explorer.locator(".jp-Cell-outputWrapper").screenshot(path=ARTIFACTS / f"{name}-initial.png")
        controls = [(_kind(c), c) for c in explorer.locator(", ".join(KINDS.values())).all()]  # in page order
        assert controls, f"{name}: the explorer has no slider, dropdown or checkbox"
        seen = set()
        for kind, control in controls:
            label = control.locator(".widget-label").first.inner_text().strip() or kind
            slug = _ascii(label)
            slug = slug if slug not in seen else f"{slug}_{len(seen)}"
            seen.add(slug)
            done = _nudge(page, control, kind)
            state = _wait_for_change(page, explorer, state, f"{name}: {kind} {label!r} ({done})")
            assert "Traceback" not in state[0], f"{name}: {kind} {label!r} ({done}) raised:\n{state[0][-2000:]}"
            explorer.locator(".jp-Cell-outputWrapper").screenshot(path=ARTIFACTS / f"{name}-{slug}.png")
    finally:
        page.close()
        lab.shut_down_kernels()
