"""``rungflow run|resume|status|best|ls``.

Exit codes: 0 done, 1 the run failed, 2 bad input (the message names the field). Errors are
one ``rungflow: error: ...`` line on stderr; Prefect's logs and tracebacks are shown only with
``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from tuning._env import quiet_defaults, silence_libraries

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rungflow", description="Hyperparameter tuning as Prefect "
                                "flows: ASHA, HyperBand, PBT, BOHB on Dask or Ray, in MLflow.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true",
                        help="show Prefect's logs, warnings and tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the experiment described by a YAML file",
                         parents=[common])
    run.add_argument("spec", help="experiment YAML file")
    run.add_argument("--name", help="override the experiment name")
    run.add_argument("--run-name", help="name this run (default: <name>-<flow run id>)")
    run.add_argument("--storage", help="override storage_path")
    run.add_argument("--tracking-uri", help="override tracking_uri")
    run.add_argument("--num-samples", type=int, help="override num_samples")
    run.add_argument("--backend", help="override backend, as JSON or a preset YAML file")
    run.add_argument("--quiet", "-q", action="store_true", help="no live view")
    res = sub.add_parser("resume", help="continue an interrupted experiment", parents=[common])
    res.add_argument("path", help="the run's directory, or a storage path holding one run")
    res.add_argument("--quiet", "-q", action="store_true")
    for name, text in (("status", "finished, running or interrupted?"),
                       ("best", "the best trial (the Pareto front of a multi-objective run)"),
                       ("ls", "the trials")):
        c = sub.add_parser(name, help=text, parents=[common])
        c.add_argument("path", nargs="?" if name == "ls" else None, default=".",
                       help="a run directory or a storage path")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "ls":
            _ls_options(c)
        if name == "best":
            c.add_argument("--select", help="pick one trial of a multi-objective run, e.g. "
                           "'max accuracy s.t. latency_ms <= 20'")
            c.add_argument("--weights", help="or by a weighted sum, as JSON, e.g. "
                           "'{\"accuracy\": 1, \"latency_ms\": -0.01}'")
    return p


def _ls_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--limit", type=int, default=50,
                   help="trials a page (default 50; 0: all of them)")
    c.add_argument("--page", type=int, default=1, help="which page, from 1 (default 1)")
    c.add_argument("--status", action="append", metavar="STATUS",
                   help="only trials in this status (RUNNING, TERMINATED, STOPPED, ERROR, "
                        "...); repeat or separate with commas for several")
    c.add_argument("--sort", choices=["best", "trial"], default="best",
                   help="best first by the metric's last value (default), or by trial id")


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, os.getcwd())  # trainables named relative to the project, like pytest
    args = _parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _quiet_prefect(verbose)
    from tuning.backends import BackendError
    from tuning.results import NoResultError
    from tuning.spec import SpecError

    try:
        return int(_COMMANDS[args.command](args) or 0)
    except (SpecError, ValueError, FileNotFoundError, BackendError) as exc:
        return _error(exc, 2, verbose)
    except NoResultError as exc:
        return _error(exc, 1, verbose)
    except KeyboardInterrupt:
        print("rungflow: interrupted; continue with `rungflow resume <run dir>`", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the run failed: one line, the rest with -v
        return _error(exc, 1, verbose, name=True)


def _error(exc: BaseException, code: int, verbose: bool, name: bool = False) -> int:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    text = f"{type(exc).__name__}: {exc}" if name else str(exc)
    hint = "" if verbose or code == 2 else " (details: run again with --verbose)"
    print(f"rungflow: error: {text}{hint}", file=sys.stderr)
    return code


def _quiet_prefect(verbose: bool) -> None:
    if verbose:
        quiet_defaults()
    else:
        silence_libraries()


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, field in (("name", "name"), ("run_name", "run_name"), ("storage", "storage_path"),
                        ("tracking_uri", "tracking_uri"), ("num_samples", "num_samples")):
        if getattr(args, attr, None) is not None:
            out[field] = getattr(args, attr)
    if getattr(args, "backend", None):
        out["backend"] = _backend_arg(args.backend)
    return out


def _backend_arg(text: str) -> Any:
    """``--backend``: a preset YAML file (its ``backend:`` section, or the whole file), or an
    inline JSON/YAML mapping. Anything else goes to the spec's validation, which names the
    field (``backend: Input should be a valid dictionary``)."""
    from tuning.spec import SpecError, load_yaml, read_text_file

    if os.path.isdir(text):
        raise SpecError(f"--backend: {text!r} is a directory, not a preset YAML file or JSON")
    if os.path.isfile(text):
        data = load_yaml(read_text_file(text, "--backend preset"), f"--backend {text}")
        if isinstance(data, dict) and isinstance(data.get("backend"), dict):
            return dict(data["backend"])
        return data
    data = load_yaml(text, "--backend")
    if isinstance(data, str) or data is None:
        raise SpecError(f"--backend: neither a preset file nor a JSON mapping: {text!r} "
                        '(e.g. \'{"type": "dask", "address": "tcp://host:8786"}\')')
    return data


def cmd_run(args: argparse.Namespace) -> int:
    from tuning.spec import load_spec
    from tuning.tuner import Tuner

    spec = load_spec(args.spec, _overrides(args))
    tuner = Tuner.from_spec(spec)
    result = _reporting_warnings(lambda: _with_view(lambda: tuner.run(), spec, args.quiet),
                                 args.verbose)
    _print_result(result)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from tuning.tuner import Tuner

    result = _reporting_warnings(
        lambda: _with_view(lambda: Tuner.resume(args.path), None, args.quiet), args.verbose)
    _print_result(result)
    return 0


def _reporting_warnings(fn: Any, verbose: bool) -> Any:
    """Run ``fn``; the run's own warnings (failed trials) as ``rungflow: warning:`` lines,
    other libraries' warnings only with --verbose."""
    from tuning.results import TrialsFailedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn()
        finally:
            for w in caught:
                if issubclass(w.category, TrialsFailedWarning):
                    print(f"rungflow: warning: {w.message}", file=sys.stderr)
                elif verbose:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _with_view(fn: Any, spec: Any, quiet: bool) -> Any:
    """A live terminal view while the run goes (not with --quiet or when not a terminal)."""
    from tuning.live import live_view

    with live_view(spec, quiet=quiet):
        return fn()


