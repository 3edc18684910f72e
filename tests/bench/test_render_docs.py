"""bench/render_docs.py rewrites only the generated table of docs/benchmarks.md."""
from __future__ import annotations

import json

import pytest

from bench.render_docs import BEGIN, END, PAGE, render_page, update_docs

PAYLOAD = {
    "machine": {"cpu": "x86_64", "cores": 2, "torch": "2.13.0+cpu", "cuda": None},
    "quick": False,
    "results": [
        {"section": "bench_step", "name": "step_vs_released_algorithm_b32_t1", "value": 0.91234,
         "unit": "x", "target": "<= 0.8", "ok": False, "note": "ours / released | per round",
         "when": "2026-12-02T00:00:00Z"},
        {"section": "bench_ops", "name": "aten_ops_b8", "value": 1022, "unit": "ops",
         "target": None, "ok": None, "note": "forward", "when": "2026-12-02T00:00:00Z"},
    ],
}
PAGE_TEXT = f"# Benchmarks\n\nProse before.\n\n{BEGIN}\nold table\n{END}\n\nProse after.\n"


def test_render_replaces_only_the_generated_block():
    page = render_page(PAGE_TEXT, PAYLOAD)
    assert page.startswith("# Benchmarks\n\nProse before.\n\n" + BEGIN)
    assert page.endswith(END + "\n\nProse after.\n")
    assert "old table" not in page
    row = "| bench_step | `step_vs_released_algorithm_b32_t1` | 0.9123 | x | <= 0.8 | **MISS** |"
    assert row in page
    assert "ours / released \\| per round" in page
    assert "| bench_ops | `aten_ops_b8` | 1022 | ops |  |  |" in page
    assert render_page(page, PAYLOAD) == page


def test_rows_are_grouped_in_section_order():
    page = render_page(PAGE_TEXT, PAYLOAD, sections=("bench_ops", "bench_step"))
    assert page.index("`aten_ops_b8`") < page.index("`step_vs_released_algorithm_b32_t1`")


def test_missing_markers_name_the_page():
    with pytest.raises(ValueError, match="my/page.md: needs the markers"):
        render_page("# no markers\n", PAYLOAD, where="my/page.md")
    with pytest.raises(ValueError, match="needs the markers"):
        render_page(f"{END}\n{BEGIN}\n", PAYLOAD)


def test_a_row_without_a_value_is_named():
    with pytest.raises(KeyError, match="no 'value'"):
        render_page(PAGE_TEXT, {"results": [{"name": "broken"}]})


def test_update_docs_reads_results_and_rejects_bad_json(tmp_path):
    results, page = tmp_path / "results.json", tmp_path / "benchmarks.md"
    results.write_text(json.dumps(PAYLOAD))
    page.write_text(PAGE_TEXT)
    update_docs(results, page)
    assert "`aten_ops_b8`" in page.read_text()
    results.write_text("{not json")
    with pytest.raises(ValueError, match=f"{results}: not valid JSON"):
        update_docs(results, page)


def test_the_shipped_page_has_the_markers():
    text = PAGE.read_text()
    assert text.index(BEGIN) < text.index(END)
