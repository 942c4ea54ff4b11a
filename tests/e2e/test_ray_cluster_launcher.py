"""``backend: {type: ray, cluster_config: ...}`` for real: ``ray up`` on Ray's local provider
(deployments/ray-onprem.yaml, head only) reached over ssh, the tuning run through Ray Client,
``ray down`` after it.

The head is this machine: an ``sshd`` bound to 127.0.0.1 on a free port, key authentication
only, started and stopped by pid, whose sessions get a home of their own. There ``ray`` is the
real CLI except for ``ray stop`` (which ``ray down`` runs on the head), which stops only this
cluster's processes: on a dedicated head it would stop every Ray process of the user, here it
would stop other users' Ray clusters on the same machine. The cluster's processes are found by
a marker the shim puts in the environment of the real ``ray``, which every process that
``ray start`` starts inherits.

Needs ``sshd`` (Debian's openssh-server), ``ssh``, ``nc`` (netcat-openbsd: Ray's ssh has no
port option, a ProxyCommand reaches the port) and ``rsync``; without them it skips, naming what
is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e._ports import port_opens
from tuning import Tuner, uniform
from tuning.experiment import Journal

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
MARKER = "RUNGFLOW_TEST_RAY_CLUSTER"
# as in tests/backends/test_ray.py: the head stays on 127.0.0.1, no usage stats, no token
# auth (which would rewrite the user's ~/.ray/auth_token, shared with other Ray users here)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "DO_NOT_TRACK": "1", "RAY_AUTH_MODE": "disabled"}

RAY_SHIM = '''#!{python}
"""`ray` on the test head: the real CLI, whose processes carry the cluster's marker in their
environment; `ray stop` stops only the processes that carry it."""
import os, sys
import psutil

if sys.argv[1:2] == ["stop"]:
    mine = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("{marker}") == "{name}":
                mine.append(p)
        except (psutil.Error, OSError):
            pass
    for p in mine:
        p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=10)
    for p in alive:
        p.kill()
    sys.exit(0)
os.execve("{ray}", ["{ray}", *sys.argv[1:]], {{**os.environ, "{marker}": "{name}"}})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing_tools() -> list[str]:
    need = {"sshd": SSHD, "ssh": "ssh", "nc": "nc", "rsync": "rsync"}
    return [name for name, exe in need.items() if not shutil.which(exe)]


def _cluster_processes(name: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER) == name:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    if not port_opens(port, proc, timeout):
        pytest.fail(f"sshd did not start:\n{log.read_text()[-2000:]}")

@pytest.fixture
def head(monkeypatch) -> Iterator[dict]:
    """An sshd on 127.0.0.1 whose sessions run in a home of their own, with this project's
    Python and ``ray`` (the shim) on their PATH; yields what the cluster YAML needs."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: openssh-server, openssh-client, "
                    "netcat-openbsd, rsync) to reach a head node over ssh")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    except OSError as exc:
        pytest.skip(f"sshd needs /run/sshd: {exc}")
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    name = f"rungflow-test-{uuid.uuid4().hex[:8]}"
    d = Path(tempfile.mkdtemp(prefix="rgl", dir="/tmp"))  # short: Ray's socket paths
    home, bin_dir = d / "home", d / "home" / "bin"
    bin_dir.mkdir(parents=True)
    for key in ("hostkey", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    shutil.copy(d / "id.pub", d / "authorized_keys")
    shim = bin_dir / "ray"
    shim.write_text(RAY_SHIM.format(python=sys.executable, ray=BIN / "ray", marker=MARKER,
                                    name=name))
    shim.chmod(0o755)
    exports = {"PATH": f"{bin_dir}:{BIN}:$PATH", "PYTHONPATH": str(ROOT), **RAY_ENV}
    (home / ".bashrc").write_text("".join(f'export {k}="{v}"\n' for k, v in exports.items()))
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'hostkey'}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
        f"AllowUsers {getpass.getuser()}", "UsePAM no", "StrictModes no",
        # every session (commands, rsync) in the head's own home
        f'ForceCommand cd {home} && HOME={home} exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"',
    ]) + "\n")
    log = d / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield {"name": name, "dir": d, "home": home, "ssh_port": port, "key": d / "id"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        left = _cluster_processes(name)  # a failed test's cluster: end it, by pid
        for p in left:
            p.kill()
        psutil.wait_procs(left, timeout=10)
        for suffix in (".state", ".lock"):  # the local provider's bookkeeping
            Path(f"/tmp/cluster-{name}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)


def _cluster_yaml(head: dict) -> tuple[Path, int]:
    """deployments/ray-onprem.yaml pointed at the test head: 127.0.0.1 only, free ports."""
    cfg = yaml.safe_load((ROOT / "deployments" / "ray-onprem.yaml").read_text())
    gcs, client = _free_port(), _free_port()
    cfg.update(cluster_name=head["name"], max_workers=0)
    cfg["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(head["key"]),
                   "ssh_proxy_command": f"nc 127.0.0.1 {head['ssh_port']}"}
    start = (f"ray start --head --node-ip-address=127.0.0.1 --port={gcs} "
             f"--ray-client-server-port={client} --num-cpus=2 --include-dashboard=false "
             f"--dashboard-agent-listen-port={_free_port()} --min-worker-port=0 "
             f"--max-worker-port=0 --temp-dir={head['dir'] / 'ray'} "
             "--autoscaling-config=~/ray_bootstrap_config.yaml")
    cfg["head_start_ray_commands"] = ["ray stop", start]
    path = head["dir"] / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, client


def test_ray_up_runs_the_experiment_on_the_launched_cluster_and_ray_down_ends_it(head, tmp_path):
    path, client_port = _cluster_yaml(head)
    res = Tuner("tests.trainables:curve", space={"x": uniform(0, 1), "iters": 3, "sleep": 0.05},
                metric="score", mode="max", num_samples=3,
                backend={"type": "ray", "cluster_config": str(path)},
                storage_path=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                seed=0, name="launched").run()
    assert [str(t.status) for t in res.trials] == ["TERMINATED"] * 3
    assert all(t.iteration == 3 for t in res.trials)
    started = next(e for e in Journal(res.path).read() if e["event"] == "run_started")
    assert started["backend"]["cluster_config"] == str(path)
    # the trials ran on the launched head: its workers' logs are under its temp dir
    sessions = list((head["dir"] / "ray").glob("session_*/logs"))
    assert sessions and any(sessions[0].glob("worker-*.out"))
    # the head's bootstrap config went through rsync over ssh into the head's own home
    assert (head["home"] / "ray_bootstrap_config.yaml").exists()
    # `ray down` ended the cluster: nothing of it runs, its Ray Client port is closed
    deadline = time.monotonic() + 20
    while _cluster_processes(head["name"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _cluster_processes(head["name"])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", client_port), timeout=2).close()
