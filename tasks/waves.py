"""One wave of the tuning run: a window of work dispatched (every result decided as it
arrives), then the wave's end (rungs closed, budgets, a state snapshot when one is due)."""

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


@task(name="end-wave", cache_policy=NONE, persist_result=False)
def end_wave(ctl: Controller) -> dict[str, Any]:
    """Between waves (every message was handled in ``dispatch``): stop the paused trials that
    a scheduler dropped at a closed rung (HyperBand), check the time budget, and append the
    state snapshot that resume replays up to when the snapshot policy says one is due;
    returns the trials per rung and per status."""
    return ctl.end_wave()
