"""A small PyTorch ConvNet tuned with ASHA on scikit-learn's bundled digits (8x8 images).

The digits set is the offline stand-in for MNIST: no torchvision and no network needed.

Run the demo (24 trials, ASHA up to 10 epochs, a Dask worker per core)::

    python -m tuning.examples.digits                      # or: python examples/digits.py
    python -m tuning.examples.digits --num-samples 4 --max-t 3 --storage /tmp/runs

The same experiment as YAML: ``rungflow run examples/digits.yaml``.

Multi-objective: :func:`train_digits_mo` also tunes the network's width and reports the
measured inference latency and the parameter count; ``rungflow run examples/digits_mo.yaml``
(accuracy against latency with MO-ASHA, a latency limit as a constraint) or
``python -m examples.digits --multi-objective``.
"""

from __future__ import annotations

import argparse
import os
from functools import lru_cache
from typing import Any

import numpy as np

from tuning import ASHA, get_checkpoint, loguniform, report, uniform

__all__ = ["evaluate_holdout", "evaluate_holdout_mo", "fit_final", "load_holdout", "load_split",
           "main", "make_model", "measure_latency_ms", "train_digits", "train_digits_mo"]

SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # (n, 1, 8, 8)
    return x, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _train_test() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed (seeded, stratified 80/20) split of all digits into the training part and the
    held-out test part. Tuning never sees the test part; only :func:`evaluate_holdout` does."""
    from sklearn.model_selection import train_test_split

    x, y = _load_all()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SPLIT_SEED,
                                              stratify=y)
    return x_tr, x_te, y_tr, y_te


@lru_cache(maxsize=1)
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tuning split: a fixed (seeded, stratified 80/20) train/validation split *inside the
    training part* (the held-out test part stays out), images scaled to [0, 1]."""
    from sklearn.model_selection import train_test_split

    x, _, y, _ = _train_test()
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=SPLIT_SEED,
                                              stratify=y)
    return x_tr, x_va, y_tr, y_va


def make_model(width: int = 16) -> Any:
    """conv 1->w 3x3, relu, conv w->2w 3x3, relu, average pool to 4x4, linear to 10 (w = 16:
    the demo's network)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, kernel_size=3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 4 * 4, 10))


#: images per timed forward pass, and timed passes (the median is reported)
LATENCY_BATCH, LATENCY_REPEATS = 256, 7


def measure_latency_ms(model: Any, x: Any) -> float:
    """Milliseconds for one forward pass of ``LATENCY_BATCH`` images of ``x`` on one thread in
    eval mode: the median of ``LATENCY_REPEATS`` timed passes after a warm-up one."""
    import time

    import torch

    model.eval()
    batch = x[:LATENCY_BATCH]
    times = []
    with torch.no_grad():
        model(batch)
        for _ in range(LATENCY_REPEATS):
            t0 = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - t0)
    return 1000.0 * sorted(times)[len(times) // 2]


def _evaluate(model: Any, x: Any, y: Any) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F

    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item()
    return acc, loss


def _train_epoch(model: Any, opt: Any, x: Any, y: Any, batch_size: int, gen: Any) -> None:
    import torch
    from torch.nn import functional as F

    model.train()
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def train_digits(config: dict[str, Any]) -> None:
    """The trainable: SGD(lr, momentum) on the ConvNet, one ``report()`` per epoch.

    Config keys: ``lr``, ``momentum``, optional ``epochs`` (20), ``batch_size`` (64), ``seed`` (0).
    Reports ``mean_accuracy`` and ``loss`` on the validation split with a checkpoint holding the
    model and optimizer state and the epoch; resumes from ``get_checkpoint()``.
    """
    import torch

    torch.set_num_threads(1)  # one trial per core
    torch.manual_seed(int(config.get("seed", 0)))
    x_tr, x_va, y_tr, y_va = (torch.from_numpy(a) for a in load_split())
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]),
                          momentum=float(config["momentum"]))
    start = 0
    ckpt = get_checkpoint()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"]) + 1
    batch_size = int(config.get("batch_size", 64))
    for epoch in range(start, int(config.get("epochs", 20))):
        gen = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1000 + epoch)
        _train_epoch(model, opt, x_tr, y_tr, batch_size, gen)
        acc, loss = _evaluate(model, x_va, y_va)
        report(mean_accuracy=acc, loss=loss,
               checkpoint={"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "epoch": epoch})


def train_digits_mo(config: dict[str, Any]) -> None:
    """The multi-objective trainable: :func:`train_digits` with the network's ``width`` (the
    first convolution's channels, default 16) tuned too. Reports per epoch ``mean_accuracy``
    and ``loss`` on the validation split, ``latency_ms`` (:func:`measure_latency_ms` on the
    validation images) and ``params`` (the parameter count), with a checkpoint.
    """
    import torch

    torch.set_num_threads(1)  # one trial per core; latency measured on one thread
    torch.manual_seed(int(config.get("seed", 0)))
    x_tr, x_va, y_tr, y_va = (torch.from_numpy(a) for a in load_split())
    model = make_model(int(config.get("width", 16)))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]),
                          momentum=float(config["momentum"]))
    start = 0
    ckpt = get_checkpoint()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"]) + 1
    batch_size = int(config.get("batch_size", 64))
    for epoch in range(start, int(config.get("epochs", 20))):
        gen = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1000 + epoch)
        _train_epoch(model, opt, x_tr, y_tr, batch_size, gen)
        acc, loss = _evaluate(model, x_va, y_va)
        report(mean_accuracy=acc, loss=loss, latency_ms=measure_latency_ms(model, x_va),
               params=params, checkpoint={"model": model.state_dict(),
                                          "optimizer": opt.state_dict(), "epoch": epoch})


def evaluate_holdout_mo(model: Any) -> dict[str, float]:
    """Accuracy and measured latency of a fitted ConvNet on the held-out test part: what the
    retrain flow's constraint-based champion rule compares (``select="max mean_accuracy s.t.
    latency_ms <= 10"``)."""
    import torch

    torch.set_num_threads(1)
    x, y = (torch.from_numpy(a) for a in load_holdout())
    acc, _ = _evaluate(model, x, y)
    return {"mean_accuracy": float(acc), "latency_ms": measure_latency_ms(model, x)}


