"""`hvdat bench comm` end to end: real ranks, a real shaped namespace, JSON rows, one-line errors."""

from __future__ import annotations

import json
import subprocess

from conftest import assert_one_line_error, run_hvdat

KEYS = {"compression", "exchange_seconds", "bytes_per_worker", "compress_seconds", "speedup_vs_none"}


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_bench_comm_json_rows_over_a_shaped_link_and_the_namespace_is_gone():
    proc = run_hvdat("bench", "comm", "--arch", "small-cnn", "--np", "2", "--steps", "1", "--compression",
                     "none,sign,natural", "--bandwidth", "100mbit", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert [r["compression"] for r in rows] == ["none", "sign", "natural"]
    assert all(KEYS <= set(r) for r in rows)
    none, sign, natural = rows
    assert none["speedup_vs_none"] == 1.0
    assert sign["bytes_per_worker"] < none["bytes_per_worker"] / 25 and 3.99 < natural["wire_limit_vs_none"] <= 4.0
    assert "hvdat-bench" not in namespaces()


def test_bench_comm_rejects_unknown_compressors_and_rates_in_one_line():
    assert_one_line_error(run_hvdat("bench", "comm", "--compression", "none,zip"), "zip", "choose from")
    assert_one_line_error(run_hvdat("bench", "comm", "--bandwidth", "fast"), "--bandwidth")
