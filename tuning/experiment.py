"""The trial table and its append-only event journal; replaying the journal is resuming.

Every event is one JSON line in ``<storage>/<experiment>/journal.jsonl``, written through fsspec
(a local directory by default, any fsspec URL such as ``s3://bucket/prefix``). The controller
appends a ``state`` event (scheduler, searcher and controller state) at the end of each wave;
replay applies events up to the last ``state`` event, so a crash mid-wave loses at most the
uncommitted tail, which the resumed run re-does from the trials' checkpoints.

A torn last line (the process died mid-write) is dropped with a warning; any other unreadable
line is an error naming the file and the line number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec

from tuning._trial import Status, Trial

__all__ = [
    "JOURNAL_NAME",
    "ExperimentState",
    "Journal",
    "JournalError",
    "experiment_dir",
    "find_experiment_dirs",
    "replay",
]

log = logging.getLogger("tuning.experiment")
JOURNAL_NAME = "journal.jsonl"


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
    """Append-only JSON-lines event log."""

    def __init__(self, directory: str) -> None:
        self.directory = directory.rstrip("/")
        self.url = f"{self.directory}/{JOURNAL_NAME}"
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self._local = _is_local(self.url)
        self._pending: list[str] = []
        self._seq = 0
        self._memory: list[str] | None = [] if directory.startswith("memory://") else None

    def exists(self) -> bool:
        if self._memory is not None:
            return bool(self._memory)
        return self.fs.exists(self.path)

    def read(self) -> list[dict[str, Any]]:
        """Every readable event; a torn last line is dropped with a warning."""
        if not self.exists():
            return []
        if self._memory is not None:
            raw = "".join(self._memory)
        else:
            with self.fs.open(self.path, "rb") as f:
                raw = f.read().decode("utf-8", errors="replace")
        lines = raw.split("\n")
        events: list[dict[str, Any]] = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                events.append(_json_restore(json.loads(line)))
            except json.JSONDecodeError as exc:
                if i == last:  # no newline after it: a write that never finished
                    log.warning("%s: dropped a torn last line %d (%d bytes): the previous run "
                                "died while writing it", self.url, i + 1, len(line))
                    break
                raise JournalError(f"{self.url}, line {i + 1}: not a JSON event ({exc.msg}); "
                                   "the journal is corrupt") from None
        self._seq = max((e.get("seq", 0) for e in events), default=0)
        return events

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Queue one event; :meth:`flush` writes queued events together."""
        self._seq += 1
        record = {"seq": self._seq, "t": time.time(), "event": event, **data}
        try:  # fast path; non-finite floats (JSON has none) take the slow one
            line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        except ValueError:
            line = json.dumps(_json_safe(record), separators=(",", ":"))
        self._pending.append(line)
        return record

    def flush(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        if self._memory is not None:  # memory://: benchmarks and tests, nothing on disk
            self._memory.append(text)
            return
        blob = text.encode()
        self.fs.makedirs(self.directory if self._local else self.path.rsplit("/", 1)[0],
                         exist_ok=True)
        if self._local:
            path = self.path
            with open(path, "ab") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        else:  # object stores cannot append: rewrite the whole object
            old = self.fs.cat_file(self.path) if self.fs.exists(self.path) else b""
            with self.fs.open(self.path, "wb") as f:
                f.write(old + blob)

    def repair_tail(self) -> None:
        """Cut a torn last line so that new events start on a fresh line."""
        if not self._local or not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                f.truncate(cut)


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
        t = st.trials[ev["trial_id"]]
        t.results.append(ev["result"])
        if ev["result"].get("checkpoint"):
            t.checkpoint = ev["result"]["checkpoint"]
            t.checkpoint_iteration = int(ev["result"]["training_iteration"])
    elif kind == "trial_status":
        _apply_status(st.trials[ev["trial_id"]], ev)
    elif kind == "finished":
        st.finished = True


def _apply_status(t: Trial, ev: dict[str, Any]) -> None:
    t.status = Status(ev["status"])
    for key in ("error", "stopped_at", "rung", "num_failures", "checkpoint",
                "checkpoint_iteration", "wall_time_s"):
        if key in ev and ev[key] is not None:
            setattr(t, key, ev[key])
    if "results_cut" in ev:  # a restart from an older checkpoint: later results are re-done
        t.results = [r for r in t.results if r["training_iteration"] <= ev["results_cut"]]


def replay(events: Iterable[dict[str, Any]]) -> ExperimentState:
    """Rebuild the experiment from its events.

    Events count once a ``state`` (or ``finished``) event commits them; what a crashed run
    wrote after its last commit is dropped when the next ``run_started`` shows it never
    committed, so a resumed run re-does it from the trials' checkpoints.
    """
    events = list(events)
    st = ExperimentState()
    pending: list[dict[str, Any]] = []
    for ev in events:
        kind = ev["event"]
        if kind in ("experiment_created", "tracking"):
            _apply(st, ev)
        elif kind == "run_started":
            pending.clear()
            _apply(st, ev)
        elif kind in ("state", "finished"):
            for p in pending:
                _apply(st, p)
            pending.clear()
            _apply(st, ev)
            if kind == "state":
                st.state = ev
        else:
            pending.append(ev)
    st.events = len(events)
    st.last_event_time = events[-1]["t"] if events else None
    return st


def find_experiment_dirs(path: str) -> list[str]:
    """Experiment directories at ``path``: itself if it holds a journal, else its children."""
    fs, root = fsspec.core.url_to_fs(path)
    prefix = path.rstrip("/")
    if fs.exists(f"{root.rstrip('/')}/{JOURNAL_NAME}"):
        return [prefix]
    if not fs.exists(root):
        return []
    found = []
    for entry in sorted(fs.ls(root, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{entry.rstrip('/')}/{JOURNAL_NAME}"):
            found.append(f"{prefix}/{name}")
    return found
