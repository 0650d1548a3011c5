"""The benchmark harness end to end on tiny CPU scenes (numbers are not checked, the plumbing is)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_benchmark_suite_smoke(tmp_path):
    from bench.run_all import main

    md = tmp_path / "BENCH.md"
    main(["--smoke", "--out", str(tmp_path / "out"), "--markdown", str(md)])
    static = json.loads((tmp_path / "out" / "static.json").read_text())
    dynamic = json.loads((tmp_path / "out" / "dynamic.json").read_text())
    for record in (static, dynamic):
        assert {"card", "date", "commit", "command"} <= set(record)
    assert static["steps"] == 20 and static["chamfer_fraction_of_radius"] >= 0
    assert len(dynamic["frames"]) == 2 and dynamic["frames"][1]["stored_bytes"] > 0
    text = md.read_text()
    assert "### static" in text and "### dynamic (incremental)" in text and "Command:" in text
