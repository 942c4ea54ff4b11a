"""Cluster presets in deployments/: their keywords exist, their specs validate, and a cluster
provisioned for a run is closed after it (a LocalCluster standing in for the cloud one)."""

from __future__ import annotations

import ast
import importlib.util
import json
from functools import cache
from pathlib import Path

import pytest
import yaml

from tuning.backends import make_backend
from tuning.spec import validate_spec

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
DASK_PRESETS = sorted(DEPLOYMENTS.glob("dask-*.yaml"))
MINIMAL = {"trainable": "tuning.examples.digits:train_digits",
           "space": {"x": {"type": "uniform", "low": 0, "high": 1}}, "metric": "m"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -- keywords, read from the installed source (importing the cloud classes needs boto3, the
#    Google and Azure SDKs, which are optional) ----------------------------------------------
def _module_file(module: str) -> Path:
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # imports nothing below the top package
    assert spec is not None and spec.submodule_search_locations, f"{top} is not installed"
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def _parse(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


def _resolve(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The class ``name`` as seen from ``module``: defined there, or imported into it."""
    tree = _parse(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    is_pkg = _module_file(module).name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name
                                                    for a in node.names):
            real = next(a.name for a in node.names if (a.asname or a.name) == name)
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                source = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            return _resolve(source, real)
    raise LookupError(f"class {name} not found from {module}")


def _base(module: str, expr: ast.expr) -> tuple[str, ast.ClassDef]:
    dotted = ast.unparse(expr)
    if "." in dotted:
        mod, _, name = dotted.rpartition(".")
        return _resolve(mod, name)
    return _resolve(module, dotted)


def accepted_keywords(path: str) -> set[str]:
    """Keywords ``package.module.Class(...)`` accepts: its ``__init__``'s own, plus, when it
    forwards ``**kwargs`` to ``super().__init__``, its base class's (less those it sets itself),
    down the hierarchy."""
    module, _, name = path.rpartition(".")
    return _accepted(*_resolve(module, name))


def _accepted(module: str, cls: ast.ClassDef) -> set[str]:
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef)
                 and n.name == "__init__"), None)
    if init is None:
        return _accepted(*_base(module, cls.bases[0])) if cls.bases else set()
    args = init.args
    own = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} - {"self"}
    if args.kwarg is None:
        return own
    for call in ast.walk(init):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                call.func.attr == "__init__" and ast.unparse(call.func.value) == "super()" and \
                any(k.arg is None and ast.unparse(k.value) == args.kwarg.arg
                    for k in call.keywords):
            fixed = {k.arg for k in call.keywords if k.arg is not None}
            return own | (_accepted(*_base(module, cls.bases[0])) - fixed)
    raise AssertionError(f"{cls.name}.__init__ takes **{args.kwarg.arg} but does not forward it "
                         "to super().__init__: its keywords cannot be checked")


def test_keyword_reader_follows_the_class_hierarchy():
    fargate = accepted_keywords("dask_cloudprovider.aws.FargateCluster")
    assert {"image", "worker_cpu", "worker_mem", "fargate_spot", "region_name"} <= fargate
    assert "shutdown_on_close" in fargate  # distributed's SpecCluster, through ECSCluster
    assert "fargate_workers" not in fargate  # FargateCluster sets it itself
    ec2 = accepted_keywords("dask_cloudprovider.aws.EC2Cluster")
    assert {"spot", "instance_type", "region", "n_workers", "worker_options"} <= ec2  # VMCluster
    import inspect

    from distributed.deploy.spec import SpecCluster

    assert accepted_keywords("distributed.deploy.spec.SpecCluster") == \
        set(inspect.signature(SpecCluster.__init__).parameters) - {"self"}


@pytest.mark.parametrize("typo,cls", [("worker_cpus", "dask_cloudprovider.aws.FargateCluster"),
                                      ("instance_typ", "dask_cloudprovider.aws.EC2Cluster"),
                                      ("project_id", "dask_cloudprovider.gcp.GCPCluster"),
                                      ("vm_sizes", "dask_cloudprovider.azure.AzureVMCluster")])
def test_a_misspelt_keyword_is_caught(typo, cls):
    assert typo not in accepted_keywords(cls)
    preset = {"cluster_class": cls, "cluster_kwargs": {typo: 1}}
    with pytest.raises(AssertionError, match=typo):
        _check_cluster_kwargs(preset)


def _check_cluster_kwargs(backend: dict) -> None:
    accepted = accepted_keywords(backend["cluster_class"])
    unknown = sorted(set(backend["cluster_kwargs"]) - accepted)
    assert not unknown, f"{backend['cluster_class']} does not accept {unknown}"


@pytest.mark.parametrize("path", DASK_PRESETS, ids=lambda p: p.name)
def test_dask_preset_keywords_exist(path):
    backend = _load(path)["backend"]
    assert backend["type"] == "dask"
    assert backend["cluster_class"].startswith("dask_cloudprovider.")
    _check_cluster_kwargs(backend)
    assert set(backend["adapt"]) <= {"minimum", "maximum", "interval", "wait_count",
                                     "target_duration", "minimum_cores", "maximum_cores",
                                     "minimum_memory", "maximum_memory"}


def test_every_expected_preset_is_there():
    names = {p.name for p in DEPLOYMENTS.glob("*.yaml")}
    assert {"dask-fargate.yaml", "dask-ec2-spot.yaml", "dask-gcp.yaml", "dask-azure.yaml",
            "ray-aws.yaml", "ray-aws-backend.yaml", "ray-onprem.yaml",
            "ray-onprem-backend.yaml"} <= names


RAY_BACKENDS = [DEPLOYMENTS / "ray-aws-backend.yaml", DEPLOYMENTS / "ray-onprem-backend.yaml"]


@pytest.mark.parametrize("path", [*DASK_PRESETS, *RAY_BACKENDS], ids=lambda p: p.name)
def test_preset_backend_validates_in_a_spec(path):
    backend = _load(path)["backend"]
    spec = validate_spec({**MINIMAL, "backend": backend})
    assert spec.backend["type"] == backend["type"]
    assert spec.backend == backend


@pytest.mark.parametrize("path", RAY_BACKENDS, ids=lambda p: p.name)
def test_ray_backend_preset_points_at_the_cluster_yaml(path):
    backend = _load(path)["backend"]
    assert (DEPLOYMENTS.parent / backend["cluster_config"]).is_file()


# -- the Ray cluster-launcher YAML against the schema Ray ships -----------------------------
def _ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema

    cfg = _load(DEPLOYMENTS / "ray-aws.yaml")
    jsonschema.validate(cfg, _ray_schema())
    assert cfg["provider"]["type"] == "aws"
    assert cfg["head_node_type"] in cfg["available_node_types"]
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
                           for t in workers)
    assert any("rungflow" in c for c in cfg["setup_commands"])


def test_ray_onprem_yaml_validates_against_rays_schema():
    """The local provider's file (run for real by tests/e2e/test_ray_cluster_launcher.py)."""
    import jsonschema

    from tuning.backends.ray import _client_server_port

    cfg = _load(DEPLOYMENTS / "ray-onprem.yaml")
    jsonschema.validate(cfg, _ray_schema())
    assert cfg["provider"]["type"] == "local"
    assert cfg["max_workers"] == len(cfg["provider"]["worker_ips"])
    assert _client_server_port(str(DEPLOYMENTS / "ray-onprem.yaml")) == 10001


def test_the_launched_heads_client_port_is_read_from_the_cluster_yaml(tmp_path):
    from tuning.backends.ray import _client_server_port

    cfg = _load(DEPLOYMENTS / "ray-onprem.yaml")
    cfg["head_start_ray_commands"] = ["ray stop", "ray start --head --ray-client-server-port 20001"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert _client_server_port(str(tmp_path / "c.yaml")) == 20001
    cfg["head_start_ray_commands"] = ["ray start --head"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert _client_server_port(str(tmp_path / "c.yaml")) == 10001  # Ray's default


def test_ray_schema_rejects_an_unknown_top_level_key():
    import jsonschema

    cfg = {**_load(DEPLOYMENTS / "ray-aws.yaml"), "max_worker": 3}
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(cfg, _ray_schema())


# -- the provisioning path, a LocalCluster standing in for the cloud class --------------------
LOCAL = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
         "dashboard_address": None}


@pytest.mark.slow  # worker subprocesses
def test_provisioned_cluster_is_closed_after_the_run():
    backend = make_backend({"type": "dask", "cluster_class": "distributed.LocalCluster",
                            "cluster_kwargs": LOCAL})
    backend.start()
    cluster = backend.cluster
    try:
        assert backend.client.submit(sum, [1, 2]).result(timeout=30) == 3
        assert len(backend.client.scheduler_info()["workers"]) == 2
    finally:
        backend.close()
    assert cluster.status.name == "closed"


@pytest.mark.slow  # worker subprocesses and a Prefect flow run
def test_provisioned_cluster_is_closed_after_a_failed_run(tmp_path):
    from _cluster_stub import RecordingLocalCluster, broken

    from tuning import Tuner, uniform

    RecordingLocalCluster.instances.clear()
    tuner = Tuner(broken, space={"x": uniform(0, 1)}, metric="score", num_samples=2,
                  backend={"type": "dask", "cluster_class": "_cluster_stub.RecordingLocalCluster",
                           "cluster_kwargs": {**LOCAL, "n_workers": 1}},
                  storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                  fail_fast=True, seed=0, name="fails")
    with pytest.raises(Exception, match="boom"):
        tuner.run()
    [cluster] = RecordingLocalCluster.instances
    assert cluster.close_calls >= 1
    assert cluster.status.name == "closed"
