"""The MLflow writer against real SQLite stores: the bulk transaction writes what the client
calls write, resume finds children past a search page without duplicating a step, and a
stalled writer neither blocks the journal nor makes the driver hold more than its bound."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tuning.experiment import Journal
from tuning.tracking._feed import JournalReader, events_after, slim
from tuning.tracking.mlflow import MlflowTracker, replay_events


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """An empty, migrated SQLite store, copied per test (creating one takes seconds)."""
    from tuning.tracking.mlflow import new_sqlite_store

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    # one self-contained file: a store MLflow opened in WAL mode keeps its last migration in
    # mlflow.db-wal, which copying mlflow.db alone would leave behind
    assert new_sqlite_store(f"sqlite:///{path}")
    return str(path)


@pytest.fixture
def uri(tmp_path, empty_store) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def in_thread(monkeypatch):
    monkeypatch.setenv("RUNGFLOW_MLFLOW_WRITER", "thread")


def tracker(uri: str, **kw: Any) -> MlflowTracker:
    return MlflowTracker(uri, "exp", "run-1", "score", "max", {"num_samples": 3}, {"team": "a"},
                         **kw)


def created(j: Journal, tid: str, config: dict[str, Any], seg: int = 1) -> None:
    j.append("trial_created", trial_id=tid, config=config, info={})
    j.append("segment_started", trial_id=tid, segment_id=seg, config=config, checkpoint=None,
             start_iteration=0, pause_at=None)


def result(j: Journal, tid: str, it: int, score: float) -> None:
    j.append("result", trial_id=tid, result={"score": score, "training_iteration": it,
                                             "time_total_s": 0.5 * it, "note": "text",
                                             "timestamp": 1_700_000_000.0 + it + score})


def status(j: Journal, tid: str, st: str, **kw: Any) -> None:
    j.append("trial_status", trial_id=tid, status=st, error=kw.get("error"),
             stopped_at=kw.get("stopped_at"), rung=kw.get("rung"), num_failures=0,
             checkpoint=kw.get("checkpoint"), checkpoint_iteration=None)


def story(j: Journal, ckpt: str) -> None:
    """Finished, stopped early, failed, paused and resumed with a new config (PBT)."""
    j.append("run_started", resumed=False, backend={}, pid=1, host="h")
    created(j, "trial-000", {"lr": 0.1, "depth": 3})
    created(j, "trial-001", {"lr": 0.01, "depth": 5})
    created(j, "trial-002", {"lr": 0.5, "depth": 1})
    created(j, "trial-003", {"lr": 0.2, "depth": 2})
    for it in (1, 2, 3):
        result(j, "trial-000", it, 0.1 * it)
        result(j, "trial-003", it, 0.05 * it)
    result(j, "trial-001", 1, 0.05)
    status(j, "trial-001", "STOPPED", stopped_at=1, rung=1)
    j.append("failure", trial_id="trial-002", error="Traceback\nRuntimeError: boom",
             num_failures=1)
    status(j, "trial-002", "ERROR", error="Traceback (most recent call last)\nRuntimeError: boom")
    status(j, "trial-003", "PAUSED", rung=3)
    j.append("state", scheduler={}, searcher={}, controller={}, backend={})
    j.append("segment_started", trial_id="trial-003", segment_id=9,
             config={"lr": 0.4, "depth": 2}, checkpoint=None, start_iteration=3, pause_at=None)
    result(j, "trial-003", 4, 0.6)
    result(j, "trial-000", 4, 0.45)
    status(j, "trial-000", "TERMINATED", checkpoint=ckpt)
    status(j, "trial-003", "TERMINATED")
    j.append("decision", trial_id="trial-000", decision="STOP", iteration=4, rung=None)
    j.append("finished", reason="completed", best_trial="trial-003")


def children(uri: str) -> dict[str, Any]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("exp")
    runs = c.search_runs([exp.experiment_id], "tags.`rungflow.trial_id` LIKE 'trial-%'",
                         max_results=1000)
    return {r.data.tags["rungflow.trial_id"]: r for r in runs}


def snapshot(uri: str) -> dict[str, Any]:
    """Everything MLflow shows of the child runs, without the run ids."""
    c = MlflowClient(uri)
    out = {}
    for tid, r in children(uri).items():
        tags = {k: v for k, v in r.data.tags.items()
                if k not in ("mlflow.parentRunId", "rungflow.best_run_id")}
        hist = {k: sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(
            r.info.run_id, k)) for k in r.data.metrics}
        arts = sorted(a.path for a in c.list_artifacts(r.info.run_id))
        arts += sorted(a.path for a in c.list_artifacts(r.info.run_id, "checkpoint"))
        out[tid] = {"status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
                    "name": r.info.run_name, "tags": tags, "params": r.data.params,
                    "latest": r.data.metrics, "history": hist, "artifacts": arts}
    return out


@pytest.mark.parametrize("bulk", [True, False])
def test_every_trial_written_as_the_journal_says(tmp_path, uri, in_thread, bulk):
    ckpt = tmp_path / "ckpt.json"
    ckpt.write_text('{"it": 4}')
    j = Journal(str(tmp_path / "exp"))
    t = tracker(uri, bulk=bulk)
    t.open_async()
    t.follow(j)
    story(j, str(ckpt))
    j.flush()
    t.flush()
    t.close()
    assert t.stats["sink"] == ("SqliteBulkSink" if bulk else "ClientSink")
    snap = snapshot(uri)
    assert sorted(snap) == ["trial-000", "trial-001", "trial-002", "trial-003"]
    t0, t1, t2, t3 = (snap[f"trial-00{i}"] for i in range(4))
    assert [s for s, _, _ in t0["history"]["score"]] == [1, 2, 3, 4]
    assert t0["history"]["score"][-1][1] == pytest.approx(0.45)
    assert set(t0["history"]) == {"score", "time_total_s"}  # no iteration, no strings
    assert t0["params"] == {"lr": "0.1", "depth": "3"}
    assert t0["tags"]["rungflow.status"] == "TERMINATED" and t0["status"] == "FINISHED"
    assert t0["tags"]["rungflow.iterations"] == "4"
    assert t0["artifacts"] == ["checkpoint", "checkpoint/ckpt.json"]
    assert t0["name"] == "trial-000 lr=0.1 depth=3"
    assert t0["end"] >= t0["start"] > 0
    assert t1["tags"]["rungflow.stopped_at"] == "1" and t1["tags"]["rungflow.status"] == "STOPPED"
    assert t2["status"] == "FAILED" and t2["tags"]["rungflow.error"] == "RuntimeError: boom"
    assert t2["artifacts"] == ["error.txt", "failure-1.txt"] and t2["history"] == {}
    assert t3["tags"]["rungflow.config.segment9"] == '{"lr": 0.4, "depth": 2}'
    assert t3["params"] == {"lr": "0.2", "depth": "2"}  # the config it started with
    assert t3["tags"]["rungflow.best"] == "true" and t3["status"] == "FINISHED"
    c = MlflowClient(uri)
    parent = c.get_run(t.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["team"] == "a"
    assert parent.data.metrics["best_score"] == pytest.approx(0.6)
    assert parent.data.tags["rungflow.best_run_id"] == t.runs["trial-003"]


def test_the_bulk_transaction_writes_what_the_client_calls_write(tmp_path, empty_store,
                                                                 in_thread):
    ckpt = tmp_path / "ckpt.json"
    ckpt.write_text("{}")
    snaps = []
    for bulk in (True, False):
        d = tmp_path / str(bulk)
        d.mkdir()
        shutil.copy(empty_store, d / "mlflow.db")
        u = f"sqlite:///{d}/mlflow.db"
        j = Journal(str(d / "exp"))
        t = tracker(u, bulk=bulk)
        t.open_async()
        t.follow(j)
        story(j, str(ckpt))
        j.flush()
        t.close()
        snap = snapshot(u)
        for row in snap.values():  # the journal's own times: this run's, not the other's
            assert row.pop("end") >= row.pop("start") > 0
        snaps.append(snap)
    assert snaps[0] == snaps[1]


def attempt(j: Journal, n: int, steps: range, offset: float, end: bool = False) -> None:
    j.append("run_started", resumed=steps.start > 1, backend={}, pid=1, host="h")
    for i in range(n):
        if steps.start == 1:
            created(j, f"trial-{i:03d}", {"x": i})
    for it in steps:
        for i in range(n):
            result(j, f"trial-{i:03d}", it, offset + i + it / 10)
        if it == steps.stop - 2:
            j.append("state", scheduler={}, searcher={}, controller={}, backend={})
    if end:
        for i in range(n):
            status(j, f"trial-{i:03d}", "TERMINATED")
        j.append("finished", reason="completed", best_trial=f"trial-{n - 1:03d}")


@pytest.mark.parametrize("bulk", [True, False])
def test_resume_past_a_search_page_logs_every_step_once(tmp_path, uri, in_thread, monkeypatch,
                                                        bulk):
    n = 25
    j = Journal(str(tmp_path / "exp"))
    first = tracker(uri, bulk=bulk)
    first.open_async()
    first.follow(j)
    attempt(j, n, range(1, 5), 0.0)  # steps 1-4 reach MLflow; only 1-3 are committed
    j.flush()
    first.flush()
    first.close()  # then the driver dies
    logged = {tid: len(MlflowClient(uri).get_metric_history(r.info.run_id, "score"))
              for tid, r in children(uri).items()}
    assert logged == {f"trial-{i:03d}": 4 for i in range(n)}

    pages = []
    real_search = MlflowClient.search_runs

    def search(self, *a, **kw):
        page = real_search(self, *a, **kw)
        pages.append(len(page))
        return page

    def no_history(*a, **kw):
        raise AssertionError("resume called get_metric_history")

    j = Journal(str(tmp_path / "exp"))
    list(j.iter_events())  # as resume reads it
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "search_runs", search)
        m.setattr(MlflowClient, "get_metric_history", no_history)
        resumed = tracker(uri, bulk=bulk, page_size=10)
        resumed.open_async(catch_up_from=j)
        resumed.follow(j)
        attempt(j, n, range(4, 7), 100.0, end=True)  # re-does step 4 from its checkpoint at 3
        j.flush()
        resumed.flush()
        resumed.close()
    if not bulk:
        assert pages[1:] == [10, 10, 5]  # the parent, then three pages of children
    c = MlflowClient(uri)
    kids = children(uri)
    assert sorted(kids) == [f"trial-{i:03d}" for i in range(n)]
    for i in range(n):
        hist = sorted((m.step, m.value) for m in c.get_metric_history(
            kids[f"trial-{i:03d}"].info.run_id, "score"))
        assert [s for s, _ in hist] == [1, 2, 3, 4, 5, 6]
        assert hist[3][1] == pytest.approx(i + 0.4)  # the first attempt's step 4, once
        assert hist[5][1] == pytest.approx(100 + i + 0.6)
        assert kids[f"trial-{i:03d}"].info.status == "FINISHED"
    assert resumed.parent_run_id == first.parent_run_id


def test_page_size_beyond_mlflow_is_refused(uri):
    with pytest.raises(ValueError, match="page_size: 60000"):
        tracker(uri, page_size=60000)
    with pytest.raises(ValueError, match="queue_batches: 0"):
        tracker(uri, queue_batches=0)


def test_a_stalled_writer_neither_blocks_nor_grows_the_driver(tmp_path, uri):
    """The writer process is stopped (SIGSTOP) while 300 trials are journaled: every group
    is handed over at once, the driver never holds more than its bound, and once the writer
    runs again it reads what it missed back from the journal."""
    n = 300
    t = tracker(uri, queue_batches=1, batch_events=50, max_pending_events=200)
    t.open_async()
    t.flush()
    j = Journal(str(tmp_path / "exp"), commit_events=40)
    t.follow(j)
    held = []

    def on_durable(events):
        t.apply_async(events)
        held.append(t.pending_events)

    j.on_durable = on_durable
    pid = t.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        fed = threading.Thread(target=lambda: (attempt(j, n, range(1, 4), 0.0, end=True),
                                               j.flush()))
        fed.start()
        fed.join(timeout=120)
        assert not fed.is_alive(), "journal writes waited on the stopped MLflow writer"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert max(held) <= 200
    assert t.stats["reread"] >= 1 and t.stats["waited"] >= 1
    t.flush()
    t.close()
    c = MlflowClient(uri)
    kids = children(uri)
    assert len(kids) == n
    for r in list(kids.values())[::37]:
        assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "score")) == [1, 2, 3]
    assert c.get_run(t.parent_run_id).info.status == "FINISHED"


def test_catch_up_is_what_replay_counts_and_rereads_go_forward(tmp_path):
    j = Journal(str(tmp_path / "exp"))
    j.append("run_started")
    created(j, "trial-000", {"x": 1})
    result(j, "trial-000", 1, 0.1)
    j.append("state")
    result(j, "trial-000", 2, 0.2)  # never committed: the run died
    j.append("run_started")
    result(j, "trial-000", 2, 0.3)
    j.append("state")
    result(j, "trial-000", 3, 0.4)  # the new run's, not committed yet
    j.append("decision", trial_id="trial-000", decision="STOP", iteration=3, rung=None)
    j.flush()
    got = [(e["event"], e.get("result", {}).get("score")) for e in replay_events(j)]
    assert got == [("trial_created", None), ("segment_started", None), ("result", 0.1),
                   ("result", 0.3)]
    assert [e["seq"] for e in events_after(j, 5, 9)] == [6, 8]  # no run_started, no state
    reader = JournalReader(str(tmp_path / "exp"))
    assert reader.path is not None
    assert [e["seq"] for e in reader.events(0, 4)] == [2, 3, 4]
    assert [e["seq"] for e in reader.events(4, 9)] == [6, 8]
    first = reader.offset
    assert [e["seq"] for e in reader.events(9, 99)] == [10]  # decisions are not for MLflow
    assert reader.offset > first
    with open(reader.path, "ab") as f:
        f.write(b'{"seq":12,"t":1,"event":"result","trial_id":"trial-000","res')  # mid-write
    assert list(reader.events(11, 99)) == []  # stops before a line still being written
    assert "note" not in slim(
        {"event": "result", "seq": 1, "result": {"note": "x", "a": 1}})["result"]


def test_a_new_sqlite_store_is_copied_from_a_migrated_template(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tuning.tracking.mlflow import new_sqlite_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "m.db", tmp_path / "b" / "m.db"
    assert new_sqlite_store(f"sqlite:///{first}")  # builds the template, then copies it
    templates = list((tmp_path / "cache" / "rungflow").glob("mlflow-*-empty.db"))
    assert len(templates) == 1 and not list(templates[0].parent.glob("*.tmp"))
    assert new_sqlite_store(f"sqlite:///{second}")
    assert not new_sqlite_store(f"sqlite:///{second}")  # an existing store is left alone
    for db in (first, second):  # each a working, separate store at MLflow's schema
        c = MlflowClient(tracking_uri=f"sqlite:///{db}")
        run = c.create_run(c.create_experiment(f"exp-{db.parent.name}"))
        c.log_metric(run.info.run_id, "m", 1.0)
        assert [e.name for e in c.search_experiments()] == [f"exp-{db.parent.name}", "Default"]


def test_the_writer_process_does_not_rerun_the_users_script(tmp_path, uri):
    """A spawned child runs its parent's main file first; the writer skips it: a training
    script's top-level imports (torch) would cost it seconds and hundreds of MB, and a script
    without the ``__main__`` guard could not start it."""
    import subprocess
    import sys

    marks = tmp_path / "executions.txt"
    script = tmp_path / "train.py"
    script.write_text(f"""
