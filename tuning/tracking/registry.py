"""MLflow side of retraining: the previous run's best configs, the model registry, the alias.

- :func:`previous_best_configs` reads the latest finished tuning run of an experiment (parent run
  tagged ``rungflow.role=parent``) and returns its top-k trial configs (child runs' params,
  ranked by the metric's last value).
- :func:`log_and_register` logs the final model in a ``retrain`` run (tagged
  ``rungflow.role=retrain``) and registers it as a new version of a registered model.
- :func:`load_champion` loads the model version that holds the ``champion`` alias.
- :func:`record_decision` writes why the alias moved or stayed, as tags on the new version and on
  the retrain run, and moves the alias when the decision says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

__all__ = [
    "CHAMPION",
    "Champion",
    "PreviousRun",
    "load_champion",
    "log_and_register",
    "previous_best_configs",
    "record_decision",
]

CHAMPION = "champion"


@dataclass
class PreviousRun:
    """The tuning run a retrain warm-starts from (``run_id`` None when there is none)."""

    run_id: str | None = None
    run_name: str | None = None
    configs: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _parse_param(v: str) -> Any:
    """Params are written as the string itself, or JSON for anything else (tracking/mlflow.py)."""
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v


def previous_best_configs(tracking_uri: str, experiment: str, metric: str, mode: str,
                          top_k: int = 3, pareto: bool = False) -> PreviousRun:
    """The top ``top_k`` configs of the latest finished tuning run of ``experiment``, best
    first; an empty :class:`PreviousRun` when the experiment or a finished run is missing.
    ``pareto``: only the runs of its Pareto front (tagged ``rungflow.pareto=true``), by
    ``metric``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or top_k <= 0:
        return PreviousRun()
    parents = client.search_runs(
        [exp.experiment_id], filter_string="tags.`rungflow.role` = 'parent' and "
        "attributes.status = 'FINISHED'", max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        return PreviousRun()
    parent = parents[0]
    kids = client.search_runs([exp.experiment_id], max_results=50000, filter_string=
                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    scored = []
    for r in kids:
        v = r.data.metrics.get(metric)
        if pareto and r.data.tags.get("rungflow.pareto") != "true":
            continue
        if "rungflow.trial_id" in r.data.tags and v is not None and math.isfinite(v):
            scored.append((v, r.data.tags["rungflow.trial_id"], r))
    sign = -1.0 if mode == "max" else 1.0
    scored.sort(key=lambda t: (sign * t[0], t[1]))
    top = scored[:top_k]
    return PreviousRun(run_id=parent.info.run_id,
                       run_name=parent.data.tags.get("rungflow.run_name", parent.info.run_name),
                       configs=[{k: _parse_param(v) for k, v in r.data.params.items()}
                                for _, _, r in top],
                       scores=[float(v) for v, _, _ in top])


def _log_model(model: Any, name: str, registered_model_name: str) -> Any:
    """Log with the model's own MLflow flavor (PyTorch or scikit-learn) and register it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(model, torch.nn.Module):
        import mlflow.pytorch

        # "pickle": the registered model loads back as the same nn.Module, so the champion is
        # scored by the same evaluate function (pt2 would need an input example and loads as
        # an exported program)
        return mlflow.pytorch.log_model(model, name=name, serialization_format="pickle",
                                        registered_model_name=registered_model_name,
                                        pip_requirements=_requirements("torch", "cloudpickle"))
    if hasattr(model, "fit") and hasattr(model, "predict"):
        import mlflow.sklearn

        return mlflow.sklearn.log_model(model, name=name,
                                        registered_model_name=registered_model_name,
                                        pip_requirements=_requirements("scikit-learn",
                                                                       "cloudpickle"))
    raise TypeError(f"fit returned a {type(model).__name__}: the retrain flow registers PyTorch "
                    "modules and scikit-learn style estimators (fit/predict)")


def _requirements(*dists: str) -> list[str]:
    """Pinned requirements of what is installed here (MLflow's own inference imports the model
    in a subprocess: seconds per model)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in dists:
        try:
            out.append(f"{d}=={version(d).split('+')[0]}")
        except PackageNotFoundError:
            out.append(d)
    return out


def log_and_register(tracking_uri: str, experiment: str, run_name: str, model: Any,
                     model_name: str, config: Mapping[str, Any], holdout_score: float,
                     tags: Mapping[str, str] | None = None,
                     holdout_metrics: Mapping[str, float] | None = None) -> dict[str, str]:
    """Log ``model`` in a new retrain run of ``experiment`` (params: the config; metric
    ``holdout_score``, and ``holdout_<name>`` for each of ``holdout_metrics``) and register it
    as a new version of ``model_name``.

    Returns:
        ``{"run_id", "version", "model_uri"}``.
    """
    import mlflow

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={
        "rungflow.role": "retrain", "rungflow.experiment": experiment,
        "rungflow.model_name": model_name, **dict(tags or {})})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v if isinstance(v, str) else json.dumps(v))
                                     for k, v in list(config.items())[:100]])
    client.log_metric(run_id, "holdout_score", float(holdout_score))
    for name, value in (holdout_metrics or {}).items():
        client.log_metric(run_id, f"holdout_{name}", float(value))
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = _log_model(model, "model", model_name)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    version = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version, "rungflow.retrain_run_id", run_id)
    client.set_model_version_tag(model_name, version, "rungflow.holdout_score",
                                 repr(float(holdout_score)))
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "version": version,
            "model_uri": f"models:/{model_name}/{version}"}


@dataclass
class Champion:
    """The model version holding the alias, loaded with its flavor."""

    version: str
    model: Any
    run_id: str | None


def load_champion(tracking_uri: str, model_name: str, alias: str = CHAMPION) -> Champion | None:
    """The model version that holds ``alias`` (loaded), or None when none does yet."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    import mlflow

    uri = f"models:/{model_name}@{alias}"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        flavors = mlflow.models.get_model_info(uri).flavors
        if "pytorch" in flavors:
            import mlflow.pytorch

            model = mlflow.pytorch.load_model(uri)
        elif "sklearn" in flavors:
            import mlflow.sklearn

            model = mlflow.sklearn.load_model(uri)
        else:
            model = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return Champion(version=str(mv.version), model=model, run_id=mv.run_id)


def record_decision(tracking_uri: str, model_name: str, version: str, run_id: str,
                    promote: bool, tags: Mapping[str, str], alias: str = CHAMPION) -> str | None:
    """Tag the new version and the retrain run with the decision; move ``alias`` to ``version``
    when ``promote``. Returns the version holding the alias afterwards (None if none)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, v)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    if promote:
        client.set_registered_model_alias(model_name, alias, version)
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None
