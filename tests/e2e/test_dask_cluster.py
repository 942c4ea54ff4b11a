"""A real Dask cluster by address: `dask scheduler` and `dask worker` processes on 127.0.0.1,
one worker killed with SIGKILL mid-run; resources per trial."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import mlflow
import pytest

from tuning import ASHA, Tuner, uniform
from tuning.experiment import Journal

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args, env):
    return subprocess.Popen([f"{BIN}/dask", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and three single-thread workers (no nanny: a killed worker stays dead)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = dict(os.environ, MARKS=str(marks), PYTHONPATH=os.getcwd(), DO_NOT_TRACK="1")
    port = _port()
    procs = [_spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--dashboard-address", ":0"], env)]
    addr = f"tcp://127.0.0.1:{port}"
    time.sleep(2)
    procs += [_spawn(["worker", addr, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                      "--dashboard-address", ":0", "--resources", "CPU=1"], env)
              for _ in range(3)]
    from distributed import Client

    with Client(addr, timeout=30) as c:
        c.wait_for_workers(3, timeout=60)
    yield addr, procs[1:], marks
    for p in procs[1:] + procs[:1]:  # workers first, then the scheduler
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _kill_busy_worker(marks, workers, killed):
    pids = {p.pid: p for p in workers}
    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        seen = [int(os.path.basename(f).split(".")[0]) for f in glob.glob(f"{marks}/*")]
        busy = [pid for pid in seen if pid in pids and seen.count(pid) >= 3]
        if busy:
            pids[busy[0]].send_signal(signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.05)


def test_worker_killed_mid_trial_every_trial_recorded_once(cluster, tmp_path):
    addr, workers, marks = cluster
    killed: list[int] = []
    threading.Thread(target=_kill_busy_worker, args=(marks, workers, killed), daemon=True).start()
    uri = f"sqlite:///{tmp_path}/m.db"
    res = Tuner("tests.trainables:marked", space={"x": uniform(0, 1)}, metric="score",
                mode="max", num_samples=10, scheduler=ASHA(max_t=9, grace_period=1,
                                                           reduction_factor=3),
                backend={"type": "dask", "address": addr}, storage_path=str(tmp_path),
                tracking_uri=uri, seed=0, max_failures=3, name="loss").run()
    assert killed, "no worker was seen running a trial"
    assert all(str(t.status) in ("TERMINATED", "STOPPED") for t in res.trials)
    failures = [e for e in Journal(res.path).read() if e["event"] == "failure"]
    assert failures and all("worker" in e["error"].lower() or "Killed" in e["error"]
                            for e in failures)
    c = mlflow.MlflowClient(tracking_uri=uri)
    kids = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    assert sorted(k.data.tags["rungflow.trial_id"] for k in kids) == \
        [f"trial-{i:03d}" for i in range(10)]
    for k in kids:
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "score")]
        assert sorted(steps) == list(range(1, max(steps) + 1))
    # the restarted trial went on from its checkpoint, not from scratch
    lost = {e["trial_id"] for e in failures}
    for t in res.trials:
        if t.trial_id in lost:
            assert [r["training_iteration"] for r in res.history(t.trial_id)] == list(range(1, t.iteration + 1))


def test_resources_no_worker_has_are_refused_up_front(cluster, tmp_path):
    from tuning.backends import BackendError

    addr, _, _ = cluster
    tuner = Tuner("tests.trainables:curve", space={"x": uniform(0, 1), "iters": 4, "sleep": 0.05},
                metric="score", mode="max", num_samples=6, backend={"type": "dask",
                                                                    "address": addr},
                resources={"cpu": 2}, storage_path=str(tmp_path),
                tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=0, name="res")
    # workers declare CPU=1 each: a trial that needs 2 CPUs could never be placed
    with pytest.raises(BackendError, match=r"resources.cpu=2: no worker .* declares"):
        tuner.run()


def test_resources_limit_concurrency(cluster, tmp_path):
    addr, _, _ = cluster
    res = Tuner("tests.trainables:curve", space={"x": uniform(0, 1), "iters": 4, "sleep": 0.1},
                metric="score", mode="max", num_samples=6,
                backend={"type": "dask", "address": addr}, resources={"cpu": 1},
                storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=0,
                name="res1").run()
    spans = [(h[0]["timestamp"] - h[0]["time_this_iter_s"], h[-1]["timestamp"])
             for h in res.histories().values()]
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert all(str(t.status) == "TERMINATED" for t in res.trials)
    assert most <= 3  # three workers with CPU=1 each
