"""Where the MLflow writer's batches go: the tracking client, or one SQLite transaction.

The writer turns a batch of journal events into one :class:`TrialWrite` per trial (the run to
create or update, its new metrics, params and tags, its end) and hands the list to a sink:

- :class:`ClientSink` writes through ``MlflowClient``: per trial a ``create_run`` carrying its
  tags, one ``log_batch`` (MLflow splits it at its own limits: 1,000 metrics, 100 params,
  100 tags, 1,000 entities a request) and a ``set_terminated`` with the trial's own end time.
  A tracking server handles concurrent requests, so with ``threads > 1`` trials are written
  by several threads at once (each trial's calls stay in order on one thread).
- :class:`SqliteBulkSink` writes a local SQLite store in one transaction per batch, through
  MLflow's own table definitions (``mlflow.store.tracking.dbmodels``): the rows MLflow's
  ``create_run``/``log_batch``/``set_terminated`` would write, without a transaction, a
  session and several queries per call. Measured in ``benchmarks/mlflow_writer.py``. Any
  failure rolls the transaction back and the writer continues with :class:`ClientSink`.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

__all__ = ["BulkWriteError", "ClientSink", "SqliteBulkSink", "TrialWrite", "fallback", "make_sink"]

log = logging.getLogger("tuning.tracking")


class BulkWriteError(RuntimeError):
    """A bulk transaction failed and was rolled back: nothing of the batch was written."""


@dataclass
class TrialWrite:
    """What one batch writes for one trial."""

    trial_id: str
    run_id: str | None  # None: the run is created by this write
    run_name: str = ""
    start_ms: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (artifact file, text)
    checkpoint: str | None = None  # a checkpoint URL to attach as an artifact
    end: tuple[str, int] | None = None  # (MLflow run status, end time in ms)
    created: bool = False


class ClientSink:
    """Writes through ``MlflowClient``; ``threads`` trials at a time."""

    def __init__(self, client: MlflowClient, threads: int = 1) -> None:
        self.client = client
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rungflow-mlflow") \
            if threads > 1 else None

    def write(self, experiment_id: str, writes: list[TrialWrite]) -> None:
        if self._pool is None or len(writes) < 2:
            for w in writes:
                self._write_one(experiment_id, w)
            return
        for _ in self._pool.map(lambda w: self._write_one(experiment_id, w), writes):
            pass  # re-raises the first error

    def _write_one(self, experiment_id: str, w: TrialWrite) -> None:
        tags = [RunTag(k, v) for k, v in w.tags.items()]
        if w.run_id is None:
            run = self.client.create_run(experiment_id, start_time=w.start_ms, tags=w.tags,
                                         run_name=w.run_name)
            w.run_id, w.created, tags = run.info.run_id, True, []
        params = [Param(k, v) for k, v in w.params.items()]
        if w.metrics or params or tags:
            self.client.log_batch(w.run_id, metrics=w.metrics, params=params, tags=tags)
        self.attach(w)
        if w.end is not None:
            self.client.set_terminated(w.run_id, w.end[0], end_time=w.end[1])

    def attach(self, w: TrialWrite) -> None:
        """Texts (failures, tracebacks) and the checkpoint: artifacts, not database rows."""
        assert w.run_id is not None
        for name, text in w.texts:
            self.client.log_text(w.run_id, text, name)
        if w.checkpoint:
            self._log_checkpoint(w.run_id, w.checkpoint)

    def _log_checkpoint(self, run_id: str, url: str) -> None:
        import fsspec

        try:
            with tempfile.TemporaryDirectory() as d:
                local = os.path.join(d, url.rstrip("/").rsplit("/", 1)[-1])
                with fsspec.open(url, "rb") as src, open(local, "wb") as dst:
                    dst.write(src.read())
                self.client.log_artifact(run_id, local, artifact_path="checkpoint")
        except FileNotFoundError:
            self.client.log_batch(run_id, tags=[RunTag("rungflow.checkpoint_missing", url)])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class SqliteBulkSink:
    """One transaction per batch into a local SQLite store, through MLflow's table models.

    Rows as MLflow's SQLAlchemy store writes them: a run row (with its ``mlflow.runName`` tag
    and its artifact URI under the experiment's artifact location), tags upserted, params
    inserted once, metrics inserted (a row already there is skipped, as MLflow does on its
    primary key), ``latest_metrics`` upserted when (step, timestamp, value) is newer, and the
    end status and time on the run row. Artifacts still go through the client.
    """

    def __init__(self, client: MlflowClient, uri: str) -> None:
        import sqlalchemy
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )

        self.client = client
        self._attach = ClientSink(client)
        self.runs, self.tags = SqlRun.__table__, SqlTag.__table__
        self.params, self.metrics = SqlParam.__table__, SqlMetric.__table__
        self.latest = SqlLatestMetric.__table__
        _check_columns(self)
        self._sql = _statements(self)
        # one connection kept open (its page cache warm across batches), a larger cache
        self.engine = sqlalchemy.create_engine(uri, connect_args={"timeout": 60},
                                               pool_size=1, max_overflow=0)
        sqlalchemy.event.listen(self.engine, "connect", _cache_pragma)
        self._artifact_roots: dict[str, str] = {}

    def write(self, experiment_id: str, writes: list[TrialWrite]) -> None:
        new = [w for w in writes if w.run_id is None]
        ended = [w for w in writes if w.run_id is not None and w.end is not None]
        for w in new:
            w.run_id, w.created = run_id(), True
        try:
            with self.engine.begin() as conn:
                self._insert_runs(conn, experiment_id, new)
                self._upsert_tags(conn, writes)
                self._insert_params(conn, writes)
                self._insert_metrics(conn, writes)
                self._end_runs(conn, ended)
        except Exception as exc:
            for w in new:
                w.run_id, w.created = None, False
            raise BulkWriteError(str(exc)) from exc
        for w in writes:
            if w.texts or w.checkpoint:
                self._attach.attach(w)

    def _artifact_root(self, experiment_id: str) -> str:
        if experiment_id not in self._artifact_roots:
            self._artifact_roots[experiment_id] = \
                self.client.get_experiment(experiment_id).artifact_location
        return self._artifact_roots[experiment_id]

    def _insert_runs(self, conn: Any, experiment_id: str, new: list[TrialWrite]) -> None:
        from mlflow.utils.time import get_current_time_millis
        from mlflow.utils.uri import append_to_uri_path

        if not new:
            return
        root, now = self._artifact_root(experiment_id), get_current_time_millis()
        rows = [(w.run_id, w.run_name, "UNKNOWN", "", "", "unknown",
                 w.end[0] if w.end else "RUNNING", w.start_ms or now,
                 w.end[1] if w.end else None, None, "", "active",
                 append_to_uri_path(root, w.run_id, "artifacts"), int(experiment_id))
                for w in new]
        conn.exec_driver_sql(self._sql["runs"], rows)
        conn.exec_driver_sql(self._sql["tags"], [("mlflow.runName", w.run_name, w.run_id)
                                                 for w in new])

    def _upsert_tags(self, conn: Any, writes: Iterable[TrialWrite]) -> None:
        rows = [(k, v, w.run_id) for w in writes for k, v in w.tags.items()
                if k != "mlflow.runName"]
        if rows:
            conn.exec_driver_sql(self._sql["tags"], rows)

    def _insert_params(self, conn: Any, writes: Iterable[TrialWrite]) -> None:
        rows = [(k, v, w.run_id) for w in writes for k, v in w.params.items()]
        if rows:
            conn.exec_driver_sql(self._sql["params"], rows)

    def _insert_metrics(self, conn: Any, writes: Iterable[TrialWrite]) -> None:
        rows: list[tuple[Any, ...]] = []
        latest: dict[tuple[str | None, str], tuple[Any, ...]] = {}
        for w in writes:
            for m in w.metrics:
                row = (m.key, float(m.value), int(m.timestamp), int(m.step), 0, w.run_id)
                rows.append(row)
                old = latest.get((w.run_id, m.key))
                if old is None or (row[3], row[2], row[1]) > (old[3], old[2], old[1]):
                    latest[(w.run_id, m.key)] = row
        if rows:
            conn.exec_driver_sql(self._sql["metrics"], rows)
            conn.exec_driver_sql(self._sql["latest_metrics"], list(latest.values()))

    def _end_runs(self, conn: Any, ended: list[TrialWrite]) -> None:
        rows = [(w.end[0], w.end[1], w.run_id) for w in ended if w.end is not None]
        if rows:
            conn.exec_driver_sql(self._sql["end"], rows)

    def children(self, parent_run_id: str, metric: str) -> dict[str, tuple[str, int]]:
        """Every child run of ``parent_run_id``: trial id -> (run id, last step logged), in
        one query (resume)."""
        from sqlalchemy import and_, func, select

        tag, parent, lm = self.tags.alias("t"), self.tags.alias("p"), self.latest
        step = (select(func.max(lm.c.step)).where(lm.c.run_uuid == tag.c.run_uuid,
                                                  lm.c.key == metric).scalar_subquery())
        q = (select(tag.c.value, tag.c.run_uuid, step)
             .join(parent, and_(parent.c.run_uuid == tag.c.run_uuid,
                                parent.c.key == "mlflow.parentRunId",
                                parent.c.value == parent_run_id))
             .join(self.runs, and_(self.runs.c.run_uuid == tag.c.run_uuid,
                                   self.runs.c.lifecycle_stage == "active"))
             .where(tag.c.key == "rungflow.trial_id"))
        with self.engine.connect() as conn:
            return {tid: (rid, int(s or 0)) for tid, rid, s in conn.execute(q)}

    def close(self) -> None:
        self.engine.dispose()


def run_id() -> str:
    """A new run id: 32 hex digits like MLflow's, time-ordered (milliseconds, then 80 random
    bits) so a batch's rows land together at the end of every index on ``run_uuid`` instead
    of in random pages all over it."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def _cache_pragma(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA cache_size=-65536")  # KiB: 64 MiB
    finally:
        cur.close()


