"""Ray backend: segments as Ray tasks on a local Ray, an existing cluster, or one launched for
the run with ``ray up`` from a cluster-launcher YAML (and torn down with ``ray down`` after it).

Results stream to the driver as they are reported: each worker sends its messages to a hub, an
async Ray actor named ``rungflow-<id>`` for the run, without waiting for them to arrive
(``put.remote``); the driver drains the hub and watches the tasks' refs (``ray.wait``). Answers
travel the other way through the same hub, and no ``report()`` blocks on them but at a
decision point: each ``put`` returns whether the trial has been asked to stop, which the next
``report()`` reads from the refs already back (``ray.wait(..., timeout=0)``); at a decision
point ``report()`` makes one blocking call, ``await_decision``, which the hub answers as soon
as the driver's ``decide`` reaches it (the driver never waits for that delivery). The
trainable is ``ray.put`` once per run; a hung trial is ended with ``ray.cancel(force=True)``.
Nothing assumes a shared file system between driver and workers.

Ray is imported lazily: ``import tuning`` stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tuning.backends._base import Backend, BackendError, Done, Lost, Message, message_from_dict
from tuning.trainable import Segment, SegmentSummary, run_segment

__all__ = ["RayBackend"]

log = logging.getLogger("tuning.backends.ray")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

_Key = tuple[str, int]  # (trial id, segment id)


class _Hub:
    """The run's message hub (an async Ray actor): workers put messages, the driver drains
    them and answers.

    An async actor, so that a ``report()`` waiting for its decision (``await_decision``) does
    not hold up anyone else's calls. Ray runs an async actor's calls out of order, so each
    segment numbers its messages and the hub hands them to the driver in that order (a message
    that overtook an earlier one waits for it). No method awaits before it has updated the
    state, so each call's effect is atomic on the actor's event loop.

    Everything is keyed by (trial id, segment id): calls from the driver may be reordered too,
    and a stop, an answer or a checkpoint must reach only the segment it was meant for.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.next_seq: dict[_Key, int] = {}
        self.held: dict[_Key, dict[int, dict[str, Any]]] = {}
        self.stops: set[_Key] = set()
        self.answers: dict[_Key, tuple[int, bool]] = {}  # -> (iteration, stop)
        self.checkpoints: dict[_Key, dict[str, Any]] = {}
        self.changed: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self.changed is None:  # made on the actor's event loop, where it is used
            self.changed = asyncio.Condition()
        return self.changed

    async def put(self, seq: int, message: dict[str, Any]) -> bool:
        """Take the ``seq``-th message of its segment; True when the trial is to stop."""
        key = (message["trial_id"], message["segment_id"])
        expected = self.next_seq.get(key, 0)
        if seq != expected:
            self.held.setdefault(key, {})[seq] = message
            return key in self.stops
        self.messages.append(message)
        expected += 1
        held = self.held.get(key)
        while held and expected in held:
            self.messages.append(held.pop(expected))
            expected += 1
        if held is not None and not held:
            del self.held[key]
        self.next_seq[key] = expected
        return key in self.stops

    async def drain(self) -> list[dict[str, Any]]:
        out, self.messages = self.messages, []
        return out

    async def stop(self, trial_id: str, segment_id: int) -> None:
        self.stops.add((trial_id, segment_id))
        await self._notify()

    async def decide(self, trial_id: str, segment_id: int, iteration: int, stop: bool) -> None:
        key = (trial_id, segment_id)
        got = self.answers.get(key)
        if got is None or iteration >= got[0]:
            self.answers[key] = (iteration, stop)
        if stop:
            self.stops.add(key)
        await self._notify()

    async def _notify(self) -> None:
        cond = self._cond()
        async with cond:
            cond.notify_all()

    def _answer(self, key: _Key, iteration: int) -> bool | None:
        if key in self.stops:
            return True
        got = self.answers.get(key)
        if got is not None and got[0] >= iteration:
            return got[1]
        return None

    async def await_decision(self, trial_id: str, segment_id: int, iteration: int,
                             timeout: float) -> bool | None:
        """The driver's answer on the result of ``iteration``: True to stop, False to go on,
        None when none came within ``timeout`` seconds."""
        key = (trial_id, segment_id)
        answer = self._answer(key, iteration)
        if answer is not None:
            return answer
        cond = self._cond()
        try:
            async with cond:
                await asyncio.wait_for(
                    cond.wait_for(lambda: self._answer(key, iteration) is not None), timeout)
        except asyncio.TimeoutError:
            return None
        return self._answer(key, iteration)

    async def set_checkpoint(self, trial_id: str, segment_id: int,
                             checkpoint: dict[str, Any]) -> None:
        key = (trial_id, segment_id)
        got = self.checkpoints.get(key)
        if got is None or int(checkpoint.get("iteration", 0)) >= int(got.get("iteration", 0)):
            self.checkpoints[key] = checkpoint

    async def get_checkpoint(self, trial_id: str, segment_id: int) -> dict[str, Any] | None:
        return self.checkpoints.get((trial_id, segment_id))

    async def forget(self, trial_id: str, segment_id: int) -> None:
        """The driver is done with the segment."""
        key = (trial_id, segment_id)
        for table in (self.next_seq, self.held, self.answers, self.checkpoints):
            table.pop(key, None)
        self.stops.discard(key)


