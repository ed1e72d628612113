"""`hvdat bench comm` end to end: real ranks, a real shaped namespace, JSON rows, one-line errors."""

from __future__ import annotations

import json
import subprocess

from conftest import assert_one_line_error, run_hvdat

KEYS = {"compression", "exchange_seconds", "bytes_per_worker", "compress_seconds", "speedup_vs_none"}


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_bench_comm_json_rows_over_a_shaped_link_and_the_namespace_is_gone():
    proc = run_hvdat(
        "bench",
        "comm",
        "--arch",
        "small-cnn",
        "--np",
        "2",
        "--steps",
        "1",
        "--compression",
        "none,sign,natural",
        "--bandwidth",
        "100mbit",
        "--json",
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert [r["compression"] for r in rows] == ["none", "sign", "natural"]
    assert all(set(r) >= KEYS for r in rows)
    none, sign, natural = rows
    assert none["speedup_vs_none"] == 1.0
    assert sign["bytes_per_worker"] < none["bytes_per_worker"] / 25 and 3.99 < natural["wire_limit_vs_none"] <= 4.0
    assert sign["compress_gbps"] > 0 and sign["decompress_wall_gbps"] > 0  # per core (thread CPU time) and wall
    assert "hvdat-bench" not in namespaces()


def test_bench_comm_table_puts_per_core_throughput_and_the_wire_limit_beside_each_speedup():
    from rich.console import Console

    from hvdat.bench.comm import finish_rows
    from hvdat.cli.bench import table

    def row(name, seconds, nbytes, cpu):
        return {
            "compression": name,
            "exchange_seconds": seconds,
            "bytes_per_worker": nbytes,
            "fp32_bytes": 4e8,
            "world_size": 2,
            "parameters": 1e8,
            "compress_seconds": 2 * cpu,
            "compress_cpu_seconds": cpu,
            "decompress_seconds": 2 * cpu,
            "decompress_cpu_seconds": cpu,
        }

    rows = finish_rows([row("none", 4.0, 4e8, 0.0), row("sign", 0.5, 1.25e7, 0.4)])
    assert rows[1]["compress_gbps"] == 1.0 and rows[1]["compress_wall_gbps"] == 0.5
    console = Console(record=True, width=250)
    console.print(table(rows, "resnet50", 2, "1gbit"))
    text = console.export_text()
    assert "GB/s/core (wall)" in text and "wire limit" in text
    sign_line = next(line for line in text.splitlines() if "sign" in line)
    cells = [cell.strip() for cell in sign_line.strip("│ ").split("│")]
    assert cells[6:] == ["1.00 (0.50)", "1.00 (0.50)", "8.0x", "32.0x"]  # ..., speedup, then the wire's limit


def test_bench_comm_rejects_unknown_compressors_and_rates_in_one_line():
    assert_one_line_error(run_hvdat("bench", "comm", "--compression", "none,zip"), "zip", "choose from")
    assert_one_line_error(run_hvdat("bench", "comm", "--bandwidth", "fast"), "--bandwidth")
