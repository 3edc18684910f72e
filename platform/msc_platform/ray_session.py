"""Connecting the driver to Ray: a local instance it starts itself, or an existing cluster.

Without an address (and without $RAY_ADDRESS) the driver starts a local Ray bound to the loopback
address $MSC_RAY_NODE_IP (default 127.0.0.2: Ray rewrites 127.0.0.1 to the machine's network
address). With an address it joins that cluster and ships the project's packages to the workers
in the runtime environment (`py_modules`), so workers need only the dependencies installed.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray

NODE_IP_ENV = "MSC_RAY_NODE_IP"
DEFAULT_NODE_IP = "127.0.0.2"
CODE_EXCLUDES = ["__pycache__", "*.pyc"]


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: `address`, else $RAY_ADDRESS, else None (start a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def code_runtime_env() -> dict:
    """A runtime environment that carries `model`, `data_tools` and `msc_platform` to every worker."""
    import data_tools
    import model
    import msc_platform

    folders = [str(Path(package.__file__).resolve().parent)
               for package in (model, data_tools, msc_platform)]
    return {"py_modules": folders, "excludes": CODE_EXCLUDES}


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                node_ip: str | None = None) -> Iterator[str | None]:
    """Run the body connected to Ray; yields the cluster address (None for a local instance).

    Reuses a Ray connection that is already open (and leaves it open); otherwise shuts Ray down
    at the end. Raises ConnectionError (from Ray) when the cluster cannot be reached.
    """
    if ray.is_initialized():
        yield cluster_address(address)
        return
    address = cluster_address(address)
    if address:
        ray.init(address=address, runtime_env=code_runtime_env(), log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address=node_ip or os.environ.get(NODE_IP_ENV, DEFAULT_NODE_IP))
    try:
        yield address
    finally:
        ray.shutdown()
