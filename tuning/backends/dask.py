"""Dask backend: segments as Dask futures on a LocalCluster, an existing cluster, or one
provisioned for the run from any cluster class (dask-cloudprovider, dask-kubernetes, ...).

Results stream to the driver as they are reported: the worker publishes each one with
``Worker.log_event`` on a topic the driver's client subscribes to. A stop travels the other way
straight to the worker running the trial (``Client.run`` on that worker sets a flag that
``report()`` reads, no round trip per report). The latest checkpoint is kept in the scheduler's
metadata, so a segment the cluster restarts after a worker loss resumes from it. Nothing
assumes a shared file system between driver and workers.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import uuid
from collections.abc import Callable
from typing import Any

from tuning.backends._base import Backend, BackendError
from tuning.trainable import Segment, run_segment

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


#: worker side: (topic, trial id) pairs the driver asked to stop
_STOP_FLAGS: set[tuple[str, str]] = set()


async def _flag_stop(topic: str, trial_id: str) -> None:
    """Runs on the worker's event loop (``Client.run``; a coroutine, so the driver need not wait
    for it): the trial stops at its next ``report()``."""
    _STOP_FLAGS.add((topic, trial_id))


class _DaskChannel:
    """Worker side: talks to the driver through the Dask scheduler."""

    def __init__(self, topic: str, trial_id: str) -> None:
        from distributed import get_worker

        self.worker = get_worker()
        self.topic = topic
        self.trial_id = trial_id
        _STOP_FLAGS.discard((topic, trial_id))

    def started(self, segment: Segment) -> dict[str, Any] | None:
        from distributed import get_client

        self.send({"type": "started", "trial_id": segment.trial_id,
                   "segment_id": segment.segment_id, "worker": self.worker.address,
                   "pid": os.getpid()})
        return get_client().get_metadata([self.topic, "ckpt", self.trial_id], None)

    def send(self, message: dict[str, Any]) -> None:
        self.worker.log_event(self.topic, message)

    def should_stop(self) -> bool:
        return (self.topic, self.trial_id) in _STOP_FLAGS


def _run_on_worker(trainable: Callable[..., Any], segment: dict[str, Any], topic: str) -> dict:
    seg = Segment(**segment)
    return run_segment(trainable, seg, _DaskChannel(topic, seg.trial_id))


class DaskBackend(Backend):
    """``DaskBackend()`` (LocalCluster, a worker process per core), ``DaskBackend(address=...)``
    (an existing cluster, left running) or ``DaskBackend(cluster_class=..., cluster_kwargs=...,
    adapt={"minimum": 0, "maximum": 20})`` (provisioned for the run and closed after it), the
    convention of prefect-dask's ``DaskTaskRunner``."""

    name = "dask"

    def __init__(self, address: str | None = None, cluster_class: str | Callable[..., Any] | None = None,
                 cluster_kwargs: dict[str, Any] | None = None, adapt: dict[str, Any] | None = None,
                 n_workers: int | None = None, max_concurrent: int | None = None,
                 resources: dict[str, float] | None = None, connect_timeout_s: float = 10.0) -> None:
        if address is not None and cluster_class is not None:
            raise ValueError("backend: give either address or cluster_class, not both")
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt = adapt
        self.n_workers = n_workers
        self.max_concurrent = max_concurrent
        self.resources = dict(resources or {})
        self.connect_timeout_s = connect_timeout_s
        self.cluster: Any = None
        self.client: Any = None
        self.topic = f"rungflow-{uuid.uuid4().hex[:12]}"
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._futures: dict[str, Any] = {}
        self._trainable: Any = None
        self._workers: dict[str, str] = {}  # trial id -> address of the worker running it
        self._pending_stops: set[str] = set()
        self._segment_ids: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._owns_cluster = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        from distributed import Client

        try:
            if self.address is not None:
                self.client = Client(self.address, timeout=self.connect_timeout_s)
            else:
                self.cluster = self._make_cluster()
                self._owns_cluster = True
                if self.adapt:
                    self.cluster.adapt(**self.adapt)
                self.client = Client(self.cluster, timeout=self.connect_timeout_s)
        except OSError as exc:
            self.close()
            where = self.address or self.cluster_class or "LocalCluster"
            raise BackendError(f"backend.address: cannot reach the Dask scheduler at {where!r} "
                               f"within {self.connect_timeout_s:g}s ({exc})") from None
        self.client.subscribe_topic(self.topic, self._on_event)
        self._check_resources()

    def _check_resources(self) -> None:
        """A trial that needs more than any worker declares would wait forever: refuse it now.
        (An adaptive cluster may have no worker yet; its workers are checked as they come.)"""
        if not self.resources:
            return
        workers = self.client.scheduler_info().get("workers", {}).values()
        if not workers:
            return
        for key, need in _dask_resources(self.resources).items():
            have = max(w.get("resources", {}).get(key, 0.0) for w in workers)
            if need > have:
                self.close()
                raise BackendError(
                    f"resources.{key.lower()}={need:g}: no worker of this cluster declares that "
                    f"much {key} (the most any worker has: {have:g}); start workers with "
                    f"`--resources {key}=<n>` or ask for less")
    def _make_cluster(self) -> Any:
        if self.cluster_class is None:
            from distributed import LocalCluster

            n = self.n_workers or os.cpu_count() or 1
            kwargs = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                      "host": "127.0.0.1", "dashboard_address": None,
                      "resources": _local_resources(n)}
            kwargs.update(self.cluster_kwargs)
            return LocalCluster(**kwargs)
        cls = import_object(self.cluster_class) if isinstance(self.cluster_class, str) \
            else self.cluster_class
        return cls(**self.cluster_kwargs)

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            try:
                client.unsubscribe_topic(self.topic)
                for fut in self._futures.values():
                    self._cancelled.add(fut.key)
                    fut.cancel()
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("cancelling futures at close: %s", exc)
            client.close()
        if cluster is not None and self._owns_cluster:
            cluster.close()

    # -- capacity --------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        if self.max_concurrent:
            return self.max_concurrent
        if self.adapt and self.adapt.get("maximum"):
            return int(self.adapt["maximum"]) * int(self.cluster_kwargs.get("worker_nthreads", 1)
                                                    or 1)
        info = self.client.scheduler_info()
        total = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
        need = self.resources.get("CPU") or self.resources.get("cpu")
        if need:
            cpus = sum(w.get("resources", {}).get("CPU", w.get("nthreads", 1))
                       for w in info.get("workers", {}).values())
            total = min(total, int(cpus // need)) if cpus else total
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
        self._trainable = trainable

    def submit(self, trainable: Callable[..., Any], segment: Segment) -> None:
        self._workers.pop(segment.trial_id, None)
        self._pending_stops.discard(segment.trial_id)
        if segment.checkpoint:
            self.client.set_metadata([self.topic, "ckpt", segment.trial_id],
                                     {"checkpoint": segment.checkpoint,
                                      "iteration": segment.start_iteration})
        fut = self.client.submit(_run_on_worker, trainable, segment.to_dict(), self.topic,
                                 key=f"{segment.trial_id}-seg{segment.segment_id}-{self.topic}",
                                 pure=False, resources=_dask_resources(segment.resources))
        self._futures[segment.trial_id] = fut
        self._segment_ids[segment.trial_id] = segment.segment_id
        fut.add_done_callback(lambda f, s=segment: self._on_done(f, s))

    def _on_event(self, event: tuple[float, Any]) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "started":  # where the trial runs now (also after a restart)
            tid = msg["trial_id"]
            self._workers[tid] = msg["worker"]
        self._messages.put(msg)

    def _on_done(self, fut: Any, segment: Segment) -> None:
        base = {"trial_id": segment.trial_id, "segment_id": segment.segment_id}
        if fut.cancelled():
            if fut.key not in self._cancelled:  # not by us: the cluster dropped the task
                self._messages.put({**base, "type": "lost",
                                    "error": "the cluster cancelled the task (lost client or "
                                             "worker)"})
            return
        try:
            summary = fut.result()
        except Exception as exc:  # noqa: BLE001 - the worker died or the task was refused
            self._messages.put({**base, "type": "lost", "error": f"{type(exc).__name__}: {exc}"})
            return
        self._messages.put({**base, "type": "done", "summary": summary})

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            out.append(self._messages.get(timeout=timeout))
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                break
        for msg in out:  # a stop asked before the trial (re)started reaches it now
            if msg["type"] == "started" and msg["trial_id"] in self._pending_stops:
                self._send_stop(msg["trial_id"])
        return out

    def stop(self, trial_id: str) -> None:
        self._pending_stops.add(trial_id)  # kept: a restarted segment is stopped too
        if trial_id in self._workers:
            self._send_stop(trial_id)

    def _send_stop(self, trial_id: str) -> None:
        if self.client is None:
            return
        try:
            self.client.run(_flag_stop, self.topic, trial_id, workers=[self._workers[trial_id]],
                            wait=False)
        except Exception as exc:  # noqa: BLE001 - the worker may be gone; a restart re-sends
            log.warning("stop of %s not delivered to %s: %s", trial_id,
                        self._workers.get(trial_id), exc)

    def kill(self, trial_id: str) -> None:
        """End a trial that does not report (hung): forget its task, restart its worker."""
        fut = self._futures.pop(trial_id, None)
        worker = self._workers.get(trial_id)
        if fut is not None:
            self._cancelled.add(fut.key)
            fut.cancel()
            self._messages.put({"type": "lost", "trial_id": trial_id,
                                "segment_id": self._segment_ids.get(trial_id),
                                "error": "killed after timeout_s"})
        if worker is not None and self.client is not None:
            try:
                self.client.restart_workers([worker], raise_for_error=False)
            except Exception as exc:  # noqa: BLE001 - a worker without a nanny cannot restart
                log.warning("could not restart worker %s running %s: %s", worker, trial_id, exc)

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        self.client.set_metadata([self.topic, "ckpt", trial_id],
                                 {"checkpoint": url, "iteration": iteration})

    def segment_finished(self, trial_id: str) -> None:
        self._futures.pop(trial_id, None)


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
    try:
        import torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0


def _dask_resources(resources: dict[str, float]) -> dict[str, float] | None:
    if not resources:
        return None
    return {k.upper(): float(v) for k, v in resources.items() if v}
