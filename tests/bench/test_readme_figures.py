"""The README's step figures are the ones in bench/results.json (a re-run of `make bench` that
moves them must update the README too)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = re.compile(r"takes (\d\.\d\d)-(\d\.\d\d) of the time of the released\s+code's algorithm "
                     r"in float32, and (\d\.\d\d) with `train\.bf16=true`")


def _cpu_rows(prefix: str) -> list[dict]:
    rows = json.loads((ROOT / "bench" / "results.json").read_text())["results"]
    return [row for row in rows if row["name"].startswith(prefix)
            and not row["name"].endswith("_cuda") and isinstance(row["value"], float)]


def test_readme_step_figures_are_the_bench_results():
    found = FIGURES.search((ROOT / "README.md").read_text())
    assert found, "README: the step figures sentence is missing"
    low, high, bf16 = (float(value) for value in found.groups())
    fp32 = [row["value"] for row in _cpu_rows("step_vs_released_algorithm_b")]
    assert len(fp32) == 4  # B=32 and 128, 1 and 2 threads
    assert (low, high) == (round(min(fp32), 2), round(max(fp32), 2))
    (best,) = _cpu_rows("best_accelerated_vs_released_algorithm")
    assert best["note"].startswith("bf16 step")  # the README names the bf16 switch
    assert bf16 == round(best["value"], 2)
