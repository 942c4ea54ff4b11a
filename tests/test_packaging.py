"""rungflow's tasks/, flows/ and examples/ install as ``tuning.tasks``, ``tuning.flows`` and
``tuning.examples``: a user's project with its own ``tasks.py`` (Celery's convention),
``flows/`` and ``examples/`` runs rungflow from its own directory, through the Python API and
the CLI, with rungflow's modules and its own side by side. Checked from this checkout's
editable install and from a wheel built from it, installed into a scratch virtual environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHADOWING = ("tasks", "flows", "examples")

USER_TASKS = '''
"""The user's own tasks module; its trainable is what the experiment tunes."""
from tuning import report


def train(config):
    for it in range(1, 4):
        report(score=config["x"] * it)
'''
REFUSE = 'raise ImportError("the user\'s {name} was imported by rungflow")\n'
RUN_PY = '''
import json
import sys

from tasks import train  # the project's own tasks.py
from tuning import Tuner, uniform

if __name__ == "__main__":
    res = Tuner(train, space={{"x": uniform(0, 1)}}, metric="score", mode="max", num_samples=2,
                backend={{"type": "dask", "n_workers": 1}}, storage_path="./runs-api",
                tracking_uri={uri!r}, seed=0, name="api").run()
    import tuning.examples.digits
    import tuning.flows.tune
    import tuning.tasks

    print(json.dumps({{
        "statuses": [str(t.status) for t in res.trials],
        "user_tasks": sys.modules["tasks"].__file__,
        "tuning": {{m: sys.modules[m].__file__ for m in
                   ("tuning.tasks", "tuning.flows.tune", "tuning.examples.digits")}},
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("flows", "examples")),
    }}))
'''


def _project(d: Path, uri: str) -> Path:
    """A user's project: tasks.py with the trainable, and flows/ and examples/ packages with
    modules named like rungflow's (``flows/tune.py``, ``examples/digits.py``) that refuse to
    be imported."""
    d.mkdir()
    (d / "tasks.py").write_text(USER_TASKS)
    for pkg, mod in (("flows", "tune"), ("examples", "digits")):
        (d / pkg).mkdir()
        (d / pkg / "__init__.py").write_text(REFUSE.format(name=f"{pkg}/"))
        (d / pkg / f"{mod}.py").write_text(REFUSE.format(name=f"{pkg}/{mod}.py"))
    (d / "run.py").write_text(textwrap.dedent(RUN_PY.format(uri=uri)))
    (d / "experiment.yaml").write_text(textwrap.dedent(f"""\
        name: cli
        trainable: tasks:train
        metric: score
        mode: max
        num_samples: 2
        space: {{x: {{type: uniform, low: 0, high: 1}}}}
        backend: {{type: dask, n_workers: 1}}
        storage_path: ./runs
        tracking_uri: {uri}
        seed: 0
        """))
    return d


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # a Prefect home of its own (not the user's ~/.prefect), and time for its ephemeral API to
    # start on a loaded machine (Prefect's default, 20 s, was exceeded here at a load of 5-7)
    env.update(DO_NOT_TRACK="1", PYTHONDONTWRITEBYTECODE="1", PREFECT_HOME=str(cwd / ".prefect"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def _cli_run_and_ls(rungflow: str, project: Path) -> None:
    _run([rungflow, "run", "experiment.yaml", "--quiet"], project)
    out = _run([rungflow, "ls", "./runs"], project).stdout
    assert "trial-000" in out and "trial-001" in out, out
    (run_dir,) = (project / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    statuses = {e["trial_id"]: e["status"] for e in events if e["event"] == "trial_status"}
    assert sorted(statuses.values()) == ["TERMINATED", "TERMINATED"]


def test_every_package_of_the_checkout_is_listed_for_setuptools():
    """``packages`` is an explicit list (the mapped directories rule out discovery): a new
    subpackage of tuning/ (or of tasks/, flows/, examples/) must be added to it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {f"tuning.{d}" if d != "tuning" else d for d in ("tuning", *SHADOWING)}
    found = set(dirs)
    for init in (ROOT / "tuning").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for top in SHADOWING:
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(("tuning", *init.parent.relative_to(ROOT).parts)))
    assert sorted(cfg["packages"]) == sorted(found)
    assert cfg["package-dir"] == {f"tuning.{d}": d for d in SHADOWING}


@pytest.mark.slow
def test_a_project_with_its_own_tasks_flows_and_examples_runs_rungflow(tmp_path):
    project = _project(tmp_path / "project", f"sqlite:///{tmp_path}/m.db")
    out = json.loads(_run([sys.executable, "run.py"], project).stdout.strip().splitlines()[-1])
    assert out["statuses"] == ["TERMINATED", "TERMINATED"]
    assert out["user_tasks"] == str(project / "tasks.py")  # the user's module is still theirs
    for name, path in out["tuning"].items():  # and rungflow's are rungflow's
        assert Path(path).is_relative_to(ROOT), (name, path)
    assert out["loaded"] == []  # neither the user's flows/ nor examples/ was touched
    _cli_run_and_ls(str(BIN / "rungflow"), project)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of this checkout (the build leaves nothing in the tree)."""
    d = tmp_path_factory.mktemp("wheel")
    src = d / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("tuning", "tasks", "flows", "examples"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(d / "dist"), str(src)], d)
    (whl,) = (d / "dist").glob("rungflow-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_installs_no_top_level_tasks_flows_or_examples(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith("top_level.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"tuning", "rungflow-0.1.0.dist-info"}
    assert top_level.split() == ["tuning"]
    for path in ("tuning/tasks/__init__.py", "tuning/tasks/waves.py", "tuning/flows/tune.py",
                 "tuning/flows/retrain.py", "tuning/examples/digits.py",
                 "tuning/examples/digits.yaml", "tuning/backends/dask.py"):
        assert path in names, path


@pytest.mark.slow
def test_a_project_runs_rungflow_from_the_installed_wheel(wheel, tmp_path):
    """The wheel in a scratch venv (its dependencies read from this venv's site-packages
    through a path entry: the editable install's finder there is not loaded) runs the same
    project from its own directory; site-packages holds ``tuning`` and nothing shadowing."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path).stdout.strip())
    deps = Path(sys.executable).parent.parent / "lib" / site.parent.name / "site-packages"
    (site / "rungflow-deps.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], tmp_path)
    assert not [n for n in SHADOWING if (site / n).exists() or (site / f"{n}.py").exists()]
    assert (site / "tuning" / "tasks" / "waves.py").is_file()
    where = _run([str(python), "-c", "import tuning.tasks; print(tuning.tasks.__file__)"],
                 tmp_path).stdout.strip()
    assert Path(where).is_relative_to(site)  # the wheel's copy, not this checkout
    project = _project(tmp_path / "project", f"sqlite:///{tmp_path}/m.db")
    _cli_run_and_ls(str(venv / "bin" / "rungflow"), project)
