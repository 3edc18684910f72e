"""The house reads top-down: cli -> sweeps -> run -> data_tools -> model; reports beside sweeps.

Each check imports an area's modules (or runs one `msc <command> --help`) in a fresh interpreter
and inspects `sys.modules`, so an import added anywhere below is caught, however indirect.
"""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import msc_platform

AREAS = ("run", "sweeps", "reports", "cli", "cluster")
WATCHED = ("torch", "ray", "mlflow", "msc_platform.run", "msc_platform.sweeps",
           "msc_platform.reports", "msc_platform.cli", "msc_platform.cluster", "data_tools", "model")
# area -> what none of its modules may import
FORBIDDEN = {
    "run": ("ray", "msc_platform.sweeps", "msc_platform.reports", "msc_platform.cli",
            "msc_platform.cluster"),
    "reports": ("torch", "ray", "msc_platform.run", "msc_platform.sweeps", "msc_platform.cli",
                "msc_platform.cluster", "model"),
    "cluster": ("torch", "msc_platform.run", "msc_platform.sweeps", "msc_platform.reports",
                "msc_platform.cli", "model"),
    "sweeps": ("msc_platform.cli",),
    "data_tools": ("msc_platform", "ray", "mlflow"),
    "model": ("msc_platform", "data_tools", "ray", "mlflow"),
}
# `msc <command> --help` -> what it may not import (only the chosen command's area)
COMMAND_FORBIDDEN = {
    "tables": ("torch", "ray", "msc_platform.run", "msc_platform.sweeps"),
    "data": ("ray", "mlflow", "msc_platform.run", "msc_platform.sweeps", "msc_platform.reports"),
    "train": ("ray", "msc_platform.sweeps", "msc_platform.reports"),
    "eval": ("ray", "msc_platform.sweeps", "msc_platform.reports"),
    "export": ("ray", "msc_platform.sweeps", "msc_platform.reports"),
    "sweep": ("msc_platform.reports",),
    "ablation": (),
}


def loaded_after(code: str) -> set[str]:
    """The top-level names and msc_platform areas in sys.modules after running `code` fresh."""
    probe = (f"import json, sys\n{code}\n"
             "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def modules_of(package: str) -> list[str]:
    """Every module of `package` (a top-level package or an msc_platform area), recursively."""
    module = __import__(package, fromlist=["_"])
    return [package] + [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")
                        if not info.name.endswith("__main__")]


def offenders(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in forbidden
                  if name in loaded or any(m.startswith(f"{name}.") for m in loaded))


def area_package(area: str) -> str:
    return area if area in ("data_tools", "model") else f"msc_platform.{area}"


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_an_area_imports_only_what_lies_below_it(area):
    modules = modules_of(area_package(area))
    loaded = loaded_after("\n".join(f"import {name}" for name in modules))
    assert offenders(loaded, FORBIDDEN[area]) == [], f"{area} ({len(modules)} modules)"


@pytest.mark.parametrize("command", sorted(COMMAND_FORBIDDEN))
def test_a_command_imports_only_its_own_area(command):
    loaded = loaded_after("from msc_platform.cli.main import main\n"
                          f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass")
    other_commands = {f"msc_platform.cli.{name}" for name in COMMAND_FORBIDDEN if name != command}
    # `msc ablation` reuses the report options of `msc tables`
    allowed = {"msc_platform.cli.tables"} if command == "ablation" else set()
    assert sorted((loaded & other_commands) - allowed) == []
    assert offenders(loaded, COMMAND_FORBIDDEN[command]) == []


def test_the_rules_cover_every_area():
    found = {info.name for info in pkgutil.iter_modules(msc_platform.__path__) if info.ispkg}
    assert found == set(AREAS)
    assert (Path(msc_platform.__file__).parent / "names.py").is_file()


def test_the_check_sees_an_indirect_import():
    """The probe is not blind: importing the sweep runner pulls in Ray through Tune."""
    assert offenders(loaded_after("import msc_platform.sweeps.runner"), ("ray", "torch")) == [
        "ray", "torch"]
