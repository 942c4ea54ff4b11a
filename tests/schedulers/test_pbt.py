"""PBT: quantiles, exploration and exploit decisions on plain data."""

from __future__ import annotations

import numpy as np
import pytest

from tuning._trial import Status, Trial
from tuning.schedulers import PBT, Decision, Resume, StartNew
from tuning.schedulers._pbt import explore, mutate_value, parse_mutations, pbt_quantiles
from tuning.space import Space, choice, loguniform, quniform, randint, uniform

NAN = float("nan")


def test_quantiles_ray_rule() -> None:
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.3, "e": NAN}
    # n=5, 0.25 -> ceil(1.25) = 2 each (<= floor(5/2) = 2); NaN is the worst
    assert pbt_quantiles(scores, 0.25) == (["e", "a"], ["c", "b"])
    # n=2, 0.5 -> 1 each; n=1 -> nothing
    assert pbt_quantiles({"a": 1.0, "b": 2.0}, 0.5) == (["a"], ["b"])
    assert pbt_quantiles({"a": 1.0}, 0.25) == ([], [])


def test_mutate_list_moves_to_a_neighbour_and_clips() -> None:
    rng = np.random.default_rng(0)
    values = (1, 2, 3)
    seen = {mutate_value(2, values, rng, 0.0, (0.8, 1.2)) for _ in range(50)}
    assert seen == {1, 3}
    assert {mutate_value(1, values, rng, 0.0, (0.8, 1.2)) for _ in range(50)} == {1, 2}
    assert mutate_value(7, values, rng, 0.0, (0.8, 1.2)) in values  # unknown value: resampled


def test_mutate_numeric_domains() -> None:
    rng = np.random.default_rng(0)
    # 0.9 * 1.2 = 1.08 clipped to 1.0; 0.9 * 0.8 = 0.72
    seen = {round(mutate_value(0.9, uniform(0, 1), rng, 0.0, (0.8, 1.2)), 9) for _ in range(40)}
    assert seen == {1.0, 0.72}
    # randint [1, 4): 3 * 1.2 = 3.6 -> 4 -> clipped to 3; 3 * 0.8 = 2.4 -> 2
    assert {mutate_value(3, randint(1, 4), rng, 0.0, (0.8, 1.2)) for _ in range(40)} == {2, 3}
    # quniform q=0.5: 2.0 * 1.2 = 2.4 -> 2.5; 2.0 * 0.8 = 1.6 -> 1.5
    seen = {mutate_value(2.0, quniform(0, 10, 0.5), rng, 0.0, (0.8, 1.2)) for _ in range(40)}
    assert seen == {2.5, 1.5}
    lr = loguniform(1e-4, 1e-1)
    assert all(lr.contains(mutate_value(0.05, lr, rng, 1.0, (0.8, 1.2))) for _ in range(20))
    assert mutate_value("relu", choice(["relu", "tanh"]), rng, 0.0, (0.8, 1.2)) == "tanh"


def test_explore_only_touches_mutated_keys() -> None:
    rng = np.random.default_rng(1)
    new = explore({"lr": 0.01, "act": "relu"}, {"lr": (0.001, 0.01, 0.1)}, rng)
    assert new["act"] == "relu" and new["lr"] in (0.001, 0.1)


def test_parse_mutations() -> None:
    muts = parse_mutations({"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
                            "bs": [16, 32], "x": uniform(0, 1)})
    assert muts["bs"] == (16, 32) and muts["lr"].kind == "loguniform"
    with pytest.raises(ValueError, match="hyperparam_mutations.bs must be a non-empty list"):
        parse_mutations({"bs": []})
    with pytest.raises(ValueError, match="hyperparam_mutations.lr: loguniform needs low > 0"):
        parse_mutations({"lr": {"type": "loguniform", "low": 0, "high": 1}})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"perturbation_interval": 0}, "perturbation_interval must be > 0, got 0"),
    ({"perturbation_interval": 1, "quantile_fraction": 0.7},
     "quantile_fraction must be 0 < quantile_fraction <= 0.5, got 0.7"),
    ({"perturbation_interval": 1, "resample_probability": 2},
     "resample_probability must be 0 <= resample_probability <= 1, got 2"),
    ({"perturbation_interval": 1, "perturbation_factors": []},
     "perturbation_factors must be a non-empty list"),
])
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PBT(**kwargs)


