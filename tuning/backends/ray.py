"""Ray backend: segments as Ray tasks on a local Ray, an existing cluster, or one launched for
the run with ``ray up`` from a cluster-launcher YAML (and torn down with ``ray down`` after it).

Results stream to the driver as they are reported: each worker sends its messages to a hub, a
Ray actor named ``rungflow-<id>`` for the run, without waiting for them to arrive
(``put.remote``); the driver drains the hub and watches the tasks' refs (``ray.wait``). Stops travel the other way through the same hub
(checked at each ``report()``), and so does the latest checkpoint a restarted segment resumes
from. Nothing assumes a shared file system between driver and workers.

Ray is imported lazily: ``import tuning`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tuning.backends._base import Backend, BackendError
from tuning.trainable import Segment, run_segment

__all__ = ["RayBackend"]

log = logging.getLogger("tuning.backends.ray")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Hub:
    """The run's message hub (a Ray actor): workers put messages, the driver drains them.

    A plain (not async, not threaded) actor: calls from one caller run in the order they were
    made, so a worker's messages reach the driver in order, and once a worker has seen its last
    ``put`` done, the hub holds all of its messages.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.stops: set[str] = set()
        self.checkpoints: dict[str, dict[str, Any]] = {}

    def put(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def drain(self) -> list[dict[str, Any]]:
        out, self.messages = self.messages, []
        return out

    def begin(self, trial_id: str, checkpoint: dict[str, Any] | None) -> None:
        """A new segment of ``trial_id``: forget an old stop, start from its own checkpoint."""
        self.stops.discard(trial_id)
        if checkpoint:
            self.checkpoints[trial_id] = checkpoint
        else:
            self.checkpoints.pop(trial_id, None)

    def stop(self, trial_id: str) -> None:
        self.stops.add(trial_id)

    def should_stop(self, trial_id: str) -> bool:
        return trial_id in self.stops

    def set_checkpoint(self, trial_id: str, checkpoint: dict[str, Any]) -> None:
        self.checkpoints[trial_id] = checkpoint

    def get_checkpoint(self, trial_id: str) -> dict[str, Any] | None:
        return self.checkpoints.get(trial_id)


class _RayChannel:
    """Worker side: talks to the driver through the hub actor."""

    def __init__(self, hub: Any, trial_id: str) -> None:
        self.hub = hub
        self.trial_id = trial_id
        self._last: Any = None

    def started(self, segment: Segment) -> dict[str, Any] | None:
        import ray

        self.send({"type": "started", "trial_id": segment.trial_id,
                   "segment_id": segment.segment_id,
                   "worker": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
        return ray.get(self.hub.get_checkpoint.remote(self.trial_id))

    def send(self, message: dict[str, Any]) -> None:
        self._last = self.hub.put.remote(message)  # no ray.get: the worker does not wait

    def should_stop(self) -> bool:
        import ray

        return bool(ray.get(self.hub.should_stop.remote(self.trial_id)))

    def flush(self) -> None:
        """Wait until the hub holds every message sent (calls from one caller run in order)."""
        import ray

        if self._last is not None:
            ray.get(self._last)


def _run_on_worker(trainable: Callable[..., Any], segment: dict[str, Any], hub: Any) -> dict:
    seg = Segment(**segment)
    channel = _RayChannel(hub, seg.trial_id)
    try:
        return run_segment(trainable, seg, channel)
    finally:
        channel.flush()  # so the driver sees every result before the task's end


class RayBackend(Backend):
    """``RayBackend()`` (a local Ray, one CPU per trial), ``RayBackend(address="auto" |
    "ray://host:10001" | "host:6379")`` (an existing cluster, left running) or
    ``RayBackend(cluster_config="deployments/ray-aws.yaml")`` (``ray up`` before the run,
    ``ray down`` after it)."""

    name = "ray"

    def __init__(self, address: str | None = None, cluster_config: str | None = None,
                 num_cpus: int | None = None, num_gpus: int | None = None,
                 init_kwargs: dict[str, Any] | None = None, connect_timeout_s: float = 10.0,
                 runtime_env: dict[str, Any] | None = None,
                 resources: dict[str, float] | None = None,
                 max_concurrent: int | None = None) -> None:
        if address is not None and cluster_config is not None:
            raise ValueError("backend: give either address or cluster_config, not both")
        if connect_timeout_s <= 0:
            raise ValueError(f"backend.connect_timeout_s must be > 0, got {connect_timeout_s}")
        if (address or cluster_config) and (num_cpus is not None or num_gpus is not None):
            raise ValueError("backend.num_cpus/num_gpus size a local Ray only; an existing or "
                             "launched cluster has its own")
        self.address = address
        self.cluster_config = cluster_config
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.init_kwargs = dict(init_kwargs or {})
        self.connect_timeout_s = float(connect_timeout_s)
        self.runtime_env = runtime_env
        self.resources = {k.lower(): float(v) for k, v in (resources or {}).items()}
        self.max_concurrent = max_concurrent
        self.run_id = f"rungflow-{uuid.uuid4().hex[:12]}"
        self._hub: Any = None
        self._remote: Any = None
        self._trainable_ref: Any = None
        self._trainable: Any = None
        self._refs: dict[Any, Segment] = {}
        self._owns_connection = False
        self._launched = False
        self._slots: tuple[float, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        try:
            if self.cluster_config is not None:
                self._ray_up()
            if ray.is_initialized():
                log.info("Ray already initialised in this process: using that connection")
            else:
                self._connect()
                self._owns_connection = True
            self._hub = ray.remote(_Hub).options(name=self.run_id, num_cpus=0).remote()
            ray.get(self._hub.drain.remote(), timeout=max(self.connect_timeout_s, 30.0))
            self._remote = ray.remote(_run_on_worker)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        import ray

        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if self.runtime_env is not None:
            kwargs["runtime_env"] = self.runtime_env
        address = self.address
        if address is None and not self._launched:
            kwargs.update(num_cpus=self.num_cpus or os.cpu_count() or 1,
                          _node_ip_address="127.0.0.1")
            if self.num_gpus is not None:
                kwargs["num_gpus"] = self.num_gpus
        else:
            address = address or self._launched_address()
            kwargs.pop("include_dashboard")
            host = self._probe(address)
            if host in _LOOPBACK and not address.startswith("ray://"):
                kwargs["_node_ip_address"] = "127.0.0.1"
        kwargs.update(self.init_kwargs)
        if kwargs.get("_node_ip_address") in _LOOPBACK:  # workers on this machine
            kwargs["job_config"] = _with_driver_path(kwargs.get("job_config"))
        try:
            with _loopback_allowed(kwargs.get("_node_ip_address") in _LOOPBACK):
                ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError, OSError, RuntimeError) as exc:
            raise BackendError(f"backend.address: cannot reach the Ray cluster at {address!r} "
                               f"within {self.connect_timeout_s:g}s ({exc})") from None

    def _probe(self, address: str) -> str | None:
        """Fail fast (within connect_timeout_s) on an address nobody listens on."""
        if address == "auto":
            return None
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise BackendError(f"backend.address: {address!r} is not 'auto', 'ray://host:port' "
                               "or 'host:port'")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=self.connect_timeout_s):
                pass
        except OSError as exc:
            raise BackendError(f"backend.address: cannot reach the Ray cluster at {address!r} "
                               f"within {self.connect_timeout_s:g}s ({exc})") from None
        return host

    def close(self) -> None:
        import ray

        try:
            if ray.is_initialized():
                for ref in list(self._refs):
                    with contextlib.suppress(Exception):  # already finished: nothing to do
                        ray.cancel(ref, force=True)
                if self._hub is not None:
                    ray.kill(self._hub)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("Ray backend: cleaning up the run's tasks failed: %s", exc)
        finally:
            self._refs.clear()
            self._hub = self._remote = self._trainable_ref = None
            if self._owns_connection:
                ray.shutdown()
                self._owns_connection = False
            if self._launched:
                self._ray_down()

    # -- cluster launcher ------------------------------------------------------------------
    def _ray_cli(self) -> str:
        here = os.path.join(os.path.dirname(sys.executable), "ray")
        return here if os.path.exists(here) else (shutil.which("ray") or "ray")

    def _ray_up(self) -> None:
        cfg = str(self.cluster_config)
        if not os.path.exists(cfg):
            raise BackendError(f"backend.cluster_config: no such file {cfg!r}")
        log.info("ray up -y %s", cfg)
        self._launched = True  # from here on, close() runs `ray down` whatever happens
        proc = subprocess.run([self._ray_cli(), "up", "-y", "--no-config-cache", cfg],
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BackendError(f"backend.cluster_config: `ray up -y {cfg}` failed "
                               f"(exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)}")

    def _launched_address(self) -> str:
        cfg = str(self.cluster_config)
        proc = subprocess.run([self._ray_cli(), "get-head-ip", cfg], check=False,
                              capture_output=True, text=True)
        ip = (proc.stdout.strip().splitlines() or [""])[-1].strip()
        if proc.returncode != 0 or not ip:
            raise BackendError(f"backend.cluster_config: `ray get-head-ip {cfg}` failed: "
                               f"{_tail(proc.stderr or proc.stdout)}")
        return f"ray://{ip}:10001"

    def _ray_down(self) -> None:
        cfg = str(self.cluster_config)
        log.info("ray down -y %s", cfg)
        self._launched = False
        proc = subprocess.run([self._ray_cli(), "down", "-y", cfg], check=False,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log.error("`ray down -y %s` failed (exit %s); the cluster may still be running: %s",
                      cfg, proc.returncode, _tail(proc.stderr or proc.stdout))

    # -- capacity --------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        if self.max_concurrent:
            return int(self.max_concurrent)
        now = time.monotonic()
        if self._slots is None or now - self._slots[0] > 5.0:
            self._slots = (now, self._count_slots())
        return self._slots[1]

    def _count_slots(self) -> int:
        import ray

        total = ray.cluster_resources()
        cpu, gpu = self.resources.get("cpu", 1.0), self.resources.get("gpu", 0.0)
        counts = []
        if cpu > 0:
            counts.append(math.floor(total.get("CPU", 0) / cpu + 1e-9))
        if gpu > 0:
            counts.append(math.floor(total.get("GPU", 0) / gpu + 1e-9))
        return max(min(counts) if counts else int(total.get("CPU", 1)), 1)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.name, "run_id": self.run_id}
        if self.address:
            d["address"] = self.address
        if self.cluster_config:
            d["cluster_config"] = str(self.cluster_config)
        with contextlib.suppress(Exception):  # description only
            import ray

            if ray.is_initialized():
                d["gcs_address"] = ray.get_runtime_context().gcs_address
        return d

    # -- segments --------------------------------------------------------------------------
    def prepare(self, trainable: Callable[..., Any]) -> None:
        import ray

        self._trainable = trainable
        self._trainable_ref = ray.put(trainable)  # shipped once, not with every segment

    def submit(self, trainable: Callable[..., Any], segment: Segment) -> None:
        if self._trainable_ref is None or trainable is not self._trainable:
            self.prepare(trainable)
        ckpt = ({"checkpoint": segment.checkpoint, "iteration": segment.start_iteration}
                if segment.checkpoint else None)
        self._hub.begin.remote(segment.trial_id, ckpt)
        need = {k.lower(): float(v) for k, v in (segment.resources or self.resources).items()}
        custom = {k.split(":", 1)[1]: v for k, v in need.items() if k.startswith("custom:") and v}
        options: dict[str, Any] = {"num_cpus": need.get("cpu", 1.0),
                                   "num_gpus": need.get("gpu", 0.0), "max_retries": 0,
                                   "retry_exceptions": False,
                                   "name": f"{segment.trial_id}-seg{segment.segment_id}"}
        if custom:
            options["resources"] = custom
        ref = self._remote.options(**options).remote(self._trainable_ref, segment.to_dict(),
                                                     self._hub)
        self._refs[ref] = segment

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        import ray

        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            ready = self._ready(0.0)
            # a finished task's messages reached the hub before it returned: drain after wait
            msgs = ray.get(self._hub.drain.remote())
            out = msgs + [m for m in (self._finish(ref) for ref in ready) if m is not None]
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            if self._refs:
                self._ready(min(left, 0.01), num_returns=1)  # wakes early when a task ends
            else:
                time.sleep(min(left, 0.01))

    def _ready(self, timeout: float, num_returns: int | None = None) -> list[Any]:
        import ray

        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = ray.wait(refs, num_returns=num_returns or len(refs), timeout=timeout,
                            fetch_local=False)
        return ready

    def _finish(self, ref: Any) -> dict[str, Any] | None:
        import ray

        segment = self._refs.pop(ref)
        base = {"trial_id": segment.trial_id, "segment_id": segment.segment_id}
        try:
            summary = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return None
        except Exception as exc:  # noqa: BLE001 - worker or node died, task refused, ...
            return {**base, "type": "lost", "error": f"{type(exc).__name__}: {exc}"}
        return {**base, "type": "done", "summary": summary}

    def stop(self, trial_id: str) -> None:
        if self._hub is not None:
            self._hub.stop.remote(trial_id)

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        if self._hub is not None:
            self._hub.set_checkpoint.remote(trial_id, {"checkpoint": url, "iteration": iteration})


def _with_driver_path(job_config: Any) -> Any:
    """Workers on this machine import what the driver imports: its sys.path entries outside
    the Python installation (the project, a test directory), as a LocalCluster's workers do.
    Ray itself adds only the script's directory and the working directory."""
    from ray.job_config import JobConfig

    job_config = job_config or JobConfig()
    if not hasattr(job_config, "_py_driver_sys_path"):  # pragma: no cover - other Ray versions
        return job_config
    prefixes = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    extra = [os.path.realpath(p or os.getcwd()) for p in sys.path]
    extra = [p for p in dict.fromkeys(extra) if os.path.isdir(p) and not p.startswith(prefixes)]
    job_config._py_driver_sys_path.extend(p for p in extra
                                          if p not in job_config._py_driver_sys_path)
    return job_config


@contextlib.contextmanager
def _loopback_allowed(on: bool) -> Iterator[None]:
    """Let a node live on 127.0.0.1: Ray otherwise swaps a loopback ``_node_ip_address`` for
    the machine's routable address (what it does on macOS/Windows, where clusters are off)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without the constant
        on = False
    if not on or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _tail(text: str, n: int = 800) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]
