"""A simulated backend with a virtual clock: schedulers tested and compared in milliseconds.

Trials are learning curves stepped by a :class:`SimulatedTrainable`; each iteration costs
virtual seconds. The controller, scheduler and searcher code is exactly the one used on Dask
and Ray: only the clock and the executor differ. Every iteration is checkpointed (the
checkpoint is the curve's small state), so pausing, resuming and PBT's exploit work.

Example:
    >>> from tuning.backends.simulated import SimulatedBackend, CrossingCurves
    >>> backend = SimulatedBackend(n_workers=4)
    >>> curves = CrossingCurves(max_t=27)
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuning._trial import ITERATION
from tuning.backends._base import Backend, Done, Message, Result, Started
from tuning.trainable import Segment, SegmentSummary

__all__ = [
    "CrossingCurves",
    "RealisticCurves",
    "SimulatedBackend",
    "SimulatedTrainable",
    "TabulatedCurves",
]


class SimulatedTrainable:
    """A learning curve in steps: ``init(config) -> state``, ``step(state, config, t) ->
    (state, metrics, cost_s)``. States are small JSON-able dicts (they are the checkpoints)."""

    max_t: int = 100

    def init(self, config: dict[str, Any]) -> dict[str, Any]:
        return {}

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        raise NotImplementedError

    def cost(self, state: dict[str, Any], config: dict[str, Any], t: int) -> float:
        """Virtual seconds iteration ``t`` takes (the default steps a copy to find out)."""
        return self.step(dict(state), config, t)[2]

    def __call__(self, config: dict[str, Any]) -> None:  # pragma: no cover - sim only
        raise TypeError("a SimulatedTrainable runs on backend={'type': 'simulated'} only")


@dataclass
class CrossingCurves(SimulatedTrainable):
    """Synthetic multi-fidelity benchmark whose curves cross (slow learners end higher).

    Config: ``lr`` (log-uniform, best near ``1e-2``) and ``momentum`` (uniform 0..1). A trial's
    accuracy rises as ``final * (1 - exp(-rate * t))``; higher ``lr`` learns faster but ends
    lower beyond the optimum, so early rankings are misleading, as in real training. The rate
    follows the *current* config, so PBT's mid-run changes matter.
    """

    max_t: int = 81
    cost_s: float = 1.0
    noise: float = 0.005
    metric: str = "accuracy"

    def init(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"progress": 0.0}

    def final(self, config: dict[str, Any]) -> float:
        lr, mom = float(config.get("lr", 1e-2)), float(config.get("momentum", 0.5))
        return 0.95 - 0.08 * (math.log10(lr) + 2.0) ** 2 - 0.15 * (mom - 0.7) ** 2

    def rate(self, config: dict[str, Any]) -> float:
        lr = float(config.get("lr", 1e-2))
        return 0.02 * (lr / 1e-3) ** 0.6

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        progress = state["progress"] + self.rate(config)
        rng = np.random.default_rng(abs(hash((round(progress, 9), t))) % (2**32))
        acc = self.final(config) * (1.0 - math.exp(-progress)) + self.noise * rng.standard_normal()
        return {"progress": progress}, {self.metric: float(acc)}, self.cost_s

    def cost(self, state: dict[str, Any], config: dict[str, Any], t: int) -> float:
        return self.cost_s


@dataclass
class RealisticCurves(CrossingCurves):
    """Synthetic multi-fidelity benchmark whose curves cross only early (rankings mostly hold).

    Same config space as :class:`CrossingCurves`: ``lr`` (log-uniform, best at ``1e-2``) and
    ``momentum`` (uniform 0..1, best at 0.7). Accuracy rises as ``final * (1 - exp(-rate * t))``
    with ``rate = 0.1 * (lr / 1e-3) ** 0.7``: a higher ``lr`` learns faster, so during the first
    few iterations ``lr`` above the optimum leads; ``final`` penalizes a too-high ``lr`` more
    (``0.15 * x**2`` with ``x = log10(lr) + 2``) than a too-low one (``0.03 * x**2``), so by
    ``t ~ 9`` the best configs are nearly in their final order, as in real training where
    rankings at moderate budgets correlate with final ones. With ``max_t=81``, over random
    configs, the Spearman correlation of accuracy at ``t=9`` with ``t=81`` is about 0.7 (see
    ``benchmarks/algorithms.py``, which measures it). The rate follows the *current* config.

    Example:
        >>> c = RealisticCurves(noise=0.0)
        >>> best = {"lr": 1e-2, "momentum": 0.7}
        >>> round(c.final(best), 3), round(c.final({"lr": 1e-1, "momentum": 0.7}), 3)
        (0.95, 0.8)
    """

    def final(self, config: dict[str, Any]) -> float:
        lr, mom = float(config.get("lr", 1e-2)), float(config.get("momentum", 0.5))
        x = math.log10(lr) + 2.0
        return 0.95 - (0.15 if x > 0 else 0.03) * x ** 2 - 0.15 * (mom - 0.7) ** 2

    def rate(self, config: dict[str, Any]) -> float:
        lr = float(config.get("lr", 1e-2))
        return 0.1 * (lr / 1e-3) ** 0.7


@dataclass
class TabulatedCurves(SimulatedTrainable):
    """Curves from a table: ``curves[config[key]] = [metric at t=1, t=2, ...]``."""

    curves: dict[Any, list[float]]
    key: str = "curve"
    metric: str = "score"
    cost_s: float = 1.0

    def __post_init__(self) -> None:
        self.max_t = max(len(c) for c in self.curves.values())

    def init(self, config: dict[str, Any]) -> dict[str, Any]:
        return {}

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        curve = self.curves[config[self.key]]
        return state, {self.metric: float(curve[min(t, len(curve)) - 1])}, self.cost_s

    def cost(self, state: dict[str, Any], config: dict[str, Any], t: int) -> float:
        return self.cost_s


def checkpoint_url(trial_id: str, iteration: int, state: dict[str, Any]) -> str:
    """A simulated checkpoint: the curve's (small) state travels in its URL, so the backend
    stores nothing per checkpoint and its snapshot stays O(running trials).

    Example:
        >>> url = checkpoint_url("trial-001", 3, {"progress": 0.25})
        >>> url, checkpoint_state(url)
        ('sim://trial-001/3#{"progress":0.25}', {'progress': 0.25})
    """
    return f"sim://{trial_id}/{iteration}#{json.dumps(state, separators=(',', ':'))}"


def checkpoint_state(url: str) -> dict[str, Any]:
    """The curve state of a :func:`checkpoint_url`."""
    _, sep, blob = url.partition("#")
    if not sep:
        raise ValueError(f"not a simulated checkpoint: {url!r}")
    return dict(json.loads(blob))


@dataclass
class _Running:
    segment: Segment
    state: dict[str, Any]
    iteration: int
    started_at: float
    stop_requested: bool = False  # seen after the next iteration
    stop_now: bool = False  # a STOP at a decision point: no further iteration
    gen: int = 0  # heap entries of an older generation are stale


class SimulatedBackend(Backend):
    """Runs :class:`SimulatedTrainable` curves on ``n_workers`` virtual workers.

    A STOP answering a decision point (:meth:`decide`) ends the segment at once, before its
    next iteration, as ``report()`` does on Dask and Ray; a STOP sent otherwise
    (:meth:`stop`) is seen after the next iteration, as a running trial sees it.

    ``restore_running=True`` (the default): a restored backend (:meth:`load_state_dict`) goes
    on with the segments that were running, exactly. ``False``: they are lost with the driver,
    as on a real cluster, and the controller resubmits their trials from their checkpoints
    (which survive, as files on storage do).
    """

    name = "simulated"
    virtual_clock = True

    def __init__(self, n_workers: int = 4, time_scale: float = 0.0,
                 restore_running: bool = True) -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"backend.n_workers must be an integer >= 1, got {n_workers!r}")
        self.n_workers = n_workers
        self.restore_running = restore_running
        self.time_scale = time_scale  # > 0: sleep time_scale real seconds per virtual second
        self.now = 0.0
        self._heap: list[tuple[float, int, str, int]] = []
        self._running: dict[str, _Running] = {}
        self._trainable: SimulatedTrainable | None = None
        self._tiebreak = 0

    @property
    def slots(self) -> int:
        return self.n_workers

    def clock(self) -> float:
        return self.now

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "n_workers": self.n_workers}

    def prepare(self, trainable: Callable[..., Any]) -> None:
        if not isinstance(trainable, SimulatedTrainable):
            raise TypeError("backend 'simulated' runs SimulatedTrainable curves, got "
                            f"{type(trainable).__name__}")
        self._trainable = trainable

    def submit(self, segment: Segment) -> None:
        trainable = self._curves()
        if segment.checkpoint is not None:
            state = checkpoint_state(segment.checkpoint)
        else:
            state = trainable.init(segment.config)
        self._running[segment.trial_id] = _Running(segment, state, segment.start_iteration, self.now)
        self._schedule(segment.trial_id, segment.config)

    def _curves(self) -> SimulatedTrainable:
        if self._trainable is None:
            raise RuntimeError("SimulatedBackend.submit before prepare()")
        return self._trainable

    def _schedule(self, trial_id: str, config: dict[str, Any], delay: float | None = None) -> None:
        run = self._running[trial_id]
        if delay is None:
            delay = self._curves().cost(run.state, config, run.iteration + 1)
        self._tiebreak += 1
        run.gen += 1
        heapq.heappush(self._heap, (self.now + delay, self._tiebreak, trial_id, run.gen))

    def stop(self, trial_id: str) -> None:
        if trial_id in self._running:
            self._running[trial_id].stop_requested = True

    def decide(self, trial_id: str, segment_id: int, iteration: int, stop: bool) -> None:
        run = self._running.get(trial_id)
        if stop and run is not None and run.segment.segment_id == segment_id:
            run.stop_now = True
            self._schedule(trial_id, run.segment.config, delay=0.0)  # ends now, untrained

    def poll(self, timeout: float) -> list[Message]:
        while self._heap:
            when, _, trial_id, gen = heapq.heappop(self._heap)
            run = self._running.get(trial_id)
            if run is None or run.gen != gen:
                continue  # superseded by a STOP at a decision point
            if self.time_scale > 0:
                import time

                time.sleep(max(0.0, when - self.now) * self.time_scale)
            self.now = when
            return self._advance(run)
        return []

    def _advance(self, run: _Running) -> list[Message]:
        seg, trainable = run.segment, self._curves()
        trial_id = seg.trial_id
        out: list[Message] = []
        if run.iteration == seg.start_iteration:
            out.append(Started(trial_id, seg.segment_id))
        if run.stop_now:
            return out + [self._end(run, "stopped")]
        run.state, metrics, _ = trainable.step(run.state, seg.config, run.iteration + 1)
        run.iteration += 1
        url = checkpoint_url(trial_id, run.iteration, run.state)
        result = {**metrics, ITERATION: run.iteration, "time_total_s": self.now - run.started_at
                  + seg.time_offset_s, "checkpoint": url}
        t = float(result.get(seg.time_attr, 0))  # type: ignore[arg-type]
        awaits = seg.is_decision_point(t) and self._segment_status(run, result,
                                                                          trainable) is None
        out.append(Result(trial_id, seg.segment_id, result, awaits))
        status = self._segment_status(run, result, trainable)
        if status is None:
            self._schedule(trial_id, seg.config)
            return out
        return out + [self._end(run, status)]

    def _end(self, run: _Running, status: str) -> Done:
        seg = run.segment
        del self._running[seg.trial_id]
        url = checkpoint_url(seg.trial_id, run.iteration, run.state) if run.iteration \
            else seg.checkpoint
        summary = SegmentSummary(status=status, trial_id=seg.trial_id,
                                 segment_id=seg.segment_id, last_iteration=run.iteration,
                                 checkpoint=url, checkpoint_iteration=run.iteration,
                                 start_iteration=seg.start_iteration)
        return Done(seg.trial_id, seg.segment_id, summary)

    @staticmethod
    def _segment_status(run: _Running, result: dict[str, Any],
                        trainable: SimulatedTrainable) -> str | None:
        seg = run.segment
        t = result.get(seg.time_attr, 0)
        if seg.max_t is not None and t >= seg.max_t:
            return "finished"
        if seg.pause_at is not None and t >= seg.pause_at:
            return "paused"
        if run.stop_requested:
            return "stopped"
        if run.iteration >= trainable.max_t:
            return "returned"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"now": self.now, "tiebreak": self._tiebreak, "heap": [list(h) for h in self._heap],
                "running": {k: {"segment": r.segment.to_dict(), "state": r.state,
                                "iteration": r.iteration, "started_at": r.started_at,
                                "stop_requested": r.stop_requested, "stop_now": r.stop_now,
                                "gen": r.gen}
                            for k, r in self._running.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now, self._tiebreak = state["now"], state["tiebreak"]
        self._heap = [(float(h[0]), int(h[1]), str(h[2]), int(h[3]) if len(h) > 3 else 0)
                      for h in state["heap"]]
        heapq.heapify(self._heap)
        self._running = {k: _Running(Segment(**r["segment"]), r["state"], r["iteration"],
                                     r["started_at"], r["stop_requested"],
                                     bool(r.get("stop_now")), int(r.get("gen", 0)))
                         for k, r in state["running"].items()}
        if not self.restore_running:  # the segments died with the driver; checkpoints stay
            self._running.clear()
            self._heap.clear()

    def running_trials(self) -> set[str]:
        return set(self._running)
