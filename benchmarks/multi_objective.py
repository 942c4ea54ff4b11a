"""Multi-objective search and scheduling compared at equal compute on the simulated backend.

The problem is :class:`~tuning.backends.tradeoff.TradeoffCurves` (``max_t = 81``): accuracy
(max) learned over iterations against a latency (min) fixed by the model's width, config
``width`` (uniform 0..1), ``lr`` (log-uniform 1e-4..1e-1) and ``momentum`` (uniform 0..1). Its
Pareto front is known: ``lr = 1e-2, momentum = 0.7``, any width, the curve
``(0.70 + 0.25 (1 - (1 - w)^2), 2 + 18 w^1.5)``.

Every method runs the real :class:`~tuning.controller.Controller` on a
:class:`~tuning.backends.simulated.SimulatedBackend` with 4 workers, for ``--seeds`` seeds. The
baseline is FIFO + random search with exactly ``--n`` trials (``n * 81`` iterations); every
other method gets the same total compute (``Budget.total_iterations = n * 81``) and a sample
count so large that the budget ends it.

Quality is the **hypervolume** of the fully trained trials (those that reached ``max_t``: the
models one could deploy), each at its last reported ``(accuracy, latency_ms)``, above the
reference point ``accuracy = 0.5, latency_ms = 25`` (worse than any useful model in both),
divided by the hypervolume of the known front (computed on 10,001 points of it): 1.0 is the
whole front. Per method it reports the final normalised hypervolume (mean ± std over seeds, the
paired difference to the baseline, seeds it beats the baseline on) and the compute to reach the
baseline's final hypervolume: per seed, the cumulative iterations (all trials, in the order the
virtual clock delivered the results) at the first full-trained result after which the method's
hypervolume is at least the baseline's final one on that seed; the median over seeds (a seed
that never got there counts as infinite) and its ratio to the baseline's compute.

    .venv/bin/python benchmarks/multi_objective.py [--seeds 20] [--n 32] [--jobs 2]
        [--write-docs]

Prints, last, one ``ratio`` line per method.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuning._pareto import front_indices, hypervolume_2d
from tuning.backends.simulated import SimulatedBackend
from tuning.backends.tradeoff import TradeoffCurves, true_front
from tuning.controller import Budget, Controller
from tuning.experiment import Journal
from tuning.schedulers import FIFO, MOASHA
from tuning.schedulers._base import Scheduler
from tuning.searchers import OptunaSearch, RandomSearch, Searcher
from tuning.space import Space, loguniform, uniform

MAX_T = 81
WORKERS = 4
METRICS, MODES = ["accuracy", "latency_ms"], ["max", "min"]
#: the reference point, in (accuracy, latency_ms); larger-is-better form (0.5, -25)
REFERENCE = (0.5, 25.0)
BASELINE = "random + FIFO"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "multi_objective.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def space() -> dict[str, Any]:
    return {"width": uniform(0, 1), "lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}


@dataclass(frozen=True)
class Method:
    """One row: ``make(n) -> (scheduler, searcher, num_samples)``."""

    name: str
    make: Callable[[int], tuple[Scheduler, Searcher, int]]
    capped: bool = True  # False: the baseline, ended by its sample count alone


def _moasha(variant: str = "stop") -> MOASHA:
    return MOASHA(max_t=MAX_T, grace_period=1, reduction_factor=3, variant=variant)


def methods() -> list[Method]:
    big = 100_000  # num_samples: the iteration budget ends these methods
    return [
        Method(BASELINE, lambda n: (FIFO(), RandomSearch(), n), capped=False),
        Method("NSGA-II + FIFO", lambda n: (
            FIFO(), OptunaSearch("nsga2", sampler_kwargs={"population_size": 8}), big)),
        Method("MO-TPE + FIFO", lambda n: (FIFO(), OptunaSearch("tpe"), big)),
        Method("random + MO-ASHA", lambda n: (_moasha(), RandomSearch(), big)),
        Method("MO-TPE + MO-ASHA", lambda n: (_moasha(), OptunaSearch("tpe"), big)),
        Method("random + MO-ASHA promote", lambda n: (_moasha("promote"), RandomSearch(), big)),
    ]


class LeanJournal(Journal):
    """A ``memory://`` journal that keeps events as dicts and skips the ``state`` snapshots
    (resume only; no decision reads them)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.events: list[dict[str, Any]] = []

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        self._seq += 1
        record = {"seq": self._seq, "event": event, **data}
        if event != "state":
            self.events.append(record)
        return record

    def flush(self) -> None:
        return None

    def read(self) -> list[dict[str, Any]]:
        return list(self.events)


