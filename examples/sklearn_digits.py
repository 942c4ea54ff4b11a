"""A scikit-learn random forest on the bundled digits, with the number of trees as the resource.

Each step adds ``trees_per_step`` trees (``warm_start=True``) and reports the validation
accuracy, so ASHA can stop weak configurations after a few trees. The checkpoint is plain
numbers (the number of trees so far): a forest with a fixed ``random_state`` grown to ``n``
trees in one fit equals the one grown step by step, so resuming refits it deterministically.

Run the demo::

    python -m tuning.examples.sklearn_digits --num-samples 8 --max-t 10

The same experiment as YAML: ``rungflow run examples/sklearn.yaml``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from tuning import ASHA, get_checkpoint, randint, report, uniform

__all__ = ["main", "train_forest"]


def _split() -> tuple[Any, Any, Any, Any]:
    from tuning.examples.digits import load_split

    x_tr, x_va, y_tr, y_va = load_split()  # the ConvNet's split, flattened to 64 features
    return x_tr.reshape(len(x_tr), -1), x_va.reshape(len(x_va), -1), y_tr, y_va


def train_forest(config: dict[str, Any]) -> None:
    """The trainable: a RandomForestClassifier grown ``trees_per_step`` trees per report.

    Config keys: ``max_depth``, ``max_features`` (a fraction), ``min_samples_leaf``, optional
    ``trees_per_step`` (5), ``steps`` (10), ``seed`` (0). Reports ``mean_accuracy`` and
    ``n_estimators``; the checkpoint is ``{"n_estimators": n, "step": k}``.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score

    x_tr, x_va, y_tr, y_va = _split()
    per_step = int(config.get("trees_per_step", 5))
    model = RandomForestClassifier(
        n_estimators=per_step, max_depth=int(config.get("max_depth", 8)),
        max_features=float(config.get("max_features", 0.3)),
        min_samples_leaf=int(config.get("min_samples_leaf", 1)),
        random_state=int(config.get("seed", 0)), warm_start=True, n_jobs=1)
    start = 0
    ckpt = get_checkpoint()
    if ckpt is not None:
        start = int(ckpt["step"])
        model.set_params(n_estimators=int(ckpt["n_estimators"]))
        model.fit(x_tr, y_tr)  # the same trees as grown step by step
    for step in range(start + 1, int(config.get("steps", 10)) + 1):
        model.set_params(n_estimators=step * per_step)
        model.fit(x_tr, y_tr)  # warm start: fits only the new trees
        acc = accuracy_score(y_va, model.predict(x_va))
        report(mean_accuracy=acc, n_estimators=len(model.estimators_),
               checkpoint={"n_estimators": len(model.estimators_), "step": step})


def main(argv: list[str] | None = None) -> Any:
    """Tune the forest with ASHA over the number of tree increments."""
    from tuning import Tuner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-t", type=int, default=10, help="max steps of trees_per_step trees")
    p.add_argument("--storage", default=os.environ.get("RUNGFLOW_STORAGE", "./runs"))
    args = p.parse_args(argv)
    result = Tuner(train_forest,
                   space={"max_depth": randint(2, 17), "max_features": uniform(0.05, 0.6),
                          "min_samples_leaf": randint(1, 9), "steps": args.max_t},
                   metric="mean_accuracy", mode="max", num_samples=args.num_samples,
                   scheduler=ASHA(max_t=args.max_t, grace_period=1, reduction_factor=3),
                   storage_path=args.storage, seed=0, name="digits-forest").run()
    print(f"best: {result.best_metric} with {result.best_config}")
    print(f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return result


if __name__ == "__main__":
    main()
