"""``run_to_completion``: Tuner.run's way of calling the tune flow, against the session's real
Prefect server: back as soon as the run is Completed there, failures and Ctrl-C as before."""

from __future__ import annotations

import _thread
import threading
import time
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from tuning._env import quiet_defaults
from tuning.tuner import run_to_completion

EXTRA: dict[str, Any] = {}
SLOW_TEARDOWN_S = 3.0


def _state(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def _slow_hook(*_: Any) -> None:  # the flow's own hook: the engine is still busy after ours
    time.sleep(SLOW_TEARDOWN_S)
    EXTRA["slow_hook_done"] = True


@flow(name="rtc-ok", on_completion=[_slow_hook])
def ok(x: int) -> int:
    EXTRA["id"] = str(flow_run.get_id())
    EXTRA["thread"] = threading.current_thread()
    EXTRA["flow_return"] = 2 * x
    return 2 * x


@flow(name="rtc-fails")
def fails() -> None:
    EXTRA["id"] = str(flow_run.get_id())
    EXTRA["thread"] = threading.current_thread()
    raise ValueError("the trainable broke")


@flow(name="rtc-forever")
def forever() -> None:
    EXTRA["thread"] = threading.current_thread()
    try:
        while True:
            time.sleep(0.02)
    finally:
        EXTRA["unwound"] = True


@flow(name="rtc-parent")
def parent() -> str:
    run_to_completion(ok, EXTRA, x=1)
    return str(flow_run.get_id())


@pytest.fixture(autouse=True)
def _clear():
    quiet_defaults()  # as Tuner.run: Prefect's INFO lines are not shipped to the server
    EXTRA.clear()
    yield
    EXTRA.clear()


def test_returns_once_the_run_is_completed_while_the_engine_winds_down(prefect_server):
    assert get_current_settings().flows.heartbeat_frequency is not None  # heartbeats on
    assert run_to_completion(ok, EXTRA, x=21) == 42
    thread = EXTRA["thread"]
    assert thread is not threading.current_thread()
    assert "slow_hook_done" not in EXTRA and thread.is_alive()  # before the engine ended
    assert _state(EXTRA["id"]) == "COMPLETED"  # ...and only after Prefect recorded the end
    assert "flow_return" not in EXTRA  # taken
    thread.join()
    assert EXTRA["slow_hook_done"]  # the engine finished on its own


def test_a_failed_run_raises_its_error_after_the_engine_has_ended(prefect_server):
    with pytest.raises(ValueError, match="the trainable broke"):
        run_to_completion(fails, EXTRA)
    assert not EXTRA["thread"].is_alive()
    assert _state(EXTRA["id"]) == "FAILED"


def test_ctrl_c_winds_the_flow_down_in_its_thread_and_is_raised_here(prefect_server):
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_to_completion(forever, EXTRA)
    finally:
        timer.cancel()
    assert EXTRA.get("unwound") is True  # the flow's own finally ran, in its own thread
    assert not EXTRA["thread"].is_alive()


def test_called_inside_a_flow_the_run_stays_its_child(prefect_server):
    parent_id = parent()
    EXTRA["thread"].join()
    with get_client(sync_client=True) as client:
        child = client.read_flow_run(EXTRA["id"])
        link = client.read_task_run(child.parent_task_run_id)
    assert str(link.flow_run_id) == parent_id
