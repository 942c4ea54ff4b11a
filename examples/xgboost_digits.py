"""XGBoost on the bundled digits, with boosting rounds as the resource.

A :class:`xgboost.callback.TrainingCallback` reports after every round, so a scheduler can stop
a weak configuration after a few rounds. The checkpoint is the booster as raw JSON (a string),
and a resumed trial continues boosting from it with ``xgb_model=``.

Run the demo::

    python -m tuning.examples.xgboost_digits --num-samples 8 --max-t 30
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import xgboost as xgb

from tuning import ASHA, get_checkpoint, loguniform, randint, report, uniform

__all__ = ["ReportCallback", "main", "train_xgboost"]


class ReportCallback(xgb.callback.TrainingCallback):
    """Calls :func:`tuning.report` after each boosting round with the validation metrics."""

    def __init__(self, data_name: str = "validation") -> None:
        super().__init__()
        self.data_name = data_name

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        log = evals_log[self.data_name]
        merror, mlogloss = float(log["merror"][-1]), float(log["mlogloss"][-1])
        rounds = model.num_boosted_rounds()  # epoch restarts at 0 when resuming
        report(mean_accuracy=1.0 - merror, mlogloss=mlogloss, rounds=rounds,
               checkpoint={"booster": bytes(model.save_raw("json")).decode(),
                           "rounds": rounds})
        return False


def train_xgboost(config: dict[str, Any]) -> None:
    """The trainable: ``xgb.train`` for up to ``rounds`` (default 30) rounds, one report each.

    Config keys: ``eta``, ``max_depth``, ``subsample``, ``min_child_weight``, optional
    ``rounds`` and ``seed``.
    """
    from tuning.examples.sklearn_digits import _split

    x_tr, x_va, y_tr, y_va = _split()
    dtrain, dval = xgb.DMatrix(x_tr, label=y_tr), xgb.DMatrix(x_va, label=y_va)
    params = {"objective": "multi:softprob", "num_class": 10, "eval_metric": ["mlogloss", "merror"],
              "eta": float(config.get("eta", 0.3)), "max_depth": int(config.get("max_depth", 6)),
              "subsample": float(config.get("subsample", 1.0)),
              "min_child_weight": float(config.get("min_child_weight", 1.0)),
              "tree_method": "hist", "nthread": 1, "seed": int(config.get("seed", 0))}
    done, model = 0, None
    ckpt = get_checkpoint()
    if ckpt is not None:
        model = xgb.Booster(model_file=bytearray(ckpt["booster"].encode()))
        done = int(ckpt["rounds"])
    remaining = int(config.get("rounds", 30)) - done
    if remaining <= 0:
        return
    xgb.train(params, dtrain, num_boost_round=remaining, evals=[(dval, "validation")],
              xgb_model=model, callbacks=[ReportCallback()], verbose_eval=False)


def main(argv: list[str] | None = None) -> Any:
    """Tune XGBoost with ASHA over boosting rounds."""
    from tuning import Tuner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-t", type=int, default=30, help="max boosting rounds")
    p.add_argument("--storage", default=os.environ.get("RUNGFLOW_STORAGE", "./runs"))
    args = p.parse_args(argv)
    result = Tuner(train_xgboost,
                   space={"eta": loguniform(0.01, 0.5), "max_depth": randint(2, 9),
                          "subsample": uniform(0.5, 1.0), "min_child_weight": uniform(0.5, 5.0),
                          "rounds": args.max_t},
                   metric="mean_accuracy", mode="max", num_samples=args.num_samples,
                   scheduler=ASHA(max_t=args.max_t, grace_period=2, reduction_factor=3),
                   storage_path=args.storage, seed=0, name="digits-xgboost").run()
    print(f"best: {result.best_metric} with {result.best_config}")
    print(f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return result


if __name__ == "__main__":
    main()
