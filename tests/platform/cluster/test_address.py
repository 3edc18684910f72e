"""A wrong cluster address fails in seconds with one line, and before anything is written.

The probe (msc_platform.cluster.address) is checked against real servers on loopback: nothing
listening, a silent TCP listener, a web server, and the GCS of a real local Ray. The
commands run as a user runs them: `msc sweep` / `msc ablation` in a subprocess with a clean
environment, MLflow pointed at a SQLite file and --storage at a folder that must stay absent.
"""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from msc_platform.cluster.address import (
    PROBE_TIMEOUT_S,
    ClusterAddressError,
    check_address,
    split_address,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
SWEEP_SPEC = REPO_ROOT / "experiments" / "sweeps" / "default.yaml"
GRID_SPEC = REPO_ROOT / "experiments" / "ablations" / "components.yaml"
NOTHING_THERE = "127.0.0.9:6399"  # loopback: the connection is refused at once
ANSWER_LIMIT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_listener():
    """A TCP port on 127.0.0.1 that accepts connections and never says anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def web_server():
    """An HTTP/1 server on 127.0.0.1 (as a Ray dashboard or an MLflow server would be)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def ray_gcs():
    """The GCS address of a real local Ray started for the test (token authentication on)."""
    import ray

    context = ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.2",
                       logging_level="ERROR", log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.mark.parametrize("address, host, port", [
    ("127.0.0.2:6379", "127.0.0.2", 6379),
    ("ray://head.example:10001", "head.example", 10001),
    ("[::1]:6379", "::1", 6379),
    (" 127.0.0.2:6379 ", "127.0.0.2", 6379),
])
def test_split_address(address, host, port):
    assert split_address(address) == (host, port)


@pytest.mark.parametrize("address, problem", [
    ("127.0.0.2", "expected host:port"),
    (":6379", "expected host:port"),
    ("http://127.0.0.2:8265", "expected host:port"),
    ("127.0.0.2:", "port '' is not a number"),
    ("127.0.0.2:65536", "port '65536' is not a number in 1..65535"),
    ("127.0.0.2:0", "port '0'"),
    ("127.0.0.2:port", "port 'port'"),
])
def test_a_malformed_address_is_one_clear_line(address, problem):
    with pytest.raises(ClusterAddressError) as caught:
        check_address(address)
    message = str(caught.value)
    assert message.startswith(f"bad Ray cluster address {address!r} (") and problem in message
    assert "--address / $RAY_ADDRESS" in message and "\n" not in message


def test_nothing_listening_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(ClusterAddressError, match=r"^no Ray cluster answers at 127\.0\.0\.9:6399 "
                       r"\(TCP connect to the GCS port was refused: nothing listens there\); "
                       r"start one with make cluster-up"):
        check_address(NOTHING_THERE)
    assert time.monotonic() - started < 1.0


def test_a_client_address_probes_the_client_port():
    with pytest.raises(ClusterAddressError, match=r"at ray://127\.0\.0\.9:10001 \(TCP connect to "
                                                  r"the Ray Client port was refused"):
        check_address("ray://127.0.0.9:10001")


def test_an_unknown_host_name_is_named():
    with pytest.raises(ClusterAddressError, match=r"the host name 'no-such-head\.invalid' does "
                                                  r"not resolve"):
        check_address("no-such-head.invalid:6379")


def test_a_silent_port_is_given_up_after_the_timeout(silent_listener):
    started = time.monotonic()
    with pytest.raises(ClusterAddressError, match="accepted a TCP connection but sent no gRPC reply"):
        check_address(silent_listener, timeout=1.0)
    assert 0.9 < time.monotonic() - started < 3.0


def test_a_web_server_is_not_taken_for_a_cluster(web_server):
    with pytest.raises(ClusterAddressError, match=r"answers, but not as a Ray GCS \(gRPC\) does: "
                                                  r"'<!DOCTYPE HTML"):
        check_address(web_server)


def test_a_ray_gcs_answers(ray_gcs):
    started = time.monotonic()
    check_address(ray_gcs)
    assert time.monotonic() - started < 1.0


def test_ray_keywords_pass_unchecked():
    check_address("auto")
    check_address("local")


def test_run_sweep_checks_the_address_before_it_writes(tmp_path, monkeypatch):
    """The library path: run_sweep's Ray session probes before the parent run or the storage."""
    import ray

    from msc_platform.sweeps.runner import load_sweep_spec, run_sweep

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    spec = load_sweep_spec(SWEEP_SPEC, [])
    with pytest.raises(ClusterAddressError, match="no Ray cluster answers at 127.0.0.9:6399"):
        run_sweep(spec, address=NOTHING_THERE, storage=str(tmp_path / "ray"))
    assert not ray.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only PATH, a fresh HOME and this test's MLflow store (no RAY_*, nothing inherited)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}


def run_msc(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, list[str], float]:
    """Run `msc ARGS --storage tmp/ray --quiet` in tmp_path; (exit code, stderr lines, seconds)."""
    command = [sys.executable, "-m", "msc_platform.cli.main", *args,
               "--storage", str(tmp_path / "ray"), "--quiet"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stderr.strip().splitlines(), time.monotonic() - started


def assert_nothing_written(tmp_path: Path) -> None:
    """No MLflow store (so no parent run), no Tune storage, no runs/ folder in the working dir."""
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


@pytest.mark.parametrize("command, spec", [("sweep", SWEEP_SPEC), ("ablation", GRID_SPEC)])
def test_the_command_answers_a_wrong_address_in_seconds(tmp_path, command, spec):
    code, lines, seconds = run_msc(tmp_path, clean_env(tmp_path), command, str(spec),
                                   "--address", NOTHING_THERE)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        "error: no Ray cluster answers at 127.0.0.9:6399 (TCP connect to the GCS port was "
        "refused: nothing listens there); start one with make cluster-up or check --address / "
        "$RAY_ADDRESS"), lines
    assert seconds < ANSWER_LIMIT_S
    assert_nothing_written(tmp_path)


def test_a_wrong_ray_address_variable_is_answered_the_same(tmp_path):
    env = clean_env(tmp_path, RAY_ADDRESS=NOTHING_THERE)
    code, lines, seconds = run_msc(tmp_path, env, "sweep", str(SWEEP_SPEC))
    assert (code, len(lines)) == (2, 1), lines
    assert "no Ray cluster answers at 127.0.0.9:6399" in lines[0]
    assert seconds < ANSWER_LIMIT_S
    assert_nothing_written(tmp_path)


def test_a_silent_address_is_given_up_within_the_limit(tmp_path, silent_listener):
    code, lines, seconds = run_msc(tmp_path, clean_env(tmp_path), "sweep", str(SWEEP_SPEC),
                                   "--address", silent_listener)
    assert (code, len(lines)) == (2, 1), lines
    assert f"no Ray cluster answers at {silent_listener}" in lines[0]
    assert "no gRPC reply" in lines[0]
    assert PROBE_TIMEOUT_S <= seconds < ANSWER_LIMIT_S
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("address", ["127.0.0.2", "127.0.0.2:99999", "ray://127.0.0.2"])
def test_a_malformed_address_is_bad_input(tmp_path, address):
    code, lines, seconds = run_msc(tmp_path, clean_env(tmp_path), "sweep", str(SWEEP_SPEC),
                                   "--address", address)
    assert (code, len(lines)) == (2, 1), lines
    assert lines[0].startswith(f"error: bad Ray cluster address {address!r}")
    assert seconds < ANSWER_LIMIT_S
    assert_nothing_written(tmp_path)