def _print_result(result: Any) -> None:
    print(f"experiment {result.name}: {len(result.trials)} trials, run dir {result.path}")
    if result.multi_objective and result.selection is None:
        df = result.pareto_front()
        print(f"Pareto front ({result.objective.describe()}): {len(df)} trials")
        if len(df):
            print(_front_text(df))
        best = None
    else:
        best = result.best_trial
    if best is not None:
        print(f"best trial {best.trial_id}: {result.metric}={result.best_metric:.6g} "
              f"config={json.dumps(best.config, default=str)}")
        print(f"best checkpoint: {result.best_checkpoint}")
    if result.tracking_uri:
        print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri} "
              "--host 127.0.0.1 --port 5000")


def _status_of(res: Any) -> str:
    """finished (the journal says so), running (its driver process is alive on this host, or,
    seen from another host, it wrote in the last minute), else interrupted."""
    import socket

    if res.state.finished:
        return "finished"
    pid, host = res.state.extra.get("pid"), res.state.extra.get("host")
    if pid and host == socket.gethostname():
        return "running" if _alive(int(pid)) else "interrupted"
    if time.time() - (res.state.last_event_time or 0.0) < 60:
        return "running"
    return "interrupted"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from tuning.results import load_result

    res = load_result(args.path)
    status = _status_of(res)
    counts: dict[str, int] = {}
    for t in res.trials:
        counts[str(t.status)] = counts.get(str(t.status), 0) + 1
    if args.json:
        summary: dict[str, Any] = {"name": res.name, "path": res.path, "status": status,
                                   "trials": counts}
        if res.multi_objective and res.selection is None:
            summary["pareto_front"] = len(_objective(res).front(res.trials))
        else:
            summary["best_metric"] = res.best_metric
        print(json.dumps(summary))
    else:
        parts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        print(f"{res.name}: {status} ({len(res.trials)} trials: {parts or 'none'})")
        if status == "interrupted":
            print(f"continue with: rungflow resume {res.path}")
    return 0


def _objective(res: Any) -> Any:
    """The run's :class:`~tuning._objective.Objective` (one metric for an old journal)."""
    assert res.objective is not None
    return res.objective


def _front_text(df: Any) -> str:
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.width", 200,
                           "display.max_colwidth", 40):
        return str(df.to_string(index=False))