_names = itertools.count()


def normaliser() -> float:
    """The hypervolume of the known front above :data:`REFERENCE`."""
    return hypervolume_2d([(a, -ms) for a, ms in true_front()], (REFERENCE[0], -REFERENCE[1]))


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Of ``(accuracy, latency_ms)`` points, above :data:`REFERENCE`."""
    return hypervolume_2d([(a, -ms) for a, ms in points], (REFERENCE[0], -REFERENCE[1]))


def trace_of(events: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], int]:
    """``(cumulative iterations, hypervolume so far)`` at each fully trained result, in the
    order results arrived, and the total iterations."""
    done: list[tuple[float, float]] = []
    trace: list[tuple[int, float]] = []
    count = 0
    for e in events:
        if e["event"] != "result":
            continue
        count += 1
        r = e["result"]
        if int(r["training_iteration"]) >= MAX_T:
            done.append((float(r["accuracy"]), float(r["latency_ms"])))
            trace.append((count, hypervolume(done)))
    return trace, count


CURVES = {"realistic": True, "parallel": False}  # TradeoffCurves(crossing=...)


def run_method(method: Method, seed: int, n: int, curves: str = "realistic") -> dict[str, Any]:
    """One method on one seed: its final hypervolume, compute and trace."""
    scheduler, searcher, num_samples = method.make(n)
    name = f"mo-bench-{os.getpid()}-{next(_names)}"
    url = f"memory://{name}"
    journal = LeanJournal(url)
    ctl = Controller(
        name=name, trainable=TradeoffCurves(max_t=MAX_T, crossing=CURVES[curves]),
        space=Space(space()),
        metric=METRICS, mode=MODES, scheduler=scheduler, searcher=searcher,
        backend=SimulatedBackend(n_workers=WORKERS), journal=journal, storage=url,
        budget=Budget(num_samples=num_samples,
                      total_iterations=n * MAX_T if method.capped else None), seed=seed)
    t0 = time.perf_counter()
    ctl.run()
    wall = time.perf_counter() - t0
    trace, count = trace_of(journal.events)
    if count != ctl.iterations_total:
        raise RuntimeError(f"{method.name}: {count} results seen, "
                           f"iterations_total={ctl.iterations_total}")
    full = [t for t in ctl.trials.values() if t.iteration >= MAX_T]
    points = [(float(t.last_result["accuracy"]), float(t.last_result["latency_ms"]))
              for t in full if t.last_result is not None]
    front = front_indices([(a, -ms) for a, ms in points])
    return {"method": method.name, "seed": seed, "curves": curves, "hv": hypervolume(points),
            "trace": trace,
            "compute": ctl.iterations_total, "configs": len(ctl.trials), "n_full": len(points),
            "n_front": len(front), "wall": wall,
            "all_terminal": all(t.is_terminal for t in ctl.trials.values())}


def _job(args: tuple[int, int, int, str]) -> dict[str, Any]:
    i, seed, n, curves = args
    return run_method(methods()[i], seed, n, curves)


def compute_to(trace: list[tuple[int, float]], target: float) -> int | None:
    """Cumulative iterations at the first point of ``trace`` at or above ``target``.

    Example:
        >>> compute_to([(81, 0.2), (400, 0.5)], 0.4)
        400
    """
    return next((it for it, hv in trace if hv >= target - 1e-12), None)


def summarize(runs: list[dict[str, Any]], n: int, norm: float) -> list[dict[str, Any]]:
    base = {r["seed"]: r["hv"] for r in runs if r["method"] == BASELINE}
    rows = []
    for m in methods():
        mine = sorted((r for r in runs if r["method"] == m.name), key=lambda r: r["seed"])
        if not mine:
            continue
        hvs = [r["hv"] / norm for r in mine]
        hits = [compute_to(r["trace"], base[r["seed"]]) for r in mine]
        reached = [h for h in hits if h is not None]
        med = statistics.median([math.inf if h is None else h for h in hits])
        med_v = None if math.isinf(med) else med
        diffs = [(r["hv"] - base[r["seed"]]) / norm for r in mine]
        rows.append({
            "method": m.name, "mean": statistics.fmean(hvs),
            "std": statistics.stdev(hvs) if len(hvs) > 1 else 0.0,
            "delta": statistics.fmean(diffs),
            "delta_se": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1
            else 0.0,
            "wins": sum(d > 0 for d in diffs), "seeds": len(mine),
            "compute": statistics.fmean(r["compute"] for r in mine),
            "configs": statistics.fmean(r["configs"] for r in mine),
            "n_full": statistics.fmean(r["n_full"] for r in mine),
            "n_front": statistics.fmean(r["n_front"] for r in mine),
            "median_to": med_v, "ratio": None if med_v is None else med_v / (n * MAX_T),
            "median_reached": statistics.median(reached) if reached else None,
            "reached": len(reached), "wall": sum(r["wall"] for r in mine),
            "all_terminal": all(r["all_terminal"] for r in mine)})
    return rows


def table(rows: list[dict[str, Any]], n: int) -> str:
    head = ("| method | normalised hypervolume at equal compute (mean ± std) | paired difference "
            "to random+FIFO (mean ± s.e.) | beats random+FIFO (seeds) | compute used "
            "(iterations, mean) | configs tried (mean) | fully trained (mean) | front size "
            "(mean) | median compute to random+FIFO's final hypervolume | ratio to "
            f"random+FIFO's compute ({n * MAX_T}) | seeds reached |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        base = r["method"] == BASELINE
        med = "not reached" if r["median_to"] is None else f"{r['median_to']:.0f}"
        if r["median_to"] is None and r["median_reached"] is not None:
            med += f" (median of the seeds that reached it: {r['median_reached']:.0f})"
        lines.append(
            f"| {r['method']} | {r['mean']:.4f} ± {r['std']:.4f} | "
            f"{'—' if base else format(r['delta'], '+.4f') + ' ± ' + format(r['delta_se'], '.4f')}"
            f" | {'—' if base else str(r['wins']) + '/' + str(r['seeds'])} | "
            f"{r['compute']:.0f} | {r['configs']:.1f} | {r['n_full']:.1f} | {r['n_front']:.1f} | "
            f"{med} | {'—' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
            f"{r['reached']}/{r['seeds']} |")
    return "\n".join(lines)


def decision_table(sizes: tuple[int, ...] = (100, 1000, 10000), repeats: int = 20) -> str:
    """Microseconds per MO-ASHA stop decision (two metrics, a constraint) at a rung already
    holding ``n`` trials, against ASHA's single-metric decision at the same rung size."""
    import numpy as np

    from tuning._trial import Trial
    from tuning.schedulers import ASHA

    head = ("| trials at the rung | MO-ASHA stop decision (µs) | ASHA stop decision (µs) | "
            "ratio |")
    lines = [head, "|---|---|---|---|"]
    for n in sizes:
        rng = np.random.default_rng(n)
        out = []
        for cls in (MOASHA, ASHA):
            s = cls(max_t=3, grace_period=1, reduction_factor=3)
            if cls is MOASHA:
                s.set_objective(METRICS, MODES, constraints={"latency_ms": {"max": 18}})
            else:
                s.set_objective("accuracy", "max")
            for i in range(n):
                s.on_result(Trial(f"t{i}", {}), {"training_iteration": 1,
                                                 "accuracy": float(rng.uniform()),
                                                 "latency_ms": float(rng.uniform(2, 20))})
            t0 = time.perf_counter()
            for j in range(repeats):
                s.on_result(Trial(f"new{j}", {}), {"training_iteration": 1,
                                                   "accuracy": float(rng.uniform()),
                                                   "latency_ms": float(rng.uniform(2, 20))})
            out.append((time.perf_counter() - t0) / repeats * 1e6)
        lines.append(f"| {n} | {out[0]:.0f} | {out[1]:.0f} | {out[0] / out[1]:.0f} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS.read_text() if DOCS.exists() else "# Multi-objective tuning\n"
    if START not in doc or END not in doc:
        doc += f"\n{START}\n{END}\n"
    DOCS.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END),
                           lambda _: f"{START}\n{text}\n{END}", doc, flags=re.DOTALL))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", default=",".join(CURVES),
                   help=f"comma-separated variants of the problem: {', '.join(CURVES)}")
    p.add_argument("--seeds", type=int, default=20, help="seeds per method (0..seeds-1)")
    p.add_argument("--n", type=int, default=32,
                   help="random+FIFO's trials; every method's budget is n * 81 iterations")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--only", default=None, help="a substring: run only matching methods")
    p.add_argument("--write-docs", action="store_true",
                   help=f"replace the table between the markers in {DOCS.name}")
    p.add_argument("--decisions", action="store_true",
                   help="also time MO-ASHA's stop decisions at large rungs")
    a = p.parse_args(argv)
    families = [c.strip() for c in a.curves.split(",") if c.strip()]
    if a.n < 1 or a.seeds < 1:
        raise SystemExit("--n and --seeds must be >= 1")
    if not families or any(c not in CURVES for c in families):
        raise SystemExit(f"--curves: one or more of {', '.join(CURVES)}, got {a.curves!r}")
    picked = [i for i, m in enumerate(methods())
              if i == 0 or a.only is None or a.only.lower() in m.name.lower()]
    jobs = [(i, s, a.n, c) for c in families for i in picked for s in range(a.seeds)]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with get_context("fork").Pool(a.jobs) as pool:
            runs = pool.map(_job, jobs, chunksize=1)
    else:
        runs = [_job(j) for j in jobs]
    wall = time.perf_counter() - t0
    norm = normaliser()
    texts, all_rows = [], {}
    for c in families:
        rows = summarize([r for r in runs if r["curves"] == c], a.n, norm)
        all_rows[c] = rows
        text = table(rows, a.n)
        head = (f"`{c}` (TradeoffCurves(max_t={MAX_T}, crossing={CURVES[c]})), {WORKERS} "
                f"workers, {a.seeds} seeds, budget {a.n} x {MAX_T} = {a.n * MAX_T} iterations; "
                f"reference point accuracy = {REFERENCE[0]}, latency_ms = {REFERENCE[1]:g}; "
                f"hypervolume of the known front {norm:.4f}")
        print(head + "\n\n" + text + "\n")
        for r in rows:
            print(f"wall {c} {r['method']}: {r['wall']:.1f} s over {r['seeds']} seeds; every "
                  f"trial terminal: {r['all_terminal']}")
        print()
        texts.append(f"{head}.\n\n{text}")
    print(f"{wall:.0f} s wall for all runs, {a.jobs} processes")
    if a.decisions:
        texts.append(decision_table())
        print("\n" + texts[-1])
    if a.write_docs:
        write_docs("\n\n".join(texts))
        print(f"\ntables written to {DOCS}")
    print()
    for c, rows in all_rows.items():
        for r in rows:
            ratio = "not reached" if r["ratio"] is None else f"{r['ratio']:.3f}"
            print(f"ratio {c} {r['method']}: {ratio} (compute to {BASELINE}'s final "
                  f"hypervolume / {BASELINE}'s compute; {r['reached']}/{r['seeds']} seeds "
                  "reached)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
