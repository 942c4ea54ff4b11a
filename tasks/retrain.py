"""Prefect tasks of the retrain flow: thin wrappers over ``tuning.retrain`` (decisions) and
``tuning.tracking.registry`` (MLflow)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tuning._objective import Selection
from tuning.results import load_result
from tuning.retrain import (
    ChampionDecision,
    check_holdout_scores,
    decide_champion,
    decide_champion_by,
    final_config,
    resolve_callable,
    warm_start_spec,
)
from tuning.spec import ExperimentSpec
from tuning.tracking import registry
from tuning.tracking.registry import Champion, PreviousRun

__all__ = [
    "best_config",
    "decide",
    "decide_by",
    "find_previous_run",
    "fit_final_model",
    "load_champion_model",
    "record_champion_decision",
    "register_model",
    "retrain_report",
    "score_holdout",
    "score_holdout_metrics",
    "warm_start",
]



@task(name="find-previous-run", cache_policy=NONE, persist_result=False)
def find_previous_run(spec: ExperimentSpec, top_k: int) -> PreviousRun:
    """The latest finished tuning run of this experiment in MLflow, and its top-k configs (of
    a multi-objective run: its Pareto front's, by the first metric)."""
    return registry.previous_best_configs(spec.effective_tracking_uri(), spec.name,
                                          spec.primary_metric, spec.primary_mode, top_k,
                                          pareto=spec.objective().multi)


@task(name="warm-start", cache_policy=NONE, persist_result=False)
def warm_start(spec: ExperimentSpec, previous: PreviousRun, run_name: str
               ) -> tuple[ExperimentSpec, list[dict[str, Any]]]:
    """The spec of this retrain's tuning run: its own run name, the previous best tried first."""
    named = spec.model_copy(update={"run_name": spec.run_name or run_name})
    return warm_start_spec(named, previous.configs)


@task(name="best-config", cache_policy=NONE, persist_result=False)
def best_config(experiment_dir: str, overrides: Mapping[str, Any] | None,
                select: str | None = None) -> dict[str, Any]:
    """The tuning run's best config (from its journal), with the retrain's overrides on top;
    ``select`` picks it in a multi-objective or constrained run."""
    res = load_result(experiment_dir)
    if select is None:
        return final_config(res.best_config, overrides)
    trial = res.best_trial_by(select=select)
    return final_config(trial.config if trial else None, overrides,
                        why=f"no feasible trial meets {select!r}")


@task(name="fit-final", cache_policy=NONE, persist_result=False)
def fit_final_model(fit: str, config: Mapping[str, Any]) -> Any:
    """Fit the config on the whole training data with the user's ``fit`` function."""
    return resolve_callable(fit, "fit")(dict(config))


@task(name="score-holdout", cache_policy=NONE, persist_result=False)
def score_holdout(evaluate: str, model: Any) -> float:
    """Score a model on the held-out data with the user's ``evaluate`` function."""
    return float(resolve_callable(evaluate, "evaluate")(model))


@task(name="score-holdout-metrics", cache_policy=NONE, persist_result=False)
def score_holdout_metrics(evaluate: str, model: Any, selection: Selection) -> dict[str, float]:
    """Held-out metrics of a model (a dict from the user's ``evaluate``), for a selection."""
    return check_holdout_scores(resolve_callable(evaluate, "evaluate")(model), selection)


@task(name="load-champion", cache_policy=NONE, persist_result=False)
def load_champion_model(tracking_uri: str, model_name: str) -> Champion | None:
    """The registered version holding the ``champion`` alias, loaded; None when none does."""
    return registry.load_champion(tracking_uri, model_name)


@task(name="decide-champion", cache_policy=NONE, persist_result=False)
def decide(new_score: float, champion_score: float | None, mode: str, min_improvement: float,
           champion_version: str | None) -> ChampionDecision:
    """The champion rule on the two scores (same held-out data)."""
    return decide_champion(new_score, champion_score, mode, min_improvement, champion_version)


@task(name="decide-champion-by", cache_policy=NONE, persist_result=False)
def decide_by(new: Mapping[str, float], champion: Mapping[str, float] | None,
              selection: Selection, min_improvement: float, champion_version: str | None
              ) -> ChampionDecision:
    """The champion rule under a selection (its conditions met on the held-out data)."""
    return decide_champion_by(new, champion, selection, min_improvement, champion_version)


@task(name="register-model", cache_policy=NONE, persist_result=False)
def register_model(spec: ExperimentSpec, run_name: str, model: Any, model_name: str,
                   config: Mapping[str, Any], score: float, tags: Mapping[str, str],
                   holdout_metrics: Mapping[str, float] | None = None) -> dict[str, str]:
    """Log the model in a retrain run and register it as a new version."""
    return registry.log_and_register(spec.effective_tracking_uri(), spec.name, run_name, model,
                                     model_name, config, score, tags,
                                     holdout_metrics=holdout_metrics)


@task(name="record-decision", cache_policy=NONE, persist_result=False)
def record_champion_decision(tracking_uri: str, model_name: str, registered: Mapping[str, str],
                             decision: ChampionDecision) -> str | None:
    """Tags on the new version and the retrain run; the alias moved when promoted."""
    return registry.record_decision(tracking_uri, model_name, registered["version"],
                                    registered["run_id"], decision.promote, decision.tags())


@task(name="retrain-report", cache_policy=NONE, persist_result=False)
def retrain_report(model_name: str, summary: Mapping[str, Any]) -> str:
    """A markdown artifact: what was tuned, warm-started from, registered, and the decision."""
    key = "".join(c if c.isalnum() else "-" for c in model_name.lower())[:90] + "-retrain"
    lines = [f"# Retrain of `{model_name}`", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.items()]
    return str(create_markdown_artifact(key=key, markdown="\n".join(lines),
                                        description=f"Retrain decision for {model_name}"))
