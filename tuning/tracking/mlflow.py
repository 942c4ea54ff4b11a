"""MLflow as a projection of the journal.

One parent run per experiment (params: the search space, scheduler and searcher settings) and a
nested child run per trial (params: its config; every reported metric at step =
training_iteration; tags: trial id, status, the milestone it stopped at; its last checkpoint as
an artifact; the traceback of a failed trial). Writes are idempotent: a child run is found again
by its ``rungflow.trial_id`` tag and metric steps already logged are skipped, so replaying a
journal after a crash never duplicates anything.

The writer is a process of its own (a thread with ``RUNGFLOW_MLFLOW_WRITER=thread``), fed with
the journal's durable groups; the tuning loop never waits on it (see :class:`MlflowTracker` for
what is bounded and by what).

A multi-objective run ends with its Pareto front: the front's trial runs tagged
``rungflow.pareto=true``, the parent run tagged with the front's size and given the front as a
table artifact (``pareto_front.json``) and a Pareto plot (``plots/pareto_front.png``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning._objective import Objective
from tuning._trial import ITERATION, Status
from tuning.tracking._feed import CATCH_UP, WANTED, JournalReader, slim

if TYPE_CHECKING:  # MLflow is imported by the writer only: the driver never pays for it
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from tuning.tracking._sinks import ClientSink, SqliteBulkSink, TrialWrite

__all__ = ["MlflowTracker", "check_tracking_uri", "join_writers", "new_sqlite_store",
           "replay_events", "run_name", "use_sqlite_wal"]

log = logging.getLogger("tuning.tracking")

#: the writer process's niceness: on a machine whose cores train trials, the MLflow projection
#: (its start-up imports and store migration, then ~1 ms of CPU per trial) takes what is left
WRITER_NICENESS = 5

#: how long a writer process whose run has ended waits for the next run of this process
#: (``RUNGFLOW_MLFLOW_WRITER_IDLE_S``; 0: it exits with its run)
WRITER_IDLE_S = 300.0


class _WriterProcess:
    """A writer process and its queues. After its run it answers ``("idle", until)`` and waits for
    the next run of this process (``("begin", args, kwargs)``), which then skips MLflow's
    imports (about 2.5 CPU-s: mlflow, its SQLAlchemy store, matplotlib for the plots)."""

    def __init__(self, proc: Any, inq: Any, outq: Any, queue_batches: int) -> None:
        self.proc, self.inq, self.outq, self.queue_batches = proc, inq, outq, queue_batches
        self.idle_until = 0.0  # (wall clock) when the idle writer stops waiting and exits

    def takeable(self, queue_batches: int) -> bool:
        """Alive, with the same queue bound, and not about to end its wait (30 s to spare, so
        a run never hands its first events to a writer that exits meanwhile)."""
        return self.proc.is_alive() and self.queue_batches == queue_batches and \
            time.time() < self.idle_until - 30.0

    def wait_idle(self, timeout_s: float) -> bool:
        """True once the writer has finished its run and waits for another."""
        deadline = time.monotonic() + timeout_s
        while self.proc.is_alive():
            try:
                msg = self.outq.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return False
                continue
            if msg[0] == "idle":
                self.idle_until = msg[1]
                return True
        return False

    def retire(self) -> None:
        with contextlib.suppress(Exception):
            self.inq.put(("exit",), timeout=1.0)
        self.proc.join(timeout=10)


#: writer processes still drawing plots or writing after their run returned
_BACKGROUND: list[_WriterProcess] = []
#: writer processes waiting for this process's next run
_IDLE: list[_WriterProcess] = []
_retire_registered = False


def _writer_idle_s() -> float:
    try:
        return float(os.environ.get("RUNGFLOW_MLFLOW_WRITER_IDLE_S", WRITER_IDLE_S))
    except ValueError:
        return WRITER_IDLE_S


def _retire_at_exit() -> None:
    """Registered after a writer process is started, so after multiprocessing's own exit
    handler (which joins it, and would wait out its idle time): atexit runs ours first."""
    global _retire_registered
    if not _retire_registered:
        atexit.register(retire_writers)
        _retire_registered = True


def join_writers(timeout_s: float = 120.0) -> bool:
    """Wait for the MLflow writers of runs that have returned (they draw the plots after the
    run, off its critical path); True when every one has finished its run. The interpreter
    also waits for them at exit."""
    deadline = time.monotonic() + timeout_s
    for w in list(_BACKGROUND):
        if w.wait_idle(max(deadline - time.monotonic(), 0.0)):
            _BACKGROUND.remove(w)
            _IDLE.append(w)
        elif not w.proc.is_alive():
            _BACKGROUND.remove(w)
    return not _BACKGROUND


def retire_writers() -> None:
    """Let every writer finish its run, then end the processes (run at interpreter exit)."""
    join_writers()
    while _IDLE:
        _IDLE.pop().retire()


def _take_idle(queue_batches: int) -> _WriterProcess | None:
    for w in list(_BACKGROUND):  # finished meanwhile?
        if w.wait_idle(0.0):
            _BACKGROUND.remove(w)
            _IDLE.append(w)
    while _IDLE:
        w = _IDLE.pop()
        if w.takeable(queue_batches):
            return w
        w.retire()
    return None


def use_sqlite_wal() -> None:
    """SQLite tracking stores in write-ahead-log mode with ``synchronous=NORMAL``: a commit no
    longer waits for an fsync of the whole database (measured here: create run + log batch +
    end from 17.1 to 10.6 ms per trial), and a reader such as ``mlflow ui`` never blocks the
    writer. Commits survive a crash of the process, which is what resume needs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if getattr(use_sqlite_wal, "_installed", False):
        return

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.split(".")[0] != "sqlite3":
            return
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    use_sqlite_wal._installed = True  # type: ignore[attr-defined]