def _weights(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        out = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--weights: not JSON ({exc.msg}), got {text!r}") from None
    if not isinstance(out, dict):
        raise ValueError(f"--weights: a JSON object metric -> number, got {text!r}")  # noqa: TRY004
    return out


def cmd_best(args: argparse.Namespace) -> int:
    from tuning._objective import Selection
    from tuning.results import FINISHED, load_result

    res = load_result(args.path)
    obj = _objective(res)
    weights = _weights(args.weights)
    if args.select is not None or weights is not None:
        res.selection = Selection.build(obj, args.select, weights)
    if res.multi_objective and res.selection is None:
        return _print_front(res, args.json)
    best = res.best_finished_trial
    if res.selection is not None:
        best = res.selection.pick([t for t in res.trials if t.status in FINISHED], obj)
    if best is None:
        counts: dict[str, int] = {}
        for t in res.trials:
            counts[str(t.status).lower()] = counts.get(str(t.status).lower(), 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
        print(f"rungflow: no finished trial with metric {res.metric!r} in {res.path} yet "
              f"({parts}); see `rungflow status {res.path}`", file=sys.stderr)
        return 1
    out = {"trial_id": best.trial_id, res.metric: res.best_metric, "config": best.config,
           "checkpoint": best.checkpoint, "iterations": best.iteration}
    if not obj.plain:
        last = best.last_result or {}
        out = {"trial_id": best.trial_id, **{m: last.get(m) for m in obj.reported},
               "config": best.config, "checkpoint": best.checkpoint,
               "iterations": best.iteration}
        if res.selection is not None:
            out["selected_by"] = res.selection.describe()
    print(json.dumps(out, default=str, indent=None if args.json else 2))
    return 0


def _print_front(res: Any, as_json: bool) -> int:
    """``rungflow best`` of a multi-objective run: its Pareto front (finished trials)."""
    from tuning.results import FINISHED, front_rows

    rows = front_rows([t for t in res.trials if t.status in FINISHED], res.objective)
    if as_json:
        print(json.dumps({"objective": res.objective.describe(), "pareto_front": rows},
                         default=str))
        return 0 if rows else 1
    if not rows:
        print(f"rungflow: no finished feasible trial in {res.path} yet; see `rungflow status "
              f"{res.path}`", file=sys.stderr)
        return 1
    import pandas as pd

    print(f"Pareto front of {res.name} ({res.objective.describe()}): {len(rows)} trials")
    print(_front_text(pd.DataFrame(rows)))
    print("pick one with: rungflow best " + res.path + " --select "
          f"'{res.objective.primary_mode} {res.objective.primary} s.t. ...'")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """The runs of a storage path, or one page of a run's trials (best first), read from its
    journal in one streamed pass."""
    from tuning.experiment import find_experiment_dirs
    from tuning.listing import trial_page
    from tuning.results import load_result

    dirs = find_experiment_dirs(args.path)
    if len(dirs) > 1:  # a storage path: list the runs
        for d in dirs:
            r = load_result(d)
            best = (f"front={len(_objective(r).front(r.trials))}" if r.multi_objective and
                    r.selection is None else f"best={r.best_metric}")
            print(f"{r.name}\t{_status_of(r)}\t{len(r.state.trials)} trials\t{best}\t{d}")
        return 0
    statuses = [s.strip() for arg in args.status or [] for s in arg.split(",") if s.strip()]
    trial_page([], "", "max", args.limit, args.page, statuses or None, args.sort)  # bad input
    res = load_result(args.path)
    pg = trial_page(res.state.trials.values(), res.metric, res.mode, args.limit, args.page,
                    statuses or None, args.sort)
    import pandas as pd

    df = pd.DataFrame(pg.rows)
    if args.json:
        print(df.to_json(orient="records") if pg.rows else "[]")
        return 0
    print(_ls_header(res, pg, statuses, args.sort))
    if pg.rows:
        with pd.option_context("display.max_rows", max(len(df), 1), "display.width", 200):
            cols = [c for c in df.columns if c not in ("checkpoint", "error")]
            print(df[cols].to_string(index=False))
    if pg.page < pg.pages:
        more = f" --limit {pg.limit}" if pg.limit != 50 else ""
        more += "".join(f" --status {s}" for s in statuses)
        more += " --sort trial" if args.sort == "trial" else ""
        print(f"next page: rungflow ls {res.path} --page {pg.page + 1}{more}")
    return 0


def _ls_header(res: Any, pg: Any, statuses: list[str], sort: str) -> str:
    which = f" {'/'.join(s.upper() for s in statuses)}" if statuses else ""
    order = f"best {res.metric} first" if sort == "best" else "by trial id"
    if not pg.rows:
        return (f"{res.name}: no{which} trials on page {pg.page} ({pg.total:,}{which} trials, "
                f"{pg.pages} page{'s' if pg.pages > 1 else ''})")
    last = pg.first + len(pg.rows) - 1
    return (f"{res.name}: trials {pg.first:,}-{last:,} of {pg.total:,}{which} ({order}), "
            f"page {pg.page} of {pg.pages}")


_COMMANDS = {"run": cmd_run, "resume": cmd_resume, "status": cmd_status, "best": cmd_best,
             "ls": cmd_ls}

if __name__ == "__main__":
    sys.exit(main())
