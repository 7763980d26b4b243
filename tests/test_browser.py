"""The loss-weight explorer of notebook 06 in a real browser: JupyterLab + headless Chromium.

A papermill run never executes the JavaScript side of ipywidgets, where "Error displaying widget: model
not found" and version mismatches between ipywidgets and JupyterLab show up. Here JupyterLab serves a
small parameterised copy of ``notebooks/06_scops_ablation.ipynb``; headless Chromium (Debian's
``chromium`` and ``chromium-driver``, installed by ``make browser``) runs all its cells, checks that the
explorer's sliders, boxes and train button render, unticks a box, clicks the button and waits for the
re-trained result. A negative control displays a widget whose model does not exist and checks that the
same detector reports it. On failure the screenshot, page text, browser console and server log are
saved under ``outputs/browser/<test>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from partlab.notebooks import KERNEL_NAME

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]   # one JupyterLab per run

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "06_scops_ablation.ipynb"
CLEAN = REPO / "notebooks" / "00_tour.ipynb"
EVIDENCE = REPO / "outputs" / "browser"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# Parameters of the browser copy: fast features and saliency, and recipe overrides that make it tiny:
# 6 variants x 2 steps on 8 images of 32 px (the explorer trains 50 steps).
PARAMETERS = {"features": "rgb", "saliency": "oracle",
              "overrides": {"data.size": 32, "data.n_train": 8, "fit.max_steps": 2}}
MISSING_MODEL = ("import ipywidgets\nfrom IPython.display import display\n"
                 "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'f' * 32, 'version_major': 2,"
                 " 'version_minor': 0}, 'text/plain': 'a widget whose model does not exist'}, raw=True)")
WIDGET_ERRORS = re.compile(r"Error displaying widget|Error rendering|Failed to load model class")
LOADING = "Loading widget..."                                 # the placeholder: an error once all is idle

# What the page shows, read in the browser: the current notebook's kernel, widget errors, the explorer.
STATE_JS = """
const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
const app = window.jupyterapp, w = app && app.shell.currentWidget;
if (!w || !w.context || w.context.path !== arguments[0]) return null;
const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
const q = (selector, node) => Array.from((node || w.node).querySelectorAll(selector));
const explorer = w.node.querySelector('.partlab-weight-explorer');
const as_text = [];           // widget outputs JupyterLab fell back to showing as text (no widget renderer)
for (const cell of w.content.widgets) {
  if (!cell.outputArea) continue;
  cell.outputArea.model.toJSON().forEach((out, i) => {
    const child = cell.outputArea.widgets[i];
    if (out.data && out.data[WIDGET_MIME] && child && child.node.querySelector('[data-mime-type="text/plain"]'))
      as_text.push(String(out.data['text/plain'] || '').slice(0, 120));
  });
}
const output = explorer && explorer.querySelector('.partlab-explorer-output');
return {
  kernel: kernel ? [kernel.name, kernel.connectionStatus, kernel.status] : null,
  outputs: q('.jp-OutputArea-output').map(e => e.innerText),
  error_widgets: q('.jupyter-widgets-error-widget').length,
  as_text: as_text,
  explorer: !!explorer,
  sliders: explorer ? q('.widget-slider', explorer).map(e => e.innerText.split('\\n')[0]) : [],
  checked: explorer ? q('input[type=checkbox]', explorer).map(e => e.checked) : [],
  button: explorer ? q('button.partlab-train-button', explorer).map(e => e.innerText).join('') : '',
  busy: explorer ? q('button.partlab-train-button', explorer).some(e => e.disabled) : false,
  status: explorer ? q('.partlab-explorer-status', explorer).map(e => e.innerText).join('') : '',
  curve: explorer ? q('.partlab-live-curve', explorer).some(e => e.offsetWidth > 0) : false,
  cut_labels: explorer ? q('.widget-label', explorer).filter(e => e.scrollWidth > e.clientWidth + 1)
                           .map(e => e.innerText) : [],
  history_rows: explorer ? q('.partlab-explorer-history tr', explorer).length - 1 : -1,
  output: output ? output.innerText : '',
  images: output ? q('img', output).length : 0,
};
"""


def _prepare(folder: Path) -> None:
    """The browser's notebooks: a small copy of notebook 06 and the missing-model control."""
    import nbformat
    import papermill as pm

    target = folder / NOTEBOOK.name
    pm.execute_notebook(str(NOTEBOOK), str(target), kernel_name=KERNEL_NAME, prepare_only=True, progress_bar=False,
                        parameters=dict(PARAMETERS, metrics_path=str(folder / "metrics.json"),
                                        figures_dir=str(folder / "figures")))
    nb = nbformat.read(str(target), as_version=4)
    # the kernel JupyterLab picks for KERNEL_NAME must be this venv's python, as in the papermill runs
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable"))
    nbformat.write(nb, str(target))
    control = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(MISSING_MODEL)])
    control.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(control, str(folder / "missing_model.ipynb"))
    shutil.copy(CLEAN, folder / CLEAN.name)                      # a committed notebook exactly as it is
    from partlab import notebooks as nbs                          # the runner's executed copy, widget state saved

    result = nbs.run_notebook(NOTEBOOK, folder / "executed", parameters=PARAMETERS)
    assert result.status == "ok", result.problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(lab, method: str, path: str, timeout: float = 5.0):
    request = urllib.request.Request(f"{lab.url}{path}", method=method,
                                     headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def skip_without_chromium() -> None:
    """Skip, saying why, where Debian's chromium, its chromedriver or selenium is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: `make browser` installs Debian's chromium and "
                    f"chromium-driver (needs root)")
    pytest.importorskip("selenium", reason="selenium missing: `make setup` installs the dev extras")


def start_chromium(log: Path, extra: tuple = ()):
    """Headless Debian Chromium driven by its chromedriver (no download: both paths are given), 1400 x 1000."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", *extra):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(log)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free local port, serving the prepared notebooks; kernels and server stopped after."""
    skip_without_chromium()
    root = tmp_path_factory.mktemp("browser")
    folder, config = root / "notebooks", root / "config"
    folder.mkdir()
    _prepare(folder)
    quiet = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True)
    (quiet / "notification.jupyterlab-settings").write_text(
        json.dumps({"doNotDisturbMode": True, "fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTER_PREFER_ENV_PATH="1", PARTLAB_PROGRESS="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = root / "jupyter.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={config / 'lab' / 'user-settings'}",
             f"--LabApp.workspaces_dir={root / 'workspaces'}"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lab = SimpleNamespace(url=f"http://127.0.0.1:{port}", token=token, log=log, root=root)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                _api(lab, "GET", "/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on {lab.url} within 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield lab
    finally:
        with contextlib.suppress(Exception):
            for kernel in _api(lab, "GET", "/api/kernels"):
                _api(lab, "DELETE", f"/api/kernels/{kernel['id']}", timeout=15)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(lab):
    """Chromium for the JupyterLab tests (:func:`start_chromium`)."""
    driver = start_chromium(lab.root / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def evidence(driver, lab, name: str):
    """On any failure inside: save screenshot, page text, browser console and server log, name the folder."""
    folder = EVIDENCE / name
    shutil.rmtree(folder, ignore_errors=True)
    try:
        yield
    except Exception as exc:
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(folder / "screenshot.png"))
        with contextlib.suppress(Exception):
            (folder / "page.txt").write_text(driver.execute_script("return document.body.innerText"))
        with contextlib.suppress(Exception):
            (folder / "console.txt").write_text("\n".join(str(e) for e in driver.get_log("browser")))
        with contextlib.suppress(Exception):
            shutil.copy(lab.log, folder / "jupyter.log")
        what = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
        raise AssertionError(f"{what}\nscreenshot, page text, console and server log in {folder}") from exc


def _wait(driver, seconds: float, what: str, condition):
    """Poll ``condition(driver)`` until it returns something truthy (returned), at most ``seconds``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.5).until(condition, message=f"{what} (waited {seconds} s)")