def load_holdout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test part (20% of all digits, stratified, seeded): never seen in tuning."""
    _, x_te, _, y_te = _train_test()
    return x_te, y_te


def fit_final(config: dict[str, Any]) -> Any:
    """Retrain a config on the whole training part (the tuning train and validation splits
    together) and return the fitted ConvNet.

    Config keys: those of :func:`train_digits`, plus ``final_epochs`` (default: ``epochs``,
    else 20) for the number of epochs here; ``final_epochs: 0`` returns the untrained model.
    """
    import torch

    torch.manual_seed(int(config.get("seed", 0)))
    x_np, _, y_np, _ = _train_test()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = make_model(int(config.get("width", 16)))
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]),
                          momentum=float(config["momentum"]))
    epochs = int(config.get("final_epochs", config.get("epochs", 20)))
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1000 + epoch)
        _train_epoch(model, opt, x, y, int(config.get("batch_size", 64)), gen)
    return model.eval()


def evaluate_holdout(model: Any) -> float:
    """Accuracy of a fitted ConvNet on the held-out test part (higher is better)."""
    import torch

    x, y = (torch.from_numpy(a) for a in load_holdout())
    acc, _ = _evaluate(model, x, y)
    return float(acc)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=24, help="number of trials (24)")
    p.add_argument("--max-t", type=int, default=10, help="ASHA's max epochs per trial (10)")
    p.add_argument("--storage", default=os.environ.get("RUNGFLOW_STORAGE", "./runs"),
                   help="storage path for the journal, checkpoints and MLflow (./runs)")
    p.add_argument("--workers", type=int, default=None,
                   help="Dask workers (default: one per core)")
    p.add_argument("--multi-objective", action="store_true",
                   help="tune width too, accuracy against measured latency (MO-ASHA)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    """Tune lr and momentum with ASHA; print the best trial and how to open the MLflow UI."""
    from tuning import Tuner

    args = _parse(argv)
    backend: dict[str, Any] = {"type": "dask"}
    if args.workers:
        backend["n_workers"] = args.workers
    if args.multi_objective:
        return main_mo(args, backend)
    tuner = Tuner(train_digits,
                  space={"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0.1, 0.9)},
                  metric="mean_accuracy", mode="max", num_samples=args.num_samples,
                  scheduler=ASHA(max_t=args.max_t, grace_period=1, reduction_factor=3),
                  backend=backend, storage_path=args.storage, seed=0, name="digits-asha")
    result = tuner.run()
    best = result.best_trial
    print(f"\n{len(result.trials)} trials in {result.path}")
    if best is None:
        print("no trial reported mean_accuracy")
    else:
        print(f"best trial: {best.trial_id}  mean_accuracy={result.best_metric:.4f}  "
              f"epochs={best.iteration}")
        print(f"  config:     {result.best_config}")
        print(f"  checkpoint: {result.best_checkpoint}")
    print("\nOpen the MLflow UI on this run's store:")
    print(f"  mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return result


def main_mo(args: argparse.Namespace, backend: dict[str, Any]) -> Any:
    """Accuracy against measured latency: MO-ASHA over lr, momentum and width, latency at most
    10 ms per 256 images; print the Pareto front and the most accurate model within 5 ms."""
    from tuning import MOASHA, Tuner, randint

    tuner = Tuner(train_digits_mo,
                  space={"lr": loguniform(1e-3, 1e-1), "momentum": uniform(0.1, 0.9),
                         "width": randint(2, 49)},
                  metric=["mean_accuracy", "latency_ms"], mode=["max", "min"],
                  constraints={"latency_ms": {"max": 10.0}}, num_samples=args.num_samples,
                  scheduler=MOASHA(max_t=args.max_t, grace_period=1, reduction_factor=3),
                  searcher={"type": "optuna", "sampler": "tpe"}, backend=backend,
                  storage_path=args.storage, seed=0, name="digits-mo")
    result = tuner.run()
    print(f"\n{len(result.trials)} trials in {result.path}; Pareto front:")
    print(result.pareto_front().to_string(index=False))
    pick = result.best_trial_by(select="max mean_accuracy s.t. latency_ms <= 5")
    if pick is not None:
        print(f"\nmost accurate within 5 ms: {pick.trial_id} {pick.last_result}")
    return result


if __name__ == "__main__":
    main()
