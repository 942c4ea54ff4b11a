"""The trial table and its append-only event journal; replaying the journal is resuming.

Every event is one JSON line in ``<storage>/<experiment>/journal.jsonl``, written through fsspec
(a local directory by default, any fsspec URL such as ``s3://bucket/prefix``). The controller
appends a ``state`` event (scheduler, searcher and controller state) now and then: when the
events since the last one outweigh it several times over, or after a while when they are a
fair share of it (:class:`SnapshotPolicy`), so snapshots take a bounded share of the journal,
which grows linearly with its events. Replay applies events up to the last ``state`` event, so
a crash loses at most the uncommitted tail, which the resumed run re-does from the trials'
checkpoints. Events are written in group commits off the decision path.

A torn last line (the process died mid-write) is dropped with a warning; any other unreadable
line is an error naming the file and the line number.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from tuning._trial import Status, Trial

__all__ = [
    "JOURNAL_NAME",
    "ExperimentState",
    "Journal",
    "JournalError",
    "SnapshotPolicy",
    "committed_events",
    "experiment_dir",
    "find_experiment_dirs",
    "read_histories",
    "replay",
]

log = logging.getLogger("tuning.experiment")
JOURNAL_NAME = "journal.jsonl"
CHUNK_DIR = "journal.d"


class JournalError(ValueError):
    """A journal that cannot be read."""


def experiment_dir(storage_path: str, name: str) -> str:
    return f"{str(storage_path).rstrip('/')}/{name}"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (JSON has none) by strings that replay turns back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _json_restore(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and "__float__" in obj:
            return float(obj["__float__"])
        return {k: _json_restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_restore(v) for v in obj]
    return obj


class Journal:
    """Append-only JSON-lines event log, written in group commits.

    :meth:`append` only queues an event (it never touches the disk, so the decision path never
    waits on it). A background writer writes queued events together, every ``commit_s``
    seconds or as soon as ``commit_events`` are queued, with one fsync per group; each written
    group is handed to ``on_durable`` (the MLflow projection sees only what is on disk).
    :meth:`flush` waits until everything queued so far is written.

    On an object store (``s3://...``) each group is a numbered chunk object
    (``journal.d/00000001.jsonl``); reading concatenates the chunks in order. Nothing is ever
    rewritten.
    """

    def __init__(self, directory: str, commit_s: float = 0.1, commit_events: int = 1000) -> None:
        self.directory = directory.rstrip("/")
        self.url = f"{self.directory}/{JOURNAL_NAME}"
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self._local = _is_local(self.url)
        self._chunks = f"{self.path.rsplit('/', 1)[0]}/{CHUNK_DIR}"
        self.commit_s = commit_s
        self.commit_events = commit_events
        self.on_durable: Callable[[list[dict[str, Any]]], None] | None = None
        self._pending: list[str] = []  # encoded lines: strings, which the GC never scans
        # their events, kept only while on_durable is set (a listener set later sees the
        # events appended from then on)
        self._records: list[dict[str, Any]] = []
        self._seq = 0
        self._chunk_no: int | None = None
        self._memory: list[str] | None = [] if directory.startswith("memory://") else None
        self._cond = threading.Condition()
        self._writing = threading.Lock()
        self._writer: threading.Thread | None = None
        self._closed = False
        self.bytes_written = 0
        self.bytes_appended = 0  # by this process, queued or written
        self.last_line_bytes = 0
        self.error: BaseException | None = None

    def exists(self) -> bool:
        if self._memory is not None:
            return bool(self._memory)
        if self.fs.exists(self.path):
            return True
        return not self._local and bool(self._chunk_paths())

    def _chunk_paths(self) -> list[str]:
        if not self.fs.exists(self._chunks):
            return []
        return sorted(p for p in self.fs.ls(self._chunks, detail=False) if p.endswith(".jsonl"))

    def _raw_lines(self) -> Iterator[tuple[int, bytes, bool]]:
        """(line number, line, whether a newline ended it), streamed, never the whole file."""
        if self._memory is not None:
            sources: list[Any] = [io.BytesIO("".join(self._memory).encode())]
        elif self._local or self.fs.exists(self.path):
            sources = [self.path]
        else:
            sources = self._chunk_paths()
        n = 0
        for src in sources:
            f = src if isinstance(src, io.BytesIO) else self.fs.open(src, "rb")
            with f:
                for line in f:
                    n += 1
                    yield n, line, line.endswith(b"\n")

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """Every readable event in order, streamed; a torn last line is dropped with a warning,
        any other damaged line is refused naming the file and the line."""
        if not self.exists():
            return
        top = 0
        for n, line, whole in self._raw_lines():
            if not line.strip():
                continue
            try:
                ev = _json_restore(json.loads(line))
                if not isinstance(ev, dict) or not isinstance(ev.get("event"), str) or \
                        not isinstance(ev.get("seq"), int):
                    raise ValueError("not an event object with 'seq' and 'event'")
            except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError too
                if not whole:  # no newline after it: a write that never finished
                    log.warning("%s: dropped a torn last line %d (%d bytes): the previous run "
                                "died while writing it", self.url, n, len(line))
                    break
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise JournalError(f"{self.url}, line {n}: not a JSON event ({why}); "
                                   "the journal is corrupt") from None
            top = max(top, ev["seq"])
            yield ev
        with self._cond:
            self._seq = max(self._seq, top)  # never back: appends may be queued already

    def read(self) -> list[dict[str, Any]]:
        """Every readable event (a list; prefer :meth:`iter_events` for large journals)."""
        return list(self.iter_events())

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Queue one event; the writer commits it within ``commit_s``."""
        with self._cond:
            self._seq += 1
            record = {"seq": self._seq, "t": time.time(), "event": event, **data}
            try:  # fast path; non-finite floats (JSON has none) take the slow one
                line = json.dumps(record, separators=(",", ":"), allow_nan=False)
            except ValueError:
                line = json.dumps(_json_safe(record), separators=(",", ":"))
            self._pending.append(line)
            if self.on_durable is not None:
                self._records.append(record)
            self.bytes_appended += len(line) + 1
            self.last_line_bytes = len(line) + 1
            if self._writer is None and not self._closed:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="rungflow-journal")
                self._writer.start()
            if len(self._pending) == 1 or len(self._pending) >= self.commit_events:
                self._cond.notify_all()
        return record

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                if len(self._pending) < self.commit_events and not self._closed:
                    self._cond.wait(self.commit_s)  # gather a group
            self._write_group()

    def _write_group(self) -> None:
        with self._writing:  # one group at a time, in order
            with self._cond:
                group, self._pending = self._pending, []
                records, self._records = self._records, []
            if not group:
                return
            text = "\n".join(group) + "\n"
            try:
                self._write(text.encode())
            except BaseException as exc:  # noqa: BLE001 - surfaced by flush()
                self.error = exc
                log.error("%s: writing %d events failed: %s", self.url, len(group), exc)
                return
            self.bytes_written += len(text)
            if self.on_durable is not None:
                try:
                    self.on_durable(records)
                except Exception as exc:  # noqa: BLE001 - a projection never stops the run
                    log.warning("journal listener failed: %s", exc)

    def _write(self, blob: bytes) -> None:
        if self._memory is not None:  # memory://: benchmarks and tests, nothing on disk
            self._memory.append(blob.decode())
            return
        if self._local:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            return
        if self._chunk_no is None:  # object stores cannot append: a new numbered object
            have = self._chunk_paths()
            self._chunk_no = int(have[-1].rsplit("/", 1)[-1].split(".")[0]) if have else 0
        self._chunk_no += 1
        self.fs.makedirs(self._chunks, exist_ok=True)
        with self.fs.open(f"{self._chunks}/{self._chunk_no:08d}.jsonl", "wb") as f:
            f.write(blob)

    def flush(self) -> None:
        """Write everything queued so far, and wait for it."""
        self._write_group()
        if self.error is not None:
            err, self.error = self.error, None
            raise JournalError(f"{self.url}: cannot write the journal ({err})") from err

    def close(self) -> None:
        """Flush and stop the writer."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=10)
            self._writer = None

    def repair_tail(self) -> None:
        """Cut a torn last line so that new events start on a fresh line."""
        if not self._local or not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            back = min(size, 1 << 20)
            while True:  # find the last newline, reading backwards in blocks
                f.seek(size - back)
                data = f.read(back)
                cut = data.rfind(b"\n")
                if cut >= 0 or back == size:
                    f.truncate(size - back + cut + 1)
                    return
                back = min(size, back * 2)


@dataclass
class SnapshotPolicy:
    """When the controller writes a state snapshot (O(trials) bytes) into the journal.

    A snapshot is due when the events appended since the last one reach ``ratio`` times its
    size, or when ``max_interval_s`` have passed and they reach ``1 / ratio`` of it. By size,
    snapshots are at most ``1 / ratio`` of the events between them, so they are a bounded
    share of the journal and its size stays linear in its events (not waves x trials); by
    time, a crash re-does at most about ``max_interval_s`` of work. The policy is read at each
    wave's end, and while a run's trials grow a snapshot is due at most of them whatever the
    ratio (a 10,000-trial ASHA run: one at each of its three wave ends with 4 and with 8); what
    kept their share small there was their size (ASHA's packed rungs: 6.3 -> 3.3 % of the
    journal). 8 halves the bound.

    Example:
        >>> p = SnapshotPolicy(ratio=4.0, max_interval_s=60.0)
        >>> p.due(since_bytes=3_000, snapshot_bytes=1_000, since_s=1.0)
        False
        >>> p.due(since_bytes=4_000, snapshot_bytes=1_000, since_s=1.0)
        True
        >>> p.due(since_bytes=300, snapshot_bytes=1_000, since_s=61.0)
        True
    """

    ratio: float = 8.0
    max_interval_s: float = 60.0

    def due(self, since_bytes: int, snapshot_bytes: int, since_s: float) -> bool:
        if since_bytes <= 0:
            return False
        if since_bytes >= self.ratio * snapshot_bytes:
            return True
        return since_s >= self.max_interval_s and since_bytes * self.ratio >= snapshot_bytes


@dataclass
class ExperimentState:
    """What replaying a journal gives back."""

    spec: dict[str, Any] | None = None
    trials: dict[str, Trial] = field(default_factory=dict)
    state: dict[str, Any] | None = None  # the last committed ``state`` event
    finished: bool = False
    attempts: int = 0
    last_event_time: float | None = None
    events: int = 0
    parent_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _apply(st: ExperimentState, ev: dict[str, Any]) -> None:
    kind = ev["event"]
    if kind == "experiment_created":
        st.spec = ev["spec"]
        st.extra["pid"], st.extra["host"] = ev.get("pid"), ev.get("host")
    elif kind == "run_started":
        st.attempts += 1
        st.finished = False
        st.extra["pid"], st.extra["host"] = ev.get("pid"), ev.get("host")
    elif kind == "tracking":
        st.parent_run_id = ev.get("parent_run_id") or st.parent_run_id
    elif kind == "trial_created":
        st.trials[ev["trial_id"]] = Trial(ev["trial_id"], ev["config"], info=ev.get("info", {}),
                                          bracket=ev.get("info", {}).get("bracket"))
    elif kind == "segment_started":
        t = st.trials[ev["trial_id"]]
        t.status = Status.RUNNING
        if ev.get("config") is not None:
            t.config = ev["config"]
    elif kind == "result":
        st.trials[ev["trial_id"]].observe(ev["result"])
    elif kind == "trial_status":
        _apply_status(st.trials[ev["trial_id"]], ev)
    elif kind == "finished":
        st.finished = True


def _apply_status(t: Trial, ev: dict[str, Any]) -> None:
    t.status = Status(ev["status"])
    for key in ("error", "stopped_at", "rung", "num_failures", "checkpoint",
                "checkpoint_iteration"):
        if key in ev and ev[key] is not None:
            setattr(t, key, ev[key])


#: events that take effect as soon as they are read (no commit needed)
_IMMEDIATE = frozenset({"experiment_created", "tracking", "run_started"})
#: events that commit what was appended before them
_COMMITS = frozenset({"state", "finished"})


def committed_events(events: Iterable[dict[str, Any]],
                     kinds: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """The events that count, in order, streamed (of ``kinds`` only, when given).

    An event counts once a ``state`` (or ``finished``) event commits it; what a crashed run
    wrote after its last commit is dropped when the next ``run_started`` shows it never
    committed (the resumed run re-did that work from the trials' checkpoints). Memory: the
    events since the last commit.
    """
    want = None if kinds is None else frozenset(kinds)
    pending: list[dict[str, Any]] = []
    for ev in events:
        kind = ev["event"]
        if kind == "run_started":
            pending.clear()
        if kind in _COMMITS:
            yield from pending
            pending.clear()
        if kind in _IMMEDIATE or kind in _COMMITS:
            if want is None or kind in want:
                yield ev
        elif want is None or kind in want:
            pending.append(ev)


def replay(events: Iterable[dict[str, Any]]) -> ExperimentState:
    """Rebuild the experiment from its events (see :func:`committed_events`), streamed: memory
    is the trial table (O(1) per trial) and the events since the last commit."""
    st = ExperimentState()
    counted = _Counting(events)
    for ev in committed_events(counted):
        _apply(st, ev)
        if ev["event"] == "state":
            st.state = ev
    st.events = counted.n
    st.last_event_time = counted.last_t
    return st


def read_histories(journal: Journal, trial_ids: Iterable[str] | None = None
                   ) -> dict[str, list[dict[str, Any]]]:
    """Every committed result of ``trial_ids`` (every trial when None), in order, streamed
    from the journal: memory grows with what is asked for, not with the journal."""
    wanted = None if trial_ids is None else set(trial_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in committed_events(journal.iter_events(), ("result",)):
        tid = ev["trial_id"]
        if wanted is None or tid in wanted:
            out.setdefault(tid, []).append(ev["result"])
    return out


class _Counting:
    """Passes events through, counting them and noting the time of the last one."""

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self.events = events
        self.n = 0
        self.last_t: float | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for ev in self.events:
            self.n += 1
            self.last_t = ev.get("t", self.last_t)
            yield ev


def find_experiment_dirs(path: str) -> list[str]:
    """Experiment directories at ``path``: itself if it holds a journal, else its children."""
    fs, root = fsspec.core.url_to_fs(path)
    prefix = path.rstrip("/")
    def holds_journal(d: str) -> bool:
        d = d.rstrip("/")
        return fs.exists(f"{d}/{JOURNAL_NAME}") or fs.exists(f"{d}/{CHUNK_DIR}")

    if holds_journal(root):
        return [prefix]
    if not fs.exists(root):
        return []
    found = []
    for entry in sorted(fs.ls(root, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if holds_journal(entry):
            found.append(f"{prefix}/{name}")
    return found