def _state(driver, name: str):
    return driver.execute_script(STATE_JS, name)


def _if(value, test):
    """``value`` when ``test(value)`` holds, else None (a wait condition that returns what it waited for)."""
    return value if test(value) else None


def _idle(state) -> bool:
    return bool(state and state["kernel"] and state["kernel"][1:] == ["connected", "idle"])


def _run_all(driver, lab, name: str, seconds: float) -> dict:
    """Open ``name`` in a fresh workspace, wait for its kernel, run all cells (JupyterLab's own command)."""
    driver.get(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab.token}")
    state = _wait(driver, 60, f"{name} open with an idle {KERNEL_NAME} kernel",
                  lambda d: _if(_state(d, name), _idle))
    assert state["kernel"][0] == KERNEL_NAME, f"JupyterLab started kernel {state['kernel'][0]!r}, not {KERNEL_NAME!r}"
    driver.execute_script("window.__partlab_run = 'running'; window.jupyterapp.commands"
                          ".execute('notebook:run-all-cells').then(ok => { window.__partlab_run = ok ? 'ok' : "
                          "'a cell failed'; }, err => { window.__partlab_run = 'error: ' + err; });")
    result = _wait(driver, seconds, f"'Run All' of {name} to finish",
                   lambda d: _if(d.execute_script("return window.__partlab_run"), lambda r: r != "running"))
    state = _wait(driver, 30, "the kernel to be idle after 'Run All'", lambda d: _if(_state(d, name), _idle))
    failed = [text for text in state["outputs"] if "Error" in text or "Traceback" in text]
    assert result == "ok", f"Run All of {name}: {result}; error outputs: {failed[-1:] or 'none'}"
    return state


