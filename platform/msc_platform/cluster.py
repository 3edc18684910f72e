"""A real multi-node Ray cluster on this machine: one head and N worker nodes.

Each node is its own `ray start --block` process (own node IP on loopback, own ports), started
in its own process group so that `down` stops exactly the processes `up` started and nothing
else on the machine (never `ray stop`, which kills every Ray process of the user).

    python -m msc_platform.cluster up [--workers 1] [--cpus 1] [--auth token|disabled]
    python -m msc_platform.cluster status
    python -m msc_platform.cluster down

The state (address, process groups, temp dir) lives in `runs/cluster/cluster.json`.
Authentication: `token` (default) uses Ray's token file (`ray get-auth-token --generate`,
~/.ray/auth_token), which every driver on this machine finds by itself; `disabled` sets
RAY_AUTH_MODE=disabled for loopback-only test clusters.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path("runs") / "cluster"
STATE_FILE = "cluster.json"
HEAD_IP = "127.0.0.2"
AUTH_MODES = ("token", "disabled")


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped."""


@dataclass
class LocalCluster:
    """What `start_local_cluster` started: enough to connect to it and to stop it."""

    address: str  # "HEAD_IP:GCS_PORT"
    temp_dir: str
    auth: str
    node_ips: list[str]
    process_groups: list[int] = field(default_factory=list)
    log_files: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment variables a driver needs to join this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.auth}


