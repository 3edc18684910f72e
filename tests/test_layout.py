"""The repository layout keeps Python's standard `platform` module reachable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