class _RayChannel:
    """Worker side: talks to the driver through the hub actor; blocks only at decision
    points (and once at the start, for the newest checkpoint)."""

    def __init__(self, hub: Any, segment: Segment) -> None:
        self.hub = hub
        self.trial_id = segment.trial_id
        self.segment_id = segment.segment_id
        self.seq = 0
        self._pending: list[Any] = []  # puts whose answer (stop or not) is not read yet
        self._stop = False

    def started(self, segment: Segment) -> dict[str, Any] | None:
        import ray

        self.send({"type": "started", "trial_id": segment.trial_id,
                   "segment_id": segment.segment_id,
                   "worker": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
        return ray.get(self.hub.get_checkpoint.remote(self.trial_id, self.segment_id))

    def send(self, message: dict[str, Any]) -> None:
        # no ray.get: the worker does not wait; put's answer is read later by should_stop
        self._pending.append(self.hub.put.remote(self.seq, message))
        self.seq += 1

    def should_stop(self) -> bool:
        """Whether a put already answered says stop: never waits."""
        import ray

        if self._stop or not self._pending:
            return self._stop
        ready, self._pending = ray.wait(self._pending, num_returns=len(self._pending),
                                        timeout=0, fetch_local=True)
        if ready and any(ray.get(ready)):
            self._stop = True
        return self._stop

    def wait_decision(self, iteration: int, timeout: float) -> bool | None:
        import ray

        ref = self.hub.await_decision.remote(self.trial_id, self.segment_id, iteration, timeout)
        try:
            stop = ray.get(ref, timeout=timeout + 10.0)
        except Exception as exc:  # noqa: BLE001 - the hub (the driver) is gone or stalled
            log.warning("no decision for %s at iteration %s: %s", self.trial_id, iteration, exc)
            return None
        if stop:
            self._stop = True
        return stop

    def flush(self) -> None:
        """Wait until the hub holds every message sent."""
        import ray

        if self._pending:
            ray.get(self._pending)
            self._pending = []


def _run_on_worker(trainable: Callable[..., Any], segment: dict[str, Any],
                   hub: Any) -> SegmentSummary:
    seg = Segment(**segment)
    channel = _RayChannel(hub, seg)
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
                 resources: dict[str, float] | None = None) -> None:
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
        self.run_id = f"rungflow-{uuid.uuid4().hex[:12]}"
        self._hub: Any = None
        self._remote: Any = None
        self._trainable_ref: Any = None
        self._trainable: Any = None
        self._refs: dict[Any, Segment] = {}  # running task -> its segment
        self._tasks: dict[str, Any] = {}  # trial id -> its running task's ref
        self._segment_ids: dict[str, int] = {}  # trial id -> its current segment
        self._lost: list[Message] = []  # delivered by the next poll (a killed trial)
        self._owns_connection = False
        self._launched = False
        self._slots: tuple[float, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def begin_start(self) -> None:
        """Ray starts in the thread that will use it (``ray.init`` from another thread leaves
        the driver unable to reach its GCS): :meth:`finish_start` starts it then."""

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
            self._tasks.clear()
            self._segment_ids.clear()
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
        return f"ray://{ip}:{_client_server_port(cfg)}"

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
        """Ship the trainable once (``ray.put``), not with every segment."""
        import ray

        self._trainable = trainable
        self._trainable_ref = ray.put(trainable)

    def submit(self, segment: Segment) -> None:
        if self._trainable_ref is None:
            raise RuntimeError("RayBackend.submit() before prepare(trainable)")
        tid = segment.trial_id
        need = {k.lower(): float(v) for k, v in (segment.resources or self.resources).items()}
        custom = {k.split(":", 1)[1]: v for k, v in need.items() if k.startswith("custom:") and v}
        options: dict[str, Any] = {"num_cpus": need.get("cpu", 1.0),
                                   "num_gpus": need.get("gpu", 0.0), "max_retries": 0,
                                   "retry_exceptions": False,
                                   "name": f"{tid}-seg{segment.segment_id}"}
        if custom:
            options["resources"] = custom
        ref = self._remote.options(**options).remote(self._trainable_ref, segment.to_dict(),
                                                     self._hub)
        self._refs[ref] = segment
        self._tasks[tid] = ref
        self._segment_ids[tid] = segment.segment_id

    def poll(self, timeout: float) -> list[Message]:
        import ray

        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            ready = self._ready(0.0)
            # a finished task's messages reached the hub before it returned: drain after wait
            raw = ray.get(self._hub.drain.remote())
            out: list[Message] = [m for m in map(message_from_dict, raw) if m is not None]
            out += [m for m in map(self._finish, ready) if m is not None]
            if self._lost:
                out += self._lost
                self._lost = []
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

    def _finish(self, ref: Any) -> Message | None:
        import ray

        segment = self._refs.pop(ref, None)
        if segment is None:  # killed by us: its Lost is already on its way
            return None
        tid, sid = segment.trial_id, segment.segment_id
        if self._tasks.get(tid) is ref:
            del self._tasks[tid]
        try:
            summary = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return Lost(tid, sid, "the cluster cancelled the task")
        except Exception as exc:  # noqa: BLE001 - worker or node died, task refused, ...
            return Lost(tid, sid, f"{type(exc).__name__}: {exc}")
        if not isinstance(summary, SegmentSummary):
            return Lost(tid, sid, f"the task returned {type(summary).__name__}, not a summary")
        return Done(tid, sid, summary)

    def decide(self, trial_id: str, segment_id: int, iteration: int, stop: bool) -> None:
        if self._hub is not None:
            self._hub.decide.remote(trial_id, segment_id, iteration, stop)  # no ray.get

    def stop(self, trial_id: str) -> None:
        sid = self._segment_ids.get(trial_id)
        if self._hub is not None and sid is not None:
            self._hub.stop.remote(trial_id, sid)

    def kill(self, trial_id: str) -> None:
        """End a trial that does not report (hung): force-cancel its task (Ray kills the worker
        process running it) and deliver a :class:`Lost` for its segment, once: the task's
        ``TaskCancelledError`` is never reported (its ref is forgotten here)."""
        import ray

        ref = self._tasks.pop(trial_id, None)
        if ref is None:
            return
        segment = self._refs.pop(ref, None)
        with contextlib.suppress(Exception):  # already finished: nothing to cancel
            ray.cancel(ref, force=True)
        if segment is not None:
            self._lost.append(Lost(trial_id, segment.segment_id, "killed after timeout_s"))

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        sid = self._segment_ids.get(trial_id)
        if self._hub is not None and sid is not None:
            self._hub.set_checkpoint.remote(trial_id, sid,
                                            {"checkpoint": url, "iteration": iteration})

    def segment_finished(self, trial_id: str) -> None:
        sid = self._segment_ids.pop(trial_id, None)
        self._tasks.pop(trial_id, None)
        if self._hub is not None and sid is not None:
            self._hub.forget.remote(trial_id, sid)


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


def _client_server_port(cluster_config: str) -> int:
    """The Ray Client port a launched head listens on: ``--ray-client-server-port`` in the
    cluster YAML's ``head_start_ray_commands``, else Ray's default (10001)."""
    import yaml

    try:
        with open(cluster_config, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return _RAY_CLIENT_PORT
    commands = cfg.get("head_start_ray_commands") if isinstance(cfg, dict) else None
    for cmd in commands or []:
        m = re.search(r"--ray-client-server-port[= ](\d+)", str(cmd))
        if m:
            return int(m.group(1))
    return _RAY_CLIENT_PORT


_RAY_CLIENT_PORT = 10001


def _tail(text: str, n: int = 800) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]
