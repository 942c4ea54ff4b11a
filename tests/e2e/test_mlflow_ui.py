"""The MLflow UI shows every trial: a finished experiment (created by the tracker during a real
tuning run) served by ``mlflow ui`` on 127.0.0.1 and rendered by headless Chromium: every trial
found by its run name on the runs page, and the best trial's metric chart drawn on its run page.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it the module is
skipped at collection, saying so, before any tuning run or server starts.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.trainables import curve
from tuning import Tuner, uniform


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian package 'chromium'; .ci/run installs it)")]

BIN = Path(sys.executable).parent
NUM_TRIALS = 8
ITERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory) -> dict:
    """A real tuning run (Dask, 2 workers) whose tracker creates the MLflow experiment: its
    tracking URI, experiment id, trial run names and the best trial's run."""
    d = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{d}/mlflow.db"
    result = Tuner(curve, space={"x": uniform(0.0, 1.0), "iters": ITERS, "sleep": 0.01},
                   metric="score", mode="max", num_samples=NUM_TRIALS,
                   backend={"type": "dask", "n_workers": 2}, storage_path=str(d / "runs"),
                   tracking_uri=uri, seed=0, name="ui-review").run()
    assert len(result.trials) == NUM_TRIALS
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("ui-review")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert exp.artifact_location.startswith(Path(d).as_uri())  # beside the store, not ./mlruns
    kids = c.search_runs([exp.experiment_id], "tags.`rungflow.trial_id` LIKE 'trial-%'",
                         max_results=1000)
    names = sorted(r.data.tags["mlflow.runName"] for r in kids)
    assert len(names) == NUM_TRIALS and all(n.startswith("trial-") for n in names)
    best = next(r for r in kids
                if r.data.tags["rungflow.trial_id"] == result.best_trial.trial_id)
    return {"uri": uri, "experiment_id": exp.experiment_id, "names": names,
            "best_run_id": best.info.run_id, "best_name": best.data.tags["mlflow.runName"]}


@pytest.fixture(scope="module")
def mlflow_ui(finished_experiment, tmp_path_factory) -> Iterator[str]:
    uri = finished_experiment["uri"]
    port = _free_port()
    log = tmp_path_factory.mktemp("ui-log") / "mlflow-ui.log"
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow ui did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
                proc.wait(5)


def _render(url: str, profile: Path) -> str:
    """The DOM once the page's scripts have run (20 s of virtual time). Every compositor
    stage runs before each draw, so what renders only once on screen (the lazily mounted
    chart cards) renders here too; without it the charts were missing from 2 of 3 dumps."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-dev-shm-usage",
           "--run-all-compositor-stages-before-draw",
           f"--user-data-dir={profile}", "--window-size=1600,1400",
           "--virtual-time-budget=20000", "--dump-dom", url]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return html.unescape(proc.stdout)


def _render_until(url: str, tmp_path: Path, done) -> str:
    dom = ""
    for attempt in range(3):  # the JS app renders after its API calls
        dom = _render(url, tmp_path / f"profile-{attempt}")
        if done(dom):
            break
    return dom


def test_every_trial_is_on_the_runs_page(finished_experiment, mlflow_ui, tmp_path):
    exp_id, names = finished_experiment["experiment_id"], finished_experiment["names"]
    # ordered by name, the runs table lists child runs flat (ordered by date it nests them
    # under their parent, collapsed)
    page = f"{mlflow_ui}/#/experiments/{exp_id}/runs?orderByKey=attributes.run_name&orderByAsc=true"
    dom = _render_until(page, tmp_path, lambda d: all(n in d for n in names))
    missing = [n for n in names if n not in dom]
    assert not missing, f"not in the rendered runs page: {missing}\n{dom[:2000]}"
    assert "ui-review" in dom  # the experiment's page, not an error page


def _chart_line(dom: str, metric: str) -> list[tuple[float, float]] | None:
    """The vertices of the first plotted line after the chart titled ``metric``."""
    title = dom.find(f">{metric}<")
    if title < 0:
        return None
    m = re.compile(r'class="js-line" d="([^"]+)"').search(dom, title)
    if m is None:
        return None
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+),([-\d.]+)", m.group(1))]


def test_the_best_trials_metric_chart_renders(finished_experiment, mlflow_ui, tmp_path):
    """The run page's model-metrics tab draws the metric's history: a chart titled ``score``
    whose line has a vertex per iteration, rising at each one (SVG y grows downwards)."""
    exp_id, run_id = finished_experiment["experiment_id"], finished_experiment["best_run_id"]
    page = f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run_id}/model-metrics"
    dom = _render_until(page, tmp_path, lambda d: _chart_line(d, "score") is not None)
    assert finished_experiment["best_name"] in dom  # the best trial's page
    assert 'class="main-svg"' in dom, dom[:2000]  # plotly drew its charts
    line = _chart_line(dom, "score")
    assert line is not None, f"no chart line for score on the run page\n{dom[:2000]}"
    assert len(line) == ITERS
    xs, ys = [x for x, _ in line], [y for _, y in line]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True) and len(set(ys)) == ITERS