_SKIP = {ITERATION, "timestamp", "checkpoint"}
_MLFLOW_STATUS = {Status.TERMINATED: "FINISHED", Status.STOPPED: "FINISHED",
                  Status.ERROR: "FAILED"}


def new_sqlite_store(uri: str) -> bool:
    """Create a SQLite tracking store that does not exist yet by copying an empty one already
    migrated to this MLflow's schema (made once per MLflow version under the user's cache
    directory): a new store then takes milliseconds instead of the seconds MLflow's schema
    migrations take (4.2 s against 0.2 s measured here). True when it copied one.

    The template is built in a temporary file and moved into place atomically, so concurrent
    runs never see half a database; any failure leaves MLflow to create the store itself.
    """
    path = uri.removeprefix("sqlite:///")
    if path == uri or path.startswith(":memory:") or os.path.exists(path):
        return False
    try:
        template = _store_template()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        shutil.copyfile(template, tmp)
        os.replace(tmp, path)  # another process may have won: both are the same empty store
        return True
    except Exception as exc:  # noqa: BLE001 - MLflow creates the store the slow way
        log.debug("no SQLite store template (%s): MLflow migrates the new store", exc)
        return False


def _store_template() -> str:
    """The path of the empty store of this MLflow version, creating it when missing."""
    import sqlite3

    import mlflow
    from mlflow.tracking import MlflowClient

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    template = os.path.join(cache, "rungflow", f"mlflow-{mlflow.__version__}-empty.db")
    if os.path.exists(template):
        return template
    os.makedirs(os.path.dirname(template), exist_ok=True)
    tmp = f"{template}.{os.getpid()}.tmp"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}")
    client.search_experiments()  # the store exists, migrated, with its default experiment
    store = client._tracking_client.store
    store.engine.dispose()
    with sqlite3.connect(tmp) as con:  # one self-contained file: no WAL beside it
        con.execute("PRAGMA journal_mode=DELETE")
    os.replace(tmp, template)
    return template


def run_name(trial_id: str, config: Mapping[str, Any], limit: int = 4) -> str:
    """``trial-007 lr=3.1e-3 momentum=0.82``: the trial and its config, short."""
    parts = [trial_id]
    for k, v in list(config.items())[:limit]:
        parts.append(f"{k}={_short(v)}")
    return " ".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"
    return str(v)[:16]


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``<db dir>/mlartifacts``), not in ``./mlruns``
    under whatever directory the process happens to run in; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(uri.removeprefix("sqlite:///")))
        return Path(folder, "mlartifacts").as_uri()
    return None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail early, with the URI in the message, when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s)
        except (urllib.error.URLError, OSError) as exc:
            raise ValueError(f"tracking_uri: cannot reach the MLflow server at {uri!r} "
                             f"({getattr(exc, 'reason', exc)})") from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri.removeprefix("sqlite:///")) or "."
        if not os.path.isdir(folder):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"tracking_uri: cannot create {folder!r} for {uri!r} ({exc})") \
                    from None


_COMMITS = frozenset({"state", "finished"})
#: MLflow's own bound on one search page
MAX_PAGE = 50_000


