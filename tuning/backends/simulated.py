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
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuning._trial import ITERATION
from tuning.backends._base import Backend
from tuning.trainable import Segment

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


@dataclass
class _Running:
    segment: Segment
    state: dict[str, Any]
    iteration: int
    started_at: float
    stop_requested: bool = False


class SimulatedBackend(Backend):
    """Runs :class:`SimulatedTrainable` curves on ``n_workers`` virtual workers."""

    name = "simulated"
    virtual_clock = True

    def __init__(self, n_workers: int = 4, time_scale: float = 0.0) -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"backend.n_workers must be an integer >= 1, got {n_workers!r}")
        self.n_workers = n_workers
        self.time_scale = time_scale  # > 0: sleep time_scale real seconds per virtual second
        self.now = 0.0
        self._heap: list[tuple[float, int, str]] = []
        self._running: dict[str, _Running] = {}
        self._checkpoints: dict[str, dict[str, Any]] = {}
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

    def submit(self, trainable: Callable[..., Any], segment: Segment) -> None:
        self.prepare(trainable)
        if segment.checkpoint is not None:
            state = dict(self._checkpoints[segment.checkpoint])
        else:
            state = trainable.init(segment.config)
        self._running[segment.trial_id] = _Running(segment, state, segment.start_iteration, self.now)
        self._schedule(segment.trial_id, segment.config)

    def _schedule(self, trial_id: str, config: dict[str, Any]) -> None:
        run = self._running[trial_id]
        assert self._trainable is not None
        _, _, cost = self._trainable.step(dict(run.state), config, run.iteration + 1)
        self._tiebreak += 1
        heapq.heappush(self._heap, (self.now + cost, self._tiebreak, trial_id))

    def stop(self, trial_id: str) -> None:
        if trial_id in self._running:
            self._running[trial_id].stop_requested = True

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        if not self._heap:
            return []
        when, _, trial_id = heapq.heappop(self._heap)
        if self.time_scale > 0:
            import time

            time.sleep(max(0.0, when - self.now) * self.time_scale)
        self.now = when
        return self._advance(trial_id)

    def _advance(self, trial_id: str) -> list[dict[str, Any]]:
        run = self._running[trial_id]
        seg, trainable = run.segment, self._trainable
        assert trainable is not None
        out: list[dict[str, Any]] = []
        if run.iteration == seg.start_iteration:
            out.append({"type": "started", "trial_id": trial_id, "segment_id": seg.segment_id})
        run.state, metrics, _ = trainable.step(run.state, seg.config, run.iteration + 1)
        run.iteration += 1
        url = f"sim://{trial_id}/{run.iteration}"
        self._checkpoints[url] = dict(run.state)
        result = {**metrics, ITERATION: run.iteration, "time_total_s": self.now - run.started_at
                  + seg.time_offset_s, "checkpoint": url}
        out.append({"type": "result", "trial_id": trial_id, "segment_id": seg.segment_id,
                    "result": result})
        status = self._segment_status(run, result, trainable)
        if status is None:
            self._schedule(trial_id, seg.config)
            return out
        del self._running[trial_id]
        summary = {"status": status, "trial_id": trial_id, "segment_id": seg.segment_id,
                   "results": [], "checkpoint": url, "checkpoint_iteration": run.iteration,
                   "error": None, "start_iteration": seg.start_iteration}
        out.append({"type": "done", "trial_id": trial_id, "segment_id": seg.segment_id,
                    "summary": summary})
        return out

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
                                "stop_requested": r.stop_requested}
                            for k, r in self._running.items()},
                "checkpoints": self._checkpoints}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now, self._tiebreak = state["now"], state["tiebreak"]
        self._heap = [tuple(h) for h in state["heap"]]  # type: ignore[misc]
        heapq.heapify(self._heap)
        self._running = {k: _Running(Segment(**r["segment"]), r["state"], r["iteration"],
                                     r["started_at"], r["stop_requested"])
                         for k, r in state["running"].items()}
        self._checkpoints = dict(state["checkpoints"])

    @property
    def running(self) -> set[str]:
        return set(self._running)
