"""`make bench`: run every benchmark section, print one table, write bench/results.json.

`--only SECTION ...` re-measures those sections and keeps the other sections' last rows in
results.json (each row records when it was measured). The table in docs/benchmarks.md is then
regenerated from results.json (bench/render_docs.py).

Each module in SECTIONS exposes `run(quick: bool) -> list[dict]`; a row is
{"name", "value", "unit", "target" (str or None), "ok" (bool or None), "note"}.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform as std_platform
import time
from pathlib import Path

import torch

from bench.render_docs import update_docs
from data_tools.atomic import atomic_write_json

SECTIONS = (
    "bench.bench_ops",
    "bench.bench_model",
    "bench.bench_step",
    "bench.bench_accel",
    "bench.bench_data",
    "bench.bench_eval",
    "bench.bench_sweep",
)
RESULTS = Path(__file__).resolve().parent / "results.json"


def _machine() -> dict:
    return {
        "cpu": std_platform.processor() or std_platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _print_table(rows: list[dict]) -> None:
    header = f"{'benchmark':44s} {'value':>14s} {'unit':8s} {'target':10s} ok"
    print(header)
    print("-" * len(header))
    for row in rows:
        value = row["value"]
        shown = f"{value:14.4g}" if isinstance(value, (int, float)) else f"{str(value):>14s}"
        ok = {True: "yes", False: "MISS", None: "-"}[row.get("ok")]
        print(f"{row['name']:44s} {shown} {row.get('unit', ''):8s} {str(row.get('target') or ''):10s} {ok}")


def _kept_rows(new_rows: list[dict]) -> list[dict]:
    """Rows of the previous results.json whose sections this run did not measure (`--only`)."""
    if not RESULTS.exists():
        return []
    measured = {row["section"] for row in new_rows}
    previous = json.loads(RESULTS.read_text()).get("results", [])
    return [row for row in previous if row.get("section") not in measured]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="section module names to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    rows: list[dict] = []
    for name in SECTIONS:
        if args.only and name.rsplit(".", 1)[-1] not in args.only and name not in args.only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        start = time.perf_counter()
        section_rows = module.run(quick=args.quick)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for row in section_rows:
            row.setdefault("section", name.rsplit(".", 1)[-1])
            row.setdefault("when", when)
        rows.extend(section_rows)
        print(f"[{name}] {time.perf_counter() - start:.1f}s", flush=True)
    _print_table(rows)
    payload = {"machine": _machine(), "quick": args.quick,
               "results": _kept_rows(rows) + rows}
    atomic_write_json(RESULTS, payload)
    print(f"wrote {RESULTS}")
    update_docs(RESULTS, sections=tuple(name.rsplit(".", 1)[-1] for name in SECTIONS))
    print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