class MlflowTracker:
    """Writes journal events to MLflow, idempotently, from a writer process.

    The journal's writer thread hands each durable group to :meth:`apply_async`, which never
    waits: the decision path does not call it at all, and the journal thread only appends to a
    list and offers it to a bounded queue. What is bounded, and by what:

    - the queue to the writer holds at most ``queue_batches`` batches of at most
      ``batch_events`` events each (events slimmed to what MLflow gets: no snapshots, no
      decisions, results without checkpoints or strings);
    - when that queue is full (a slow tracking store), events wait in one pending list and go
      over together when there is room: the writer falls behind and writes bigger batches;
    - when more than ``max_pending_events`` wait, the tracker drops them and sends only their
      last seq: the writer reads those events back from the journal, where they are durable
      already. The driver therefore holds at most ``queue_batches * batch_events +
      max_pending_events`` events for MLflow, however slow MLflow is. (A ``memory://`` journal,
      which another process cannot read, keeps them in memory; so does a tracker that does not
      :meth:`follow` a journal.)
    - the writer takes what is queued, up to ``drain_events`` events, and writes it as one
      batch: per trial one run creation with its tags, one ``log_batch`` and one end; on a
      SQLite store one transaction for the whole batch (``tuning/tracking/_sinks.py``).

    Replay is idempotent: the writer skips events at or below the highest seq it applied, a
    trial's run is found by its ``rungflow.trial_id`` tag, and its last logged step comes with
    the run search (the latest metric's step, one query per page of ``page_size`` runs), so a
    resumed run neither creates a run twice nor logs a step twice, past any number of runs.

    Args:
        threads: writer threads for a tracking server, which handles concurrent requests
            (default 8 for ``http(s)://``, 1 for other stores; ``RUNGFLOW_MLFLOW_THREADS``).
            A SQLite store has one writer: one transaction per batch.
        bulk: write a SQLite store in bulk transactions (False: through ``MlflowClient``).
        page_size: runs per search page when finding a resumed run's children.
        queue_batches, batch_events, max_pending_events, drain_events: the bounds above.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, metric: str, mode: str,
                 parent_params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None,
                 objective: Mapping[str, Any] | None = None, *, threads: int | None = None,
                 bulk: bool = True, page_size: int = 10_000, queue_batches: int = 4,
                 batch_events: int = 4096, max_pending_events: int = 16384,
                 drain_events: int = 20_000) -> None:
        _check_positive(threads=threads if threads is not None else 1, queue_batches=queue_batches,
                        batch_events=batch_events, max_pending_events=max_pending_events,
                        drain_events=drain_events, page_size=page_size)
        if page_size > MAX_PAGE:
            raise ValueError(f"page_size: {page_size} is above MLflow's limit of {MAX_PAGE} "
                             "runs a search page")
        self.uri = tracking_uri
        self._client: MlflowClient | None = None
        self.experiment = experiment
        self.run_name = run_name
        self.metric, self.mode = metric, mode
        self.parent_params = dict(parent_params or {})
        self.tags = dict(tags or {})
        if threads is None and os.environ.get("RUNGFLOW_MLFLOW_THREADS"):
            threads = _env_int("RUNGFLOW_MLFLOW_THREADS")
        self.threads, self.bulk, self.page_size = threads, bulk, page_size
        self.queue_batches, self.batch_events = queue_batches, batch_events
        self.max_pending_events, self.drain_events = max_pending_events, drain_events
        #: the experiment's metrics and constraints (``Objective.to_dict()``), when not just
        #: ``metric``; a multi-objective run's front is written at the end
        self.objective_dict = dict(objective) if objective else None
        self.objective = Objective.build(**objective) if objective else \
            Objective((metric,), (mode,))
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.logged_step: dict[str, int] = {}  # trial id -> highest step logged
        self.configs: dict[str, dict[str, Any]] = {}
        self.board: dict[str, dict[str, Any]] = {}  # trial id -> status, last metric, config
        self.applied_seq = 0  # the highest journal seq written (the writer's side)
        self.sink: ClientSink | SqliteBulkSink | None = None
        self._created_ms: dict[str, int] = {}  # trials whose run is not created yet
        self._reader: JournalReader | None = None
        # the driver's side
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._skip_to: int | None = None  # dropped events up to this seq: the writer re-reads
        self._journal_dir: str | None = None
        self._inq: Any = None
        self._outq: Any = None
        self._proc: Any = None
        self._writer: _WriterProcess | None = None
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self._error_tb: str | None = None
        self.stats = {"batches": 0, "waited": 0, "reread": 0, "pending_peak": 0}

    @property
    def client(self) -> MlflowClient:
        """The writer's MLflow client, made on first use: the driver, which only queues events
        for the writer, imports no MLflow and opens no store (seconds of imports and a schema
        migration for a new SQLite store)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:"):
                new_sqlite_store(self.uri)
                use_sqlite_wal()
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _kwargs(self) -> dict[str, Any]:
        return {"threads": self.threads, "bulk": self.bulk, "page_size": self.page_size,
                "queue_batches": self.queue_batches, "batch_events": self.batch_events,
                "max_pending_events": self.max_pending_events,
                "drain_events": self.drain_events}

    # -- opening (the writer's side) -------------------------------------------------------
    def open(self, parent_run_id: str | None = None) -> str:
        """Find or create the MLflow experiment and the parent run; return its id."""
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=artifact_location(self.uri),
                tags={"mlflow.experimentKind": "custom_model_development",
                      "rungflow.experiment": self.experiment})
        else:
            self.experiment_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
        from tuning.tracking._sinks import make_sink

        self.sink = make_sink(self.client, self.uri, self.threads, self.bulk)
        self.parent_run_id = parent_run_id or self._find_parent()
        if self.parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={
                "rungflow.role": "parent", "rungflow.experiment": self.experiment,
                "rungflow.run_name": self.run_name, **self.tags})
            self.parent_run_id = run.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(self.parent_run_id, params=[
                Param(k, _param(v)) for k, v in self.parent_params.items()])
        else:
            self.client.set_terminated(self.parent_run_id, "RUNNING")
            self._load_children()
        return self.parent_run_id

    def _find_parent(self) -> str | None:
        runs = self.client.search_runs(
            [str(self.experiment_id)], filter_string="tags.`rungflow.role` = 'parent' and "
            f"tags.`rungflow.run_name` = '{self.run_name}'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def _load_children(self) -> None:
        """Every child run of the parent, with the last step it logged: one SQL query on a
        SQLite store, else the run search a page of ``page_size`` runs at a time (never
        ``get_metric_history`` per run)."""
        from tuning.tracking._sinks import SqliteBulkSink

        assert self.parent_run_id is not None
        if isinstance(self.sink, SqliteBulkSink):
            for tid, (rid, step) in self.sink.children(self.parent_run_id, self.metric).items():
                self.runs[tid], self.logged_step[tid] = rid, step
            return
        for tid, rid, step in search_children(self.client, str(self.experiment_id),
                                              self.parent_run_id, self.metric, self.page_size):
            self.runs.setdefault(tid, rid)
            self.logged_step[tid] = max(step, self.logged_step.get(tid, 0))

    # -- the driver's side ---------------------------------------------------------------------
    def follow(self, journal: Any) -> None:
        """Project ``journal``: each group it commits goes to :meth:`apply_async`, and events
        the writer could not take in time are read back from it."""
        directory = str(journal.directory)
        self._journal_dir = None if directory.startswith("memory://") else directory
        journal.on_durable = self.apply_async

    def open_async(self, parent_run_id: str | None = None,
                   catch_up: Sequence[Mapping[str, Any]] | None = None,
                   configs: Mapping[str, dict[str, Any]] | None = None,
                   catch_up_from: Any = None) -> None:
        """Open in the background writer (creating a SQLite store takes seconds), then write a
        resumed run's previous attempts before anything queued later: ``catch_up`` events, or
        the committed events of the journal ``catch_up_from``, which the writer streams
        itself (a ``memory://`` journal is read here)."""
        directory: str | None = None
        if catch_up_from is not None:
            directory = str(catch_up_from.directory)
            if directory.startswith("memory://"):
                catch_up, directory = list(replay_events(catch_up_from)), None
        with self._lock:
            self._start_writer()
            self._put(("open", parent_run_id, [slim(e) for e in catch_up or []],
                       dict(configs or {}), directory), block=True)

    def _start_writer(self) -> None:
        """The writer is a separate process by default, so MLflow's SQLAlchemy work neither
        holds the driver's GIL nor slows the tuning loop (``RUNGFLOW_MLFLOW_WRITER=thread``
        keeps it in a thread of this process)."""
        if self._inq is not None:
            return
        args = (self.uri, self.experiment, self.run_name, self.metric, self.mode,
                self.parent_params, self.tags, self.objective_dict)
        if os.environ.get("RUNGFLOW_MLFLOW_WRITER", "process") == "thread":
            self._inq, self._outq = queue.Queue(self.queue_batches), queue.Queue()
            self._thread = threading.Thread(target=_writer_main, name="rungflow-mlflow",
                                            args=(args, self._kwargs(), self._inq, self._outq),
                                            daemon=True)
            self._thread.start()
            return
        import multiprocessing

        w = _take_idle(self.queue_batches)
        if w is not None:  # an earlier run's writer, its imports done
            self._writer, self._proc, self._inq, self._outq = w, w.proc, w.inq, w.outq
            self._inq.put(("begin", args, self._kwargs()))
            return
        ctx = multiprocessing.get_context("spawn")
        self._inq, self._outq = ctx.Queue(self.queue_batches), ctx.Queue()
        self._proc = ctx.Process(target=_writer_main, name="rungflow-mlflow", daemon=False,
                                 args=(args, self._kwargs(), self._inq, self._outq,
                                       _writer_idle_s()))
        _start_without_main(self._proc)
        _retire_at_exit()
        self._writer = _WriterProcess(self._proc, self._inq, self._outq, self.queue_batches)

    @property
    def pending_events(self) -> int:
        """Events the driver holds that the writer's queue had no room for yet."""
        return len(self._pending)

    @property
    def writer_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _put(self, msg: tuple[Any, ...], block: bool, timeout_s: float = 600.0) -> bool:
        try:
            if block:
                deadline = time.monotonic() + timeout_s
                while True:  # in steps, so a dead writer is noticed
                    try:
                        self._inq.put(msg, timeout=1.0)
                        return True
                    except queue.Full:
                        self._check_writer_alive()
                        if time.monotonic() > deadline:
                            raise RuntimeError("the MLflow writer took nothing for "
                                               f"{timeout_s:g}s") from None
            self._inq.put_nowait(msg)
            return True
        except queue.Full:
            return False

    def apply_async(self, events: list[Mapping[str, Any]]) -> None:
        """Hand a durable group of journal events to the writer; never waits (see the class
        docstring for the bounds). Events carry everything written (a trial's config comes
        with its ``trial_created`` and ``segment_started`` events), so nothing here reads the
        live trial table."""
        wanted = [slim(ev) for ev in events if ev["event"] in WANTED]
        if not wanted:
            return
        with self._lock:
            self._start_writer()
            if self._skip_to is not None:
                self._skip_to = max(self._skip_to, _seq(wanted[-1]))
            else:
                self._pending.extend(wanted)
                self.stats["pending_peak"] = max(self.stats["pending_peak"], len(self._pending))
                if len(self._pending) > self.max_pending_events and self._journal_dir and \
                        all(isinstance(ev.get("seq"), int) for ev in self._pending):
                    self._skip_to = _seq(self._pending[-1])
                    self._pending = []
                    self.stats["reread"] += 1
            self._hand_over(block=False)

    def _hand_over(self, block: bool, timeout_s: float = 600.0) -> None:
        if self._skip_to is not None:
            if not self._put(("journal", self._journal_dir, self._skip_to), block, timeout_s):
                self.stats["waited"] += 1
                return
            self._skip_to = None
        while self._pending:
            batch = self._pending[:self.batch_events]
            if not self._put(("apply", batch), block, timeout_s):
                self.stats["waited"] += 1
                return
            del self._pending[:len(batch)]
            self.stats["batches"] += 1

    def _check_writer_alive(self) -> None:
        if self._proc is not None and self._proc.exitcode is not None:
            raise RuntimeError(f"the MLflow writer process exited (code {self._proc.exitcode})")

    def flush(self, timeout_s: float = 600.0) -> None:
        """Wait until the background writer has written everything handed over; re-raise its
        error."""
        if self._inq is None:
            return
        with self._lock:
            self._hand_over(block=True, timeout_s=timeout_s)
            self._put(("flush",), block=True, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                state = self._outq.get(timeout=1.0)
                break
            except queue.Empty:
                self._check_writer_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("the MLflow writer did not answer within "
                                       f"{timeout_s:g}s") from None
        self._load_writer_state(state)
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self, wait: bool = True) -> None:
        """Stop the writer after what is queued (the plots, say). ``wait=False`` returns at
        once: the writer is not a daemon, so the interpreter waits for it at exit."""
        if self._inq is None:
            return
        try:
            with self._lock:
                self._hand_over(block=True, timeout_s=60)
                self._put(("stop",), block=True, timeout_s=60)
        except RuntimeError as exc:
            log.warning("MLflow writer: %s", exc)
        w = self._writer
        if wait:
            if w is not None:
                if w.wait_idle(60):
                    _IDLE.append(w)
            elif self._thread is not None:
                self._thread.join(timeout=60)
        elif w is not None:
            _BACKGROUND.append(w)
        self._proc = self._thread = self._writer = None
        self._inq = None

    def writer_state(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
                "runs": dict(self.runs), "logged_step": dict(self.logged_step),
                "applied_seq": self.applied_seq, "sink": type(self.sink).__name__,
                "cpu_s": time.process_time(),
                "error": self._error_tb or
                (f"{type(self._error).__name__}: {self._error}" if self._error else None)}

    def _load_writer_state(self, state: Mapping[str, Any]) -> None:
        self.experiment_id, self.parent_run_id = state["experiment_id"], state["parent_run_id"]
        self.runs, self.logged_step = dict(state["runs"]), dict(state["logged_step"])
        self.applied_seq = state["applied_seq"]
        self.stats["sink"] = state["sink"]
        self.stats["writer_cpu_s"] = state["cpu_s"]  # the writer process's CPU time so far
        if state.get("error"):
            self._error = RuntimeError(f"MLflow writer failed: {state['error']}")

    # -- the writer's side -------------------------------------------------------------------
    def _handle(self, msg: tuple[Any, ...]) -> None:
        if self._error is not None:
            return
        try:
            if msg[0] == "open":
                self.open(msg[1])
                self.configs.update({k: dict(v) for k, v in msg[3].items()
                                     if k not in self.configs})
                self._apply_chunks(iter(msg[2]))
                if msg[4]:
                    self._catch_up(msg[4])
            elif msg[0] == "apply":
                self._apply(msg[1])
            elif msg[0] == "journal":
                self._reread(msg[1], msg[2])
            elif msg[0] == "plots":
                self._plots(msg[1], msg[2])
        except Exception as exc:  # noqa: BLE001 - handed to the loop at flush()
            import traceback

            self._error = exc
            self._error_tb = traceback.format_exc()

    def _catch_up(self, directory: str) -> None:
        """A resumed run: the previous attempts' committed trial events, streamed from the
        journal; live events up to the last commit read are then skipped as applied."""
        from tuning.experiment import Journal

        reading = _CatchUp(Journal(directory))
        self._apply_chunks(reading)
        self.applied_seq = max(self.applied_seq, reading.last_commit)

    def _reread(self, directory: str, upto: int) -> None:
        """Events the driver dropped while the writer was behind, read back from the journal
        (forward from where the last re-read stopped)."""
        if self._reader is None or self._reader.journal.directory != directory.rstrip("/"):
            self._reader = JournalReader(directory)
        self._apply_chunks(self._reader.events(self.applied_seq, upto))
        self.applied_seq = max(self.applied_seq, upto)

    def _apply_chunks(self, events: Iterable[dict[str, Any]]) -> None:
        chunk: list[dict[str, Any]] = []
        for ev in events:
            chunk.append(ev)
            if len(chunk) >= self.drain_events:
                self._apply(chunk)
                chunk = []
        if chunk:
            self._apply(chunk)

    def _apply(self, events: Sequence[Mapping[str, Any]]) -> None:
        """One batch: a :class:`TrialWrite` per trial, written together, then the end."""
        writes: dict[str, TrialWrite] = {}
        finished = None
        top = self.applied_seq
        for ev in events:
            seq = ev.get("seq")
            if isinstance(seq, int):
                if seq <= self.applied_seq:
                    continue  # written already (a catch-up, or a re-read)
                top = max(top, seq)
            self._note(ev)
            if ev["event"] == "finished":
                finished = ev
            else:
                self._collect(ev, writes)
        self._write(list(writes.values()))
        self.applied_seq = top
        if finished is not None:
            self.finish(finished)

    def _collect(self, ev: Mapping[str, Any], writes: dict[str, TrialWrite]) -> None:
        kind, tid = ev["event"], str(ev.get("trial_id"))
        if kind == "trial_created":
            self.configs.setdefault(tid, dict(ev["config"]))
            if tid not in self.runs:
                self._created_ms.setdefault(tid, _ms(ev.get("t")))
        elif kind == "segment_started" and ev.get("config") is not None:
            if tid not in self.runs and tid not in writes:
                self.configs.setdefault(tid, dict(ev["config"]))
            elif ev["config"] != self.configs.get(tid):  # PBT: params are immutable, so tags
                self.configs[tid] = dict(ev["config"])
                self._write_for(writes, ev).tags[f"rungflow.config.segment{ev.get('segment_id')}"] \
                    = json.dumps(ev["config"], default=str)[:5000]
        elif kind == "result":
            self._write_for(writes, ev).metrics.extend(self._metrics(tid, ev["result"]))
        elif kind == "failure":
            self._write_for(writes, ev).texts.append((f"failure-{ev['num_failures']}.txt",
                                                      ev["error"]))
        elif kind == "trial_status" and Status(ev["status"]) != Status.RUNNING:
            self._trial_ended(self._write_for(writes, ev), ev)

    def _write_for(self, writes: dict[str, TrialWrite], ev: Mapping[str, Any]) -> TrialWrite:
        tid = ev["trial_id"]
        w = writes.get(tid)
        if w is not None:
            return w
        from tuning.tracking._sinks import TrialWrite

        w = writes[tid] = TrialWrite(tid, self.runs.get(tid))
        if w.run_id is None:
            assert self.parent_run_id is not None
            config = self.configs.get(tid, {})
            w.run_name = run_name(tid, config)
            w.start_ms = self._created_ms.get(tid) or _ms(ev.get("t"))
            w.params = {k: _param(v) for k, v in config.items()}
            w.tags = {"mlflow.parentRunId": self.parent_run_id, "rungflow.trial_id": tid,
                      "rungflow.experiment": self.experiment, "rungflow.run_name": self.run_name,
                      "rungflow.status": "PENDING"}
            self.logged_step.setdefault(tid, 0)
        return w

    def _metrics(self, trial_id: str, result: Mapping[str, Any]) -> list[Metric]:
        step = int(result[ITERATION])
        if step <= self.logged_step.get(trial_id, 0):
            return []  # already in MLflow (a replay after a crash)
        self.logged_step[trial_id] = step
        from mlflow.entities import Metric

        ts = int(float(result.get("timestamp", time.time())) * 1000)
        return [Metric(k, float(v), ts, step) for k, v in result.items()
                if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(float(v))]

    def _trial_ended(self, w: TrialWrite, ev: Mapping[str, Any]) -> None:
        """Status tags; a trial that is not paused also gets its checkpoint and its end, at
        the time the journal says it ended."""
        status = Status(ev["status"])
        w.tags["rungflow.status"] = str(status)
        w.tags["rungflow.iterations"] = str(self.logged_step.get(w.trial_id, 0))
        for key in ("stopped_at", "rung"):
            if ev.get(key) is not None:
                w.tags[f"rungflow.{key}"] = str(ev[key])
        if ev.get("error"):
            w.tags["rungflow.error"] = ev["error"].strip().splitlines()[-1][:4000]
            w.texts.append(("error.txt", ev["error"]))
        if status == Status.PAUSED:
            return
        ckpt = ev.get("checkpoint")
        if ckpt and not ckpt.startswith("sim://"):
            w.checkpoint = ckpt
            w.tags["rungflow.checkpoint"] = ckpt
        w.end = (_MLFLOW_STATUS.get(status, "FINISHED"), _ms(ev.get("t")))

    def _write(self, writes: list[TrialWrite]) -> None:
        if not writes:
            return
        from tuning.tracking._sinks import BulkWriteError, fallback

        assert self.sink is not None and self.experiment_id is not None
        try:
            try:
                self.sink.write(self.experiment_id, writes)
            except BulkWriteError as exc:
                self.sink = fallback(self.sink, exc.__cause__ or exc)
                self.sink.write(self.experiment_id, writes)
        finally:
            for w in writes:
                if w.created and w.run_id is not None:
                    self.runs[w.trial_id] = w.run_id
                    self._created_ms.pop(w.trial_id, None)

    def _note(self, ev: Mapping[str, Any]) -> None:
        """The writer's own small table of trials (last metric, status): the leaderboard and
        the best trial at the end come from it, not from the driver's memory."""
        kind, tid = ev["event"], str(ev.get("trial_id"))
        if kind == "trial_created":
            self.board[tid] = {"trial_id": tid, "status": "PENDING", self.metric: None,
                               "iterations": 0, "config": dict(ev["config"])}
        elif tid not in self.board:
            return
        elif kind == "result":
            row, v = self.board[tid], ev["result"].get(self.metric)
            row["iterations"] = int(ev["result"][ITERATION])
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                row[self.metric] = float(v)
            if not self.objective.plain:  # every metric's last value: the front comes from it
                row["last"] = {m: ev["result"].get(m) for m in self.objective.reported}
        elif kind == "trial_status":
            self.board[tid]["status"] = ev["status"]
        elif kind == "segment_started" and ev.get("config"):
            self.board[tid]["config"] = dict(ev["config"])

    def log_files(self, paths: list[str], artifact_path: str) -> None:
        """Attach local files (plots) to the parent run."""
        assert self.parent_run_id is not None
        for p in paths:
            if "://" not in p or p.startswith("file://"):
                self.client.log_artifact(self.parent_run_id, p.removeprefix("file://"),
                                         artifact_path=artifact_path)

    def _log_batch(self, run_id: str, metrics: list[Metric] | None = None,
                   params: list[Param] | None = None, tags: list[RunTag] | None = None) -> None:
        self.client.log_batch(run_id, metrics=metrics or [], params=params or [], tags=tags or [])

    # -- the end ---------------------------------------------------------------------------
    def finish(self, event: Mapping[str, Any]) -> None:
        """Tag the best trial, write the leaderboard on the parent, end the parent run."""
        from mlflow.entities import Metric, RunTag

        best = event.get("best_trial")
        assert self.parent_run_id is not None
        tags = [RunTag("rungflow.finished_reason", str(event.get("reason")))]
        if best and best in self.runs:
            self._log_batch(self.runs[best], tags=[RunTag("rungflow.best", "true")])
            tags.append(RunTag("rungflow.best_trial", best))
            tags.append(RunTag("rungflow.best_run_id", self.runs[best]))
            value = self.board.get(best, {}).get(self.metric)
            if value is not None:
                self._log_batch(self.parent_run_id, metrics=[Metric(
                    f"best_{self.metric}", float(value), int(time.time() * 1000), 0)])
        if "pareto_front" in event:
            tags += self._pareto(list(event["pareto_front"] or []))
        self._log_batch(self.parent_run_id, tags=tags)
        self.client.log_dict(self.parent_run_id, self.leaderboard(),  # type: ignore[arg-type]
                             "leaderboard.json")
        self.client.set_terminated(self.parent_run_id, "FINISHED")

    def _pareto(self, front: list[str]) -> list[RunTag]:
        """Tag the front's trial runs ``rungflow.pareto=true``; the front as a table artifact
        of the parent run; the parent's tags."""
        import pandas as pd
        from mlflow.entities import RunTag

        assert self.parent_run_id is not None
        for tid in front:
            if tid in self.runs:
                self._log_batch(self.runs[tid], tags=[RunTag("rungflow.pareto", "true")])
        rows = []
        for tid in front:
            row = self.board.get(tid, {})
            rows.append({"trial_id": tid, "run_id": self.runs.get(tid),
                         "status": row.get("status"), **(row.get("last") or {}),
                         "iterations": row.get("iterations"),
                         **{f"config/{k}": _param(v) if not isinstance(v, (int, float, str))
                            else v for k, v in (row.get("config") or {}).items()}})
        cols = ["trial_id", "run_id", "status", *self.objective.reported, "iterations"]
        df = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r
                                                       if k.startswith("config/")}))
        self.client.log_table(self.parent_run_id, data=df, artifact_file="pareto_front.json")
        return [RunTag("rungflow.pareto_front_size", str(len(front))),
                RunTag("rungflow.objective", self.objective.describe()[:5000])]

    def leaderboard(self) -> list[dict[str, Any]]:
        sign = -1 if self.mode == "max" else 1
        m = self.metric
        rows = [dict(r.get("last") or {}) | {k: v for k, v in r.items() if k != "last"}
                for r in self.board.values()]
        return sorted(rows, key=lambda r: (r[m] is None, sign * (r[m] or 0)))

    def plots_async(self, experiment_dir: str, out_dir: str) -> None:
        """Draw the plots from the journal and attach them to the parent run, in the writer:
        off the run's critical path."""
        with self._lock:
            self._start_writer()
            self._hand_over(block=True)
            self._put(("plots", experiment_dir, out_dir), block=True)

    def _plots(self, experiment_dir: str, out_dir: str) -> None:
        from tuning.experiment import Journal, committed_events, replay
        from tuning.plots import all_plots, histories_from_events

        journal = Journal(experiment_dir)
        st = replay(journal.iter_events())
        decisions = list(committed_events(journal.iter_events(), ("decision",)))
        curves = histories_from_events(committed_events(journal.iter_events(), ("result",)),
                                       self.metric)
        paths = all_plots(st.trials, self.metric, self.mode, decisions, out_dir, curves,
                          objective=self.objective)
        self.log_files(paths, "plots")


