"""OptunaSearch with several metrics and constraints: directions, the samplers, constraints told,
exact restore, and refusals naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuning.searchers import FINISHED, ConcurrencyLimiter, OptunaSearch, _optuna, make_searcher
from tuning.space import Space, uniform

SPACE = {"x": uniform(0, 1)}
METRICS, MODES = ["acc", "ms"], ["max", "min"]
LIMIT = {"ms": {"max": 6.0}}


def measure(config: dict) -> dict:
    """acc rises with x, so does the latency: a trade-off; x > 0.5 breaks ms <= 6."""
    x = config["x"]
    return {"acc": x, "ms": 1.0 + 10.0 * x}


def run(searcher, n: int, seed: int = 0, constraints=LIMIT, done: int | None = None):
    searcher.setup(Space(SPACE), METRICS, MODES, np.random.default_rng(seed), n)
    if constraints:
        searcher.set_constraints(constraints)
    configs = []
    for i in range(n if done is None else done):
        cfg = searcher.suggest(f"t{i}")
        configs.append(cfg)
        searcher.on_trial_complete(f"t{i}", measure(cfg))
    return configs


def inner(s):
    return s.searcher if isinstance(s, ConcurrencyLimiter) else s


@pytest.mark.parametrize("sampler", ["nsga2", "nsga3", "tpe", "random", "qmc"])
def test_study_has_one_direction_per_metric_and_is_told_both_values(sampler: str) -> None:
    kwargs = {"sampler_kwargs": {"population_size": 4}} if sampler.startswith("nsga") else {}
    s = OptunaSearch(sampler, **kwargs)
    configs = run(s, 6, constraints=None)
    assert [d.name for d in s.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = s.study.get_trials()
    assert [t.values for t in trials] == [[measure(c)["acc"], measure(c)["ms"]] for c in configs]
    assert s.suggest("t-last") == FINISHED


@pytest.mark.parametrize("new_api", [True, False])
def test_constraints_are_told_to_the_sampler(monkeypatch: pytest.MonkeyPatch,
                                             new_api: bool) -> None:
    """Optuna 5's Trial.set_constraint, or (before 5) a user attribute read by constraints_func:
    either way the study's trials carry the constraint values the samplers rank with."""
    monkeypatch.setattr(_optuna, "_USE_SET_CONSTRAINT", new_api)
    s = OptunaSearch("nsga2", sampler_kwargs={"population_size": 4})
    configs = run(s, 8)
    for cfg, t in zip(configs, s.study.get_trials()):
        (value,) = t.constraints.values()
        assert value == pytest.approx(measure(cfg)["ms"] - 6.0)
        assert (value <= 0) == (cfg["x"] <= 0.5)
    if not new_api:
        assert all(_optuna.CONSTRAINTS_ATTR in t.user_attrs for t in s.study.get_trials())


def test_constrained_tpe_prefers_feasible_configs() -> None:
    s = OptunaSearch("tpe", n_startup_trials=8)
    configs = run(s, 40)
    late = [c["x"] <= 0.5 for c in configs[20:]]
    assert sum(late) >= 15, "TPE told the constraint should mostly suggest feasible configs"


@pytest.mark.parametrize("make", [
    lambda: OptunaSearch("nsga2", sampler_kwargs={"population_size": 4}),
    lambda: OptunaSearch("gp", n_startup_trials=2),
    lambda: ConcurrencyLimiter(OptunaSearch("tpe", n_startup_trials=2), 2),
], ids=["nsga2", "gp", "limiter-tpe"])
def test_state_round_trip_continues_identically(make) -> None:
    a = make()
    run(a, 7, done=4)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    b = make()
    b.setup(Space(SPACE), METRICS, MODES, np.random.default_rng(99), 7)
    b.set_constraints(LIMIT)
    b.load_state_dict(state)
    assert json.loads(json.dumps(b.state_dict())) == state
    for i in range(4, 7):
        ca, cb = a.suggest(f"t{i}"), b.suggest(f"t{i}")
        assert ca == cb
        a.on_trial_complete(f"t{i}", measure(ca))
        b.on_trial_complete(f"t{i}", measure(cb))
    assert [t.constraints for t in inner(a).study.get_trials()] == \
        [t.constraints for t in inner(b).study.get_trials()]


def test_a_missing_value_fails_the_trial() -> None:
    import optuna

    s = OptunaSearch("tpe")
    s.setup(Space(SPACE), METRICS, MODES, np.random.default_rng(0), 2)
    cfg = s.suggest("a")
    s.on_trial_complete("a", {"acc": cfg["x"], "ms": float("nan")})
    assert s.study.get_trials()[0].state == optuna.trial.TrialState.FAIL


def test_single_objective_study_is_unchanged() -> None:
    s = OptunaSearch("tpe")
    s.setup(Space(SPACE), "acc", "max", np.random.default_rng(0), 2)
    cfg = s.suggest("a")
    s.on_trial_complete("a", measure(cfg))
    assert s.study.direction.name == "MAXIMIZE" and s.study.get_trials()[0].value == cfg["x"]
    record = s.state_dict()["trials"][0]
    assert set(record) == {"number", "state", "params", "value", "system_attrs"}


def test_samplers_that_optimise_one_metric_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^searcher.sampler: 'cmaes' optimises one metric; "
                                         r"with metric \['acc', 'ms'\] use one of gp, nsga2"):
        OptunaSearch("cmaes").setup(Space(SPACE), METRICS, MODES, np.random.default_rng(0), 2)
    assert isinstance(make_searcher("optuna", sampler="nsga3"), OptunaSearch)


def test_trials_stopped_before_max_t_are_told_pruned_with_their_constraints() -> None:
    s = OptunaSearch("tpe")
    s.setup(Space(SPACE), METRICS, MODES, np.random.default_rng(0), 3)
    s.set_constraints(LIMIT)
    s.set_fidelity("training_iteration", 9)
    for i, it in enumerate([3, 9]):
        cfg = s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {**measure(cfg), "training_iteration": it})
    pruned, full = s.study.get_trials()
    assert (pruned.state.name, full.state.name) == ("PRUNED", "COMPLETE")
    assert pruned.values is None and list(pruned.constraints) == ["ms.max"]
    one = OptunaSearch("tpe")  # one metric: the last value is told, as before
    one.setup(Space(SPACE), "acc", "max", np.random.default_rng(0), 1)
    one.set_fidelity("training_iteration", 9)
    cfg = one.suggest("a")
    one.on_trial_complete("a", {**measure(cfg), "training_iteration": 3})
    assert one.study.get_trials()[0].state.name == "COMPLETE"