#: every column a bulk insert must fill: a model with another required column (a newer MLflow)
#: makes the writer use the client instead
_WRITTEN = {"runs": {"run_uuid", "name", "source_type", "source_name", "entry_point_name",
                     "user_id", "status", "start_time", "end_time", "deleted_time",
                     "source_version", "lifecycle_stage", "artifact_uri", "experiment_id"},
            "tags": {"key", "value", "run_uuid"}, "params": {"key", "value", "run_uuid"},
            "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
            "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}}


def _statements(sink: SqliteBulkSink) -> dict[str, str]:
    """The bulk statements (qmark parameters, rows as tuples: one ``executemany`` each, no
    per-row work in SQLAlchemy). Upserts as MLflow does them: a tag's value replaced, a
    param or metric row already there kept, a latest metric replaced by a newer
    (step, timestamp, value)."""
    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def insert(table: Any, cols: list[str], tail: str = "", verb: str = "INSERT") -> str:
        names = ", ".join(q(c) for c in cols)
        marks = ", ".join("?" for _ in cols)
        return f"{verb} INTO {q(table.name)} ({names}) VALUES ({marks}){tail}"

    lm = q(sink.latest.name)
    return {
        "runs": insert(sink.runs, ["run_uuid", "name", "source_type", "source_name",
                                   "entry_point_name", "user_id", "status", "start_time",
                                   "end_time", "deleted_time", "source_version",
                                   "lifecycle_stage", "artifact_uri", "experiment_id"]),
        "tags": insert(sink.tags, ["key", "value", "run_uuid"],
                       ' ON CONFLICT ("key", "run_uuid") DO UPDATE SET "value" = excluded."value"'),
        "params": insert(sink.params, ["key", "value", "run_uuid"], verb="INSERT OR IGNORE"),
        "metrics": insert(sink.metrics, ["key", "value", "timestamp", "step", "is_nan",
                                         "run_uuid"], verb="INSERT OR IGNORE"),
        "latest_metrics": insert(
            sink.latest, ["key", "value", "timestamp", "step", "is_nan", "run_uuid"],
            ' ON CONFLICT ("key", "run_uuid") DO UPDATE SET "value" = excluded."value", '
            '"timestamp" = excluded."timestamp", "step" = excluded."step", '
            '"is_nan" = excluded."is_nan" WHERE (excluded."step", excluded."timestamp", '
            f'excluded."value") > ({lm}."step", {lm}."timestamp", {lm}."value")'),
        "end": f'UPDATE {q(sink.runs.name)} SET "status" = ?, "end_time" = ? '
               'WHERE "run_uuid" = ?',
    }


def _check_columns(sink: SqliteBulkSink) -> None:
    for table in (sink.runs, sink.tags, sink.params, sink.metrics, sink.latest):
        cols = {c.name for c in table.columns}
        written = _WRITTEN[table.name]
        required = {c.name for c in table.columns if not c.nullable and c.default is None
                    and c.server_default is None}
        if not written <= cols or not required <= written:
            raise RuntimeError(f"MLflow's {table.name!r} table has columns {sorted(cols)}: "
                               "not the ones the bulk writer knows")


def make_sink(client: MlflowClient, uri: str, threads: int | None = None, bulk: bool = True
              ) -> ClientSink | SqliteBulkSink:
    """SQLite (one writer at a time): the bulk sink unless ``bulk=False``; a tracking server
    (http/https): the client with ``threads`` threads, 8 by default; any other store: the
    client, one thread unless told."""
    if uri.startswith("sqlite:") and bulk:
        try:
            return SqliteBulkSink(client, uri)
        except Exception as exc:  # noqa: BLE001 - an MLflow whose tables differ
            log.warning("MLflow writer: bulk SQLite writes unavailable (%s); using the client",
                        exc)
    if threads is None:
        threads = 8 if uri.startswith(("http://", "https://")) else 1
    return ClientSink(client, threads)


def fallback(sink: ClientSink | SqliteBulkSink, exc: BaseException,
             warn: Callable[[str], None] | None = None) -> ClientSink:
    """The client sink that replaces a bulk sink whose transaction failed."""
    (warn or log.warning)(f"MLflow writer: bulk SQLite write failed ({type(exc).__name__}: "
                          f"{exc}); continuing through the MLflow client")
    if isinstance(sink, SqliteBulkSink):
        sink.close()
        return ClientSink(sink.client)
    assert isinstance(sink, ClientSink)
    return sink
