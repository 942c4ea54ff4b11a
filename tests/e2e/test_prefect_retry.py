"""A crashed Prefect flow run retried with `prefect flow-run retry` ends in the same state as
`rungflow resume`: the retry has the same flow run id, hence the same run name, finds its
journal and continues it. Real `prefect server start`, real SIGKILL."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import mlflow
import pytest

from tests.e2e._ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
    env.pop("PREFECT_API_URL", None)  # this server is its own, not the test session's
    p = subprocess.Popen([f"{BIN}/prefect", "server", "start", "--host", "127.0.0.1", "--port",
                          str(port)], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("prefect server did not start")
    yield url, env
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)


SCRIPT = '''
from tuning.flows.tune import tune
if __name__ == "__main__":
    tune(spec={spec!r})
'''


def test_flow_run_retry_continues_the_crashed_run(tmp_path, prefect_api):
    url, server_env = prefect_api
    marks = tmp_path / "marks"
    marks.mkdir()
    uri = f"sqlite:///{tmp_path}/m.db"
    spec = {"name": "retried", "trainable": "tests.trainables:marked", "metric": "score",
            "mode": "max", "num_samples": 8, "space": {"x": {"type": "uniform", "low": 0,
                                                            "high": 1}},
            "scheduler": {"type": "asha", "max_t": 9, "grace_period": 1, "reduction_factor": 3},
            "backend": {"type": "dask", "n_workers": 2}, "storage_path": str(tmp_path / "runs"),
            "tracking_uri": uri, "seed": 0}
    (tmp_path / "run.py").write_text(textwrap.dedent(SCRIPT.format(spec=spec)))
    env = dict(os.environ, PREFECT_API_URL=url, MARKS=str(marks), DO_NOT_TRACK="1",
               PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], env=env,
                         start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and p.poll() is None and len(os.listdir(marks)) < 12:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        assert len(runs) == 1 and runs[0].state.is_running()
        flow_run_id = runs[0].id
        # what Prefect's heartbeat monitoring does to a flow run whose process died
        client.set_flow_run_state(flow_run_id, Crashed(message="SIGKILL"), force=True)
    run_dirs = glob.glob(f"{tmp_path}/runs/retried-*")
    assert run_dirs == [f"{tmp_path}/runs/retried-{str(flow_run_id)[:8]}"]

    r = subprocess.run([f"{BIN}/prefect", "flow-run", "retry", str(flow_run_id), "--entrypoint",
                        "tuning.flows.tune:tune"], env=env, capture_output=True, text=True,
                       timeout=400, cwd=os.getcwd())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed()
    # the same state `rungflow resume` leaves: one parent run, every trial once, whole histories
    status = subprocess.run([f"{BIN}/rungflow", "status", run_dirs[0], "--json"], env=env,
                            capture_output=True, text=True)
    assert json.loads(status.stdout)["status"] == "finished"
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = [x for e in c.search_experiments() for x in c.search_runs([e.experiment_id])]
    assert len([x for x in runs if "mlflow.parentRunId" not in x.data.tags]) == 1
    kids = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    assert sorted(k.data.tags["rungflow.trial_id"] for k in kids) == \
        [f"trial-{i:03d}" for i in range(8)]
    for k in kids:
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "score")]
        assert sorted(steps) == list(range(1, max(steps) + 1))
