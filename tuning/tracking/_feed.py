"""What of the journal the MLflow writer reads: slim events, and re-reads of what it missed.

Pure helpers over journal events (dicts as ``tuning.experiment.Journal`` yields them); no
MLflow here, so they are tested on plain data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["CATCH_UP", "WANTED", "JournalReader", "events_after", "slim"]

#: the events the projection writes from (a live run)
WANTED = frozenset({"trial_created", "segment_started", "result", "failure", "trial_status",
                    "finished"})
#: what a resumed run's catch-up replays (the previous attempts' trial events)
CATCH_UP = frozenset({"trial_created", "segment_started", "result", "failure", "trial_status"})


def slim(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an event the writer uses: a result keeps its numbers only (metrics, the
    iteration, the timestamp), never a checkpoint blob or a user's string."""
    if ev["event"] != "result":
        return dict(ev)
    out = {k: ev[k] for k in ("seq", "t", "event", "trial_id") if k in ev}
    out["result"] = {k: v for k, v in ev["result"].items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


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
