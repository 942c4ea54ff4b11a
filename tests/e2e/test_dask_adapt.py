"""An adaptive Dask cluster provisioned for the run, through the spec's ``cluster_class`` +
``cluster_kwargs`` + ``adapt`` (the path dask-cloudprovider's classes take): a real
``distributed.LocalCluster`` that starts with no worker and adapts between 0 and 2."""

from __future__ import annotations

import os
import socket
import time

import mlflow
import pytest

from tuning import Tuner, grid, uniform
from tuning.backends.dask import DaskBackend
from tuning.experiment import Journal

pytestmark = pytest.mark.slow


@pytest.fixture
def slot_counts(monkeypatch):
    """Every slot count the backend takes, with the workers it was counted from (what the
    scheduler plugin told the backend as workers came and went): the real ``_set_workers``,
    observed."""
    seen: list[dict] = []
    real = DaskBackend._set_workers

    def observed(self: DaskBackend, workers: dict) -> None:
        real(self, workers)
        seen.append({"t": time.monotonic(), "slots": self.slots, "workers": len(workers),
                     "threads": sum(w["nthreads"] for w in workers.values()),
                     "pids": [w["pid"] for w in workers.values()]})

    monkeypatch.setattr(DaskBackend, "_set_workers", observed)
    return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_adaptive_cluster_scales_from_zero_and_slots_follow_the_workers(tmp_path, slot_counts):
    uri = f"sqlite:///{tmp_path}/m.db"
    backend = {"type": "dask", "cluster_class": "distributed.LocalCluster",
               "cluster_kwargs": {"n_workers": 0, "threads_per_worker": 1, "processes": True,
                                  "host": "127.0.0.1", "dashboard_address": ":0"},
               # trials of ~2 s: a target below that asks for a worker per queued segment;
               # an idle worker is retired after 3 checks 0.2 s apart
               "adapt": {"minimum": 0, "maximum": 2, "target_duration": "1s",
                         "interval": "200ms", "wait_count": 3}}
    # eight short trials, then a long one that runs alone at the end: the idle worker goes
    res = Tuner("tests.trainables:curve",
                space={"x": uniform(0, 1), "sleep": 0.4, "iters": grid([5] * 8 + [15])},
                metric="score", mode="max", num_samples=1, backend=backend,
                storage_path=str(tmp_path / "runs"), tracking_uri=uri, seed=0,
                name="adapt").run()

    # every trial ran to the end and is recorded, once, in the journal and in MLflow
    assert [str(t.status) for t in res.trials] == ["TERMINATED"] * 9
    assert [t.iteration for t in res.trials] == [5] * 8 + [15]
    c = mlflow.MlflowClient(tracking_uri=uri)
    kids = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    assert sorted(k.data.tags["rungflow.trial_id"] for k in kids) == \
        [f"trial-{i:03d}" for i in range(9)]

    # scaled up from zero: the first count saw no worker (one slot, so that a queued segment
    # wakes the cluster), later ones the workers adapt started, up to its maximum
    assert slot_counts[0]["workers"] == 0 and slot_counts[0]["slots"] == 1
    workers = [s["workers"] for s in slot_counts]
    assert max(workers) == 2
    # the slots followed the workers: one per worker thread whenever there were workers
    assert all(s["slots"] == s["threads"] for s in slot_counts if s["workers"])
    # and the workers went as well as came: fewer after the peak, while the long trial ran
    peak = workers.index(2)
    assert 1 in workers[peak:], workers

    # the cluster was closed after the run: its scheduler and every worker process are gone
    started = next(e for e in Journal(res.path).read() if e["event"] == "run_started")
    host, port = started["backend"]["scheduler"].rsplit("/", 1)[-1].rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    pids = {p for s in slot_counts for p in s["pids"]}
    assert len(pids) >= 2
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