def widget_errors(state, settled: bool = True) -> list:
    """What the browser shows instead of a widget: error texts, error widgets and (``settled``: the kernel is
    idle and the widgets had their time) placeholders still loading."""
    texts = [text.strip()[:200] for text in state["outputs"]
             if WIDGET_ERRORS.search(text) or (settled and text.strip() == LOADING)]
    failed = ["error widget: its model or view class failed to load (see console.txt)"] * state["error_widgets"]
    return texts + failed + [f"shown as text, not rendered: {text}" for text in state["as_text"]]


def _halfway(button: str) -> bool:
    """The train button reads "training k/n" with k at least n / 2."""
    step = re.search(r"training (\d+)/(\d+)", button)
    return bool(step) and 2 * int(step.group(1)) >= int(step.group(2))


def _weights_line(state) -> str:
    return next((line for line in state["output"].splitlines() if line.startswith("weights:")), "")


def test_weight_explorer_renders_and_retrains_on_click(lab, browser):
    """Run All renders sliders, boxes and the train button; unticking a box and clicking re-trains and shows
    the new weights, scores and segmentations in the explorer's output."""
    from selenium.common.exceptions import TimeoutException

    name = NOTEBOOK.name
    with evidence(browser, lab, "weight_explorer"):
        start = time.monotonic()
        _run_all(browser, lab, name, seconds=150)

        def rendered(driver):
            state = _state(driver, name)
            done = state["explorer"] and _weights_line(state) and state["images"]
            return state if done or widget_errors(state, settled=False) else None

        try:
            state = _wait(browser, 30, "the weight explorer to render with its first result", rendered)
        except TimeoutException:
            state = _state(browser, name)
            raise AssertionError(f"no weight explorer after 30 s: widget errors {widget_errors(state)}, explorer "
                                 f"{state['explorer']}, its output {state['output'][:300]!r}") from None
        assert not widget_errors(state), f"widgets failed to render: {widget_errors(state)}"
        sliders, ticked = state["sliders"], state["checked"]
        assert len(sliders) == len(ticked) >= 1 and all(s.startswith("lambda_") for s in sliders), (sliders, ticked)
        assert state["button"].startswith("train"), f"train button missing (found {state['button']!r})"
        assert not state["cut_labels"], f"slider labels cut short: {state['cut_labels']}"
        assert state["history_rows"] == 1, f"history rows after the first run: {state['history_rows']}"
        before, first = _weights_line(state), ticked.index(True)
        term = sliders[first].removeprefix("lambda_")

        explorer = browser.find_element("css selector", ".partlab-weight-explorer")
        explorer.find_elements("css selector", "input[type=checkbox]")[first].click()   # switch a term off ...
        explorer.find_element("css selector", "button.partlab-train-button").click()   # ... and re-train
        feedback = _wait(browser, 2, "visible feedback in the explorer after the click", lambda d: _if(
            _state(d, name), lambda s: s["busy"] and ("training" in s["button"] or "starting" in s["button"])))
        print(f"after the click: button {feedback['button']!r}, status {feedback['status']!r}")
        live = _wait(browser, 30, "the live loss curve and the step while it trains", lambda d: _if(
            _state(d, name), lambda s: s["curve"] and _halfway(s["button"]) or not s["busy"]))
        if live["busy"]:                                        # a picture for the README: mid-training
            EVIDENCE.mkdir(parents=True, exist_ok=True)
            explorer.screenshot(str(EVIDENCE / "explorer_training.png"))

        def retrained(driver):
            state = _state(driver, name)
            line = _weights_line(state)
            return state if line and line != before and state["images"] and _idle(state) and not state["busy"] else None

        state = _wait(browser, 90, f"a re-trained result after unticking {term} and clicking train", retrained)
        assert re.search(rf"'(lambda_)?{term}': 0\.0\b", _weights_line(state)), _weights_line(state)
        assert not widget_errors(state), f"widgets failed after the click: {widget_errors(state)}"
        assert state["curve"], "no live loss curve in the explorer"
        assert state["history_rows"] == 2 and not state["busy"], (state["history_rows"], state["busy"])
        browser.execute_script("document.querySelector('.partlab-explorer-history').scrollIntoView();")
        explorer.screenshot(str(EVIDENCE / "explorer_history.png"))
        print(f"browser check: {time.monotonic() - start:.0f} s; {before} -> {_weights_line(state)}")


