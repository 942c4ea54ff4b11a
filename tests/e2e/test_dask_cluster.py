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

from tests.e2e._ports import port_opens
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


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    if not port_opens(port, proc, timeout):
        raise RuntimeError(f"dask scheduler on port {port} did not start")

def _start(env: dict[str, str], workers: list[list[str]]):
    """A scheduler and one ``dask worker`` per entry of ``workers`` (its extra arguments),
    without nannies (a killed worker stays dead); returns the address and the processes."""
    port = _port()
    scheduler = _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                        "--dashboard-address", ":0"], env)
    procs = [scheduler]
    try:
        _wait_for_port(port, scheduler)
        addr = f"tcp://127.0.0.1:{port}"
        procs += [_spawn(["worker", addr, "--no-nanny", "--host", "127.0.0.1",
                          "--dashboard-address", ":0", *args], env) for args in workers]
        from distributed import Client

        with Client(addr, timeout=30) as c:
            c.wait_for_workers(len(workers), timeout=60)
    except BaseException:
        _stop(procs)
        raise
    return addr, procs


def _stop(procs) -> None:
    for p in procs[1:] + procs[:1]:  # workers first, then the scheduler
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _env(tmp_path) -> dict[str, str]:
    return dict(os.environ, MARKS=str(tmp_path / "marks"), PYTHONPATH=os.getcwd(),
                DO_NOT_TRACK="1")


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and three single-thread workers declaring CPU=1 each."""
    marks = tmp_path / "marks"
    marks.mkdir()
    addr, procs = _start(_env(tmp_path), [["--nthreads", "1", "--resources", "CPU=1"]] * 3)
    yield addr, procs[1:], marks
    _stop(procs)


@pytest.fixture
def threaded_cluster(tmp_path):
    """Two workers of three threads each, each declaring CPU=2: threads would run six trials
    at once, the CPU resource only four."""
    addr, procs = _start(_env(tmp_path), [["--nthreads", "3", "--resources", "CPU=2"]] * 2)
    yield addr
    _stop(procs)


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


def _most_at_once(path: str) -> int:
    """The most trials running at one moment, from the journal's result events (each trial's
    span: its first iteration's start to its last report), measured by the trainable."""
    spans: dict[str, list[float]] = {}
    for e in Journal(path).read():
        if e["event"] == "result":
            r = e["result"]
            span = spans.setdefault(e["trial_id"], [r["timestamp"] - r["time_this_iter_s"], 0.0])
            span[1] = max(span[1], r["timestamp"])
    return max(sum(1 for a, b in spans.values() if a <= t < b) for t, _ in spans.values())


@pytest.mark.parametrize("resources, most", [({"cpu": 1}, 4), ({}, 6)])
def test_resources_limit_concurrency(threaded_cluster, tmp_path, resources, most):
    """resources.cpu=1 on workers that declare CPU=2 and have three threads each: four trials
    at once (two per worker), where the same cluster runs six without the request."""
    res = Tuner("tests.trainables:curve", space={"x": uniform(0, 1), "iters": 4, "sleep": 0.4},
                metric="score", mode="max", num_samples=12,
                backend={"type": "dask", "address": threaded_cluster}, resources=resources,
                storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=0,
                name="res").run()
    assert [str(t.status) for t in res.trials] == ["TERMINATED"] * 12
    assert _most_at_once(res.path) == most
