"""The multi-node development clusters of infra/stack.sh: 3-node SLURM (`slurm_mn`) and 2-node
Ray whose second node has a private /tmp, /dev/shm and HOME (`ray_mn`).

The first part checks the pieces without services; the integration tests talk to the clusters
that `infra/stack.sh up` brought up (variables MAECTL_TEST_SLURM_MN_* / MAECTL_TEST_RAY_MN_*
in infra/.state/env.sh) and cross real node boundaries: node ids, name resolution, a gloo
all_reduce between two SLURM nodes, a Ray task on a node that cannot see the head's disk.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_RUN = ("run the tests with `infra/dev.sh test` (it starts the stack), or "
              "`infra/stack.sh up slurm_mn ray_mn && source infra/.state/env.sh` before pytest")


def _load_stack():
    """infra/stack/ is a standalone package (not installed): load it under a private name."""
    name = "maectl_infra_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "infra" / "stack" / "__init__.py",
            submodule_search_locations=[str(ROOT / "infra" / "stack")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """The stack's modules, with settings on a throwaway state folder."""
    _load_stack()
    import maectl_infra_stack.cli as cli
    import maectl_infra_stack.config as config
    import maectl_infra_stack.hosts as hosts
    import maectl_infra_stack.ray_mn as ray_mn
    import maectl_infra_stack.slurm_mn as slurm_mn

    monkeypatch.setenv("MAECTL_STACK_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MAECTL_STACK_RUNTIME", str(tmp_path / "rt"))
    return type("Stack", (), {"cli": cli, "config": config, "hosts": hosts, "ray_mn": ray_mn,
                              "slurm_mn": slurm_mn, "settings": config.load(ROOT)})


# --- without services -------------------------------------------------------------------

def test_three_node_slurm_conf_gives_each_node_its_own_port_name_and_spool(stack):
    s = stack.settings
    conf = stack.slurm_mn.render_slurm_mn_conf(s).splitlines()
    nodes = [ln for ln in conf if ln.startswith("NodeName=")]
    assert [ln.split()[0] for ln in nodes] == ["NodeName=n1", "NodeName=n2", "NodeName=n3"]
    ports = [int(ln.split("Port=")[1].split()[0]) for ln in nodes]
    assert ports == [s.ports["slurmd_mn"] + i for i in range(3)]
    assert all("NodeHostname=n" in ln and "NodeAddr=127.0.0.1" in ln and "CPUs=1" in ln for ln in nodes)
    for line in ("ClusterName=maectl-mn", "AuthInfo=cred_expire=10", "SlurmdParameters=config_overrides",
                 f"SlurmctldPort={s.ports['slurmctld_mn']}", f"AccountingStoragePort={s.ports['slurmdbd']}",
                 "PartitionName=mn Nodes=n1,n2,n3 Default=YES MaxTime=INFINITE State=UP"):
        assert line in conf
    spool = next(ln for ln in conf if ln.startswith("SlurmdSpoolDir="))
    assert spool.endswith("/%n")  # one spool per node: several slurmd on one host
    single = stack.cli.slurm.render_slurm_conf(s, real_memory=1000)
    assert str(s.slurm_mn_conf.parent.parent) not in single  # the single-node cluster is untouched


def test_every_port_of_the_stack_is_distinct(stack):
    s = stack.settings
    st = stack.cli.Stack(s)
    seen: dict[int, str] = {}
    for svc in st.all.values():
        for label, port in svc.ports().items():
            assert port not in seen, f"{svc.name}:{label} and {seen.get(port)} share port {port}"
            seen[port] = f"{svc.name}:{label}"
    workers = [range(p["min_worker"], p["max_worker"] + 1)
               for p in (stack.ray_mn.node_ports(s, k) for k in (0, 1))]
    assert not set(workers[0]) & set(workers[1])
    assert not any(port in w for w in workers for port in seen)
    assert all(port < 32768 for port in seen) and all(w[-1] < 32768 for w in workers)


