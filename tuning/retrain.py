"""Retraining decisions as pure functions: warm start, the final config, the champion rule.

The retrain flow (``flows/retrain.py``) tunes again warm-started from the previous run's best
configs, fits the best config on the whole training split, scores it on held-out data and moves
the registry's ``champion`` alias only when the new model beats the champion on that same data.
Everything that decides something lives here, without Prefect or MLflow, so a unit test calls it
with plain values.

Example:
    >>> d = decide_champion(0.97, 0.95, mode="max", champion_version="1")
    >>> d.promote, d.reason.split(" on ")[0]
    (True, 'promoted: new holdout score 0.97 beats the champion (version 1) 0.95')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuning._objective import Selection
from tuning.space import Domain
from tuning.spec import ExperimentSpec, SpecError, resolve_trainable

__all__ = [
    "WARM_START_SEARCHERS",
    "ChampionDecision",
    "check_holdout_scores",
    "check_retrain_options",
    "decide_champion",
    "decide_champion_by",
    "final_config",
    "resolve_callable",
    "retrain_selection",
    "warm_start_spec",
]

WARM_START_SEARCHERS = ("random", "optuna")


@dataclass(frozen=True)
class ChampionDecision:
    """Whether the new model takes the ``champion`` alias, and why (both scores in words)."""

    promote: bool
    reason: str
    new_score: float
    champion_score: float | None
    champion_version: str | None = None

    def tags(self, prefix: str = "rungflow.champion") -> dict[str, str]:
        """The decision as MLflow tags (on the new model version and the retrain run)."""
        return {f"{prefix}.decision": "promoted" if self.promote else "kept",
                f"{prefix}.reason": self.reason[:5000],
                f"{prefix}.new_score": repr(self.new_score),
                f"{prefix}.previous_score": "" if self.champion_score is None
                else repr(self.champion_score),
                f"{prefix}.previous_version": self.champion_version or ""}


def decide_champion(new_score: float, champion_score: float | None, mode: str = "max",
                    min_improvement: float = 0.0, champion_version: str | None = None,
                    metric: str = "holdout score") -> ChampionDecision:
    """The champion rule: promote when there is no champion, or when the new score beats the
    champion's (scored on the same held-out data) by more than ``min_improvement``.

    A non-finite new score never wins; a non-finite champion score always loses.

    Example:
        >>> decide_champion(0.90, None).promote
        True
        >>> decide_champion(0.90, 0.95).promote, decide_champion(0.96, 0.95).promote
        (False, True)
        >>> decide_champion(0.2, 0.3, mode="min").promote
        True
        >>> decide_champion(0.951, 0.95, min_improvement=0.01).promote
        False
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if min_improvement < 0:
        raise ValueError(f"min_improvement must be >= 0, got {min_improvement!r}")
    new = float(new_score)
    v = f" (version {champion_version})" if champion_version else ""
    if not math.isfinite(new):
        return ChampionDecision(False, f"kept: the new {metric} is {new!r}, not a number that "
                                       f"can beat the champion{v}", new, champion_score,
                                champion_version)
    if champion_score is None:
        return ChampionDecision(True, f"promoted: no champion yet; new {metric} {new:.6g}",
                                new, None, None)
    old = float(champion_score)
    if not math.isfinite(old):
        return ChampionDecision(True, f"promoted: new {metric} {new:.6g}; the champion{v} "
                                      f"scores {old!r} on the same held-out data", new, old,
                                champion_version)
    gain = new - old if mode == "max" else old - new
    better = "higher" if mode == "max" else "lower"
    if gain > min_improvement:
        return ChampionDecision(True, f"promoted: new {metric} {new:.6g} beats the champion{v} "
                                      f"{old:.6g} on the same held-out data ({better} is better, "
                                      f"margin {gain:.6g} > {min_improvement:g})", new, old,
                                champion_version)
    return ChampionDecision(False, f"kept: new {metric} {new:.6g} does not beat the champion{v} "
                                   f"{old:.6g} on the same held-out data ({better} is better, "
                                   f"margin {gain:.6g} <= {min_improvement:g})", new, old,
                            champion_version)


