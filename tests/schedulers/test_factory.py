"""make_scheduler: the YAML form of every scheduler, and its errors."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tuning.schedulers import (
    ASHA,
    BOHB,
    FIFO,
    MOASHA,
    PBT,
    SCHEDULER_TYPES,
    HyperBand,
    MedianStopping,
    make_scheduler,
)


def test_types() -> None:
    assert SCHEDULER_TYPES == ("asha", "bohb", "fifo", "hyperband", "median", "moasha", "pbt")


@pytest.mark.parametrize(("kind", "kwargs", "cls"), [
    ("fifo", {}, FIFO),
    ("asha", {"max_t": 27}, ASHA),
    ("ASHA", {"max_t": 27, "variant": "promote"}, ASHA),
    ("bohb", {"max_t": 27}, BOHB),
    ("median", {}, MedianStopping),
    ("hyperband", {"max_t": 81, "reduction_factor": 3}, HyperBand),
    ("pbt", {"perturbation_interval": 2}, PBT),
    ("moasha", {"max_t": 27, "variant": "promote"}, MOASHA),
])
def test_defaults_work(kind: str, kwargs: dict, cls: type) -> None:
    assert isinstance(make_scheduler(kind, **kwargs), cls)


def test_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^scheduler.type: unknown 'x'; allowed: asha, bohb, "
                                         r"fifo, hyperband, median, moasha, pbt$"):
        make_scheduler("x")
    with pytest.raises(ValueError, match=r"^scheduler.foo: unknown setting for asha; allowed: "
                                         r"max_t, grace_period, "):
        make_scheduler("asha", foo=1)
    with pytest.raises(ValueError, match=r"^scheduler.grace_period must be <= max_t, "
                                         r"got grace_period=20, max_t=10$"):
        make_scheduler("asha", max_t=10, grace_period=20)
    with pytest.raises(ValueError, match=r"^scheduler.perturbation_interval: required for pbt$"):
        make_scheduler("pbt")
    with pytest.raises(ValueError, match=r"^scheduler.hyperparam_mutations.lr must be"):
        make_scheduler("pbt", perturbation_interval=1, hyperparam_mutations={"lr": 3})


@pytest.mark.parametrize("module", ["_asha", "_bohb", "_common", "_factory", "_fifo",
                                    "_hyperband", "_median", "_moasha", "_pbt", "__init__"])
def test_docstring_examples_run(module: str) -> None:
    name = "tuning.schedulers" + ("" if module == "__init__" else f".{module}")
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
