"""Small trainables for the tests (importable by workers: tests/ is on their path)."""

from __future__ import annotations

import math
import time

from tuning import get_checkpoint, report


def curve(config):
    """score rises towards x; one report per iteration, checkpoint every iteration."""
    ck = get_checkpoint()
    start = ck["it"] if ck else 0
    for it in range(start + 1, config.get("iters", 9) + 1):
        time.sleep(config.get("sleep", 0.01))
        report(score=config["x"] * (1 - math.exp(-it / 3.0)), checkpoint={"it": it})


def flaky(config):
    """Raises for x < 0.5 at the second iteration; fine otherwise."""
    for it in range(1, 6):
        if it == 2 and config["x"] < 0.5:
            raise RuntimeError(f"boom at x={config['x']:.3f}")
        report(score=config["x"] * it)


def no_checkpoint(config):
    for it in range(1, 10):
        report(score=config["x"] * it)


def wrong_metric(config):
    report(loss=1.0)
