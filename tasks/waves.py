"""One wave of the tuning run: a window of work dispatched, then the rungs evaluated."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller


@task(name="dispatch", cache_policy=NONE, persist_result=False)
def dispatch(ctl: Controller) -> dict[str, Any]:
    """A window of work (seconds; waves double up to 30 s): segments go to the cluster as
    slots free, and each result is decided the moment it arrives."""
    return asdict(ctl.run_wave())


@task(name="evaluate-rungs", cache_policy=NONE, persist_result=False)
def evaluate_rungs(ctl: Controller) -> dict[str, Any]:
    """Between waves: rungs closed by a scheduler that pauses trials, budgets, a state
    snapshot when one is due; returns the trials per rung and per status."""
    return ctl.end_wave()
