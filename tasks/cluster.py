"""Provision (or connect to) the cluster for a run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller


@task(name="provision-cluster", cache_policy=NONE, persist_result=False)
def provision_cluster(ctl: Controller) -> dict:
    """Wait for the backend to be up (LocalCluster, connect by address, or a cluster class:
    started in the background by ``open-experiment``), ship the trainable to it and open the
    experiment on it; returns what was started. The flow's ExitStack closes the backend."""
    ctl.backend.finish_start()
    ctl.open()
    return {**ctl.backend.describe(), "slots": ctl.backend.slots}
