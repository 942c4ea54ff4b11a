"""One wave of the tuning loop: plan, dispatch, evaluate the rungs."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller
from tuning.trainable import Segment


@task(name="plan-wave", cache_policy=NONE, persist_result=False)
def plan_wave(ctl: Controller) -> list[Segment]:
    """Searcher + scheduler: which trials to start or resume now."""
    return ctl.plan_wave()


@task(name="dispatch", cache_policy=NONE, persist_result=False)
def dispatch(ctl: Controller, wave: list[Segment]) -> list[dict[str, Any]]:
    """Send the wave's segments to the cluster; gather what the trials reported."""
    return ctl.dispatch(wave)


@task(name="evaluate-rungs", cache_policy=NONE, persist_result=False)
def evaluate_rungs(ctl: Controller, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scheduler decisions on the results; the journal committed; the new events returned."""
    return ctl.evaluate(messages)
