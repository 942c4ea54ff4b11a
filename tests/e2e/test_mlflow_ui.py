"""The MLflow UI shows every trial: a finished experiment served by ``mlflow ui`` on 127.0.0.1,
its runs page rendered by headless Chromium, every trial found by its run name in the DOM.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it this test skips
and says so.
"""

from __future__ import annotations

import html
import os
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

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BIN = Path(sys.executable).parent
NUM_TRIALS = 8


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory) -> tuple[str, str, list[str]]:
    """A real tuning run (Dask, 2 workers): its tracking URI, experiment id, trial run names."""
    d = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{d}/mlflow.db"
    # artifacts (checkpoints) under the test's directory, not the working directory
    MlflowClient(uri).create_experiment(
        "ui-review", artifact_location=str(d / "artifacts"),
        tags={"mlflow.experimentKind": "custom_model_development"})  # as the tracker sets it
    result = Tuner(curve, space={"x": uniform(0.0, 1.0), "iters": 3, "sleep": 0.01},
                   metric="score", mode="max", num_samples=NUM_TRIALS,
                   backend={"type": "dask", "n_workers": 2}, storage_path=str(d / "runs"),
                   tracking_uri=uri, seed=0, name="ui-review").run()
    assert len(result.trials) == NUM_TRIALS
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("ui-review")
    kids = c.search_runs([exp.experiment_id], "tags.`rungflow.trial_id` LIKE 'trial-%'",
                         max_results=1000)
    names = sorted(r.data.tags["mlflow.runName"] for r in kids)
    assert len(names) == NUM_TRIALS and all(n.startswith("trial-") for n in names)
    return uri, exp.experiment_id, names


@pytest.fixture(scope="module")
def mlflow_ui(finished_experiment, tmp_path_factory) -> Iterator[str]:
    uri = finished_experiment[0]
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


def _render(chromium: str, url: str, profile: Path) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--window-size=1600,3000",
           "--virtual-time-budget=20000", "--dump-dom", url]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return html.unescape(proc.stdout)


def test_every_trial_is_on_the_runs_page(finished_experiment, mlflow_ui, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    _, exp_id, names = finished_experiment
    # ordered by name, the runs table lists child runs flat (ordered by date it nests them
    # under their parent, collapsed)
    page = f"{mlflow_ui}/#/experiments/{exp_id}/runs?orderByKey=attributes.run_name&orderByAsc=true"
    dom = ""
    for attempt in range(3):  # the JS app renders the table after its API calls
        dom = _render(chromium, page, tmp_path / f"profile-{attempt}")
        if all(n in dom for n in names):
            break
    missing = [n for n in names if n not in dom]
    assert not missing, f"not in the rendered runs page: {missing}\n{dom[:2000]}"
    assert "ui-review" in dom  # the experiment's page, not an error page