class _CatchUp:
    """The committed trial events of a journal (:func:`tuning.experiment.committed_events`),
    slimmed, noting the seq of the last commit read: events after it are the new run's."""

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self.last_commit = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from tuning.experiment import committed_events

        for ev in committed_events(self.journal.iter_events(), CATCH_UP | _COMMITS):
            if ev["event"] in _COMMITS:
                self.last_commit = max(self.last_commit, int(ev["seq"]))
            else:
                yield slim(ev)


def replay_events(journal: Any) -> list[dict[str, Any]]:
    """A resumed run's catch-up for MLflow, as a list: the trial events the journal committed
    (the writer streams them itself from a journal it can read; this is for one it cannot)."""
    return list(_CatchUp(journal))


_spawning = threading.local()
_spawn_lock = threading.Lock()
_spawn_preparation: Callable[[str], dict[str, Any]] | None = None


def _preparation_data(name: str) -> dict[str, Any]:
    """``multiprocessing.spawn.get_preparation_data``, less the user's main module when the
    calling thread is starting the MLflow writer; unchanged for every other caller."""
    assert _spawn_preparation is not None
    data = _spawn_preparation(name)
    if getattr(_spawning, "writer", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def _start_without_main(proc: Any) -> None:
    """Start the writer without re-running the user's script in it. A spawned child runs the
    parent's ``__main__`` file first (as ``__mp_main__``) so that functions defined there
    unpickle; the writer's target and arguments are rungflow's own, and a training script's
    top-level ``import torch`` would cost the writer seconds of CPU and hundreds of MB (and a
    script without the ``__main__`` guard would not start it at all)."""
    global _spawn_preparation
    from multiprocessing import spawn

    with _spawn_lock:
        if spawn.get_preparation_data is not _preparation_data:
            _spawn_preparation = spawn.get_preparation_data
            spawn.get_preparation_data = _preparation_data
    _spawning.writer = True
    try:
        proc.start()
    finally:
        _spawning.writer = False


def _writer_main(args: tuple[Any, ...], kwargs: dict[str, Any], inq: Any, outq: Any,
                 idle_s: float = 0.0) -> None:
    """The MLflow writer: takes what is queued (up to ``drain_events`` events) and writes it
    as one batch; answers each flush with its state. A writer process then waits up to
    ``idle_s`` for the next run of its parent process (:class:`_WriterProcess`)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:  # its own process: no "View run" line
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # (nor its get_run)
        with contextlib.suppress(OSError, AttributeError):  # a projection: trials go first
            os.nice(WRITER_NICENESS)
    while True:
        _write_run(args, kwargs, inq, outq)
        if parent is None or idle_s <= 0:
            return
        deadline = time.monotonic() + idle_s
        outq.put(("idle", time.time() + idle_s))
        while True:
            try:
                msg = inq.get(timeout=1.0)
                break
            except queue.Empty:
                if time.monotonic() > deadline or not parent.is_alive():
                    return
        if msg[0] != "begin":
            return
        args, kwargs = msg[1], msg[2]


def _write_run(args: tuple[Any, ...], kwargs: dict[str, Any], inq: Any, outq: Any) -> None:
    tracker = MlflowTracker(*args, **kwargs)
    while True:
        msgs = [inq.get()]
        size = len(msgs[0][1]) if msgs[0][0] == "apply" else 0
        while msgs[-1][0] == "apply" and size < tracker.drain_events:
            try:
                msgs.append(inq.get_nowait())
            except queue.Empty:
                break
            size += len(msgs[-1][1]) if msgs[-1][0] == "apply" else 0
        events: list[Any] = []
        for msg in msgs:
            if msg[0] == "apply":
                events.extend(msg[1])
                continue
            if events:
                tracker._handle(("apply", events))
                events = []
            if msg[0] == "stop":
                if tracker.sink is not None:
                    tracker.sink.close()
                return
            if msg[0] == "flush":
                outq.put(tracker.writer_state())
            else:
                tracker._handle(msg)
        if events:
            tracker._handle(("apply", events))


def search_children(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str,
                    page_size: int = 10_000) -> Iterable[tuple[str, str, int]]:
    """(trial id, run id, last step logged) of every child run, a page at a time
    (``page_token``: no limit on their number); the last step is the step of the run's latest
    value of ``metric`` (any metric if it has none), which the search returns with the run."""
    token = None
    while True:
        page = client.search_runs([experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=page_size, page_token=token)
        for r in page:
            tid = r.data.tags.get("rungflow.trial_id")
            if tid is not None:
                yield tid, r.info.run_id, _last_step(r, metric)
        token = page.token
        if not token:
            return


def _last_step(run: Any, metric: str) -> int:
    latest = run.data.to_proto().metrics
    steps = [m.step for m in latest if m.key == metric] or [m.step for m in latest]
    return int(max(steps, default=0))


def _seq(ev: Mapping[str, Any]) -> int:
    return int(ev.get("seq") or 0)


def _ms(t: Any) -> int:
    return int(float(t) * 1000) if isinstance(t, (int, float)) else int(time.time() * 1000)


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}: {text!r} is not allowed; it must be an integer >= 1")
    return value


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: {v!r} is not allowed; it must be an integer >= 1")


def _param(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:6000]
