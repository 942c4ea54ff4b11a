"""The retraining flow: tune again, warm-started; refit the best; register; champion or not.

    retrain(spec):
      previous = find_previous_run(spec)            # MLflow: the last finished tuning run
      spec     = warm_start(spec, previous)         # its top-k configs tried first
      out      = tune(spec)                         # the tune flow, as a subflow
      config   = best_config(out)                   # + fit_overrides
      model    = fit(config)                        # on the whole training data
      score    = evaluate(model)                    # on held-out data tuning never saw
      champion = load_champion(model_name)          # the version with alias `champion`
      decision = decide(score, evaluate(champion))  # same held-out data, same function
      register(model) ; record(decision)            # new version; alias moved only if better

With ``select`` (e.g. ``"max mean_accuracy s.t. latency_ms <= 10"``), or a spec with several
metrics and its own ``select``/``weights``, the champion is taken by that rule: the tuning
trial it picks is refitted, ``evaluate`` returns a dict of held-out metrics (latency measured
there too), a new model breaking a condition on the held-out data is never promoted, and one
that meets them beats a champion that does not.

Deployable with a cron schedule (``deployments/prefect.yaml``, entrypoint
``tuning.flows.retrain:retrain``). Bad parameters fail the flow run first thing, with the
ExperimentSpec's message naming the field.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tuning.flows.tune import tune
from tuning.retrain import check_retrain_options, retrain_selection
from tuning.spec import validate_spec
from tuning.tasks.retrain import (
    best_config,
    decide,
    decide_by,
    find_previous_run,
    fit_final_model,
    load_champion_model,
    record_champion_decision,
    register_model,
    retrain_report,
    score_holdout,
    score_holdout_metrics,
    warm_start,
)

DEFAULT_FIT = "tuning.examples.digits:fit_final"
DEFAULT_EVALUATE = "tuning.examples.digits:evaluate_holdout"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"retrain-{flow_run.parameters.get('model_name') or 'model'}"


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.get_id() or "local")


@flow(name="retrain", flow_run_name=_flow_run_name, validate_parameters=False, log_prints=True)
def retrain(spec: dict[str, Any], model_name: str = "digits-convnet", fit: str = DEFAULT_FIT,
            evaluate: str = DEFAULT_EVALUATE, warm_start_top_k: int = 3,
            fit_overrides: dict[str, Any] | None = None, holdout_mode: str | None = None,
            min_improvement: float = 0.0, select: str | None = None) -> dict[str, Any]:
    """Tune ``spec`` warm-started from its previous run, refit the best config with ``fit``,
    score it with ``evaluate`` on held-out data, register it as a new version of
    ``model_name`` and move the ``champion`` alias only when it beats the champion's score on
    the same data (``holdout_mode``: the spec's mode unless given; ``min_improvement``: the
    margin it must win by). ``fit_overrides`` go on top of the best config (e.g.
    ``{"final_epochs": 30}``). ``select`` takes the champion by a rule with constraints
    measured on the held-out data (see the module docstring).
    """
    s = validate_spec(spec)
    check_retrain_options(model_name, fit, evaluate, warm_start_top_k, holdout_mode,
                          min_improvement)
    selection = retrain_selection(s, select)
    if selection is not None:
        return _retrain_by(s, selection, select, model_name, fit, evaluate, warm_start_top_k,
                           fit_overrides, min_improvement)
    uri = s.effective_tracking_uri()
    previous = find_previous_run(s, warm_start_top_k)
    run_name = f"{s.name}-retrain-{_flow_run_id()[:8]}"
    tuned_spec, points = warm_start(s, previous, run_name)
    out = tune(spec=tuned_spec.to_json_dict())
    config = best_config(out["experiment_dir"], fit_overrides)
    model = fit_final_model(fit, config)
    score = score_holdout(evaluate, model)
    champion = load_champion_model(uri, model_name)
    champion_score = score_holdout(evaluate, champion.model) if champion else None
    decision = decide(score, champion_score, holdout_mode or s.mode, min_improvement,
                      champion.version if champion else None)
    registered = register_model(s, f"{run_name}-final", model, model_name, config, score, {
        "rungflow.tuning_run_name": str(out["run_name"]),
        "rungflow.tuning_parent_run_id": str(out.get("parent_run_id")),
        "rungflow.warm_start_from": str(previous.run_id or ""),
        "rungflow.warm_start_points": str(len(points))})
    holder = record_champion_decision(uri, model_name, registered, decision)
    summary = {"model_name": model_name, "version": registered["version"],
               "champion_version": holder, "promoted": decision.promote,
               "reason": decision.reason, "holdout_score": score,
               "champion_score": champion_score, "config": config,
               "tuning_run": out["run_name"], "warm_start_from": previous.run_name,
               "warm_start_points": points, "retrain_run_id": registered["run_id"],
               "tracking_uri": uri}
    retrain_report(model_name, summary)
    print(f"{model_name} v{registered['version']}: {decision.reason}")
    return summary


def _retrain_by(s: Any, selection: Any, select: str | None, model_name: str, fit: str,
                evaluate: str, warm_start_top_k: int, fit_overrides: dict[str, Any] | None,
                min_improvement: float) -> dict[str, Any]:
    """The retrain under a selection: the same steps, held-out scores as dicts of metrics."""
    uri = s.effective_tracking_uri()
    previous = find_previous_run(s, warm_start_top_k)
    run_name = f"{s.name}-retrain-{_flow_run_id()[:8]}"
    tuned_spec, points = warm_start(s, previous, run_name)
    out = tune(spec=tuned_spec.to_json_dict())
    config = best_config(out["experiment_dir"], fit_overrides, select)
    model = fit_final_model(fit, config)
    scores = score_holdout_metrics(evaluate, model, selection)
    champion = load_champion_model(uri, model_name)
    champion_scores = score_holdout_metrics(evaluate, champion.model, selection) \
        if champion else None
    decision = decide_by(scores, champion_scores, selection, min_improvement,
                         champion.version if champion else None)
    registered = register_model(s, f"{run_name}-final", model, model_name, config,
                                decision.new_score, {
                                    "rungflow.tuning_run_name": str(out["run_name"]),
                                    "rungflow.tuning_parent_run_id": str(out.get("parent_run_id")),
                                    "rungflow.warm_start_from": str(previous.run_id or ""),
                                    "rungflow.warm_start_points": str(len(points)),
                                    "rungflow.select": selection.describe()}, scores)
    holder = record_champion_decision(uri, model_name, registered, decision)
    summary = {"model_name": model_name, "version": registered["version"],
               "champion_version": holder, "promoted": decision.promote,
               "reason": decision.reason, "select": selection.describe(),
               "holdout_score": decision.new_score, "holdout_metrics": scores,
               "champion_score": decision.champion_score, "champion_metrics": champion_scores,
               "config": config, "tuning_run": out["run_name"],
               "warm_start_from": previous.run_name, "warm_start_points": points,
               "retrain_run_id": registered["run_id"], "tracking_uri": uri}
    retrain_report(model_name, summary)
    print(f"{model_name} v{registered['version']}: {decision.reason}")
    return summary
