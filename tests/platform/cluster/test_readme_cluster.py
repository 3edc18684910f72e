"""The documented cluster commands work as written.

The slow test runs the runbook's lines through `bash -c`, as a user types them, in a copy of
the repository with its built .venv, under a clean environment: PATH and a fresh HOME, nothing
else (no RAY_AUTH_MODE, no RAY_ADDRESS, no MLFLOW_TRACKING_URI). The fresh HOME is a first-time
user: no ~/.ray/auth_token yet, so `make cluster-up` has to create it and the driver has to find
it without being told. The copy gives the Makefile's defaults (runs/, sqlite:///mlflow.db) a
folder of their own. Only the sweep size is shrunk, through ARGS, with options and key=value
overrides mixed as the issue reported them.

The fast tests take every `make sweep` / `make ablation` / `msc sweep` / `msc ablation` line of
README.md and docs/*.md, expand it through the real Makefile (`make -n`), and parse it with the
`msc` parser and the sweep-spec loader, so a documented line that cannot run fails here.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_tools.processes import pid_alive
from msc_platform.cli.main import build_parser, parse_command_line
from msc_platform.cluster.local import (
    DEFAULT_HEAD_PORT,
    HEAD_IP,
    cluster_processes,
    port_free,
    read_state,
)
from msc_platform.cluster.process_groups import descendants
from msc_platform.sweeps.spec import load_sweep_spec
from tests.platform.conftest import REPO_ROOT, TINY

RUNBOOK = REPO_ROOT / "docs" / "sweeps.md"
DOCUMENTED = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LOCAL_ADDRESS = f"{HEAD_IP}:{DEFAULT_HEAD_PORT}"
RUNBOOK_LINES = ["make cluster-up", f"make sweep ADDRESS={LOCAL_ADDRESS}",
                 f"make ablation ADDRESS={LOCAL_ADDRESS}", "make cluster-down"]
NODE_IPS = {HEAD_IP, "127.0.0.3"}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "data", "mlflow.db", "mlartifacts",
                                     ".cache", "__pycache__", ".pytest_cache", "*.egg-info")
STEP_TIMEOUT_S = 600
# A driver elsewhere (no cluster record, no token file) with only the real-machine exports.
EXPORTED_DRIVER = (f"{REPO_ROOT / '.venv' / 'bin' / 'python'} -c \"import ray; "
                   "ray.init(address='{address}', logging_level='ERROR'); "
                   "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))\"")


def tiny_args(storage: Path, data_root: Path, *spec_keys: str) -> str:
    """ARGS that shrink a documented run to the tiny data set, 1 epoch, options in between."""
    return " ".join([*spec_keys, "train.epochs=1", f"--storage {storage}", f"data.root={data_root}",
                     "data.synthetic_preset=tiny", f"model.text_dim={TINY.text_dim}",
                     f"model.video_dim={TINY.video_dim}", "--quiet"])


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository as a user's clone: its files without runs, data or stores, and the .venv.

    The .venv is linked, so a stale setup stamp would make the copy's `make` reinstall the
    project into it from the copy: the test refuses to run then.
    """
    stamp, pyproject = REPO_ROOT / ".venv" / ".installed", REPO_ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime:
        pytest.fail(f"{stamp} is missing or older than {pyproject}: run `make setup` first")
    root = tmp_path_factory.mktemp("clone") / "repo"
    shutil.copytree(REPO_ROOT, root, ignore=COPY_IGNORE)
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    return root