def test_hosts_lines_are_added_once_and_removed_exactly(stack, tmp_path):
    hosts = stack.hosts
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.0.5 n1  # someone else's\n")
    ours = stack.slurm_mn.hosts_mark(stack.settings)
    other = hosts.tag(tmp_path / "another-checkout", "slurm_mn")
    assert ours != other and ours.startswith("maectl-stack:slurm_mn:")

    assert hosts.add(("n1", "n2", "n3"), ours, path) is True
    assert hosts.add(("n1", "n2", "n3"), ours, path) is False       # idempotent
    assert hosts.add(("n1", "n2", "n3"), other, path) is True
    lines = path.read_text().splitlines()
    assert lines.count(f"127.0.0.1\tn1 n2 n3\t# {ours}") == 1 and hosts.present(ours, path)

    assert hosts.remove(ours, path) == 1
    assert path.read_text().splitlines() == [
        "127.0.0.1 localhost", "::1 localhost ip6-localhost", "10.0.0.5 n1  # someone else's",
        f"127.0.0.1\tn1 n2 n3\t# {other}"]
    assert hosts.remove(ours, path) == 0 and not hosts.present(ours, path)


def test_ray_worker_node_gets_private_tmp_shm_home_and_leaves_single_node_mode(stack, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as env.sh exports it
    svcs = stack.ray_mn.services(stack.settings)
    head, worker = svcs["ray_mn_head"], svcs["ray_mn_worker"]
    argv = worker.argv()
    assert argv[:4] == ["/usr/bin/unshare", "--mount", "--propagation", "private"]
    script = argv[-1]
    venv = str(stack.settings.venv)
    for piece in (f"mount -o remount,bind,ro {venv}", f"mount --rbind {worker.private} /tmp",
                  "tmpfs /dev/shm", "export HOME=/tmp/home", "--node-ip-address=127.0.2.2",
                  f"--address=127.0.2.1:{stack.settings.ports['ray_mn']}", '{"node_b": 1}', "--num-cpus=1"):
        assert piece in script
    # Under the state folder, not the runtime folder in /tmp: the head's /tmp must not hold it.
    assert worker.private.is_relative_to(stack.settings.state)
    assert not worker.private.is_relative_to(stack.settings.runtime)
    assert "--node-ip-address=127.0.2.1" in head.argv() and "--head" in head.argv()
    for svc in (head, worker):
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in svc.env()  # would refuse a second node
        assert svc.env()["RAY_AUTH_MODE"] == "disabled"


def test_groups_and_env_of_the_multinode_clusters(stack):
    assert {"slurm_mn", "ray_mn"} <= set(stack.cli.parse_groups([]))   # `up` brings them up too
    assert stack.cli.parse_groups(["ray_mn", "slurm"]) == ["slurm", "ray_mn"]
    s = stack.settings
    env = stack.config.client_env(s, {"slurm_mn", "ray_mn"})
    assert env["MAECTL_TEST_SLURM_MN_CONF"] == str(s.slurm_mn_conf)
    assert env["MAECTL_TEST_SLURM_MN_PARTITION"] == "mn"
    assert env["MAECTL_TEST_RAY_MN_ADDRESS"] == f"http://127.0.0.1:{s.ports['ray_mn_dashboard']}"
    assert env["MAECTL_TEST_RAY_MN_GCS"] == f"127.0.2.1:{s.ports['ray_mn']}"
    assert "SLURM_CONF" not in env and "RAY_ADDRESS" not in env   # the single-node clusters' own
    st = stack.cli.Stack(s)
    assert [svc.name for svc in st.members("slurm_mn")][:3] == ["munge", "mariadb", "slurmdbd"]


# --- against the real clusters ----------------------------------------------------------

def _require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"${name} is not set: {HOW_TO_RUN}", pytrace=False)
    return value


@dataclass(frozen=True)
class SlurmMN:
    conf: str
    partition: str
    nodes: tuple[str, ...]

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env["SLURM_CONF"] = self.conf
        return env


