"""The retraining deployment end to end: a real Prefect server (SQLite), a process work pool and
a worker, ``prefect deploy`` from ``deployments/prefect.yaml``, ``prefect deployment run``.

The first run registers version 1 and gives it the ``champion`` alias; a second run whose final
model is untrained (``fit_overrides: {final_epochs: 0}``) registers version 2, warm-started from
the first run's best configs, and leaves the alias on version 1 with the reason recorded; a run
with a bad spec fails with the ExperimentSpec's message. Every process binds 127.0.0.1 and is
ended by its own process group id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "rungflow"  # the work pool deployments/prefect.yaml names
DEPLOYMENT = "retrain/retrain-weekly"
MODEL = "digits-e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """A process in its own session (so its whole group can be ended by its pgid)."""
    out = log.open("ab")
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(5)


def api(url: str, path: str, body: Any = None, method: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method or
                                 ("POST" if body is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    p = subprocess.run([str(BIN / "prefect"), *args], check=False, env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"prefect {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``prefect server start`` on SQLite in a temporary PREFECT_HOME; the env that points the
    CLI, the worker and the flow runs at it."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_KEY", None)
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                    str(port)], env, home / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if api(url, "/health") is True:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail("prefect server did not start:\n" +
                            (home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        stop(server)


@pytest.fixture(scope="module")
def worker(prefect_env, tmp_path_factory) -> Iterator[Path]:
    """The process work pool of deployments/prefect.yaml and a worker polling it."""
    cli(prefect_env, "work-pool", "create", POOL, "--type", "process")
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                 prefect_env, log)
    try:
        yield log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def deployment(prefect_env, worker) -> dict[str, Any]:
    out = cli(prefect_env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name",
              "retrain-weekly", "--no-prompt")
    assert "retrain/retrain-weekly" in out, out
    dep = api(prefect_env["PREFECT_API_URL"], "/deployments/name/retrain/retrain-weekly")
    return dep


def spec(d: Path) -> dict[str, Any]:
    return {"name": "digits-e2e", "trainable": "tuning.examples.digits:train_digits",
            "metric": "mean_accuracy", "mode": "max", "num_samples": 2,
            "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.1},
                      "momentum": {"type": "uniform", "low": 0.5, "high": 0.9}, "epochs": 2},
            "scheduler": {"type": "asha", "max_t": 2, "grace_period": 1, "reduction_factor": 2},
            "backend": {"type": "dask", "n_workers": 2}, "storage_path": str(d / "runs"),
            "tracking_uri": f"sqlite:///{d}/mlflow.db", "seed": 0}


def run_deployment(env: dict[str, str], params: dict[str, Any], timeout: float = 150
                   ) -> dict[str, Any]:
    """``prefect deployment run`` and wait for the flow run's terminal state."""
    out = cli(env, "deployment", "run", DEPLOYMENT, "--params", json.dumps(params))
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert m, out
    deadline = time.time() + timeout
    while time.time() < deadline:
        fr = api(env["PREFECT_API_URL"], f"/flow_runs/{m.group(1)}")
        if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return fr
        time.sleep(1)
    pytest.fail(f"flow run {m.group(1)} did not finish in {timeout}s: {fr['state']}")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("retrain")
    # artifacts (models) under the test's directory, not the worker's working directory
    MlflowClient(f"sqlite:///{d}/mlflow.db").create_experiment(
        "digits-e2e", artifact_location=str(d / "artifacts"))
    return d


def test_the_deployment_is_what_prefect_yaml_says(deployment):
    assert deployment["entrypoint"] == "tuning.flows.retrain:retrain"
    assert deployment["work_pool_name"] == POOL
    assert [s["schedule"].get("cron") for s in deployment["schedules"]] == ["0 3 * * 1"]
    step = deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert Path(step["directory"]).resolve() == ROOT  # where `prefect deploy` ran
    assert deployment["parameters"]["model_name"] == "digits-convnet"


def test_retrain_registers_a_champion_then_keeps_it_against_a_worse_model(
        prefect_env, deployment, store, worker):
    uri = f"sqlite:///{store}/mlflow.db"
    first = run_deployment(prefect_env, {"spec": spec(store), "model_name": MODEL})
    assert first["state"]["type"] == "COMPLETED", (first["state"], worker.read_text()[-4000:])
    c = MlflowClient(uri)
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    v1 = c.get_model_version(MODEL, "1")
    assert v1.tags["rungflow.champion.decision"] == "promoted"
    assert "no champion yet" in v1.tags["rungflow.champion.reason"]
    score1 = float(v1.tags["rungflow.holdout_score"])
    assert score1 > 0.5  # two epochs of the ConvNet on the full training split

    # the same experiment again, its final model untrained: worse on the same held-out data
    second = run_deployment(prefect_env, {"spec": spec(store), "model_name": MODEL,
                                          "fit_overrides": {"final_epochs": 0}})
    assert second["state"]["type"] == "COMPLETED", (second["state"], worker.read_text()[-4000:])
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    v2 = c.get_model_version(MODEL, "2")
    assert v2.tags["rungflow.champion.decision"] == "kept"
    reason = v2.tags["rungflow.champion.reason"]
    assert "does not beat the champion (version 1)" in reason and f"{score1:.6g}" in reason
    assert float(v2.tags["rungflow.champion.previous_score"]) == pytest.approx(score1)
    run2 = c.get_run(v2.run_id)
    assert run2.data.tags["rungflow.champion.reason"] == reason
    # warm-started from the first run's tuning run: its two configs tried first
    first_tuning = c.get_run(v1.run_id).data.tags["rungflow.tuning_parent_run_id"]
    assert run2.data.tags["rungflow.warm_start_from"] == first_tuning
    assert run2.data.tags["rungflow.warm_start_points"] == "2"


def test_a_bad_spec_fails_the_flow_run_naming_the_field(prefect_env, deployment, store):
    bad = {**spec(store), "scheduler": {"type": "nope"}}
    fr = run_deployment(prefect_env, {"spec": bad, "model_name": MODEL}, timeout=90)
    assert fr["state"]["type"] == "FAILED"
    assert "scheduler.type: unknown 'nope'" in fr["state"]["message"]


def test_the_on_demand_tuning_deployment_deploys(prefect_env, worker):
    out = cli(prefect_env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name",
              "tune-on-demand", "--no-prompt")
    assert "tune/tune-on-demand" in out, out
    dep = api(prefect_env["PREFECT_API_URL"], "/deployments/name/tune/tune-on-demand")
    assert dep["entrypoint"] == "tuning.flows.tune:tune" and dep["schedules"] == []
    assert dep["parameters"]["spec"]["name"] == "digits-asha"
    assert dep["work_pool_name"] == POOL
