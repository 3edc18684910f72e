"""A real multi-node Ray cluster on this machine: one head and N worker nodes.

Each node is its own `ray start --block` process (own node IP on loopback, own ports), started
in its own process group so that `down` stops exactly the processes `up` started and nothing
else on the machine (never `ray stop`, which kills every Ray process of the user).

    python -m msc_platform.cluster.local up [--workers 1] [--cpus 1] [--port 6379] [--auth token|disabled]
    python -m msc_platform.cluster.local status
    python -m msc_platform.cluster.local down

`up` starts the head, then each worker, one at a time; a node whose start times out is started
again (ray_nodes.start_node); when one never starts, `up` names it, quotes its log and stops
every node it started. The head listens on 127.0.0.2:6379 unless that port is taken.

The state (address, auth mode, process groups, temp dir) lives in `runs/cluster/cluster.json`.
A driver given the recorded address takes the recorded auth mode from there
(`recorded_auth_mode`), so nothing needs exporting on this machine. Authentication: `token`
(default) creates Ray's token file if missing (`ray get-auth-token --generate`,
~/.ray/auth_token) and the nodes require it; `disabled` starts the nodes with
RAY_AUTH_MODE=disabled (loopback only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from data_tools.atomic import atomic_write_json
from msc_platform.cluster.process_groups import group_alive, group_processes, stop_groups
from msc_platform.cluster.ray_nodes import NodeSpec, NodeStartError, log_tail, start_node

DEFAULT_STATE_DIR = Path("runs") / "cluster"
STATE_FILE = "cluster.json"
HEAD_IP = "127.0.0.2"
DEFAULT_HEAD_PORT = 6379
AUTH_MODES = ("token", "disabled")
NODE_ATTEMPTS = 3
NODE_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 60.0


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


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on `host:port` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def head_port(preferred: int | None) -> int:
    """`preferred` when it is free on HEAD_IP (with a note on stderr when not), else a free port."""
    if preferred and port_free(HEAD_IP, preferred):
        return preferred
    port = free_port(HEAD_IP)
    if preferred:
        print(f"note: {HEAD_IP}:{preferred} is in use; the head listens on {HEAD_IP}:{port}",
              file=sys.stderr)
    return port


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


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct TCP ports free on `host` right now (all held open while choosing, so the
    kernel cannot hand out one twice: Ray refuses a node whose components share a port)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                   for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def _common_args(node_ip: str, cpus: int, object_store_mb: int, temp_dir: str,
                 ports: list[int]) -> list[str]:
    """The `ray start` arguments every node gets; `ports` are one per NODE_PORT_FLAGS entry."""
    port_args = [arg for flag, port in zip(NODE_PORT_FLAGS, ports, strict=True)
                 for arg in (flag, str(port))]
    return ["--block", "--node-ip-address", node_ip, "--num-cpus", str(cpus), "--num-gpus", "0",
            "--object-store-memory", str(object_store_mb * 1024 * 1024), *port_args,
            "--disable-usage-stats", "--temp-dir", temp_dir]


NODES_MARK = "msc-nodes: "


def cluster_nodes(cluster: LocalCluster) -> dict[str, str]:
    """{node IP: Ray node id} of the alive nodes, asked by a short-lived driver process.

    Raises ClusterError when the cluster cannot be reached.
    """
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(%r + json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() "
            "if n['Alive']}))" % (cluster.address, NODES_MARK))
    env = _node_env(cluster.auth)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    if result.returncode != 0:
        raise ClusterError(f"cannot connect to {cluster.address}: {result.stderr.strip()[-2000:]}")
    # Ray may print its own lines (a node's lagging heartbeats) around the answer
    marked = [line for line in result.stdout.splitlines() if line.startswith(NODES_MARK)]
    if not marked:
        raise ClusterError(f"{cluster.address}: no node list in the driver's output: "
                           f"{result.stdout.strip()[-2000:]}")
    return json.loads(marked[-1][len(NODES_MARK):])


def _nodes_missing(cluster: LocalCluster) -> list[str]:
    """The node IPs of `cluster` that its head does not list as alive (all of them when unreachable)."""
    try:
        alive = cluster_nodes(cluster)
    except ClusterError:
        return list(cluster.node_ips)
    return [ip for ip in cluster.node_ips if ip not in alive]


def _wait_for_nodes(cluster: LocalCluster, nodes: list[NodeSpec], timeout: float) -> None:
    """Wait until the head lists every node as alive; raises ClusterError naming the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        missing = _nodes_missing(cluster)
        if not missing:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(2.0)
    logs = "\n".join(f"last lines of {n.log} ({n.name}):\n{log_tail(n.log)}"
                     for n in nodes if n.ip in missing)
    raise ClusterError(f"nodes {missing} started but did not join {cluster.address} within "
                       f"{timeout:.0f}s\n{logs}")


