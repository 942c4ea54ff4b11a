"""What of the journal the MLflow writer reads: slim events, committed catch-up, re-reads.

Pure helpers over journal events (dicts as ``tuning.experiment.Journal`` yields them); no
MLflow here, so they are tested on plain data.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["CATCH_UP", "WANTED", "JournalReader", "committed_events", "events_after", "slim"]

#: the events the projection writes from (a live run)
WANTED = frozenset({"trial_created", "segment_started", "result", "failure", "trial_status",
                    "finished"})
#: what a resumed run's catch-up replays (the previous attempts' trial events)
CATCH_UP = frozenset({"trial_created", "segment_started", "result", "failure", "trial_status"})
_COMMIT = ("state", "finished")


def slim(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an event the writer uses: a result keeps its numbers only (metrics, the
    iteration, the timestamp), never a checkpoint blob or a user's string."""
    if ev["event"] != "result":
        return dict(ev)
    out = {k: ev[k] for k in ("seq", "t", "event", "trial_id") if k in ev}
    out["result"] = {k: v for k, v in ev["result"].items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def _commit_points(events: Iterable[Mapping[str, Any]]) -> tuple[list[int], list[int], int]:
    """Per attempt (a ``run_started`` begins one): its first seq and its last commit's seq
    (-1: none); and the last commit's seq of the whole journal (0: none)."""
    starts, commits, last = [0], [-1], 0
    for ev in events:
        kind = ev["event"]
        if kind == "run_started":
            starts.append(ev["seq"])
            commits.append(-1)
        elif kind in _COMMIT:
            commits[-1] = last = ev["seq"]
    return starts, commits, last


def committed_events(journal: Any, kinds: frozenset[str] = CATCH_UP
                     ) -> tuple[Iterator[dict[str, Any]], int]:
    """The events of ``kinds`` that a commit (``state`` or ``finished``) covers, as
    :func:`tuning.experiment.replay` counts them: what an attempt wrote after its last commit
    is dropped. Two streamed passes over the journal (commit points, then the events), so
    memory stays bounded whatever its size. Returns the events and the seq of the last
    commit read (events after it are the new run's, seen live)."""
    starts, commits, last = _commit_points(journal.iter_events())

    def gen() -> Iterator[dict[str, Any]]:
        for ev in journal.iter_events():
            seq = ev["seq"]
            if seq > last:
                return
            i = bisect.bisect_right(starts, seq) - 1
            if ev["event"] in kinds and seq < commits[i]:
                yield slim(ev)

    return gen(), last


def events_after(journal: Any, after: int, upto: int, kinds: frozenset[str] = WANTED
                 ) -> Iterator[dict[str, Any]]:
    """The events of ``kinds`` with ``after < seq <= upto``, streamed (events the writer did
    not take from its queue, read back from the journal they are durable in)."""
    for ev in journal.iter_events():
        seq = ev["seq"]
        if seq > upto:
            return
        if seq > after and ev["event"] in kinds:
            yield slim(ev)


class JournalReader:
    """Reads the events a writer missed, forward from where the last read stopped.

    A local journal file is read from a byte offset, so reading back every event a slow
    writer missed costs one pass over the file in all, however often it falls behind; any
    other journal (``s3://`` chunks) is streamed from its start each time
    (:func:`events_after`).
    """

    def __init__(self, directory: str) -> None:
        from tuning.experiment import JOURNAL_NAME, Journal

        self.journal = Journal(directory)
        local = "://" not in directory or directory.startswith("file://")
        path = f"{directory.removeprefix('file://').rstrip('/')}/{JOURNAL_NAME}"
        self.path = path if local and os.path.exists(path) else None
        self.offset = 0

    def events(self, after: int, upto: int, kinds: frozenset[str] = WANTED
               ) -> Iterator[dict[str, Any]]:
        """The events of ``kinds`` with ``after < seq <= upto``."""
        if self.path is None:
            yield from events_after(self.journal, after, upto, kinds)
            return
        from tuning.experiment import _json_restore

        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                start = f.tell()
                line = f.readline()
                if not line.endswith(b"\n"):
                    return  # the end, or a line still being written
                if not line.strip():
                    self.offset = f.tell()
                    continue
                ev = json.loads(line)
                if b'"__float__"' in line:
                    ev = _json_restore(ev)
                if ev["seq"] > upto:
                    self.offset = start
                    return
                self.offset = f.tell()
                if ev["seq"] > after and ev["event"] in kinds:
                    yield slim(ev)