def retrain_selection(spec: ExperimentSpec, select: str | None) -> Selection | None:
    """How the retrain picks its model: ``select`` (the retrain's parameter), else the spec's
    ``select``/``weights``, else None (one metric: the best by it, as before). A
    multi-objective spec needs one of them; SpecError naming ``select`` otherwise.

    Example:
        >>> from tuning.spec import validate_spec
        >>> s = validate_spec({"trainable": "m:f", "metric": ["acc", "ms"],
        ...                    "mode": ["max", "min"], "space": {"x": 1}})
        >>> retrain_selection(s, "max acc s.t. ms <= 10").describe()
        'max acc s.t. ms <= 10'
    """
    try:
        if select is not None:
            return Selection.parse(select, spec.objective())
        rule = spec.selection()
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if rule is None and spec.objective().multi:
        obj = spec.objective()
        raise SpecError(f"select: the spec optimises {obj.describe()}, so the retrain needs a "
                        f"rule to pick one model, e.g. select='max {obj.primary} s.t. "
                        f"{obj.metrics[1]} <= ...' (a retrain parameter, or the spec's select "
                        "or weights)")
    return rule


def check_holdout_scores(scores: Any, selection: Selection) -> dict[str, float]:
    """The held-out scores of a constraint/selection retrain: ``evaluate`` must return a
    mapping with every metric ``selection`` reads; SpecError naming ``evaluate`` otherwise."""
    if not isinstance(scores, Mapping):
        raise SpecError(f"evaluate: with select={selection.describe()!r} it must return a dict "
                        f"of held-out metrics ({', '.join(selection.needs())}), got "
                        f"{type(scores).__name__} {scores!r}")
    missing = [m for m in selection.needs() if m not in scores]
    if missing:
        raise SpecError(f"evaluate: returned {sorted(scores)}; select={selection.describe()!r} "
                        f"also needs {', '.join(missing)} measured on the held-out data")
    return {str(k): float(v) for k, v in scores.items()}


def decide_champion_by(new: Mapping[str, float], champion: Mapping[str, float] | None,
                       selection: Selection, min_improvement: float = 0.0,
                       champion_version: str | None = None) -> ChampionDecision:
    """The champion rule with a selection, on held-out scores (dicts of metrics): a new model
    that breaks a condition of ``selection`` on the held-out data is never promoted; a champion
    that breaks one loses to a new model that meets them; otherwise the selection's metric (or
    weighted sum) decides as :func:`decide_champion` does.

    Example:
        >>> from tuning._objective import Objective
        >>> rule = Selection.parse("max acc s.t. ms <= 10", Objective.build(["acc", "ms"],
        ...                                                                 ["max", "min"]))
        >>> decide_champion_by({"acc": 0.99, "ms": 12.0}, None, rule).promote
        False
        >>> decide_champion_by({"acc": 0.95, "ms": 8.0}, {"acc": 0.97, "ms": 11.0}, rule).promote
        True
        >>> decide_champion_by({"acc": 0.95, "ms": 8.0}, {"acc": 0.97, "ms": 9.0}, rule).promote
        False
    """
    v = f" (version {champion_version})" if champion_version else ""
    metric = selection.metric or "weighted sum"
    new_score = _selected(new, selection)
    old_score = _selected(champion, selection) if champion is not None else None
    broken = selection.unmet(new)
    if broken:
        return ChampionDecision(False, f"kept: the new model breaks {selection.describe()!r} on "
                                       f"the held-out data ({'; '.join(broken)})", new_score,
                                old_score, champion_version)
    if champion is not None and selection.unmet(champion):
        return ChampionDecision(True, f"promoted: the new model meets {selection.describe()!r} "
                                      f"on the held-out data ({metric} {new_score:.6g}); the "
                                      f"champion{v} breaks it ("
                                      f"{'; '.join(selection.unmet(champion))})", new_score,
                                old_score, champion_version)
    mode = selection.mode if selection.weights is None else "max"
    d = decide_champion(new_score, old_score, mode, min_improvement, champion_version,
                        metric=f"held-out {metric}")
    return ChampionDecision(d.promote, f"{d.reason}; both meet {selection.describe()!r}"
                            if champion is not None else
                            f"{d.reason}; it meets {selection.describe()!r}", new_score,
                            old_score, champion_version)


