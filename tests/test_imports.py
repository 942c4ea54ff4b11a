"""What a trainable imports, read from its code (the modules LocalCluster workers preload)."""
# ruff: noqa: E306

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tuning._imports import check_preload, import_preload, packages_of, preload_modules


@functools.lru_cache(maxsize=1)
def _data():
    from sklearn.datasets import load_digits  # lazy, behind a cached helper

    return load_digits


def _helper():
    import xml.dom  # noqa: F401 - the standard library: never preloaded

    return _data()


def lazy_trainable(config):
    import torch.nn  # noqa: F401 - a lazy import inside the trainable

    return _helper(), np.zeros(1)


class ClassTrainable:
    def setup(self, config):
        import scipy.optimize  # noqa: F401

    @staticmethod
    def helper():
        import pandas  # noqa: F401


def test_lazy_imports_helpers_and_globals_are_found():
    found = packages_of(lazy_trainable)
    assert "torch.nn" in found  # inside the function body
    assert "sklearn.datasets" in found  # in a helper behind lru_cache, two calls away
    assert "numpy" in found  # a module global it uses
    assert not any(n.split(".")[0] in ("xml", "tuning", "functools") for n in found), found


def test_classes_partials_and_nested_functions_are_read():
    assert {"scipy.optimize", "pandas"} <= set(packages_of(ClassTrainable))

    def outer(config, k):
        def inner():
            import sklearn.linear_model  # noqa: F401
        return inner

    assert "sklearn.linear_model" in packages_of(functools.partial(outer, k=1))
    assert packages_of(len) == []  # a builtin: nothing to read


def test_preload_lists_the_drivers_submodules_in_import_order():
    import sklearn.datasets  # noqa: F401

    mods = preload_modules(["sklearn.datasets", "os", "not_installed_pkg"])
    assert {"sklearn", "sklearn.datasets"} <= set(mods) and all(
        m.split(".")[0] in ("sklearn", "not_installed_pkg") for m in mods)
    assert "os" not in mods and mods[-1] == "not_installed_pkg"
    assert import_preload(["json", "not_installed_pkg"]) == ["not_installed_pkg"]


def test_preload_adds_what_a_package_imports_on_first_use():
    """torch's first optimizer imports torch._dynamo (about as long as torch itself): a driver
    that has not trained yet lacks it, and the workers get it anyway, after torch, once."""
    mods = preload_modules(["torch.nn"])
    assert mods.count("torch._dynamo") == 1 and mods[0] != "torch._dynamo"
    assert "torch._dynamo" not in preload_modules(["sklearn"])


def test_preload_values_are_checked():
    assert check_preload(True) == "auto" and check_preload(False) is False
    assert check_preload(["torch", "sklearn.datasets"]) == ["torch", "sklearn.datasets"]
    for bad in ("torch", [""], ["a b"], 3):
        with pytest.raises(ValueError, match="backend.preload"):
            check_preload(bad)


@pytest.mark.slow
def test_local_workers_fork_with_the_trainables_imports_done(tmp_path):
    """In a fresh interpreter (the forkserver is one per process): with ``preload="auto"`` a
    LocalCluster worker has scikit-learn imported before any trial, forked from the
    forkserver; with ``preload=False`` it is spawned as Dask does and has not. Neither gets
    Dask's ``MALLOC_TRIM_THRESHOLD_``."""
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import psutil
        from tuning.backends.dask import DaskBackend

        def trainable(config):
            from sklearn.datasets import load_digits
            return load_digits

        def probe():
            parent = psutil.Process(os.getppid())
            trim = [os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                    parent.environ().get("MALLOC_TRIM_THRESHOLD_")]
            return ["sklearn.datasets" in sys.modules, "forkserver" in " ".join(parent.cmdline()),
                    os.environ.get("OMP_NUM_THREADS"), trim]

        if __name__ == "__main__":
            os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"  # as an earlier LocalCluster leaves it
            out = {}
            for preload in ("auto", False):
                backend = DaskBackend(n_workers=1, preload=preload)
                backend.expect(trainable)
                with backend:
                    out[str(preload)] = list(backend.client.run(probe).values())[0]
            out["env_after"] = [os.environ.get("RUNGFLOW_PRELOAD"),
                                os.environ.get("MALLOC_TRIM_THRESHOLD_")]
            print(json.dumps(out))
    """))
    env = {k: v for k, v in os.environ.items() if k != "RUNGFLOW_PRELOAD"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Dask's pre-spawn environment kept, less glibc's eager trimming (a tax on every tensor
    # allocation): not in the worker, nor in the forkserver it forks from
    assert out["auto"] == [True, True, "1", [None, None]], out
    assert out["False"][:3] == [False, False, "1"] and out["False"][3][0] is None, out
    assert out["env_after"] == [None, "65536"]  # the driver's environment is restored


@pytest.mark.slow
def test_a_run_starts_the_forkserver_before_distributed_and_the_workers_fork_from_it(tmp_path):
    """``Tuner.run``'s warm-up (``warm_up``), in a fresh interpreter: only a default
    LocalCluster of worker processes starts the forkserver, before ``distributed`` is imported,
    in the environment Dask's Nanny gives workers (less its eager malloc trimming), with the
    trainable's packages to import; the driver's environment is left as it was, and the
    cluster's workers then fork from that same server, with one hash seed."""
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import psutil
        from tuning.backends._forkserver import warm_up

        def trainable(config):
            from sklearn.datasets import load_digits
            return load_digits

        def servers():
            return [p for p in psutil.Process().children()
                    if "forkserver" in " ".join(p.cmdline())]

        def probe():
            return [os.getppid(), hash("rungflow"), "sklearn.datasets" in sys.modules]

        if __name__ == "__main__":
            os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"  # as an earlier LocalCluster leaves it
            env_before = dict(os.environ)
            out = {"others": [warm_up(b, trainable) for b in (
                {"type": "dask", "address": "tcp://127.0.0.1:1"}, {"type": "ray"},
                {"type": "simulated"}, {"type": "dask", "preload": False},
                {"type": "dask", "cluster_kwargs": {"processes": False}},
                {"type": "dask", "cluster_class": "x.Y"})]}
            out["servers_after_others"] = len(servers())
            out["started"] = warm_up({"type": "dask", "n_workers": 2}, trainable)
            out["distributed_imported"] = "distributed" in sys.modules
            out["env_restored"] = dict(os.environ) == env_before
            (server,) = servers()
            env = server.environ()
            out["server_env"] = [env.get(k) for k in (
                "PYTHONHASHSEED", "OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")]
            out["server_preload"] = env.get("RUNGFLOW_PRELOAD", "").split(",")
            from tuning.backends.dask import DaskBackend
            backend = DaskBackend(n_workers=2)
            backend.expect(trainable)
            with backend:
                out["workers"] = list(backend.client.run(probe).values())
            out["server"] = server.pid
            print(json.dumps(out))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RUNGFLOW_PRELOAD", "PYTHONHASHSEED")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["others"] == [False] * 6 and out["servers_after_others"] == 0, out
    assert out["started"] is True and out["distributed_imported"] is False, out
    assert out["env_restored"] is True, out
    assert out["server_env"] == ["6640", "1", None], out
    assert "sklearn.datasets" in out["server_preload"], out
    (a, b) = out["workers"]
    assert a[0] == b[0] == out["server"], out  # forked from the warmed-up server
    assert a[1] == b[1] and a[2] and b[2], out
