"""Shared fixtures. Every process and server a test starts binds 127.0.0.1 and is ended by pid."""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e._ports import free_port

#: the session's `prefect server start` (pid, Prefect home), when this session started one
_SERVER: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    """One real `prefect server start` on 127.0.0.1 for the whole session, so that the
    in-process flows and every `rungflow` subprocess talk to it instead of each starting
    Prefect's ephemeral API (10-15 s apiece here). Not when PREFECT_API_URL is set already (a
    server of the caller's) or RUNGFLOW_TEST_PREFECT=ephemeral; a server that does not come
    up leaves the tests on the ephemeral API, with a warning."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("RUNGFLOW_TEST_PREFECT") == "ephemeral":
        return
    home = tempfile.mkdtemp(prefix="rungflow-test-prefect-")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=home, PREFECT_SERVER_API_HOST="127.0.0.1",
               PREFECT_SERVER_API_PORT=str(port))
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    log = open(os.path.join(home, "server.log"), "wb")  # noqa: SIM115 - closed with the server
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _SERVER.update(proc=proc, home=home, log=log)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
        except OSError:
            time.sleep(0.5)
            continue
        os.environ["PREFECT_API_URL"] = url
        return
    import warnings

    warnings.warn(f"prefect server did not start (log: {home}/server.log): the tests use "
                  "Prefect's ephemeral API", stacklevel=1)
    _stop_server()


def _stop_server() -> None:
    proc = _SERVER.pop("proc", None)
    if isinstance(proc, subprocess.Popen):
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
    log = _SERVER.pop("log", None)
    if log is not None:
        log.close()  # type: ignore[attr-defined]
    home = _SERVER.pop("home", None)
    if isinstance(home, str):
        shutil.rmtree(home, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_server()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A Prefect server for the test: the session's, or a temporary one of Prefect's test
    harness when the session has none (RUNGFLOW_TEST_PREFECT=ephemeral)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def storage(tmp_path):
    """A fresh storage path and a SQLite MLflow store inside it."""
    return {"storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
