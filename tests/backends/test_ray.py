"""The Ray backend against a local Ray and a real `ray start` head node (127.0.0.1 only)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tuning import ASHA, Status, Tuner, uniform
from tuning.backends import BackendError, make_backend
from tuning.backends._base import Done, Lost, Result, Started
from tuning.backends.ray import RayBackend
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, read_histories
from tuning.schedulers import FIFO
from tuning.searchers import RandomSearch
from tuning.space import Space
from tuning.trainable import Segment, SegmentSummary

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

# Ray swaps a loopback node address for the machine's routable one unless clusters are off:
# children started by the tests (and `ray start`) stay on 127.0.0.1. Token auth off: nothing
# listens beyond loopback, and Ray's default would read and rewrite ~/.ray/auth_token, which
# other Ray users of this machine share (a token rewritten between `ray start` and the driver's
# connection fails it).
_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "DO_NOT_TRACK": "1", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch):
    for k, v in _RAY_ENV.items():
        monkeypatch.setenv(k, v)
    yield
    assert not ray.is_initialized(), "the backend left the Ray connection open"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, backend, name):
    return Tuner("trainables:curve", space={"x": uniform(0, 1), "iters": 5, "sleep": 0.15},
                 metric="score", mode="max", num_samples=6,
                 scheduler=ASHA(max_t=5, grace_period=1, reduction_factor=2), backend=backend,
                 storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=0,
                 name=name).run()


def _check_run(result, tmp_path, name):
    import mlflow

    trials = result.trials
    assert len(trials) == 6
    assert all(t.status in (Status.TERMINATED, Status.STOPPED) for t in trials), \
        [(t.trial_id, t.status, t.error) for t in trials]
    # stopped mid-run (before max_t): only possible when results streamed while it ran
    early = [t for t in trials if t.status == Status.STOPPED and t.iteration < 5]
    assert early, [(t.trial_id, t.status, t.iteration) for t in trials]
    assert any(t.status == Status.TERMINATED and t.iteration == 5 for t in trials)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name(name)
    runs = {r.data.tags.get("rungflow.trial_id"): r
            for r in client.search_runs([exp.experiment_id])}
    for t in trials:
        history = sorted(client.get_metric_history(runs[t.trial_id].info.run_id, "score"),
                         key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx([r["score"] for r in result.history(t.trial_id)])
        assert len(history) == t.iteration


def test_local_ray_runs_asha_and_streams_results(tmp_path):
    result = _run(tmp_path, {"type": "ray", "num_cpus": 2}, "ray-local")
    _check_run(result, tmp_path, "ray-local")


def _poll_until(b, msgs, pred, deadline):
    while not any(pred(m) for m in msgs) and time.monotonic() < deadline:
        msgs += b.poll(1.0)
    return msgs


def test_local_backend_slots_resources_and_stop():
    b = RayBackend(num_cpus=2, resources={"CPU": 1})
    with b:
        assert b.slots == 2
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert b.describe()["run_id"].startswith("rungflow-")
        import trainables

        b.prepare(trainables.curve)
        seg = Segment(trial_id="t0", segment_id=0, config={"x": 1.0, "iters": 50, "sleep": 0.05},
                      storage=tempfile.mkdtemp(prefix="rungflow-ray-"))
        b.submit(seg)
        deadline = time.monotonic() + 60
        msgs = _poll_until(b, [], lambda m: isinstance(m, Result), deadline)
        b.stop("t0")
        msgs = _poll_until(b, msgs, lambda m: isinstance(m, (Done, Lost)), deadline)
        assert isinstance(msgs[0], Started) and isinstance(msgs[-1], Done), msgs
        summary = msgs[-1].summary
        assert isinstance(summary, SegmentSummary)
        assert summary.status == "stopped" and summary.last_iteration < 50
        # every result streamed, in order, before the segment's end
        streamed = [m.result["training_iteration"] for m in msgs if isinstance(m, Result)]
        assert streamed == list(range(1, summary.last_iteration + 1))
        b.segment_finished("t0")
        # a worker that dies is a lost segment (Ray does not retry it: the controller decides)
        import _cluster_stub

        b.prepare(_cluster_stub.crash)
        b.submit(Segment(trial_id="t1", segment_id=1, config={}, storage=seg.storage))
        msgs = _poll_until(b, [], lambda m: isinstance(m, (Done, Lost)), deadline)
        assert isinstance(msgs[-1], Lost) and msgs[-1].trial_id == "t1", msgs
        assert "WorkerCrashedError" in msgs[-1].error or "died" in msgs[-1].error
        shutil.rmtree(seg.storage, ignore_errors=True)


def test_decision_point_waits_for_the_answer_and_kill_reports_lost_once(tmp_path):
    """A report() at a decision point waits for decide(); kill() ends a hung task with one
    Lost (the task's later TaskCancelledError is not reported again)."""
    import trainables

    with RayBackend(num_cpus=2) as b:
        b.prepare(trainables.curve)
        seg = Segment(trial_id="t0", segment_id=3, config={"x": 1.0, "iters": 9, "sleep": 0.01},
                      storage=str(tmp_path), decide_at=[2.0])
        b.submit(seg)
        deadline = time.monotonic() + 60
        msgs = _poll_until(b, [], lambda m: isinstance(m, Result) and m.awaits, deadline)
        waiting = [m for m in msgs if isinstance(m, Result) and m.awaits]
        assert [m.result["training_iteration"] for m in waiting] == [2]
        # the trial waits: nothing past iteration 2 arrives within 0.5 s (25 iterations' time),
        # and the wait ends at once if something does
        past = lambda m: isinstance(m, Result) and m.result["training_iteration"] > 2
        msgs = _poll_until(b, msgs, past, time.monotonic() + 0.5)
        assert max(m.result["training_iteration"] for m in msgs if isinstance(m, Result)) == 2
        b.decide("t0", 3, 2, False)  # go on
        msgs = _poll_until(b, msgs, lambda m: isinstance(m, (Done, Lost)), deadline)
        assert isinstance(msgs[-1], Done) and msgs[-1].summary.status == "returned", msgs
        assert msgs[-1].summary.last_iteration == 9
        b.segment_finished("t0")

        b.prepare(trainables.hangs)
        b.submit(Segment(trial_id="t1", segment_id=4, config={}, storage=str(tmp_path)))
        msgs = _poll_until(b, [], lambda m: isinstance(m, Result), deadline)
        t0 = time.monotonic()
        b.kill("t1")
        msgs = _poll_until(b, [], lambda m: isinstance(m, (Done, Lost)), deadline)
        assert time.monotonic() - t0 < 5
        assert msgs[-1] == Lost("t1", 4, "killed after timeout_s"), msgs
        b.segment_finished("t1")
        later: list = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            later += b.poll(0.2)
        assert not [m for m in later if isinstance(m, (Done, Lost))], later


def _controller(tmp_path, scheduler, trainable, space, n, backend, **kw):
    d = str(tmp_path / "exp")
    return Controller(name="exp", trainable=trainable, space=Space(space), metric="score",
                      mode="max", scheduler=scheduler, searcher=RandomSearch(), backend=backend,
                      journal=Journal(d), storage=d, budget=Budget(num_samples=n), seed=0, **kw)


def test_asha_stop_at_a_milestone_trains_no_iteration_past_it(tmp_path):
    """The milestone is a decision point: report() waits there for the answer, so a trial
    stopped at its first milestone reports nothing after it, on a real Ray."""
    import trainables

    with RayBackend(num_cpus=2) as b:
        ctl = _controller(tmp_path, ASHA(max_t=9, grace_period=1, reduction_factor=3),
                          trainables.curve, {"x": uniform(0, 1), "iters": 9, "sleep": 0.02},
                          n=12, backend=b).run()
    hist = read_histories(ctl.journal)
    trials = list(ctl.trials.values())
    stopped = [t for t in trials if t.status == Status.STOPPED]
    assert stopped, [(t.trial_id, t.status, t.iteration) for t in trials]
    assert any(t.stopped_at == 1 for t in stopped), [(t.trial_id, t.stopped_at) for t in stopped]
    for t in stopped:
        assert t.iteration == t.stopped_at, (t.trial_id, t.iteration, t.stopped_at)
        assert [r["training_iteration"] for r in hist[t.trial_id]] == \
            list(range(1, t.iteration + 1))
    assert all(t.status in (Status.STOPPED, Status.TERMINATED) for t in trials), \
        [(t.trial_id, t.status, t.error) for t in trials]
    assert any(t.status == Status.TERMINATED and t.iteration == 9 for t in trials)


def test_hung_trial_is_killed_after_timeout_s(tmp_path):
    """A trial that never reports again is force-cancelled after timeout_s and ends as ERROR
    within seconds (it never reads a stop)."""
    import trainables

    with RayBackend(num_cpus=2) as b:
        t0 = time.monotonic()
        ctl = _controller(tmp_path, FIFO(), trainables.hangs, {"x": uniform(0, 1)}, n=2,
                          backend=b, trial_timeout_s=2.0).run()
        took = time.monotonic() - t0
    trials = list(ctl.trials.values())
    assert len(trials) == 2
    assert all(t.status == Status.ERROR and "timeout_s=2" in (t.error or "") for t in trials), \
        [(t.trial_id, t.status, t.error) for t in trials]
    assert took < 20, took
    failures = [e for e in ctl.journal.read() if e["event"] == "failure"]
    assert not failures, failures  # one Lost per trial, not retried nor reported twice


def _session_processes(sid: int, marker: str) -> list[str]:
    """Processes of the session the fixture started, or naming its temp dir."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        if int(fields[3]) == sid or marker in cmd:
            found.append(f"{d.name}: {cmd[:120]}")
    return found


@pytest.fixture
def ray_head():
    """A real head node: `ray start --block` in its own session, ended by its process group."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rgray", dir="/tmp")  # short: Ray's socket paths
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_cli, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--include-dashboard=false", "--block", "--temp-dir", temp_dir,
           "--ray-client-server-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port()),
           "--min-worker-port", "0", "--max-worker-port", "0"]
    log = open(os.path.join(temp_dir, "ray-start.log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **_RAY_ENV})
    pgid = os.getpgid(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in Path(log.name).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start failed: " + Path(log.name).read_text()[-2000:])
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 4), (signal.SIGKILL, 5)):  # the monitor ignores TERM
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait
            while _session_processes(pgid, temp_dir) and time.monotonic() < end:
                time.sleep(0.2)
        proc.wait(timeout=5)
        log.close()
        leftover = _session_processes(pgid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, leftover


def test_existing_cluster_by_address(tmp_path, ray_head):
    result = _run(tmp_path, {"type": "ray", "address": ray_head}, "ray-address")
    _check_run(result, tmp_path, "ray-address")
    # the cluster is left running for its owner: still reachable after the run
    host, port = ray_head.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=2).close()


@pytest.mark.parametrize("form", ["{host}:{port}", "ray://{host}:{port}"])
def test_unreachable_address_fails_fast(form):
    address = form.format(host="127.0.0.1", port=_free_port())
    b = make_backend({"type": "ray", "address": address, "connect_timeout_s": 2})
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="backend.address: cannot reach the Ray cluster"):
        b.start()
    assert time.monotonic() - t0 < 5


def test_constructor_validation():
    with pytest.raises(ValueError, match="either address or cluster_config"):
        RayBackend(address="auto", cluster_config="deployments/ray-aws.yaml")
    with pytest.raises(ValueError, match="connect_timeout_s"):
        RayBackend(connect_timeout_s=0)
    with pytest.raises(BackendError, match="cluster_config: no such file"):
        RayBackend(cluster_config="/nonexistent/ray.yaml").start()


def test_cluster_config_runs_ray_up_and_always_ray_down(tmp_path, monkeypatch):
    """`ray up` failing (no cloud here) still ends with `ray down`; a stand-in CLI records both."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "ray"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                    "[ \"$1\" = up ] && { echo 'no AWS credentials' >&2; exit 1; }\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(RayBackend, "_ray_cli", lambda self: str(fake))
    cfg = Path(__file__).resolve().parents[2] / "deployments" / "ray-aws.yaml"
    b = make_backend({"type": "ray", "cluster_config": str(cfg)})
    with pytest.raises(BackendError, match="ray up -y .*failed .*no AWS credentials"):
        b.start()
    assert calls.read_text().splitlines() == [f"up -y --no-config-cache {cfg}", f"down -y {cfg}"]
