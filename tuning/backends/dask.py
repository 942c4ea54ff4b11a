"""Dask backend: segments as Dask futures on a LocalCluster, an existing cluster, or one
provisioned for the run from any cluster class (dask-cloudprovider, dask-kubernetes, ...).

Results stream to the driver as they are reported: the worker publishes each one with
``Worker.log_event`` on a topic the driver's client subscribes to. Answers travel the other way
straight to the worker running the trial: ``Client.run`` of a coroutine on that worker posts
the decision in the worker's mailbox, where a ``report()`` waiting at a decision point picks
it up (and any later ``report()`` sees a STOP). The driver never waits for that delivery. The
trainable is pickled once and handed to every worker by a worker plugin. The latest
checkpoint is kept in the scheduler's metadata, so a segment the cluster restarts after a
worker loss resumes from it. Nothing assumes a shared file system between driver and workers.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from tuning._imports import check_preload
from tuning.backends._base import (
    Backend,
    BackendError,
    Done,
    Lost,
    Message,
    Started,
    message_from_dict,
)
from tuning.backends._dask_direct import DirectLink, DirectListener
from tuning.backends._forkserver import (
    DASK_MALLOC_TRIM,
    MALLOC_TRIM,
    PRE_SPAWN,
    start_forkserver,
    trial_workers_environ,
)
from tuning.trainable import Segment, SegmentSummary, run_segment

__all__ = ["DaskBackend", "import_object"]

log = logging.getLogger("tuning.backends.dask")


def import_object(path: str) -> Any:
    """``"package.module.Name"`` or ``"package.module:Name"`` -> the object."""
    module, _, attr = path.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not an import path like 'package.module.Name'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None


class _Mailbox:
    """Worker side: the driver's answers for the trials running in this worker process.

    Written by coroutines the driver runs on the worker's event loop (``Client.run``), read by
    ``report()`` in the trial's thread.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.stops: set[tuple[str, str]] = set()  # (topic, trial id): stop at the next report
        self.answers: dict[tuple[str, str], tuple[int, bool]] = {}  # -> (iteration, stop)
        self.trainables: dict[str, Any] = {}  # topic -> the run's trainable
        self.direct: dict[str, tuple[str, str]] = {}  # topic -> driver's (address, token)
        self.links: dict[str, DirectLink] = {}  # topic -> this process's line to the driver

    def post(self, topic: str, trial_id: str, iteration: int | None, stop: bool) -> None:
        with self.cond:
            if stop:
                self.stops.add((topic, trial_id))
            if iteration is not None:
                self.answers[(topic, trial_id)] = (iteration, stop)
            self.cond.notify_all()

    def wait(self, topic: str, trial_id: str, iteration: int, timeout: float) -> bool | None:
        key = (topic, trial_id)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = self.answers.get(key)
                if got is not None and got[0] >= iteration:
                    return got[1]
                if key in self.stops:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def begin(self, topic: str, trial_id: str) -> None:
        with self.cond:
            self.stops.discard((topic, trial_id))
            self.answers.pop((topic, trial_id), None)


_MAILBOX = _Mailbox()
#: the length of Dask's developer logs for what a backend makes: see :func:`_bounded_logs`
LOW_LEVEL_LOG_LENGTH = 100


def _trial_workers_environ() -> Any:
    """Dask's Nanny config for trial workers: its pre-spawn environment without Dask's eager
    malloc trimming (:func:`tuning.backends._forkserver.trial_workers_environ` says why), for
    the workers a LocalCluster spawns without the forkserver (``preload=False``)."""
    import dask

    env = trial_workers_environ()
    if MALLOC_TRIM not in env or env[MALLOC_TRIM] is not None:
        return contextlib.nullcontext()
    kept = {k: v for k, v in (dask.config.get(PRE_SPAWN, {}) or {}).items() if k != MALLOC_TRIM}
    return dask.config.set({PRE_SPAWN: kept})


