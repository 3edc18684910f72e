"""The README's step figures are the ones in bench/results.json (a re-run of `make bench` that
moves them must update the README too)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = re.compile(r"takes (\d\.\d\d)-(\d\.\d\d) of the time of the released\s+code's algorithm "
                     r"in float32, and (\d\.\d\d)-(\d\.\d\d) with `train\.bf16=true`")


def _cpu_ratios(prefix: str) -> list[float]:
    """The values of the CPU rows named prefix + b{B}_t{t}."""
    rows = json.loads((ROOT / "bench" / "results.json").read_text())["results"]
    return [row["value"] for row in rows if row["name"].startswith(prefix)
            and not row["name"].endswith("_cuda") and isinstance(row["value"], float)]


def _range(values: list[float]) -> tuple[float, float]:
    assert len(values) == 4  # B=32 and 128, 1 and 2 threads
    return round(min(values), 2), round(max(values), 2)


def test_readme_step_figures_are_the_bench_results():
    found = FIGURES.search((ROOT / "README.md").read_text())
    assert found, "README: the step figures sentence is missing"
    low, high, bf16_low, bf16_high = (float(value) for value in found.groups())
    assert (low, high) == _range(_cpu_ratios("step_vs_released_algorithm_b"))
    assert (bf16_low, bf16_high) == _range(_cpu_ratios("bf16_step_vs_released_algorithm_b"))
