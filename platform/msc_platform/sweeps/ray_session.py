"""Connecting the driver to Ray: a local instance it starts itself, or an existing cluster.

Without an address (and without $RAY_ADDRESS) the driver starts a local Ray bound to the loopback
address $MSC_RAY_NODE_IP (default 127.0.0.2: Ray rewrites 127.0.0.1 to the machine's network
address). With an address it first checks that a Ray cluster answers there
(`msc_platform.cluster.address`: a typo fails in seconds, before anything is written), then joins
it and ships the project's packages to the workers in the runtime environment (`py_modules`),
so workers need only the dependencies installed.

A local instance is watched both ways. If the driver is killed, a reaper process
(`msc_platform.cluster.session_reaper`) stops what Ray leaves running within seconds. If the
instance dies under a live driver (its GCS or raylet killed: `ray stop`, the OOM killer), a
watchdog thread says so in one line, with how to resume, and ends the driver with exit code 3
(`RAY_LOST_EXIT`). Ray would end it anyway, with exit code 1 and only its own log lines: its
core worker terminates a driver whose plasma store (raylet) is gone, or that has not reached its
GCS for 60 s; Tune's `fit()` raises nothing in either case.

Authentication: Ray (>= 2.59) sends its token only when $RAY_AUTH_MODE is `token`, and a driver
given an explicit address never turns that on by itself. When $RAY_AUTH_MODE is unset and the
address is the local cluster that `make cluster-up` recorded in runs/cluster/cluster.json, the
driver takes that cluster's mode from the record (`adopt_local_cluster_auth`). On any other
cluster the user exports RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, as Ray documents.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray
from ray._raylet import Config as RayConfig

from data_tools.processes import pid_alive
from msc_platform.cluster.address import check_address
from msc_platform.cluster.local import DEFAULT_STATE_DIR, STATE_FILE, recorded_auth_mode
from msc_platform.cluster.session_reaper import session_children, start_reaper, stop_reaper
from msc_platform.run.runtime import training_thread_env

AUTH_MODE_ENV = "RAY_AUTH_MODE"
NODE_IP_ENV = "MSC_RAY_NODE_IP"
DEFAULT_NODE_IP = "127.0.0.2"
CODE_EXCLUDES = ["__pycache__", "*.pyc"]
RAY_LOST_EXIT = 3  # as `msc sweep` interrupted: the sweep can be resumed
VITAL_PROCESSES = ("gcs_server", "raylet")
WATCH_S = 1.0


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: `address`, else $RAY_ADDRESS, else None (start a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def worker_runtime_env() -> dict:
    """The runtime environment of every worker of a local instance: trials train in a thread of
    their worker, so workers start with `training_thread_env` (one malloc arena)."""
    return {"env_vars": training_thread_env()}


def code_runtime_env() -> dict:
    """`worker_runtime_env` plus `model`, `data_tools` and `msc_platform`, carried to every worker
    of a cluster."""
    import data_tools
    import model
    import msc_platform

    folders = [str(Path(package.__file__).resolve().parent)
               for package in (model, data_tools, msc_platform)]
    return {**worker_runtime_env(), "py_modules": folders, "excludes": CODE_EXCLUDES}


def adopt_local_cluster_auth(address: str) -> str | None:
    """Use the recorded auth mode of the local cluster at `address` when $RAY_AUTH_MODE is unset.

    Sets $RAY_AUTH_MODE for this process (and its children) and has Ray re-read its settings,
    which it caches when imported, as Ray itself does when it turns token mode on. Returns the
    mode adopted, or None when nothing changed. Raises ClusterError on an unreadable record.
    """
    if os.environ.get(AUTH_MODE_ENV):
        return None
    mode = recorded_auth_mode(address)
    if mode is None:
        return None
    os.environ[AUTH_MODE_ENV] = mode
    RayConfig.initialize("")
    print(f"note: {address} is the cluster `make cluster-up` started "
          f"({DEFAULT_STATE_DIR / STATE_FILE}); joining it with {AUTH_MODE_ENV}={mode}",
          file=sys.stderr)
    return mode


def _join(address: str) -> None:
    """Connect to the cluster at `address` once it answers.

    Raises ClusterAddressError (a ConnectionError) within seconds for a malformed address or one
    where no Ray cluster answers, and ConnectionError from Ray, with a hint about token
    authentication when this driver sends no token.
    """
    check_address(address)
    adopt_local_cluster_auth(address)
    try:
        ray.init(address=address, runtime_env=code_runtime_env(), log_to_driver=True)
    except ConnectionError as err:
        if os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
            raise
        raise ConnectionError(f"{err}. If it uses token authentication (Ray's default), export "
                              f"{AUTH_MODE_ENV}=token and RAY_AUTH_TOKEN=<its token>, or run from "
                              "the clone whose `make cluster-up` started it") from err


def lost_ray_message(gone: list[str], session_dir: str) -> str:
    """The one line a driver prints when its local Ray instance died under it."""
    return (f"error: the local Ray instance of this sweep died under it: {', '.join(gone)} "
            f"exited (`ray stop`, the OOM killer or a crash; Ray's logs: {session_dir}/logs). "
            "The trials keep what they checkpointed: continue the sweep with `make sweep "
            "RESUME=1` (or --resume; `make ablation RESUME=1` for a grid)")


def watch_local_ray(session_dir: str, stopping: threading.Event,
                    interval: float = WATCH_S) -> threading.Thread:
    """Watch the GCS and raylet of this process's local Ray instance from a daemon thread.

    When one of them exits while `stopping` is not set (set it before `ray.shutdown()`), the
    thread prints `lost_ray_message` on stderr and ends the process with RAY_LOST_EXIT.
    Returns the started thread.
    """
    vital = {pid: name for pid, name in session_children(os.getpid(), session_dir).items()
             if name in VITAL_PROCESSES}

    def watch() -> None:
        while not stopping.wait(interval):
            gone = [f"its {name} (pid {pid})" for pid, name in vital.items() if not pid_alive(pid)]
            if gone and not stopping.is_set():
                print(lost_ray_message(gone, session_dir), file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(RAY_LOST_EXIT)

    thread = threading.Thread(target=watch, name="msc-ray-watchdog", daemon=True)
    thread.start()
    return thread


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                node_ip: str | None = None) -> Iterator[str | None]:
    """Run the body connected to Ray; yields the cluster address (None for a local instance).

    Reuses a Ray connection that is already open (and leaves it open); otherwise shuts Ray down
    at the end. A local instance that dies under the body ends the process (exit code
    RAY_LOST_EXIT, see the module docstring). Raises ConnectionError when the cluster cannot be reached (ClusterAddressError,
    before Ray is asked, when nothing answers at the address), and ClusterError when the local
    cluster record is unreadable.
    """
    if ray.is_initialized():
        yield cluster_address(address)
        return
    address = cluster_address(address)
    reaper, stopping = None, threading.Event()
    if address:
        _join(address)
    else:
        context = ray.init(num_cpus=num_cpus, include_dashboard=False,
                           runtime_env=worker_runtime_env(),
                           _node_ip_address=node_ip or os.environ.get(NODE_IP_ENV, DEFAULT_NODE_IP))
        session_dir = context.address_info["session_dir"]
        reaper = start_reaper(session_dir)
        watch_local_ray(session_dir, stopping)
    try:
        yield address
    finally:
        stopping.set()
        ray.shutdown()
        if reaper is not None:
            stop_reaper(reaper)