@pytest.fixture(scope="module")
def slurm_mn() -> SlurmMN:
    cluster = SlurmMN(conf=_require_env("MAECTL_TEST_SLURM_MN_CONF"),
                      partition=_require_env("MAECTL_TEST_SLURM_MN_PARTITION"),
                      nodes=tuple(_require_env("MAECTL_TEST_SLURM_MN_NODES").split(",")))
    out = subprocess.run(["sinfo", "-h", "-N", "-p", cluster.partition, "-o", "%N %T"], env=cluster.env,
                         capture_output=True, text=True, timeout=30)
    states = dict(ln.split() for ln in out.stdout.splitlines() if ln.strip())
    if out.returncode != 0 or sorted(states) != sorted(cluster.nodes):
        pytest.fail(f"3-node SLURM not up (sinfo: {out.stdout.strip()} {out.stderr.strip()}): {HOW_TO_RUN}",
                    pytrace=False)
    return cluster


def _sbatch(cluster: SlurmMN, script: str, folder: Path, timeout: float = 300) -> tuple[int, str]:
    """Run a batch script to its end (`sbatch --wait`); returns (exit code, its output)."""
    path = folder / "job.sh"
    path.write_text("#!/bin/bash\n" + textwrap.dedent(script))
    out = folder / "job.out"
    done = subprocess.run(["sbatch", "--wait", "--parsable", f"--partition={cluster.partition}",
                           "--nodes=2", "--ntasks-per-node=1", "--time=5", f"--chdir={folder}",
                           f"--output={out}", "--job-name=maectl-infra-mn", str(path)],
                          env=cluster.env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, (out.read_text() if out.exists() else "") + done.stderr


@pytest.mark.integration
def test_two_node_job_sees_node_ids_0_and_1_and_node_names_resolve(slurm_mn, tmp_path):
    rc, out = _sbatch(slurm_mn, f"""\
        srun {sys.executable} -c '
        import os, socket, subprocess
        names = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True).stdout.split()
        print("TASK", os.environ["SLURM_NODEID"], os.environ["SLURM_PROCID"], os.environ["SLURMD_NODENAME"],
              socket.gethostname(), ",".join(names), ",".join(socket.gethostbyname(n) for n in names))'
        """, tmp_path)
    assert rc == 0, out
    tasks = sorted(ln.split()[1:] for ln in out.splitlines() if ln.startswith("TASK "))
    assert [t[0] for t in tasks] == ["0", "1"] and [t[1] for t in tasks] == ["0", "1"], out
    node_names = [t[2] for t in tasks]
    assert len(set(node_names)) == 2 and set(node_names) <= set(slurm_mn.nodes)
    for _, _, node, hostname, names, addresses in tasks:
        assert hostname == node                      # each slurmd has its node's hostname
        assert sorted(names.split(",")) == sorted(node_names)
        assert addresses == "127.0.0.1,127.0.0.1"    # the names resolve (our /etc/hosts line)


@pytest.mark.integration
def test_submitit_two_node_job_reaches_completed_through_accounting(slurm_mn, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from submitit.slurm import slurm as submitit_slurm

    monkeypatch.setenv("SLURM_CONF", slurm_mn.conf)   # submitit's sbatch/sacct read it
    # submitit keeps one process-wide watcher that caches states by job id and never asks again
    # about a finished one: a job of the single-node cluster with this id, seen earlier in the
    # session (e.g. one that failed on purpose), would answer for this cluster's job.
    monkeypatch.setattr(submitit_slurm.SlurmJob, "watcher", submitit_slurm.SlurmInfoWatcher(delay_s=600))

    def where():  # nested: pickled by value, so the job needs no import of this file
        import socket

        import submitit as sub
        env = sub.JobEnvironment()
        return env.global_rank, env.node, socket.gethostname()

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_mn.partition, nodes=2, tasks_per_node=1,
                               cpus_per_task=1, timeout_min=5, name="maectl-infra-mn-submitit")
    job = executor.submit(where)
    results = sorted(job.results())
    assert [(rank, node) for rank, node, _ in results] == [(0, 0), (1, 1)]
    assert len({host for _, _, host in results}) == 2 and {h for *_, h in results} <= set(slurm_mn.nodes)
    deadline = time.monotonic() + 30  # accounting lags the job's end by a moment
    while job.get_info(mode="force").get("State") != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
    assert job.state == "COMPLETED"   # from sacct: the maectl-mn cluster is in slurmdbd


@pytest.mark.integration
@pytest.mark.slow
def test_gloo_all_reduce_across_two_slurm_nodes_agrees(slurm_mn, tmp_path):
    pytest.importorskip("torch")
    with socket.socket() as sock:  # a free port for the rendezvous on this host
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "allreduce.py").write_text(textwrap.dedent("""\
        import os, socket, subprocess
        import torch
        import torch.distributed as dist
        nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        # Rendezvous by node NAME, as on a real cluster: needs n1..n3 to resolve.
        dist.init_process_group("gloo", init_method=f"tcp://{nodes[0]}:{os.environ['MN_PORT']}",
                                rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=120))
        x = torch.arange(4, dtype=torch.float64) * (rank + 1)
        dist.all_reduce(x)
        print("RESULT", rank, os.environ["SLURMD_NODENAME"], socket.gethostname(), nodes[0],
              ",".join(f"{v:g}" for v in x.tolist()), flush=True)
        dist.destroy_process_group()
        """))
    rc, out = _sbatch(slurm_mn, f"""\
        export MN_PORT={port}
        srun {sys.executable} allreduce.py
        """, tmp_path, timeout=600)
    assert rc == 0, out
    results = sorted(ln.split()[1:] for ln in out.splitlines() if ln.startswith("RESULT "))
    assert [r[0] for r in results] == ["0", "1"], out
    assert results[0][1] != results[1][1]               # two different nodes
    assert results[0][1] == results[0][2] == results[0][3]  # rank 0 on the rendezvous node
    expected = ",".join(f"{v * 3:g}" for v in range(4))  # ranks 0 and 1 add x*1 + x*2
    assert results[0][4] == results[1][4] == expected, out


