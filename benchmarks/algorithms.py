"""Search and scheduling algorithms compared at equal compute on the simulated backend.

Every method tunes ``lr`` (log-uniform 1e-4..1e-1) and ``momentum`` (uniform 0..1) of a
synthetic curve family with ``max_t=81`` iterations (``--curves``): ``crossing``,
:class:`~tuning.backends.simulated.CrossingCurves` (curves that cross: a high ``lr`` learns fast
and ends low, so early rungs point at the wrong ``lr``), and ``realistic``,
:class:`~tuning.backends.simulated.RealisticCurves` (curves that cross only in the first few
iterations), on a :class:`SimulatedBackend` with 4 workers, for ``--seeds`` seeds. The baseline
is FIFO + random search with exactly ``--n`` trials; every other method gets the same total
compute, ``Budget.total_iterations = n * 81``, and a sample count so large that the budget (or
the method's own end: a PBT population) ends it. For each family it first measures how well
early results rank configs: the Spearman correlation, over random configs, of the accuracy at
``t = 1, 3, 9, 27`` with the accuracy at ``t = 81``. Per method it reports:

* the best *final* score: the best last-reported ``accuracy`` among trials that reached
  ``max_t`` (fully trained), mean and standard deviation over seeds;
* the compute to reach FIFO + random's quality: per seed, the cumulative iterations (all trials,
  in the order the virtual clock delivered the results) at the first result whose accuracy is
  ``>= 0.99 *`` FIFO + random's best final score of that seed; the median over all seeds (a seed
  that never got there counts as infinite: "not reached" when half or more never did), its ratio
  to FIFO + random's total compute (``n * 81``), and how many seeds got there.

Results go through the controller's real code; only the journal is lean by default: a
``memory://`` journal that does not serialize the per-wave ``state`` snapshot (used for resume
only; the decisions never read the journal). ``--journal memory`` uses the plain in-memory
journal: the same numbers, about 4x slower (see docs/algorithms.md, "Where the time goes").

    .venv/bin/python benchmarks/algorithms.py [--curves crossing,realistic] [--seeds 20] [--n 32]
        [--jobs 2] [--write-docs]

Prints, last, one ``ratio`` line per family and method (compute to within 1% / FIFO + random's
compute).
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

import numpy as np

from tuning.backends.simulated import (
    CrossingCurves,
    RealisticCurves,
    SimulatedBackend,
    SimulatedTrainable,
)
from tuning.controller import Budget, Controller
from tuning.experiment import Journal
from tuning.schedulers import ASHA, BOHB, FIFO, PBT, HyperBand, MedianStopping
from tuning.schedulers._base import Scheduler
from tuning.searchers import OptunaSearch, RandomSearch, Searcher
from tuning.space import Space, loguniform, uniform

MAX_T = 81
WORKERS = 4
TARGET = 0.99  # "within 1%" of FIFO + random's best final score
BASELINE = "FIFO + random"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"
CURVES: dict[str, Callable[..., SimulatedTrainable]] = {
    "crossing": CrossingCurves, "realistic": RealisticCurves}
RUNGS = (1, 3, 9, 27)


def markers(curves: str) -> tuple[str, str]:
    """The docs markers around one family's results."""
    return f"<!-- results:{curves}:start -->", f"<!-- results:{curves}:end -->"


