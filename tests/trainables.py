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


def nan_metric(config):
    report(score=1.0)
    report(score=float("nan"))


def string_metric(config):
    report(score="high")


def bad_checkpoint(config):
    report(score=1.0, checkpoint={"fn": lambda: 1})


def hangs(config):
    report(score=1.0)
    time.sleep(600)


def fails_once(config):
    """Fails at iteration 4 the first time (a marker file remembers), then finishes."""
    import os

    ck = get_checkpoint()
    start = ck["it"] if ck else 0
    marker = os.path.join(config["marker_dir"], f"{config['x']:.6f}")
    for it in range(start + 1, 7):
        if it == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("transient failure")
        report(score=config["x"] * it, checkpoint={"it": it})


from tuning.backends.simulated import CrossingCurves

SIM = CrossingCurves(max_t=9)

from tuning.backends.tradeoff import TradeoffCurves

#: accuracy (max) against latency_ms (min), 9 iterations, on the simulated backend
SIM_MO = TradeoffCurves(max_t=9)


def fit_mo(config: dict):
    """A stand-in fitted model of SIM_MO's problem: a scikit-learn estimator (MLflow logs and
    loads it safely) that remembers the config's width and lr."""
    from sklearn.dummy import DummyRegressor

    return DummyRegressor(strategy="constant",
                          constant=[[float(config["width"])], [float(config["lr"])]]).fit(
        [[0.0]], [[0.0, 0.0]])


def evaluate_mo(model) -> dict:
    """Held-out 'measurements': the final accuracy and the latency of the model's config."""
    width, lr = (float(v) for v in model.predict([[0.0]])[0])
    config = {"width": width, "lr": lr}
    return {"accuracy": TradeoffCurves(noise=0.0).final(config),
            "latency_ms": TradeoffCurves().latency(config)}


def marked(config):
    """Like the acceptance check's trainable: a mark file per iteration names the worker's pid."""
    import os

    marks = os.environ.get("MARKS")
    ck = get_checkpoint()
    start = ck["it"] if ck else 0
    for it in range(start + 1, 10):
        if marks:
            open(os.path.join(marks, f"{os.getpid()}.{time.time_ns()}"), "w").close()
        time.sleep(0.15)
        report(score=config["x"] * (1 - math.exp(-it / 3.0)), checkpoint={"it": it})


def counted(config):
    """Like ``curve``, and a file per iteration *begun* under ``config["marks"]`` (named
    ``<x>.<iteration>``): what was trained, not only what was reported."""
    import os

    for it in range(1, config.get("iters", 9) + 1):
        open(os.path.join(config["marks"], f"{config['x']:.9f}.{it}"), "w").close()
        time.sleep(config.get("sleep", 0.01))
        report(score=config["x"] * (1 - math.exp(-it / 3.0)))