def free_port(host: str = HEAD_IP) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ray_executable() -> str:
    """The `ray` script of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ClusterError("cannot find the `ray` command next to the Python interpreter or on PATH")
    return found


def _node_env(auth: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = auth
    return env


def ensure_auth_token() -> None:
    """Create Ray's default auth token file if it does not exist (as `ray get-auth-token --generate`)."""
    result = subprocess.run([_ray_executable(), "get-auth-token", "--generate"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"ray get-auth-token --generate failed: {result.stderr.strip()}")


def _common_args(node_ip: str, cpus: int, object_store_mb: int, temp_dir: str) -> list[str]:
    return [
        "--block", "--node-ip-address", node_ip, "--num-cpus", str(cpus), "--num-gpus", "0",
        "--object-store-memory", str(object_store_mb * 1024 * 1024),
        "--node-manager-port", str(free_port(node_ip)),
        "--object-manager-port", str(free_port(node_ip)),
        "--dashboard-agent-listen-port", str(free_port(node_ip)),
        "--dashboard-agent-grpc-port", str(free_port(node_ip)),
        "--runtime-env-agent-port", str(free_port(node_ip)),
        "--metrics-export-port", str(free_port(node_ip)),
        "--disable-usage-stats", "--temp-dir", temp_dir,
    ]


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start one `ray start --block` in a new session (its pid is its process group id)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, log_path: Path,
                   timeout: float) -> None:
    """Wait until `host:port` accepts connections; raises ClusterError on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the head node exited during start-up; see {log_path}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise ClusterError(f"the head node did not open {host}:{port} within {timeout:.0f}s; see {log_path}")


def cluster_nodes(cluster: LocalCluster) -> dict[str, str]:
    """{node IP: Ray node id} of the alive nodes, asked by a short-lived driver process.

    Raises ClusterError when the cluster cannot be reached.
    """
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() "
            "if n['Alive']}))" % cluster.address)
    env = _node_env(cluster.auth)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    if result.returncode != 0:
        raise ClusterError(f"cannot connect to {cluster.address}: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _alive_nodes(cluster: LocalCluster) -> list[str]:
    return list(cluster_nodes(cluster))


def _wait_for_nodes(cluster: LocalCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = _alive_nodes(cluster)
        if sorted(alive) == sorted(cluster.node_ips):
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"expected nodes {cluster.node_ips} at {cluster.address}, "
                               f"found {alive}; logs: {cluster.log_files}")
        time.sleep(1.0)


def start_local_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, workers: int = 1,
                        cpus: int = 1, auth: str = "token", object_store_mb: int = 200,
                        timeout: float = 90.0) -> LocalCluster:
    """Start a head on 127.0.0.2 and `workers` worker nodes on 127.0.0.3, ...; wait until all joined.

    Writes the state to `state_dir/cluster.json`. Raises ClusterError when a cluster recorded in
    `state_dir` is still running, on a bad argument, or when a node fails to start (the nodes
    already started are stopped again).
    """
    state_dir = Path(state_dir).resolve()
    if auth not in AUTH_MODES:
        raise ClusterError(f"auth: expected one of {list(AUTH_MODES)}, got {auth!r}")
    if workers < 0 or cpus < 1:
        raise ClusterError(f"workers must be >= 0 and cpus >= 1, got workers={workers}, cpus={cpus}")
    _refuse_running(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if auth == "token":
        ensure_auth_token()
    # Unix socket paths must stay short: keep the Ray temp dir under the system temp folder.
    temp_dir = tempfile.mkdtemp(prefix="msc_ray_")
    port = free_port(HEAD_IP)
    node_ips = [HEAD_IP] + [f"127.0.0.{3 + i}" for i in range(workers)]
    cluster = LocalCluster(address=f"{HEAD_IP}:{port}", temp_dir=temp_dir, auth=auth,
                           node_ips=node_ips)
    try:
        _start_nodes(cluster, port, cpus, object_store_mb, state_dir, timeout)
    except BaseException:
        stop_cluster(cluster)
        raise
    _write_state(state_dir, cluster)
    return cluster


def _start_nodes(cluster: LocalCluster, port: int, cpus: int, object_store_mb: int,
                 state_dir: Path, timeout: float) -> None:
    ray = _ray_executable()
    env = _node_env(cluster.auth)
    head_log = state_dir / "head.log"
    head_args = [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                 "--dashboard-port", str(free_port(HEAD_IP)),
                 *_common_args(HEAD_IP, cpus, object_store_mb, cluster.temp_dir)]
    head = _spawn(head_args, head_log, env)
    cluster.process_groups.append(head.pid)
    cluster.log_files.append(str(head_log))
    _wait_for_port(HEAD_IP, port, head, head_log, timeout)
    for index, node_ip in enumerate(cluster.node_ips[1:], start=1):
        log = state_dir / f"worker{index}.log"
        args = [ray, "start", "--address", cluster.address,
                *_common_args(node_ip, cpus, object_store_mb, cluster.temp_dir)]
        cluster.process_groups.append(_spawn(args, log, env).pid)
        cluster.log_files.append(str(log))
    _wait_for_nodes(cluster, timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_pids() -> dict[int, int]:
    """{pid: parent pid} of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(roots: list[int]) -> set[int]:
    """The processes below `roots` (Ray worker processes run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_pids().items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cluster_processes(cluster: LocalCluster) -> set[int]:
    """The processes of `cluster` alive now: its `ray start` processes and everything below them."""
    leaders = [pid for pid in cluster.process_groups if _group_alive(pid)]
    return {pid for pid in set(leaders) | _descendants(leaders) if pid_alive(pid)}


def _kill_quietly(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_cluster(cluster: LocalCluster, grace: float = 20.0) -> None:
    """Stop every process of `cluster` and its temp dir: SIGTERM, then SIGKILL after `grace` s.

    The processes are the `ray start` process groups and everything below them (Ray's worker
    processes set up process groups of their own); nothing else on the machine is touched.
    SIGTERM goes to each `ray start` process alone: it shuts its node down in order.
    """
    leaders = [pid for pid in cluster.process_groups if _group_alive(pid)]
    processes = cluster_processes(cluster)
    for pid in reversed(leaders):
        _kill_quietly(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in processes):
        time.sleep(0.2)
    for pid in processes:
        _kill_quietly(pid, signal.SIGKILL)
    for pgid in leaders:
        _kill_quietly(pgid, signal.SIGKILL, group=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _write_state(state_dir: Path, cluster: LocalCluster) -> None:
    path = _state_path(state_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2))
    os.replace(tmp, path)


def read_state(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> LocalCluster | None:
    """The cluster recorded in `state_dir`, or None; raises ClusterError on an unreadable file."""
    path = _state_path(Path(state_dir))
    if not path.exists():
        return None
    try:
        return LocalCluster(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ClusterError(f"{path}: unreadable cluster state: {err}") from err


def _refuse_running(state_dir: Path) -> None:
    cluster = read_state(state_dir)
    if cluster and any(_group_alive(g) for g in cluster.process_groups):
        raise ClusterError(f"a cluster recorded in {_state_path(state_dir)} is still running at "
                           f"{cluster.address}; run `make cluster-down` first")


def stop_local_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> LocalCluster | None:
    """Stop the cluster recorded in `state_dir` and forget it; returns it (None when none)."""
    cluster = read_state(state_dir)
    if cluster is None:
        return None
    stop_cluster(cluster)
    _state_path(Path(state_dir)).unlink(missing_ok=True)
    return cluster


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = start_local_cluster(args.state_dir, workers=args.workers, cpus=args.cpus, auth=args.auth)
    print(f"Ray cluster up: head {cluster.address}, nodes {cluster.node_ips} ({args.cpus} CPU each), "
          f"auth={cluster.auth}")
    print(f"run a sweep on it:  make sweep ADDRESS={cluster.address}")
    if cluster.auth == "disabled":
        print("drivers must set RAY_AUTH_MODE=disabled")
    print("stop it:            make cluster-down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = stop_local_cluster(args.state_dir)
    print("no cluster recorded in " + str(args.state_dir) if cluster is None
          else f"Ray cluster at {cluster.address} stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = read_state(args.state_dir)
    if cluster is None or not any(_group_alive(g) for g in cluster.process_groups):
        print("no running cluster recorded in " + str(args.state_dir))
        return 1
    print(f"{cluster.address}: alive nodes {_alive_nodes(cluster)} (auth={cluster.auth})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m msc_platform.cluster up|down|status`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m msc_platform.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where cluster.json lives")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start a head and worker nodes on loopback")
    up.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    up.add_argument("--cpus", type=int, default=1, help="CPUs each node offers (default 1)")
    up.add_argument("--auth", choices=AUTH_MODES, default="token", help="Ray token authentication")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the recorded cluster").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="show the recorded cluster's nodes").set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
