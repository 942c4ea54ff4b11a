"""The Dask backend through the real controller: a STOP decided at a milestone lands before the
trial's next iteration (report() waits there for the answer)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tuning import ASHA, Status, uniform
from tuning.backends.dask import DaskBackend
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, read_histories
from tuning.searchers import RandomSearch
from tuning.space import Space

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_asha_stop_at_a_milestone_trains_no_iteration_past_it(tmp_path, processes):
    """Also with thread workers in the driver (``cluster_kwargs: {processes: false}``): the
    trials share the driver's mailbox and the stop still lands at the milestone."""
    import trainables

    marks = tmp_path / "marks"
    marks.mkdir()
    d = str(tmp_path / "exp")
    space = {"x": uniform(0, 1), "iters": 9, "sleep": 0.02, "marks": str(marks)}
    with DaskBackend(n_workers=2, cluster_kwargs={"processes": processes}) as backend:
        ctl = Controller(name="exp", trainable=trainables.counted, space=Space(space),
                         metric="score", mode="max",
                         scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                         searcher=RandomSearch(), backend=backend, journal=Journal(d),
                         storage=d, budget=Budget(num_samples=16), seed=0).run()
    begun = Counter(name.rsplit(".", 1)[0] for name in os.listdir(marks))
    trials = list(ctl.trials.values())
    hist = read_histories(ctl.journal)
    stopped = [t for t in trials if t.status == Status.STOPPED]
    assert any(t.stopped_at == 1 for t in stopped), [(t.trial_id, t.stopped_at) for t in trials]
    for t in stopped:  # not one iteration begun after the milestone it was stopped at
        assert begun[f"{t.config['x']:.9f}"] == t.iteration == t.stopped_at, t.trial_id
        assert [r["training_iteration"] for r in hist[t.trial_id]] == \
            list(range(1, t.stopped_at + 1))
    finished = [t for t in trials if t.status == Status.TERMINATED]
    assert finished and all(begun[f"{t.config['x']:.9f}"] == 9 for t in finished)


def _wait_for(pred, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def test_slots_follow_workers_as_they_come_and_go_without_asking_the_scheduler():
    """Six workers (more than the five `scheduler_info()` lists by default on some
    `distributed` versions), then fewer, then more: the slots follow from the scheduler
    plugin's events alone."""
    backend = DaskBackend(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": 6, "threads_per_worker": 2,
                                          "processes": False, "dashboard_address": None})
    with backend:
        assert backend._watched
        asked = []
        backend._workers_info = lambda: asked.append(1) or {}  # must not be needed now
        assert backend.slots == 12
        backend.cluster.scale(3)
        assert _wait_for(lambda: backend.slots == 6), backend.slots
        backend.cluster.scale(7)
        assert _wait_for(lambda: backend.slots == 14), backend.slots
        assert not asked


def test_a_local_cluster_finishes_closing_after_the_run_a_cloud_one_before():
    """`release()` returns while the run's own LocalCluster is still closing (its workers take
    seconds to go) and `join_closing()` (the exit handler) ends them; a `cluster_class` one
    (a cloud's, say) is closed before `release()` returns."""
    import time

    import psutil

    from tuning.backends._base import join_closing

    local = DaskBackend(n_workers=2)
    local.start()
    assert local.close_after_return
    workers = [psutil.Process(w.process.pid) for w in local.cluster.workers.values()]
    local.begin_close()
    t0 = time.monotonic()
    local.release()
    assert time.monotonic() - t0 < 0.5
    assert local._closing is not None and local._closing.is_alive()
    assert join_closing(timeout_s=60)
    assert not local._closing.is_alive()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers)

    provisioned = DaskBackend(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": 1, "processes": False})
    provisioned.start()
    assert not provisioned.close_after_return
    provisioned.begin_close()
    provisioned.release()
    assert provisioned.cluster is None and not provisioned._closing.is_alive()


def test_the_backends_cluster_keeps_short_developer_logs_and_the_setting_is_restored():
    """Dask's recent-message and transition logs (1,000 entries each, every one holding a
    submitted segment) are made 100 long for the run's scheduler, client and workers; Dask's
    setting is the user's again once they are made."""
    import dask

    from tuning.backends.dask import LOW_LEVEL_LOG_LENGTH

    key = "distributed.admin.low-level-log-length"
    before = dask.config.get(key)
    assert before > LOW_LEVEL_LOG_LENGTH
    with DaskBackend(n_workers=1) as backend:
        assert dask.config.get(key) == before
        scheduler = backend.cluster.scheduler
        streams = list(scheduler.stream_comms.values()) + list(scheduler.client_comms.values())
        assert len(streams) >= 2  # the worker's and the client's
        lengths = {b.recent_message_log.maxlen for b in streams}
        lengths.add(backend.client.scheduler_comm.recent_message_log.maxlen)
        lengths.add(scheduler.transition_log.maxlen)
        assert lengths == {LOW_LEVEL_LOG_LENGTH}, lengths
        on_workers = backend.client.run(lambda: __import__("dask").config.get(key))
        assert set(on_workers.values()) == {LOW_LEVEL_LOG_LENGTH}, on_workers
    with dask.config.set({key: 10}), DaskBackend(n_workers=1, preload=False) as backend:
        assert backend.cluster.scheduler.transition_log.maxlen == 10  # a lower one stands