def test_detector_sees_a_widget_that_does_not_render(lab, browser):
    """Negative control: a widget view whose model does not exist must be reported by ``widget_errors``."""
    with evidence(browser, lab, "missing_model_control"):
        _run_all(browser, lab, "missing_model.ipynb", seconds=60)
        state = _wait(browser, 20, "the missing model to be reported", lambda d: _if(
            _state(d, "missing_model.ipynb"), lambda s: widget_errors(s, settled=False)))
        assert any("model not found" in text for text in widget_errors(state)), widget_errors(state)


def test_a_committed_notebook_opens_unmodified(lab, browser):
    """Opening a notebook and starting its kernel must not mark it modified (JupyterLab rewrites a kernelspec
    or language_info that differs from its own, and the notebook then asks to be saved)."""
    with evidence(browser, lab, "opens_clean"):
        _, dirty, metadata = _open_clean(browser, lab, CLEAN.name, "clean")
        committed = json.loads(CLEAN.read_text())["metadata"]
        assert not dirty, f"{CLEAN.name} is marked modified after opening: metadata {metadata} (committed: {committed})"


def _open_clean(driver, lab, name: str, workspace: str) -> tuple:
    """Open ``name`` without running it; after its kernel is idle and JupyterLab had 3 s to touch the
    metadata: ``(state, dirty, metadata as JupyterLab holds it)``."""
    driver.get(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}")
    _wait(driver, 60, f"{name} open with an idle {KERNEL_NAME} kernel", lambda d: _if(_state(d, name), _idle))
    time.sleep(3)
    dirty, metadata = driver.execute_script(
        "const w = window.jupyterapp.shell.currentWidget;"
        "return [w.context.model.dirty, JSON.stringify(w.context.model.toJSON().metadata)];")
    return _state(driver, name), dirty, metadata


def test_an_executed_notebook_opens_unmodified_with_its_widgets(lab, browser):
    """The runner's executed notebook (trusted, widget state saved) shows the explorer as it was, not as
    text, and opening it marks nothing modified."""
    name = f"executed/{NOTEBOOK.name}"
    with evidence(browser, lab, "executed_notebook"):
        state, dirty, metadata = _open_clean(browser, lab, name, "executed")
        def restored(driver):             # JupyterLab renders the cells in view: bring the explorer there
            driver.execute_script("const e = document.querySelector('.partlab-weight-explorer');"
                                  "if (e) e.scrollIntoView();")
            return _if(_state(driver, name), lambda s: s["explorer"] and s["images"] and _weights_line(s)
                       or widget_errors(s, settled=False))

        state = _wait(browser, 30, "the explorer restored from the saved widget state", restored)
        assert not widget_errors(state), f"the executed notebook's widgets did not render: {widget_errors(state)}"
        assert state["explorer"] and _weights_line(state), "no explorer with its result in the executed notebook"
        assert not dirty, f"{name} is marked modified after opening: metadata {metadata[:300]}"
