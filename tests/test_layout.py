"""The repository layout keeps Python's standard `platform` module reachable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_stdlib_from_repo_root():
    code = "import platform, sys; print(platform.__file__); platform.python_version()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert "site-packages" not in out
    assert Path(out).parent != ROOT / "platform"
    assert Path(out).name == "platform.py"


def test_no_init_in_platform_folder():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_packages_import_under_their_own_names():
    import data_tools
    import model
    import msc_platform

    assert Path(msc_platform.__file__).parent == ROOT / "platform" / "msc_platform"
    assert Path(model.__file__).parent == ROOT / "model"
    assert Path(data_tools.__file__).parent == ROOT / "data_tools"


WORKING_DIR_EXCLUDES = [".venv", ".git", "data", "runs", "mlartifacts", "mlflow.db", "*.pyc",
                        "__pycache__", "bench/results.json"]


@pytest.mark.slow
def test_platform_is_stdlib_inside_a_ray_worker_whose_working_dir_is_the_repo():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.2",
             runtime_env={"working_dir": str(ROOT), "excludes": WORKING_DIR_EXCLUDES})
    try:
        @ray.remote
        def where_is_platform():
            import os
            import platform

            return os.getcwd(), platform.__file__, platform.python_version()

        cwd, origin, version = ray.get(where_is_platform.remote())
    finally:
        ray.shutdown()
    assert (Path(cwd) / "platform" / "msc_platform").is_dir()  # the worker runs in the repo copy
    assert Path(origin).name == "platform.py"
    assert not Path(origin).is_relative_to(cwd)
    assert version == sys.version.split()[0]
