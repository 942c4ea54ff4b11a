"""Provision (or connect to) the cluster for a run, and tear it down after."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller


@task(name="provision-cluster", cache_policy=NONE, persist_result=False)
def provision_cluster(ctl: Controller) -> dict:
    """Start the backend (LocalCluster, connect by address, or a cluster class) and open the
    experiment on it; returns what was started."""
    ctl.backend.start()
    ctl.open(getattr(ctl, "replayed", None))
    return {**ctl.backend.describe(), "slots": ctl.backend.slots}


@task(name="teardown-cluster", cache_policy=NONE, persist_result=False)
def teardown_cluster(ctl: Controller) -> None:
    """Close the client; close the cluster if this run provisioned it."""
    ctl.backend.close()