import os
with open({str(marks)!r}, "a") as f:  # every execution of this file, by any process
    f.write(f"{{os.getpid()}}\\n")

from tuning.experiment import Journal
from tuning.tracking.mlflow import MlflowTracker

# no __main__ guard, as in a notebook exported to a script
j = Journal({str(tmp_path / "exp")!r})
t = MlflowTracker({uri!r}, "exp", "run-1", "score", "max", {{}}, {{}})
t.open_async()
t.follow(j)
j.append("trial_created", trial_id="trial-000", config={{"lr": 0.1}}, info={{}})
j.append("segment_started", trial_id="trial-000", segment_id=1, config={{"lr": 0.1}},
         checkpoint=None, start_iteration=0, pause_at=None)
j.append("result", trial_id="trial-000", result={{"score": 0.5, "training_iteration": 1}})
j.flush()
t.flush()
print("writer", t.writer_pid, flush=True)
t.close()
""")
    env = {k: v for k, v in os.environ.items() if k != "RUNGFLOW_MLFLOW_WRITER"}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    writer = int(p.stdout.split("writer ")[1].split()[0])
    ran = marks.read_text().split()
    assert len(ran) == 1  # the driver, once
    assert str(writer) not in ran
    assert set(children(uri)) == {"trial-000"}


def test_a_finished_writer_process_serves_the_next_run_of_this_process(tmp_path, uri):
    """The second run of a process hands its events to the first run's writer process (its
    MLflow imports done), both runs are written whole, and the process ends when retired."""
    import psutil

    from tuning.tracking.mlflow import join_writers, retire_writers

    pids = []
    for k in range(2):
        t = MlflowTracker(uri, "exp", f"run-{k}", "score", "max", {}, {})
        t.open_async()
        j = Journal(str(tmp_path / f"exp-{k}"))
        t.follow(j)
        attempt(j, 3, range(1, 4), 0.0, end=True)
        j.flush()
        t.flush()
        pids.append(t.writer_pid)
        t.close(wait=k == 0)  # the second closes as run() does: the plots finish after
    assert pids[0] is not None and pids[0] == pids[1]
    assert join_writers(60)  # finished its second run, and waits for a third
    assert psutil.pid_exists(pids[0])
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("exp")
    for k in range(2):
        parent = c.search_runs([exp.experiment_id], f"tags.`mlflow.runName` = 'run-{k}'")
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
        kids = c.search_runs([exp.experiment_id],
                             f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
        assert len(kids) == 3
        for r in kids:
            assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "score")) == \
                [1, 2, 3]
    retire_writers()
    assert not psutil.pid_exists(pids[0])
