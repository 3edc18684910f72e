"""bench_step's row building: count rows, targets, and failed worker processes."""
from __future__ import annotations

import torch

from bench.bench_step import (
    SIDES,
    _count_rows_at,
    _failed_rows,
    _in_subprocess,
    available_gib,
    compare_steps,
    memory_shortfall,
    must_hand_back,
)

COUNTS = {"ours": {"aten_ops": 3000, "reads": {}},
          "released": {"aten_ops": 20000, "reads": {"_local_scalar_dense": 900, "nonzero": 100}}}


def test_count_rows_carry_the_targets():
    small = {row["name"]: row for row in _count_rows_at(8, COUNTS, None, 8, "", "CPU")}
    assert small["aten_ops_per_step_b8"]["ok"] is None
    assert small["host_reads_per_step_b8"]["value"] == 0
    assert small["host_reads_per_step_b8"]["ok"] is True
    assert small["released_algorithm_host_reads_per_step_b8"]["value"] == 1000
    large = {row["name"]: row for row in _count_rows_at(64, COUNTS, 2999, 8, "_cuda", "GPU")}
    assert large["aten_ops_per_step_b64_cuda"]["target"] == "= b8"
    assert large["aten_ops_per_step_b64_cuda"]["ok"] is False


def test_a_failed_worker_becomes_failed_rows():
    answer = _in_subprocess(["--count"])
    assert isinstance(answer, str) and answer.startswith("exit 2:")
    rows = _failed_rows(["step_ms_b128_t1"], f"B=128: {answer}")
    assert rows[0]["value"] == "failed" and rows[0]["ok"] is False
    assert "exit 2" in rows[0]["note"]


def test_a_step_too_large_for_the_free_memory_is_skipped():
    free = available_gib()
    assert free is not None and free > 0
    assert memory_shortfall(1, torch.device("cpu")) is None
    reason = memory_shortfall(100_000, torch.device("cpu"))
    assert reason.startswith("skipped: a step needs about 14500 GiB of RAM")


def test_freed_memory_is_handed_back_only_when_both_peaks_do_not_fit():
    assert must_hand_back(1, torch.device("cpu")) is False
    assert must_hand_back(100_000, torch.device("cpu")) is True
    assert must_hand_back(100_000, torch.device("cuda")) is False


def test_compare_steps_times_every_side_every_round_and_says_how_memory_was_kept():
    times = compare_steps(videos=2, threads=1, rounds=2, device=torch.device("cpu"))
    assert all(len(times[side]) == 2 for side in SIDES)
    assert all(seconds > 0 for side in SIDES for seconds in times[side])
    assert times["memory"] == "freed memory kept between steps"