def run_line(line: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    """Run one documented shell line as typed; its output and wall time also go to `log`."""
    start = time.monotonic()
    try:
        result = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{line}` ran over {STEP_TIMEOUT_S}s")
    log.write_text(f"$ {line}\n({time.monotonic() - start:.1f} s)\n{result.stdout}\n{result.stderr}")
    return result


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args[-1]}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def leftover_processes(clone: Path, temp_dir: str, pids: set[int]) -> list[str]:
    """Live processes of the cluster: recorded ones, ones below them, and any working in `clone`
    or naming the cluster's temp dir on their command line."""
    found = {pid for pid in pids | descendants(sorted(pids)) if pid_alive(pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(clone)) or temp_dir in command) and pid_alive(int(entry.name)):
            found.add(int(entry.name))
    return [f"{pid}: {(Path('/proc') / str(pid) / 'cmdline').read_bytes()[:120]!r}"
            for pid in sorted(found) if pid_alive(pid)]


@pytest.fixture(scope="module")
def readme_session(clone, tiny_data_root, tmp_path_factory) -> dict:
    """cluster-up, a sweep and an ablation grid on its printed address, cluster-down; always down."""
    work = tmp_path_factory.mktemp("readme_cluster")
    home = work / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    port_was_free = port_free(HEAD_IP, DEFAULT_HEAD_PORT)
    session: dict = {"pids": set(), "temp_dir": None}
    try:
        session["up"] = _ok(run_line("make cluster-up", clone, env, work / "up.log"))
        state = read_state(clone / "runs" / "cluster")
        session["temp_dir"], session["pids"] = state.temp_dir, cluster_processes(state)
        address = re.search(r"make sweep ADDRESS=(\S+)", session["up"]).group(1)
        session["address"], session["port_was_free"] = address, port_was_free
        # a fresh worker per trial: with 1-epoch trials a reused worker can take both trials on
        # one node, and this run checks that the sweep reaches both nodes
        sweep_args = tiny_args(work / "sweeps", tiny_data_root, "num_samples=2",
                               "reuse_actors=false")
        session["sweep"] = run_line(f'make sweep ADDRESS={address} ARGS="{sweep_args}"', clone, env,
                                    work / "sweep.log")
        session["pids"] |= cluster_processes(state)
        grid_args = tiny_args(work / "sweeps", tiny_data_root, "seeds=[0]")
        session["ablation"] = run_line(f'make ablation ADDRESS={address} ARGS="{grid_args}"', clone,
                                       env, work / "ablation.log")
        session["pids"] |= cluster_processes(state)
        session["exported_driver"] = run_line(EXPORTED_DRIVER.format(address=address), work, {
            **env, "HOME": str(work), "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": (home / ".ray" / "auth_token").read_text().strip()}, work / "driver.log")
    finally:
        session["down"] = run_line("make cluster-down", clone, env, work / "down.log")
    yield session


def _experiment_runs(clone: Path, experiment: str) -> tuple[object, list]:
    """(the sweep's parent run, its child runs) in the clone's default MLflow store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("msc.role") == "sweep-parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


@pytest.mark.slow
def test_cluster_up_prints_the_documented_address(readme_session):
    assert "Ray cluster up" in readme_session["up"]
    if readme_session["port_was_free"]:
        assert readme_session["address"] == LOCAL_ADDRESS


@pytest.mark.slow
def test_sweep_on_the_printed_address_runs_on_both_nodes(readme_session, clone):
    output = _ok(readme_session["sweep"])
    assert "is the cluster `make cluster-up` started" in readme_session["sweep"].stderr
    assert "Sweep default: 2 trials" in output
    parent, children = _experiment_runs(clone, "msc-synthetic")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["msc.node_ip"] for r in children} == NODE_IPS


@pytest.mark.slow
def test_ablation_on_the_printed_address_runs_on_both_nodes(readme_session, clone):
    _ok(readme_session["ablation"])
    parent, children = _experiment_runs(clone, "msc-ablation-components")
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["msc.row"] for r in children) == [
        "a_baseline", "b_tcp", "c_cbva_uniform", "d_optome", "e_adaptive"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["msc.node_ip"] for r in children} == NODE_IPS
    assert (clone / "runs" / "ablations" / "components" / "tables" / "summary.md").is_file()


@pytest.mark.slow
def test_a_driver_with_the_real_machine_exports_joins(readme_session):
    assert _ok(readme_session["exported_driver"]).strip().splitlines()[-1] == str(sorted(NODE_IPS))


@pytest.mark.slow
def test_cluster_down_leaves_no_process(readme_session, clone):
    assert "stopped" in _ok(readme_session["down"])
    assert readme_session["temp_dir"], "cluster-up recorded no cluster"
    assert not leftover_processes(clone, readme_session["temp_dir"], readme_session["pids"])
    assert not (clone / "runs" / "cluster" / "cluster.json").exists()


def test_runbook_holds_the_lines_the_slow_test_runs():
    text = RUNBOOK.read_text(encoding="utf-8")
    commands = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for line in RUNBOOK_LINES:
        assert line in commands, f"{RUNBOOK.name}: no line `{line}`"


RUN_LINE = re.compile(r"((?:make|msc) (?:sweep|ablation)\b[^`#\n]*)")
PLACEHOLDERS = {"head-ip": "10.0.0.1", "head": "10.0.0.1", "port": "6379", "mlflow-host": "10.0.0.2"}


def is_reference(command: str) -> bool:
    """True for a usage synopsis (`msc sweep SPEC [key=value ...]`, a Makefile recipe with
    `$(ARGS)`) or a bare `msc sweep` in prose: names of commands, not lines to run."""
    words = command.split()
    synopsis = "SPEC" in words or "$(" in command or any(w.startswith(("[key", "[--")) for w in words)
    return synopsis or (words[0] == "msc" and len(words) == 2)


def documented_run_lines() -> list[tuple[str, str]]:
    """(file:line, command) of every runnable sweep/ablation command in README.md and docs/*.md.

    Placeholders such as <head-ip> become sample values; synopses are left out.
    """
    found = []
    for path in DOCUMENTED:
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in RUN_LINE.finditer(text):
                command = re.sub(r"<([^>]+)>", lambda m: PLACEHOLDERS.get(m.group(1), "x"),
                                 match.group(1).strip())
                if not is_reference(command):
                    found.append((f"{path.name}:{number}", command))
    return found


def msc_argv(command: str) -> list[str]:
    """The `msc` arguments a documented command runs: through the Makefile for `make` lines."""
    words = shlex.split(command)
    if words[0] == "msc":
        return words[1:]
    result = subprocess.run(["make", "-n", *words[1:]], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    (recipe,) = [line for line in result.stdout.splitlines() if "/msc " in line]
    return shlex.split(recipe)[1:]


@pytest.mark.parametrize("where, command", documented_run_lines())
def test_documented_run_line_parses_and_loads_its_spec(where, command):
    argv = msc_argv(command)
    args = parse_command_line(build_parser(argv), argv)
    spec = load_sweep_spec(REPO_ROOT / args.spec, args.overrides)
    assert spec.name, f"{where}: {command}"


def test_documented_run_lines_include_the_cluster_lines():
    commands = {command for _, command in documented_run_lines()}
    assert {f"make sweep ADDRESS={LOCAL_ADDRESS}", f"make ablation ADDRESS={LOCAL_ADDRESS}"} <= commands