def _population(pbt: PBT, n: int) -> dict[str, Trial]:
    trials = {}
    for i in range(n):
        assert pbt.choose_trial_to_run(trials, True) == StartNew()
        t = Trial(f"t{i}", {"lr": 0.01 * (i + 1), "act": "relu"}, status=Status.RUNNING)
        trials[t.trial_id] = t
        pbt.on_trial_add(t)
    return trials


def _report(pbt: PBT, t: Trial, it: int, acc: float) -> Decision:
    result = {"training_iteration": it, "acc": acc}
    t.observe(result)
    d = pbt.on_result(t, result)
    if d == Decision.PAUSE:
        t.status, t.checkpoint = Status.PAUSED, f"ckpt/{t.trial_id}/{it}"
    return d


def test_exploit_bottom_from_top() -> None:
    pbt = PBT(perturbation_interval=2, hyperparam_mutations={"lr": [0.01, 0.02, 0.03, 0.04]},
              metric="acc", mode="max", seed=0)
    trials = _population(pbt, 4)
    assert pbt.pause_at(trials["t0"]) == 2
    for t, acc in zip(trials.values(), [0.1, 0.4, 0.3, 0.9]):
        assert _report(pbt, t, 1, acc) == Decision.CONTINUE
        assert _report(pbt, t, 2, acc) == Decision.PAUSE and t.rung == 2
    assert pbt.pause_at(trials["t0"]) == 4
    # 4 scores, 0.25 -> 1 each: bottom t0 (0.1), top t3 (0.9)
    sug = pbt.choose_trial_to_run(trials, False)
    assert isinstance(sug, Resume) and sug.trial_id == "t0" and sug.checkpoint_from == "t3"
    assert sug.config is not None and sug.config["act"] == "relu"
    assert sug.config["lr"] in (0.03, 0.04)  # t3's lr 0.04 moved to a neighbour, or resampled
    trials["t0"].status = Status.RUNNING
    # t1 is not in the bottom: plain resume
    assert pbt.choose_trial_to_run(trials, False) == Resume("t1")


def test_no_mutations_use_numeric_domains_of_the_space() -> None:
    pbt = PBT(perturbation_interval=1, metric="acc", mode="max", seed=0, resample_probability=0)
    pbt.set_search_space(Space({"lr": uniform(0.0, 1.0), "act": choice(["relu", "tanh"])}))
    trials = _population(pbt, 2)
    _report(pbt, trials["t0"], 1, 0.1)
    _report(pbt, trials["t1"], 1, 0.9)
    sug = pbt.choose_trial_to_run(trials, False)
    # t0 exploits t1 (lr 0.02): lr * 0.8 or * 1.2; act is not numeric: kept
    assert sug.checkpoint_from == "t1" and sug.config["act"] == "relu"
    assert sug.config["lr"] == pytest.approx(0.016) or sug.config["lr"] == pytest.approx(0.024)


def test_max_t_stops_and_donor_needs_a_checkpoint() -> None:
    pbt = PBT(perturbation_interval=2, max_t=4, metric="acc", mode="max", seed=0)
    trials = _population(pbt, 2)
    _report(pbt, trials["t0"], 2, 0.1)
    _report(pbt, trials["t1"], 2, 0.9)
    trials["t1"].checkpoint = None  # the donor has no checkpoint: no exploit
    assert pbt.choose_trial_to_run(trials, False) == Resume("t0")
    trials["t0"].status = Status.RUNNING
    assert pbt.pause_at(trials["t0"]) is None  # the next point (4) is max_t
    assert _report(pbt, trials["t0"], 4, 0.5) == Decision.STOP