@pytest.mark.integration
@pytest.mark.slow
def test_requeued_two_node_job_comes_back_on_both_nodes_within_cred_expire(slurm_mn, tmp_path):
    """`scontrol requeue` of a running 2-node job: back on 2 nodes with SLURM_RESTART_COUNT=1
    after ~cred_expire (10 s here; SLURM's default 120 s would miss the 90 s deadline)."""
    env = slurm_mn.env
    config = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True, timeout=30).stdout
    assert "cred_expire=10" in config
    out = tmp_path / "requeue.out"
    script = tmp_path / "requeue.sh"
    script.write_text('#!/bin/bash\nsrun bash -c \'echo START $SLURM_NODEID ${SLURM_RESTART_COUNT:-0}; sleep 300\'\n')
    job = subprocess.run(["sbatch", "--parsable", f"--partition={slurm_mn.partition}", "--nodes=2",
                          "--ntasks-per-node=1", "--time=10", "--requeue", f"--output={out}", "--open-mode=append",
                          "--job-name=maectl-infra-mn-requeue", str(script)],
                         env=env, capture_output=True, text=True, timeout=60).stdout.strip()

    def starts() -> list[str]:
        return [ln for ln in (out.read_text().splitlines() if out.exists() else []) if ln.startswith("START ")]

    try:
        deadline = time.monotonic() + 120
        while len(starts()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sorted(starts()) == ["START 0 0", "START 1 0"], out.read_text() if out.exists() else "no output"
        t0 = time.monotonic()
        subprocess.run(["scontrol", "requeue", job], env=env, check=True, capture_output=True, timeout=30)
        deadline = t0 + 90
        while len(starts()) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        took = time.monotonic() - t0
        print(f"requeued 2-node job running again after {took:.1f}s, load {os.getloadavg()}")
        assert sorted(starts()[2:]) == ["START 0 1", "START 1 1"], out.read_text()
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def ray_mn() -> dict[str, str]:
    address = _require_env("MAECTL_TEST_RAY_MN_ADDRESS").rstrip("/")
    gcs = _require_env("MAECTL_TEST_RAY_MN_GCS")
    import urllib.request
    try:
        with urllib.request.urlopen(f"{address}/api/v0/nodes?limit=10", timeout=10) as resp:
            nodes = json.load(resp)["data"]["result"]["result"]
    except (OSError, ValueError, KeyError) as exc:
        pytest.fail(f"2-node Ray at {address} does not answer ({exc}): {HOW_TO_RUN}", pytrace=False)
    alive = sorted(n["node_ip"] for n in nodes if n["state"] == "ALIVE")
    if alive != _require_env("MAECTL_TEST_RAY_MN_NODE_IPS").split(","):
        pytest.fail(f"2-node Ray has alive nodes {alive}: {HOW_TO_RUN}", pytrace=False)
    return {"address": address, "gcs": gcs}


RAY_PROBE = """\
import json, os, sys, uuid
import ray

ray.init(address=sys.argv[1], log_to_driver=False)
marker = f"maectl-mn-{uuid.uuid4().hex}"
for folder in ("/tmp", "/dev/shm"):
    with open(os.path.join(folder, marker), "w") as fh:
        fh.write("written by the driver on the head node")

@ray.remote(num_cpus=1)
def look(marker):
    import os
    return {"ip": ray.util.get_node_ip_address(), "home": os.path.expanduser("~"),
            "tmp": os.path.exists(os.path.join("/tmp", marker)),
            "shm": os.path.exists(os.path.join("/dev/shm", marker))}

try:
    seen = {res: ray.get(look.options(resources={res: 0.01}).remote(marker)) for res in ("node_a", "node_b")}
    print("PROBE", json.dumps({"nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
                               "seen": seen}))
finally:
    for folder in ("/tmp", "/dev/shm"):
        os.unlink(os.path.join(folder, marker))
"""


@pytest.mark.integration
def test_ray_task_on_the_second_node_cannot_see_the_heads_tmp(ray_mn, tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "probe.py").write_text(RAY_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, str(tmp_path / "probe.py"), ray_mn["gcs"]], env=env,
                          capture_output=True, text=True, timeout=300)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert done.returncode == 0 and line, done.stdout + done.stderr
    probe = json.loads(line[len("PROBE "):])
    assert probe["nodes"] == ["127.0.2.1", "127.0.2.2"]
    head, worker = probe["seen"]["node_a"], probe["seen"]["node_b"]
    assert head["ip"] == "127.0.2.1" and worker["ip"] == "127.0.2.2"
    assert head["tmp"] and head["shm"]                 # the probe can see the file where it is...
    assert not worker["tmp"] and not worker["shm"]     # ...and the other node cannot
    assert worker["home"] != head["home"]