def _bounded_logs() -> Any:
    """Dask keeps its last ``distributed.admin.low-level-log-length`` (1,000) messages per
    batched stream (client to scheduler, scheduler to each worker and client) and transitions,
    for developers to read. At about a trial per message, each holding its submitted segment,
    that was 10-15 MB of the driver's RSS in a long run of short trials, reached only after a
    few thousand trials. The scheduler, workers (through their Nanny) and client a backend
    makes are made with :data:`LOW_LEVEL_LOG_LENGTH` instead (a lower value set by the user
    stands); the setting is Dask's as before once they are made."""
    import dask

    key = "distributed.admin.low-level-log-length"
    return dask.config.set(
        {key: min(int(dask.config.get(key, LOW_LEVEL_LOG_LENGTH)), LOW_LEVEL_LOG_LENGTH)})


async def _post(topic: str, trial_id: str, iteration: int | None, stop: bool) -> None:
    """Runs on the worker's event loop (``Client.run`` of a coroutine: nobody waits for it)."""
    _MAILBOX.post(topic, trial_id, iteration, stop)


class _TrainablePlugin(WorkerPlugin):
    """Ships the run's trainable to every worker once, including workers that join later or
    restart (the scheduler hands plugins to each worker as it registers)."""

    def __init__(self, topic: str, payload: bytes, direct: tuple[str, str] | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.direct = direct
        self.name = f"rungflow-trainable-{topic}"

    def setup(self, worker: Any) -> None:
        import cloudpickle

        _MAILBOX.trainables[self.topic] = cloudpickle.loads(self.payload)
        if self.direct is not None:
            _MAILBOX.direct[self.topic] = tuple(self.direct)  # type: ignore[assignment]

    def teardown(self, worker: Any) -> None:
        _MAILBOX.trainables.pop(self.topic, None)
        _MAILBOX.direct.pop(self.topic, None)
        link = _MAILBOX.links.pop(self.topic, None)
        if link is not None and link.line is not None:
            link.line.abort()


class _WorkerWatch(SchedulerPlugin):
    """On the scheduler: tells the run's client about every worker that joins or leaves (and,
    when registered, about those already there) on the run's event topic, so the driver
    counts its slots without asking the scheduler (no round trip, no cap on the number of
    workers, whatever the ``distributed`` version)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.name = f"rungflow-workers-{topic}"
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        workers = {addr: _worker_info(ws) for addr, ws in scheduler.workers.items()}
        scheduler.log_event(self.topic, {"type": "workers", "workers": workers})

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is not None:
            scheduler.log_event(self.topic, {"type": "worker_added", "worker": worker,
                                             "info": _worker_info(ws)})

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        scheduler.log_event(self.topic, {"type": "worker_removed", "worker": worker})


def _worker_info(ws: Any) -> dict[str, Any]:
    return {"nthreads": int(ws.nthreads), "resources": dict(ws.resources), "pid": ws.pid}


class _DaskChannel:
    """Worker side: talks to the driver through the Dask scheduler."""

    def __init__(self, topic: str, trial_id: str) -> None:
        from distributed import get_worker

        self.worker = get_worker()
        self.topic = topic
        self.trial_id = trial_id
        _MAILBOX.begin(topic, trial_id)
        self.link = _link(self.worker, topic)

    def started(self, segment: Segment) -> dict[str, Any] | None:
        """Announce the start; the newest checkpoint the driver saw, for a segment the cluster
        re-runs after losing its worker (one RPC to the scheduler, no worker client)."""
        from distributed.utils import sync

        self.send({"type": "started", "trial_id": segment.trial_id,
                   "segment_id": segment.segment_id, "worker": self.worker.address,
                   "pid": os.getpid()})
        keys = [self.topic, "ckpt", self.trial_id]
        return sync(self.worker.loop, self.worker.scheduler.get_metadata, keys=keys,
                    default=None)

    def send(self, message: dict[str, Any]) -> None:
        if self.link is None or not self.link.send(message):
            self.worker.log_event(self.topic, message)

    def should_stop(self) -> bool:
        return (self.topic, self.trial_id) in _MAILBOX.stops

    def wait_decision(self, iteration: int, timeout: float) -> bool | None:
        return _MAILBOX.wait(self.topic, self.trial_id, iteration, timeout)


def _link(worker: Any, topic: str) -> DirectLink | None:
    """This worker process's line to the run's driver: opened by its first trial, kept for
    the next ones; None where the driver offers none or cannot be reached (the scheduler path
    then carries everything)."""
    link = _MAILBOX.links.get(topic)
    if link is None and topic in _MAILBOX.direct:
        from distributed.utils import sync

        address, token = _MAILBOX.direct[topic]
        link = _MAILBOX.links[topic] = DirectLink(
            worker, address, token,
            lambda m: _MAILBOX.post(topic, m["trial_id"], m.get("iteration"), bool(m["stop"])))
        sync(worker.loop, link.open)
        if link.failed:
            log.warning("no direct line to the driver at %s (%s): results go through the "
                        "scheduler", address, link.failed)
    return link if link is not None and link.usable else None


def _run_on_worker(segment: dict[str, Any], topic: str) -> SegmentSummary:
    seg = Segment(**segment)
    trainable = _MAILBOX.trainables.get(topic)
    if trainable is None:
        raise RuntimeError(f"the trainable of run {topic} never reached this worker")
    return run_segment(trainable, seg, _DaskChannel(topic, seg.trial_id))


class DaskBackend(Backend):
    """``DaskBackend()`` (LocalCluster, a worker process per core), ``DaskBackend(address=...)``
    (an existing cluster, left running) or ``DaskBackend(cluster_class=..., cluster_kwargs=...,
    adapt={"minimum": 0, "maximum": 20})`` (provisioned for the run and closed after it), the
    convention of prefect-dask's ``DaskTaskRunner``."""

    name = "dask"

    def __init__(self, address: str | None = None, cluster_class: str | Callable[..., Any] | None = None,
                 cluster_kwargs: dict[str, Any] | None = None, adapt: dict[str, Any] | None = None,
                 n_workers: int | None = None, resources: dict[str, float] | None = None, connect_timeout_s: float = 10.0,
                 direct: bool = True, preload: str | list[str] | bool = "auto") -> None:
        if address is not None and cluster_class is not None:
            raise ValueError("backend: give either address or cluster_class, not both")
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt = adapt
        self.n_workers = n_workers
        self.resources = {k.lower(): float(v) for k, v in (resources or {}).items()}
        self.connect_timeout_s = connect_timeout_s
        self.direct = direct  # results and answers over a direct line where workers reach us
        self.preload = check_preload(preload)
        self._preload_modules: list[str] = list(self.preload) if isinstance(self.preload, list) \
            else []
        # the environment variables set while the LocalCluster starts, with their values before
        self._saved_env: list[tuple[str, str | None]] = []
        self._start_method: Any = None  # the dask.config.set that picks the forkserver
        self._listener: DirectListener | None = None
        self._lock = threading.Lock()  # the held Dones: client loop thread vs done callbacks
        self._direct_last: dict[tuple[str, int], int] = {}  # iterations seen over the line
        self._held: dict[tuple[str, int], Done] = {}  # Dones waiting for their results
        self._held_since: dict[tuple[str, int], float] = {}
        self.cluster: Any = None
        self.client: Any = None
        self.topic = f"rungflow-{uuid.uuid4().hex[:12]}"
        self._messages: queue.Queue[Message] = queue.Queue()
        self._futures: dict[str, Any] = {}
        self._workers: dict[str, str] = {}  # trial id -> address of the worker running it
        self._pending_stops: set[str] = set()
        self._segment_ids: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._owns_cluster = False
        self._workers_seen: dict[str, dict[str, Any]] = {}  # address -> threads, resources
        self._slot_count = 1
        self._watched = False  # the scheduler plugin reports workers as they come and go
        self._slots_t = 0.0  # without the plugin: when the slots were last counted

    # -- lifecycle -------------------------------------------------------------------------
    def preflight(self) -> None:
        """An existing scheduler's address must accept a connection, before the run writes
        anything (a TCP connect: no Dask client yet)."""
        if self.address is None:
            return
        import socket
        from urllib.parse import urlsplit

        where = urlsplit(self.address if "://" in self.address else f"tcp://{self.address}")
        if where.scheme not in ("tcp", "tls") or not where.hostname:
            return  # inproc://, ucx://, ...: left to the client
        try:
            socket.create_connection((where.hostname, where.port or 8786),
                                     timeout=self.connect_timeout_s).close()
        except OSError as exc:
            raise BackendError(f"backend.address: cannot reach the Dask scheduler at "
                               f"{self.address!r} within {self.connect_timeout_s:g}s ({exc})"
                               ) from None

    def start(self) -> None:
        from distributed import Client

        try:
            with _bounded_logs():
                if self.address is not None:
                    self.client = Client(self.address, timeout=self.connect_timeout_s)
                else:
                    self.cluster = self._make_cluster()
                    self._owns_cluster = True
                    # its workers take seconds to go and hold nothing of the run: the run
                    # returns meanwhile (a cluster_class one, on a cloud, is waited for)
                    self.close_after_return = self.cluster_class is None
                    if self.adapt:
                        self.cluster.adapt(**self.adapt)
                    self.client = Client(self.cluster, timeout=self.connect_timeout_s)
        except OSError as exc:
            self.close()
            where = self.address or self.cluster_class or "LocalCluster"
            raise BackendError(f"backend.address: cannot reach the Dask scheduler at {where!r} "
                               f"within {self.connect_timeout_s:g}s ({exc})") from None
        self.client.subscribe_topic(self.topic, self._on_event)
        self._subscribed_now()
        self._listen()
        self._set_workers(self._workers_info())
        self._watch_workers()
        self._check_resources()

    def _listen(self) -> None:
        """Offer the workers a direct line (``direct``, the default): results and answers
        then skip the scheduler. A failure here only costs latency."""
        if not self.direct:
            return
        listener = DirectListener(self._on_direct, self._direct_closed)
        try:
            addr = self.client.sync(listener.start, self.client.scheduler.address,
                                    self.client.security.get_listen_args("client"))
        except Exception as exc:  # noqa: BLE001 - the scheduler path still works
            log.warning("no direct line for the workers (%s): results go through the "
                        "scheduler", exc)
            return
        if addr is not None:
            self._listener = listener

    def _subscribed_now(self) -> None:
        """``subscribe_topic`` travels on the client's batched stream and may reach the
        scheduler after events published by an RPC sent later (the plugin's first news):
        subscribe once more by a call that has taken effect when it returns."""
        topic, cid = self.topic, self.client.id

        def subscribe(dask_scheduler: Any) -> None:
            dask_scheduler.subscribe_topic(topic, cid)

        self.client.run_on_scheduler(subscribe)

    def _watch_workers(self) -> None:
        """Register :class:`_WorkerWatch`; a scheduler that cannot import rungflow refuses it,
        and slots are then counted from the scheduler at most once a second."""
        try:
            self.client.register_plugin(_WorkerWatch(self.topic),
                                        name=f"rungflow-workers-{self.topic}")
            self._watched = True
        except Exception as exc:  # noqa: BLE001 - counted by polling instead
            log.info("worker watch plugin not registered (%s): slots are polled", exc)

    def _workers_info(self) -> dict[str, dict[str, Any]]:
        """Every worker's threads and resources, straight from the scheduler (no cap on the
        number of workers, whatever the ``distributed`` version)."""
        def info(dask_scheduler: Any) -> dict[str, dict[str, Any]]:
            # inline (not _worker_info): this path serves schedulers without rungflow
            return {addr: {"nthreads": int(ws.nthreads), "resources": dict(ws.resources),
                           "pid": ws.pid} for addr, ws in dask_scheduler.workers.items()}

        return self.client.run_on_scheduler(info)

    def _check_resources(self) -> None:
        """A trial that needs more than any worker declares would wait forever: refuse it now.
        (An adaptive cluster may have no worker yet; its workers are checked as they come.)"""
        if not self.resources:
            return
        workers = list(self._workers_seen.values())
        if not workers:
            return
        for name, need in self.resources.items():
            if not need:
                continue
            key = _dask_name(name)
            have = max(w.get("resources", {}).get(key, 0.0) for w in workers)
            if need > have:
                self.close()
                raise BackendError(
                    f"resources.{name}={need:g}: no worker of this cluster declares that "
                    f"much {key} (the most any worker has: {have:g}); start workers with "
                    f"`--resources {key}=<n>` or ask for less")

    def expect(self, trainable: Callable[..., Any]) -> None:
        """``preload="auto"``: the modules the trainable imports (:mod:`tuning._imports`)."""
        if self.preload == "auto":
            from tuning._imports import packages_of

            self._preload_modules = packages_of(trainable)

    def _fork_workers(self) -> None:
        """LocalCluster worker processes fork from Python's forkserver, which imports rungflow's
        worker side and the trainable's modules once (``preload``) for all of them, instead of
        each worker spawning a fresh interpreter that imports them itself: the imports are paid
        once per driver process (a notebook's later runs start warm), and the workers share
        those pages. The server is started here (or earlier, by ``Tuner.run``'s
        :func:`~tuning.backends._forkserver.warm_up`) with the environment Dask's Nanny would
        give it (``OMP_NUM_THREADS=1``, ``PYTHONHASHSEED``...), and each worker still gets the
        driver's ``sys.path``, working directory and main module, as with spawn."""
        import multiprocessing

        import dask

        if self.preload is False or "forkserver" not in multiprocessing.get_all_start_methods():
            return
        import distributed.utils

        from tuning._imports import preload_modules

        self._start_method = dask.config.set(
            {"distributed.worker.multiprocessing-method": "forkserver"})
        # Dask's first forkserver context would import its optional packages (pandas, lz4)
        # into this process to list them as its own preload (60 MB of the driver's RSS);
        # tuning._warm imports distributed and what the trainable needs instead
        distributed.utils._forkserver_preload_set = True
        start_forkserver(preload_modules(self._preload_modules))

    def _unfork_workers(self) -> None:
        if self._start_method is not None:
            self._start_method.__exit__(None, None, None)
            self._start_method = None
        self._restore_env()

    def _set_env(self, key: str, value: str | None) -> None:
        self._saved_env.append((key, os.environ.get(key)))
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    def _restore_env(self) -> None:
        while self._saved_env:
            key, before = self._saved_env.pop()
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before

    def _make_cluster(self) -> Any:
        if self.cluster_class is None:
            from distributed import LocalCluster

            n = self.n_workers or os.cpu_count() or 1
            kwargs = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                      "host": "127.0.0.1", "dashboard_address": None,
                      "resources": _local_resources(n)}
            kwargs.update(self.cluster_kwargs)
            if not kwargs["processes"]:  # thread workers in this process, as Optuna's n_jobs:
                kwargs.setdefault("protocol", "tcp")  # inproc:// takes no host
                return LocalCluster(**kwargs)
            self._fork_workers()
            if os.environ.get(MALLOC_TRIM) == str(DASK_MALLOC_TRIM):
                # left in this process by an earlier LocalCluster's Nanny: workers spawned
                # now would inherit it (see _trial_workers_environ)
                self._set_env(MALLOC_TRIM, None)
            try:
                with _trial_workers_environ():
                    return LocalCluster(**kwargs)
            finally:
                self._restore_env()
        cls = import_object(self.cluster_class) if isinstance(self.cluster_class, str) \
            else self.cluster_class
        return cls(**self.cluster_kwargs)

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None and self._listener is not None:
            try:
                client.sync(self._listener.close)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("closing the direct listener: %s", exc)
            self._listener = None
        if client is not None:
            try:
                client.unsubscribe_topic(self.topic)
                if not self._owns_cluster:  # a shared cluster keeps nothing of this run
                    self._unregister(client)
                for fut in self._futures.values():
                    self._cancelled.add(fut.key)
                    fut.cancel()
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("cancelling futures at close: %s", exc)
            client.close()
        if cluster is not None and self._owns_cluster:
            cluster.close()
        self._unfork_workers()

    def _unregister(self, client: Any) -> None:
        for name in (f"rungflow-trainable-{self.topic}", f"rungflow-workers-{self.topic}"):
            try:
                if name.startswith("rungflow-trainable"):
                    client.unregister_worker_plugin(name)
                elif self._watched:
                    client.unregister_scheduler_plugin(name)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("unregistering %s: %s", name, exc)

    # -- capacity --------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Worker threads (or CPU resources over what a trial needs) of the workers the
        scheduler plugin reported: workers that join or leave (``adapt``) count as soon as
        the scheduler sees them, and no call here costs a round trip. Without the plugin,
        counted from the scheduler at most once a second."""
        if not self._watched and self.client is not None and \
                time.monotonic() - self._slots_t > 1.0:
            self._set_workers(self._workers_info())
        return self._slot_count

    def _set_workers(self, workers: dict[str, dict[str, Any]]) -> None:
        self._workers_seen = dict(workers)
        self._slots_t = time.monotonic()
        self._slot_count = self._count_slots()

    def _count_slots(self) -> int:
        workers = list(self._workers_seen.values())
        total = sum(w["nthreads"] for w in workers)
        need = self.resources.get("cpu")
        if need:
            cpus = sum(w["resources"].get("CPU", w["nthreads"]) for w in workers)
            total = min(total, int(cpus // need)) if cpus else total
        if not workers and self.adapt and self.adapt.get("minimum", 0) == 0:
            return 1  # an adaptive cluster scaled to zero: one queued segment wakes it
        return max(total, 1)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.name}
        if self.address:
            d["address"] = self.address
        if self.cluster_class:
            d["cluster_class"] = str(self.cluster_class)
        if self.client is not None:
            d["scheduler"] = self.client.scheduler.address
        return d

    # -- segments --------------------------------------------------------------------------
    def prepare(self, trainable: Callable[..., Any]) -> None:
        """Pickle the trainable once and hand it to every worker, now and as they join."""
        import cloudpickle

        payload = cloudpickle.dumps(trainable)
        direct = None
        if self._listener is not None and self._listener.address is not None:
            direct = (self._listener.address, self._listener.token)
        self.client.register_plugin(_TrainablePlugin(self.topic, payload, direct),
                                    name=f"rungflow-trainable-{self.topic}")

    def submit(self, segment: Segment) -> None:
        tid = segment.trial_id
        self._workers.pop(tid, None)
        self._pending_stops.discard(tid)
        if segment.checkpoint:
            self._set_checkpoint(tid, segment.checkpoint, segment.start_iteration)
        fut = self.client.submit(_run_on_worker, segment.to_dict(), self.topic,
                                 key=f"{tid}-seg{segment.segment_id}-{self.topic}",
                                 pure=False, resources=_dask_resources(segment.resources))
        self._futures[tid] = fut
        self._segment_ids[tid] = segment.segment_id
        fut.add_done_callback(lambda f, s=segment: self._on_done(f, s))

    def _on_event(self, event: tuple[float, Any]) -> None:
        _, raw = event
        if not isinstance(raw, dict):
            return
        if raw.get("type") in _WORKER_EVENTS:
            self._on_workers(raw)
            return
        self._on_message(raw)

    def _on_message(self, raw: dict[str, Any]) -> None:
        """A worker's message, by either path (on the client's event loop thread)."""
        msg = message_from_dict(raw)
        if isinstance(msg, Started):  # where the trial runs now (also after a restart)
            self._workers[msg.trial_id] = msg.worker or ""
            if msg.trial_id in self._pending_stops:  # a stop asked before it (re)started
                self._post(msg.trial_id, None, True)
        if msg is not None:
            self._messages.put(msg)

    def _on_direct(self, worker: str, raw: dict[str, Any]) -> None:
        """A message over a worker's direct line: handled as one through the scheduler, and a
        segment's Done that overtook its last results (the future's end travels through the
        scheduler) is let through once they are in."""
        self._on_message(raw)
        if raw.get("type") != "result":
            return
        key = (raw["trial_id"], int(raw["segment_id"]))
        with self._lock:
            self._direct_last[key] = int(raw["result"].get("training_iteration", 0))
            held = self._held.get(key)
            if held is not None and self._direct_last[key] >= held.summary.last_iteration:
                self._messages.put(self._held.pop(key))
                self._held_since.pop(key, None)
                del self._direct_last[key]

    def _direct_closed(self, worker: str) -> None:
        """A worker's line closed (the worker died, say): what it still held back is let
        through, and answers to its trials go through the scheduler."""
        with self._lock:
            for key in [k for k in self._held if self._workers.get(k[0]) == worker]:
                self._messages.put(self._held.pop(key))
                self._held_since.pop(key, None)

    def _on_workers(self, raw: dict[str, Any]) -> None:
        """The scheduler plugin's news (on the client's event loop thread)."""
        workers = dict(self._workers_seen)
        if raw["type"] == "workers":
            workers = dict(raw["workers"])
        elif raw["type"] == "worker_added":
            workers[raw["worker"]] = raw["info"]
        else:
            workers.pop(raw["worker"], None)
        self._set_workers(workers)

    def _on_done(self, fut: Any, segment: Segment) -> None:
        tid, sid = segment.trial_id, segment.segment_id
        if fut.cancelled():
            if fut.key not in self._cancelled:  # not by us: the cluster dropped the task
                self._messages.put(Lost(tid, sid, "the cluster cancelled the task (lost client "
                                                  "or worker)"))
            return
        try:
            summary = fut.result()
        except Exception as exc:  # noqa: BLE001 - the worker died or the task was refused
            self._messages.put(Lost(tid, sid, f"{type(exc).__name__}: {exc}"))
            return
        done = Done(tid, sid, summary)
        key = (tid, sid)
        with self._lock:
            seen = self._direct_last.pop(key, summary.start_iteration)
            on_line = self._listener is not None and \
                self._listener.has_line(self._workers.get(tid))
            if on_line and seen < summary.last_iteration:  # its last results are on the line
                self._held[key] = done
                self._held_since[key] = time.monotonic()
                self._direct_last[key] = seen
                return
        self._messages.put(done)

    def _release_stale(self) -> None:
        """A Done held back for results that never come (a line that broke without closing)
        is let through after :data:`_HOLD_S`: the controller then sees the results it got."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._held_since.items() if now - t > _HOLD_S]:
                self._held_since.pop(key)
                if key in self._held:
                    self._messages.put(self._held.pop(key))

    def poll(self, timeout: float) -> list[Message]:
        if self._held_since:
            self._release_stale()
        out: list[Message] = []
        try:
            out.append(self._messages.get(timeout=timeout) if timeout > 0
                       else self._messages.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def decide(self, trial_id: str, segment_id: int, iteration: int, stop: bool) -> None:
        if stop:
            self._pending_stops.add(trial_id)
        self._post(trial_id, iteration, stop)

    def stop(self, trial_id: str) -> None:
        self._pending_stops.add(trial_id)  # kept: a restarted segment is stopped too
        if trial_id in self._workers:
            self._post(trial_id, None, True)

    def _post(self, trial_id: str, iteration: int | None, stop: bool) -> None:
        """Hand the answer to the trial's worker without waiting: over its direct line when
        it has one, else :func:`_post` run on it through the scheduler; the client's event
        loop sends it, the caller goes on at once."""
        worker = self._workers.get(trial_id)
        client = self.client
        if client is None or not worker:
            return
        listener = self._listener
        message = {"trial_id": trial_id, "iteration": iteration, "stop": stop}

        async def send() -> None:
            if listener is not None and listener.answer(worker, message):
                return
            try:
                await client._run(_post, self.topic, trial_id, iteration, stop, workers=[worker],
                                  wait=False, on_error="ignore")
            except Exception as exc:  # noqa: BLE001 - the worker may be gone; a restart re-sends
                log.warning("answer to %s not delivered to %s: %s", trial_id, worker, exc)

        client.loop.add_callback(send)

    def _set_checkpoint(self, trial_id: str, url: str, iteration: int) -> None:
        """Keep the newest checkpoint in the scheduler's metadata, without waiting."""
        client = self.client
        if client is None:
            return
        keys = [self.topic, "ckpt", trial_id]
        value = {"checkpoint": url, "iteration": iteration}
        client.loop.add_callback(client.scheduler.set_metadata, keys=keys, value=value)

    def kill(self, trial_id: str) -> None:
        """End a trial that does not report (hung): forget its task, restart its worker."""
        fut = self._futures.pop(trial_id, None)
        worker = self._workers.get(trial_id)
        if fut is not None:
            self._cancelled.add(fut.key)
            fut.cancel()
            self._messages.put(Lost(trial_id, self._segment_ids.get(trial_id, -1),
                                    "killed after timeout_s"))
        if worker and self.client is not None:
            try:
                self.client.restart_workers([worker], raise_for_error=False)
            except Exception as exc:  # noqa: BLE001 - a worker without a nanny cannot restart
                log.warning("could not restart worker %s running %s: %s", worker, trial_id, exc)

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        self._set_checkpoint(trial_id, url, iteration)

    def segment_finished(self, trial_id: str) -> None:
        # nothing of a trial between its segments stays here (O(1) per running trial): a
        # stop asked meanwhile is kept by stop() until the next submit, which clears it
        self._futures.pop(trial_id, None)
        self._segment_ids.pop(trial_id, None)
        self._workers.pop(trial_id, None)
        self._pending_stops.discard(trial_id)


#: how long a segment's Done may wait for its last results on a direct line
_HOLD_S = 5.0
_WORKER_EVENTS = frozenset({"workers", "worker_added", "worker_removed"})


def _local_resources(n_workers: int) -> dict[str, float]:
    """What each LocalCluster worker declares: one CPU (its thread), and an equal share of the
    machine's GPUs where torch sees CUDA devices, so trials asking ``gpu: 0.5`` on 2 workers
    and 1 GPU run two at a time."""
    res: dict[str, float] = {"CPU": 1.0}
    gpus = _cuda_device_count()
    if gpus:
        res["GPU"] = gpus / n_workers
    return res


def _cuda_device_count() -> int:
    """CUDA devices, counted without importing torch (seconds) where nvidia-smi answers."""
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _dask_name(name: str) -> str:
    """The Dask worker resource of a spec resource name: ``cpu`` -> ``CPU``, ``gpu`` ->
    ``GPU``, ``custom:<name>`` -> ``<name>`` (what ``dask worker --resources`` declares)."""
    return name.split(":", 1)[1] if name.startswith("custom:") else name.upper()


def _dask_resources(resources: dict[str, float]) -> dict[str, float] | None:
    """A trial's resources (spec names) as a Dask task's ``resources=``."""
    if not resources:
        return None
    return {_dask_name(k.lower()): float(v) for k, v in resources.items() if v}

