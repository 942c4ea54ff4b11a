"""A two-objective synthetic multi-fidelity problem with a known Pareto front, for the simulated
backend: accuracy (max) learned over iterations against a latency (min) fixed by the model's
size.

Config: ``width`` (uniform 0..1: the model's size), ``lr`` (log-uniform, best at ``1e-2``) and
``momentum`` (uniform 0..1, best at 0.7). Per iteration the trial reports

* ``accuracy = final * (1 - exp(-progress)) + N(0, noise)``, ``progress`` the sum of
  ``rate(lr) = 0.1 (lr / 1e-3) ** 0.7`` over the iterations so far (a larger ``lr`` learns
  faster: early rankings mislead for a few iterations, as in
  :class:`~tuning.backends.simulated.RealisticCurves`); with ``crossing=False`` the rate is
  0.1 for every config, so curves never cross and early rankings hold (up to the noise);
  ``final = capacity(width) - c (log10(lr) + 2) ** 2 - 0.15 (momentum - 0.7) ** 2`` with
  ``c = 0.15`` above the best ``lr`` and ``0.03`` below, and
  ``capacity(width) = 0.70 + 0.25 (1 - (1 - width) ** 2)`` (0.70 .. 0.95);
* ``latency_ms = 2 + 18 * width ** 1.5`` (2 .. 20 ms), the same at every iteration.

The Pareto front of the final values is therefore known: ``lr = 1e-2, momentum = 0.7`` and
any width, the curve ``(capacity(w), latency(w))`` for ``w`` in 0..1 (:func:`true_front`).

Example:
    >>> c = TradeoffCurves(noise=0.0)
    >>> best = {"width": 1.0, "lr": 1e-2, "momentum": 0.7}
    >>> round(c.final(best), 3), c.latency(best)
    (0.95, 20.0)
    >>> [(round(a, 3), round(ms, 2)) for a, ms in true_front(3)]
    [(0.7, 2.0), (0.887, 8.36), (0.95, 20.0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuning.backends.simulated import SimulatedTrainable

__all__ = ["TradeoffCurves", "capacity", "latency_of", "true_front"]


def capacity(width: float) -> float:
    """The best final accuracy a model of this width reaches."""
    return 0.70 + 0.25 * (1.0 - (1.0 - width) ** 2)


def latency_of(width: float) -> float:
    """Milliseconds per inference of a model of this width."""
    return 2.0 + 18.0 * width ** 1.5


def true_front(n: int = 10001) -> list[tuple[float, float]]:
    """``n`` points ``(accuracy, latency_ms)`` of the known Pareto front, width 0..1."""
    return [(capacity(float(w)), latency_of(float(w))) for w in np.linspace(0.0, 1.0, n)]


@dataclass
class TradeoffCurves(SimulatedTrainable):
    """Accuracy learned over ``max_t`` iterations against a fixed latency (module docstring)."""

    max_t: int = 81
    cost_s: float = 1.0
    noise: float = 0.005
    crossing: bool = True

    def init(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"progress": 0.0}

    def final(self, config: dict[str, Any]) -> float:
        lr, mom = float(config.get("lr", 1e-2)), float(config.get("momentum", 0.7))
        x = math.log10(lr) + 2.0
        return capacity(float(config.get("width", 0.5))) - (0.15 if x > 0 else 0.03) * x ** 2 \
            - 0.15 * (mom - 0.7) ** 2

    def rate(self, config: dict[str, Any]) -> float:
        if not self.crossing:
            return 0.1
        return 0.1 * (float(config.get("lr", 1e-2)) / 1e-3) ** 0.7

    def latency(self, config: dict[str, Any]) -> float:
        return latency_of(float(config.get("width", 0.5)))

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        progress = state["progress"] + self.rate(config)
        rng = np.random.default_rng(abs(hash((round(progress, 9), t))) % (2**32))
        acc = self.final(config) * (1.0 - math.exp(-progress)) + self.noise * rng.standard_normal()
        return {"progress": progress}, {"accuracy": float(acc),
                                        "latency_ms": self.latency(config)}, self.cost_s