def _pidfiles(state: Path, names: list[str]) -> dict[str, dict]:
    return {n: json.loads((state / "run" / f"{n}.pid").read_text()) for n in names}


MN_DAEMONS = ["slurmctld_mn", "slurmd_n1", "slurmd_n2", "slurmd_n3", "ray_mn_head", "ray_mn_worker"]


@pytest.mark.integration
def test_up_again_is_a_no_op_for_the_running_clusters(slurm_mn, ray_mn, monkeypatch):
    _load_stack()
    import maectl_infra_stack.config as config
    import maectl_infra_stack.hosts as hosts

    state = Path(slurm_mn.conf).parents[2]   # <state>/slurm_mn/etc/slurm.conf
    monkeypatch.setenv("MAECTL_STACK_STATE", str(state))
    s = config.load(ROOT)
    before = _pidfiles(state, MN_DAEMONS)
    # `up` restarts a daemon whose configuration changed: never run it against clusters that
    # were started with other ports than this environment names (it would restart them).
    if before["slurmctld_mn"]["config"]["ports"] != {"slurmctld_mn": s.ports["slurmctld_mn"]} or \
            before["ray_mn_head"]["config"]["ports"]["ray_mn"] != s.ports["ray_mn"]:
        pytest.fail("the multi-node clusters run on other ports than this environment's "
                    "MAECTL_*_PORT variables name; run the tests with the stack's environment", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_ADDRESS"))}
    done = subprocess.run([str(ROOT / "infra" / "stack.sh"), "up", "slurm_mn", "ray_mn"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in MN_DAEMONS:
        assert any(f"] {name} " in ln and "already up" in ln for ln in lines), done.stdout
    assert _pidfiles(state, MN_DAEMONS) == before
    assert "3 idle node(s) n1 n2 n3" in done.stdout and "2 node(s) alive" in done.stdout
    mark = hosts.tag(state, "slurm_mn")
    assert sum(ln.endswith(f"# {mark}") for ln in Path("/etc/hosts").read_text().splitlines()) == 1


def _free_base(count: int, start: int = 21000, stop: int = 23000) -> int:
    """A base port with `count` free ports from it (below the ephemeral range)."""
    for base in range(start, stop, count):
        if not any(_listening(p) for p in range(base, base + count)):
            return base
    pytest.fail("no free port range for a throwaway stack")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
@pytest.mark.slow
def test_throwaway_three_node_cluster_comes_up_and_down_cleanly(slurm_mn, tmp_path):
    """Own state folder and ports: `up slurm_mn` adds its /etc/hosts line, `down` removes
    exactly that line and stops exactly its daemons; the stack's own 3-node cluster keeps running."""
    _load_stack()
    import maectl_infra_stack.hosts as hosts
    import maectl_infra_stack.process as process

    base = _free_base(8)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MAECTL_", "RAY_ADDRESS"))}
    env.update(MAECTL_STACK_STATE=str(state), MAECTL_STACK_RUNTIME=str(tmp_path / "rt"),
               MAECTL_VENV=str(Path(sys.executable).parents[1]),
               MAECTL_MARIADB_PORT=str(base), MAECTL_SLURMDBD_PORT=str(base + 1),
               MAECTL_SLURMCTLD_PORT=str(base + 2), MAECTL_SLURMD_PORT=str(base + 3),
               MAECTL_SLURMCTLD_MN_PORT=str(base + 4), MAECTL_SLURMD_MN_PORT=str(base + 5))
    mark = hosts.tag(state, "slurm_mn")
    stack_sh = str(ROOT / "infra" / "stack.sh")
    t0 = time.monotonic()
    up = subprocess.run([stack_sh, "up", "slurm_mn"], env=env, capture_output=True, text=True, timeout=600)
    took_up = time.monotonic() - t0
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "3 idle node(s) n1 n2 n3" in up.stdout
        assert hosts.present(mark)
        pids = _pidfiles(state, ["slurmctld_mn", "slurmd_n1", "slurmd_n2", "slurmd_n3", "mariadb", "slurmdbd"])
    finally:
        t1 = time.monotonic()
        down = subprocess.run([stack_sh, "down", "slurm_mn"], env=env, capture_output=True, text=True, timeout=300)
        took_down = time.monotonic() - t1
    print(f"throwaway slurm_mn: up {took_up:.1f}s, down {took_down:.1f}s, load {os.getloadavg()}")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not hosts.present(mark) and "removed 1 line(s) from /etc/hosts" in down.stdout
    for name, rec in pids.items():
        assert not process.is_alive(rec["pid"], rec["started"]), f"{name} still runs"
    # The stack's own 3-node cluster is untouched and its names still resolve.
    out = subprocess.run(["sinfo", "-h", "-N", "-p", slurm_mn.partition, "-o", "%N %T"], env=slurm_mn.env,
                         capture_output=True, text=True, timeout=30).stdout
    assert sorted(ln.split()[0] for ln in out.splitlines()) == sorted(slurm_mn.nodes)
    assert all(socket.gethostbyname(n) == "127.0.0.1" for n in slurm_mn.nodes)