def start_local_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, workers: int = 1,
                        cpus: int = 1, auth: str = "token", port: int | None = None,
                        object_store_mb: int = 200, attempts: int = NODE_ATTEMPTS,
                        timeout: float = NODE_TIMEOUT_S) -> LocalCluster:
    """Start a head on 127.0.0.2 and `workers` worker nodes on 127.0.0.3, ...; wait until all joined.

    The head listens on `port` when it is free, else (and when None) on a free port. Each node
    gets `attempts` starts of up to `timeout` s each. Writes the state to
    `state_dir/cluster.json`. Raises ClusterError when a cluster recorded in `state_dir` is still
    running, on a bad argument, or when a node fails to start or join (naming it and quoting
    its log; every node already started is stopped again).
    """
    state_dir = Path(state_dir).resolve()
    if auth not in AUTH_MODES:
        raise ClusterError(f"auth: expected one of {list(AUTH_MODES)}, got {auth!r}")
    if workers < 0 or cpus < 1 or attempts < 1:
        raise ClusterError(f"workers must be >= 0, cpus and attempts >= 1, got workers={workers}, "
                           f"cpus={cpus}, attempts={attempts}")
    _refuse_running(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if auth == "token":
        ensure_auth_token()
    # Unix socket paths must stay short: keep the Ray temp dir under the system temp folder.
    temp_dir = tempfile.mkdtemp(prefix="msc_ray_")
    node_ips = [HEAD_IP] + [f"127.0.0.{3 + i}" for i in range(workers)]
    cluster = LocalCluster(address=f"{HEAD_IP}:{head_port(port)}", temp_dir=temp_dir, auth=auth,
                           node_ips=node_ips)
    try:
        _start_nodes(cluster, cpus, object_store_mb, state_dir, attempts, timeout)
    except BaseException:
        stop_cluster(cluster)
        _state_path(state_dir).unlink(missing_ok=True)
        raise
    return cluster


def _node_specs(cluster: LocalCluster, state_dir: Path) -> list[NodeSpec]:
    names = ["head"] + [f"worker{i}" for i in range(1, len(cluster.node_ips))]
    return [NodeSpec(name, ip, state_dir / f"{name}.log")
            for name, ip in zip(names, cluster.node_ips, strict=True)]


def _node_command(cluster: LocalCluster, node: NodeSpec, ray: str, cpus: int,
                  object_store_mb: int) -> list[str]:
    """The `ray start` command of `node` (with freshly chosen free ports on every call)."""
    *ports, dashboard_port = free_ports(node.ip, len(NODE_PORT_FLAGS) + 1)
    common = _common_args(node.ip, cpus, object_store_mb, cluster.temp_dir, ports)
    if node.ip != HEAD_IP:
        return [ray, "start", "--address", cluster.address, *common]
    port = cluster.address.rsplit(":", 1)[1]
    return [ray, "start", "--head", "--port", port, "--include-dashboard", "false",
            "--dashboard-port", str(dashboard_port), *common]


def _start_nodes(cluster: LocalCluster, cpus: int, object_store_mb: int, state_dir: Path,
                 attempts: int, timeout: float) -> None:
    """Start the head, then each worker once the node before it runs; then check that all joined.

    The state file is rewritten after each node starts.
    """
    ray, env = _ray_executable(), _node_env(cluster.auth)
    nodes = _node_specs(cluster, state_dir)
    for node in nodes:
        node.log.write_bytes(b"")
        cluster.log_files.append(str(node.log))
        command = partial(_node_command, cluster, node, ray, cpus, object_store_mb)
        try:
            start_node(node, command, env, cluster.process_groups, attempts=attempts,
                       timeout=timeout)
        except NodeStartError as err:
            raise ClusterError(str(err)) from None
        _write_state(state_dir, cluster)  # `make cluster-down` can stop what runs so far
    _wait_for_nodes(cluster, nodes, JOIN_TIMEOUT_S)


def cluster_processes(cluster: LocalCluster) -> set[int]:
    """The processes of `cluster` alive now: its `ray start` processes and everything below them."""
    return group_processes(cluster.process_groups)


def stop_cluster(cluster: LocalCluster, grace: float = 20.0) -> None:
    """Stop every process of `cluster` and remove its temp dir: SIGTERM, then SIGKILL after `grace` s.

    The processes are the `ray start` process groups and everything below them; nothing else on
    the machine is touched. SIGTERM goes to each `ray start` process alone: it shuts its node
    down in order.
    """
    stop_groups(cluster.process_groups, grace)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def running_local_cluster(address: str,
                          state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> LocalCluster | None:
    """The cluster recorded in `state_dir` when it runs at `address`, else None.

    Raises ClusterError on an unreadable state file.
    """
    cluster = read_state(state_dir)
    if cluster is None or cluster.address != address.strip():
        return None
    return cluster if any(group_alive(g) for g in cluster.process_groups) else None


def recorded_auth_mode(address: str, state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> str | None:
    """The auth mode of the local cluster running at `address` (None: no such cluster recorded).

    Raises ClusterError on an unreadable state file.
    """
    cluster = running_local_cluster(address, state_dir)
    return cluster.auth if cluster else None


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _write_state(state_dir: Path, cluster: LocalCluster) -> None:
    atomic_write_json(_state_path(state_dir), asdict(cluster))


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
    if cluster and any(group_alive(g) for g in cluster.process_groups):
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
    cluster = start_local_cluster(args.state_dir, workers=args.workers, cpus=args.cpus,
                                  auth=args.auth, port=args.port or None)
    print(f"Ray cluster up: head {cluster.address}, nodes {cluster.node_ips} ({args.cpus} CPU each), "
          f"auth={cluster.auth} (recorded in {_state_path(Path(args.state_dir))})")
    print(f"run a sweep on it:  make sweep ADDRESS={cluster.address}")
    print("stop it:            make cluster-down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = stop_local_cluster(args.state_dir)
    print("no cluster recorded in " + str(args.state_dir) if cluster is None
          else f"Ray cluster at {cluster.address} stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = read_state(args.state_dir)
    if cluster is None or not any(group_alive(g) for g in cluster.process_groups):
        print("no running cluster recorded in " + str(args.state_dir))
        return 1
    print(f"{cluster.address}: alive nodes {list(cluster_nodes(cluster))} (auth={cluster.auth})")
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
    up.add_argument("--port", type=int, default=DEFAULT_HEAD_PORT,
                    help=f"head port (default {DEFAULT_HEAD_PORT}; a free one when taken; 0: any free one)")
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

