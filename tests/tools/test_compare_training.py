"""tools/released/compare_training.py: its project side end to end, its argument checks and its
report. The released side needs the authors' code, which is not part of this repository or its
CI; docs/reproducing.md shows how to fetch it and run both sides."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools" / "released"
SCRIPT = TOOLS / "compare_training.py"


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture
def compare_training(monkeypatch):
    """The script as a module (its folder on sys.path, as when it runs)."""
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location("compare_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_project_side_prints_a_curve(tmp_path):
    out = tmp_path / "curves.json"
    result = run_script("--only", "project", "--seeds", "3", "--epochs", "1", "--preset", "tiny",
                        "--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                        "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\| 3 \| this project \| \d+\.\d \|$", result.stdout, re.MULTILINE), result.stdout
    record = json.loads(out.read_text())
    assert list(record["curves"]) == ["project"]
    assert len(record["project_git"]["git_commit"]) == 40
    assert len(record["curves"]["project"]["3"]) == 1 and record["curves"]["project"]["3"][0] > 0
    assert (tmp_path / "data" / "tvr" / "FeatureData" / "tvr_clip_L14.h5").is_file()


def test_running_the_released_side_needs_its_source(tmp_path):
    result = run_script("--seeds", "1", "--data-root", str(tmp_path), timeout=300)
    assert result.returncode == 2
    assert "--released-src is needed" in result.stderr


def test_report_table_and_spread(compare_training):
    curves = {"released": {1: [10.0, 200.0], 2: [12.0, 210.0]},
              "project": {1: [9.0, 205.0], 2: [11.0, 190.0]}}
    table = compare_training.curve_table(curves, epochs=2)
    assert table.splitlines()[0] == "| seed | code | epoch 1 | 2 |"
    assert "| 2 | this project | 11.0 | 190.0 |" in table.splitlines()
    summary = compare_training.last_epoch_summary(curves)
    assert summary["released_range"] == [200.0, 210.0]
    assert summary["project_seeds_within"] == 1
    assert summary["project_mean"] == pytest.approx(197.5)
    assert summary["project_mean_within"] is False