def _selected(scores: Mapping[str, float], selection: Selection) -> float:
    """The selection's metric (raw), or the weighted sum, of held-out scores."""
    if selection.weights is not None:
        return float(sum(w * float(scores[m]) for m, w in selection.weights.items()))
    return float(scores[selection.metric or ""])


def warm_start_spec(spec: ExperimentSpec, configs: Sequence[Mapping[str, Any]]
                    ) -> tuple[ExperimentSpec, list[dict[str, Any]]]:
    """``spec`` with ``configs`` (the previous run's best, best first) tried first.

    Each config keeps only the parameters the space still searches (constants and dropped
    parameters go); duplicates go; points the spec already lists come after them; at most
    ``num_samples`` points in all. Searchers that cannot take points (grid) get none.

    Returns:
        The new spec and the points it will try first.

    Example:
        >>> from tuning.spec import validate_spec
        >>> s = validate_spec({"trainable": "m:f", "metric": "acc", "num_samples": 2,
        ...                    "space": {"lr": {"type": "uniform", "low": 0, "high": 1}, "e": 3}})
        >>> new, pts = warm_start_spec(s, [{"lr": 0.5, "e": 9, "old": 1}, {"lr": 0.5}])
        >>> pts, new.searcher["points_to_evaluate"]
        ([{'lr': 0.5}], [{'lr': 0.5}])
    """
    searcher = dict(spec.searcher)
    if searcher.get("type") not in WARM_START_SEARCHERS or not configs:
        return spec, []
    tunable = [k for k, v in spec.build_space().items() if isinstance(v, Domain)]
    existing = [dict(p) for p in searcher.get("points_to_evaluate") or []]
    points: list[dict[str, Any]] = []
    for cfg in [*configs, *existing]:
        p = {k: cfg[k] for k in tunable if k in cfg}
        if p and p not in points:
            points.append(p)
    points = points[: spec.num_samples]
    if not points:
        return spec, []
    searcher["points_to_evaluate"] = points
    from tuning.spec import validate_spec

    new = validate_spec({**spec.model_dump(mode="python"), "searcher": searcher})
    return new, points


def final_config(best_config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None,
                 why: str = "no trial reported the metric") -> dict[str, Any]:
    """The config the final model is fitted with: the tuning run's best, then ``overrides``."""
    if best_config is None:
        raise ValueError(f"the tuning run has no best trial ({why}): nothing to retrain")
    return {**dict(best_config), **dict(overrides or {})}


def resolve_callable(path: str, field: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a SpecError naming the retrain parameter ``field``."""
    return resolve_trainable(path, field)


def check_retrain_options(model_name: str, fit: str, evaluate: str, warm_start_top_k: int,
                          holdout_mode: str | None, min_improvement: float) -> None:
    """Validate the retrain flow's own parameters; SpecError naming the parameter."""
    import re

    if not isinstance(model_name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                                                       model_name):
        raise SpecError(f"model_name must be letters, digits, '.', '_' or '-' (a registered "
                        f"model name), got {model_name!r}")
    if isinstance(warm_start_top_k, bool) or not isinstance(warm_start_top_k, int) or \
            warm_start_top_k < 0:
        raise SpecError(f"warm_start_top_k must be an integer >= 0, got {warm_start_top_k!r}")
    if holdout_mode not in (None, "min", "max"):
        raise SpecError(f"holdout_mode must be 'min', 'max' or null (the spec's mode), got "
                        f"{holdout_mode!r}")
    if not isinstance(min_improvement, (int, float)) or min_improvement < 0:
        raise SpecError(f"min_improvement must be a number >= 0, got {min_improvement!r}")
    resolve_callable(fit, "fit")
    resolve_callable(evaluate, "evaluate")