def space() -> dict[str, Any]:
    return {"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}


@dataclass(frozen=True)
class Method:
    """How one row of the table is built: ``make()`` -> (scheduler, searcher, num_samples)."""

    name: str
    make: Callable[[int], tuple[Scheduler, Searcher, int]]
    capped: bool = True  # False: the baseline, ended by its sample count alone


def methods() -> list[Method]:
    big = 100_000  # num_samples: the iteration budget ends these methods, not the sample count
    muts = {"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}
    return [
        Method(BASELINE, lambda n: (FIFO(), RandomSearch(), n), capped=False),
        Method("ASHA stop + random", lambda n: (
            ASHA(max_t=MAX_T, grace_period=1, reduction_factor=3, variant="stop"),
            RandomSearch(), big)),
        Method("ASHA promote + random", lambda n: (
            ASHA(max_t=MAX_T, grace_period=1, reduction_factor=3, variant="promote"),
            RandomSearch(), big)),
        Method("HyperBand + random", lambda n: (
            HyperBand(max_t=MAX_T, grace_period=1, reduction_factor=3), RandomSearch(), big)),
        Method("BOHB", lambda n: (
            BOHB(max_t=MAX_T, grace_period=1, reduction_factor=3), RandomSearch(), big)),
        Method("Median stopping + random", lambda n: (
            MedianStopping(grace_period=1, min_samples_required=3, max_t=MAX_T),
            RandomSearch(), big)),
        Method("PBT (population 16) + random", lambda n: (
            PBT(perturbation_interval=9, hyperparam_mutations=muts, max_t=MAX_T),
            RandomSearch(), 16)),
        Method("PBT (population 32) + random", lambda n: (
            PBT(perturbation_interval=9, hyperparam_mutations=muts, max_t=MAX_T),
            RandomSearch(), 32)),
        Method("TPE + FIFO", lambda n: (FIFO(), OptunaSearch(sampler="tpe"), big)),
    ]


class LeanJournal(Journal):
    """A ``memory://`` journal that keeps events as dicts and skips the ``state`` snapshots.

    The controller builds and appends a full snapshot after every wave; on the virtual clock a
    wave is one iteration, so serializing those snapshots is most of a run's wall time.
    """

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.events: list[dict[str, Any]] = []

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        self._seq += 1
        record = {"seq": self._seq, "event": event, **data}
        if event != "state":
            self.events.append(record)
            if self.on_durable is not None:
                self.on_durable([record])
        return record

    def flush(self) -> None:
        return None

    def read(self) -> list[dict[str, Any]]:
        return list(self.events)


_names = itertools.count()


def rank_correlation(curves: str, n_configs: int = 2000, seed: int = 0) -> dict[int, float]:
    """Spearman correlation, over ``n_configs`` random configs, of the accuracy at each rung
    ``t`` in :data:`RUNGS` with the accuracy at ``t = 81`` (noise included)."""
    trainable = CURVES[curves](max_t=MAX_T)
    rng = np.random.default_rng(seed)
    sp = Space(space())
    acc = np.empty((n_configs, MAX_T))
    for i in range(n_configs):
        config = sp.sample(rng)
        state = trainable.init(config)
        for t in range(1, MAX_T + 1):
            state, metrics, _ = trainable.step(state, config, t)
            acc[i, t - 1] = metrics["accuracy"]
    ranks = acc.argsort(axis=0).argsort(axis=0).astype(float)
    return {t: float(np.corrcoef(ranks[:, t - 1], ranks[:, MAX_T - 1])[0, 1]) for t in RUNGS}


def run_method(method: Method, seed: int, n: int, journal: str = "lean",
               curves: str = "crossing") -> dict[str, Any]:
    """One method on one seed: its best final score, its compute and its improvement trace."""
    scheduler, searcher, num_samples = method.make(n)
    name = f"bench-{os.getpid()}-{next(_names)}"
    url = f"memory://{name}"
    backend = SimulatedBackend(n_workers=WORKERS)
    ctl = Controller(
        name=name, trainable=CURVES[curves](max_t=MAX_T), space=Space(space()),
        metric="accuracy", mode="max", scheduler=scheduler, searcher=searcher,
        backend=backend,
        journal=LeanJournal(url) if journal == "lean" else Journal(url), storage=url,
        budget=Budget(num_samples=num_samples,
                      total_iterations=n * MAX_T if method.capped else None),
        seed=seed)
    trace: list[tuple[int, float, float]] = []  # (iterations so far, virtual time, best so far)
    count = [0]

    def on_events(events: list[dict[str, Any]]) -> None:
        for e in events:
            if e["event"] != "result":
                continue
            count[0] += 1
            acc = e["result"].get("accuracy")
            if isinstance(acc, float) and not math.isnan(acc) and (
                    not trace or acc > trace[-1][2]):
                trace.append((count[0], backend.now, acc))

    t0 = time.perf_counter()
    ctl.run(on_events=on_events)
    wall = time.perf_counter() - t0
    if count[0] != ctl.iterations_total:
        raise RuntimeError(f"{method.name}: {count[0]} results seen, "
                           f"iterations_total={ctl.iterations_total}")
    finals = [t.last_result["accuracy"] for t in ctl.trials.values()
              if t.last_result and t.iteration >= MAX_T]
    exploits = pbt_exploits(ctl.journal.read())
    return {"method": method.name, "seed": seed, "curves": curves, "exploits": len(exploits),
            "exploits_ahead": sum(gap > 0 for gap in exploits),
            "exploits_behind": sum(gap < 0 for gap in exploits),
            "uncounted": sum(gap for gap in exploits if gap > 0),
            "best_final": max(finals, default=math.nan),
            "n_full": len(finals), "compute": ctl.iterations_total, "now": backend.now,
            "configs": len(ctl.trials), "trace": trace, "wall": wall,
            "all_terminal": all(t.is_terminal for t in ctl.trials.values())}


def _job(args: tuple[int, int, int, str, str]) -> dict[str, Any]:
    i, seed, n, journal, curves = args
    return run_method(methods()[i], seed, n, journal, curves)


def pbt_exploits(events: list[dict[str, Any]]) -> list[int]:
    """Per PBT exploit: the donor checkpoint's iteration minus the iteration the trial restarts
    at (simulated checkpoints are ``sim://<trial>/<iteration>#<state>``); > 0 is training not
    counted."""
    gaps = []
    for e, nxt in itertools.pairwise(events):
        if e["event"] == "exploit" and nxt["event"] == "segment_started":
            ckpt_iteration = int(str(e["checkpoint"]).split("#", 1)[0].rsplit("/", 1)[1])
            gaps.append(ckpt_iteration - int(nxt["start_iteration"]))
    return gaps


def compute_to(trace: list[tuple[int, float, float]], threshold: float) -> int | None:
    """Cumulative iterations at the first result ``>= threshold`` (None: never).

    Example:
        >>> compute_to([(1, 1.0, 0.5), (7, 2.0, 0.9)], 0.8)
        7
    """
    return next((it for it, _, best in trace if best >= threshold), None)


def summarize(runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    base = {r["seed"]: r["best_final"] for r in runs if r["method"] == BASELINE}
    rows = []
    for m in methods():
        mine = sorted((r for r in runs if r["method"] == m.name), key=lambda r: r["seed"])
        if not mine:
            continue
        scores = [r["best_final"] for r in mine if not math.isnan(r["best_final"])]
        hits = [compute_to(r["trace"], TARGET * base[r["seed"]]) for r in mine]
        reached = [h for h in hits if h is not None]
        # the median over all seeds, a seed that never got there counting as infinite compute
        med = statistics.median([math.inf if h is None else h for h in hits]) if hits else None
        med = None if med is None or math.isinf(med) else med
        wins = sum(r["best_final"] > base[r["seed"]] for r in mine)
        diffs = [r["best_final"] - base[r["seed"]] for r in mine]
        rows.append({
            "method": m.name, "mean": statistics.fmean(scores) if scores else math.nan,
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "no_full": len(mine) - len(scores), "wins": wins,
            "compute": statistics.fmean(r["compute"] for r in mine),
            "configs": statistics.fmean(r["configs"] for r in mine),
            "delta": statistics.fmean(diffs),
            "delta_se": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0,
            "median_reached": statistics.median(reached) if reached else None,
            "median_to": med, "ratio": None if med is None else med / (n * MAX_T),
            "reached": len(reached), "seeds": len(mine),
            "wall": sum(r["wall"] for r in mine),
            "exploits": statistics.fmean(r["exploits"] for r in mine),
            "exploits_ahead": statistics.fmean(r["exploits_ahead"] for r in mine),
            "exploits_behind": statistics.fmean(r.get("exploits_behind", 0) for r in mine),
            "uncounted": statistics.fmean(r["uncounted"] for r in mine),
            "all_terminal": all(r["all_terminal"] for r in mine)})
    return rows


def table(rows: list[dict[str, Any]], n: int) -> str:
    head = ("| method | best final score at equal compute (mean ± std) | paired difference to "
            "FIFO+random (mean ± s.e.) | beats FIFO+random (seeds) | compute used (iterations, mean) | configs tried (mean) | median compute "
            f"to ≥ 0.99 × FIFO+random's best | ratio to FIFO+random's compute ({n * MAX_T}) "
            "| seeds reached |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        score = f"{r['mean']:.4f} ± {r['std']:.4f}"
        if r["no_full"]:
            score += f" ({r['no_full']} seeds: no trial reached max_t)"
        med = "not reached" if r["median_to"] is None else f"{r['median_to']:.0f}"
        if r["median_to"] is None and r["median_reached"] is not None:
            med += f" (median of the seeds that reached it: {r['median_reached']:.0f})"
        delta = "—" if r["method"] == BASELINE else f"{r['delta']:+.4f} ± {r['delta_se']:.4f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        wins = "—" if r["method"] == BASELINE else f"{r['wins']}/{r['seeds']}"
        lines.append(f"| {r['method']} | {score} | {delta} | {wins} | {r['compute']:.0f} | "
                     f"{r['configs']:.1f} | {med} | {ratio} | {r['reached']}/{r['seeds']} |")
    return "\n".join(lines)


def correlation_line(rho: dict[int, float]) -> str:
    return ("Spearman correlation with the accuracy at t = 81 over 2000 random configs: " +
            ", ".join(f"t = {t}: {v:.2f}" for t, v in rho.items()))


def paired(runs: list[dict[str, Any]], method: str, against: str) -> str:
    """``method`` minus ``against``, best final score per seed: mean ± s.e. and wins."""
    mine = {r["seed"]: r["best_final"] for r in runs if r["method"] == method}
    base = {r["seed"]: r["best_final"] for r in runs if r["method"] == against}
    diffs = [mine[k] - base[k] for k in sorted(mine.keys() & base.keys())]
    if len(diffs) < 2:
        return f"{method} − {against}: too few seeds"
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    wins = sum(d > 0 for d in diffs)
    return (f"{method} − {against} (best final score, paired by seed): "
            f"{statistics.fmean(diffs):+.4f} ± {se:.4f}, better on {wins}/{len(diffs)} seeds")


def write_docs(curves: str, text: str) -> None:
    start, end = markers(curves)
    doc = DOCS.read_text() if DOCS.exists() else "# Algorithms\n"
    if start not in doc or end not in doc:
        doc += f"\n{start}\n{end}\n"
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{text}\n{end}",
                 doc, flags=re.DOTALL)
    DOCS.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", default=",".join(CURVES),
                   help=f"comma-separated curve families: {', '.join(CURVES)} (default: both)")
    p.add_argument("--seeds", type=int, default=20, help="seeds per method (0..seeds-1)")
    p.add_argument("--n", type=int, default=32,
                   help="FIFO+random's trials; the budget of every method is n * 81 iterations")
    p.add_argument("--budget", type=int, default=None,
                   help="alias: the iteration budget; sets --n to budget // 81")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--journal", choices=("lean", "memory"), default="lean")
    p.add_argument("--only", default=None, help="a substring: run only matching methods")
    p.add_argument("--write-docs", action="store_true",
                   help=f"replace each family's table between its markers in {DOCS.name}")
    a = p.parse_args(argv)
    n = a.budget // MAX_T if a.budget else a.n
    families = [c.strip() for c in a.curves.split(",") if c.strip()]
    if n < 1 or a.seeds < 1:
        raise SystemExit("--n (or --budget // 81) and --seeds must be >= 1")
    if not families or any(c not in CURVES for c in families):
        raise SystemExit(f"--curves: one or more of {', '.join(CURVES)}, got {a.curves!r}")
    picked = [i for i, m in enumerate(methods())
              if i == 0 or a.only is None or a.only.lower() in m.name.lower()]
    jobs = [(i, s, n, a.journal, c) for c in families for i in picked for s in range(a.seeds)]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with get_context("fork").Pool(a.jobs) as pool:
            runs = pool.map(_job, jobs, chunksize=1)
    else:
        runs = [_job(j) for j in jobs]
    wall = time.perf_counter() - t0
    all_rows = {}
    for c in families:
        rows = summarize([r for r in runs if r["curves"] == c], n)
        all_rows[c] = rows
        rho = rank_correlation(c)
        mine = [r for r in runs if r["curves"] == c]
        text = table(rows, n) + "\n\n" + paired(mine, "BOHB", "HyperBand + random") + "."
        print(f"{type(CURVES[c]()).__name__}(max_t={MAX_T}), {WORKERS} workers, {a.seeds} seeds, budget "
              f"{n} x {MAX_T} = {n * MAX_T} iterations, {a.jobs} processes, "
              f"journal={a.journal} ({wall:.0f} s wall for all families)")
        print(correlation_line(rho) + "\n")
        print(text)
        print()
        for r in rows:
            print(f"wall {r['method']}: {r['wall']:.1f} s over {r['seeds']} seeds; "
                  f"every trial terminal: {r['all_terminal']}")
        for r in rows:
            if r["exploits"]:
                print(f"{r['method']}: {r['exploits']:.1f} exploits per run, "
                      f"{r['exploits_ahead']:.1f} from a donor checkpoint ahead of the restart "
                      f"iteration: {r['uncounted']:.1f} iterations of training per run not "
                      f"counted as compute; {r['exploits_behind']:.1f} from a checkpoint behind it")
        print()
        if a.write_docs:
            write_docs(c, f"{correlation_line(rho)}.\n\n{text}")
            print(f"{c} table written to {DOCS}\n")
    for c, rows in all_rows.items():
        for r in rows:
            ratio = "not reached" if r["ratio"] is None else f"{r['ratio']:.3f}"
            print(f"ratio {c} {r['method']}: {ratio} (compute to within 1% of {BASELINE}'s best "
                  f"/ {BASELINE}'s compute; {r['reached']}/{r['seeds']} seeds reached)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
