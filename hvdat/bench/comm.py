"""`hvdat bench comm`: time the gradient exchange of a named model's gradients for each compressor.

Launches `hvdat.bench.comm_worker` on `--np` real Horovod ranks (optionally behind a `tc tbf`-shaped loopback in a
fresh network namespace), collects one row per compressor and adds the ratios against `none`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from rich.console import Console
from rich.table import Table

from ..compression import COMPRESSORS
from ..errors import UsageError
from ..job import raise_for_failure, run_job
from ..launch import LaunchSpec, build_argv


def parse_compressions(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("--compression lists no compressors", f"choose from: {', '.join(COMPRESSORS.names())}")
    for name in names:
        COMPRESSORS.get(name)
    return list(dict.fromkeys(names))


def wire_limit(row: Dict, none: Dict) -> float:
    """The speedup the wire alone allows: ring allreduce moves 2(n-1)/n of the fp32 buffer per worker, allgather
    moves (n-1) payloads."""
    n = row["world_size"]
    allgather = COMPRESSORS.get(row["compression"]).bits_per_element < 16
    moved = (n - 1) * row["bytes_per_worker"] if allgather else 2 * (n - 1) / n * row["bytes_per_worker"]
    return 2 * (n - 1) / n * none["bytes_per_worker"] / moved


def finish_rows(rows: List[Dict]) -> List[Dict]:
    none = next((r for r in rows if r["compression"] == "none"), None)
    for row in rows:
        fp32 = row["fp32_bytes"]
        for stage in ("compress", "decompress"):  # GB of fp32 gradient per second of one core's CPU time (and wall)
            cpu, wall = row.get(f"{stage}_cpu_seconds"), row[f"{stage}_seconds"]
            row[f"{stage}_gbps"] = fp32 / cpu / 1e9 if cpu else None
            row[f"{stage}_wall_gbps"] = fp32 / wall / 1e9 if wall else None
        row["compression_ratio"] = fp32 / row["bytes_per_worker"]
        row["speedup_vs_none"] = none["exchange_seconds"] / row["exchange_seconds"] if none else None
        row["wire_limit_vs_none"] = wire_limit(row, none) if none else None
    return rows


def run_bench(*, arch: str, np: int, compressions: List[str], bandwidth: Optional[str], steps: int, warmup: int,
              launcher: str, as_json: bool, out: Console, err: Console) -> List[Dict]:
    from .netns import parse_rate, shaped_namespace

    if np < 2:
        raise UsageError(f"--np must be >= 2 to exchange gradients, got {np}")
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    from ..models import MODELS

    MODELS.get(arch)
    rate = parse_rate(bandwidth) if bandwidth else None
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="hvdat-bench-") as tmp:
        config = Path(tmp) / "bench.json"
        config.write_text(json.dumps({"arch": arch, "compressions": compressions, "steps": steps, "warmup": warmup,
                                      "codec_repeats": 3}))
        argv = build_argv(LaunchSpec(np=np, launcher=launcher), "hvdat.bench.comm_worker", config)
        shaping = shaped_namespace(rate) if rate else contextlib.nullcontext([])
        with shaping as prefix:
            err.print(f"[dim]{arch} gradients, {np} ranks, {'link ' + rate if rate else 'unshaped loopback'}: "
                      f"{', '.join(compressions)}[/]")
            result = run_job(prefix + argv, Path(tmp) / "bench.log",
                             lambda event: rows.append(event) if event.get("event") == "row" else None)
            raise_for_failure(result, "the benchmark", Path(tmp) / "bench.log")
    rows = finish_rows([{k: v for k, v in row.items() if k != "event"} for row in rows])
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        out.print(table(rows, arch, np, rate))
    return rows


def table(rows: List[Dict], arch: str, np: int, rate: Optional[str]) -> Table:
    params = rows[0]["parameters"] if rows else 0
    result = Table(title=f"gradient exchange: {arch} ({params / 1e6:.1f}M parameters), {np} ranks, "
                         f"{rate or 'unshaped loopback'}")
    for column in ("compression", "exchange s/step", "MB/worker", "ratio", "compress s", "decompress s",
                   "compress GB/s/core (wall)", "decompress GB/s/core (wall)", "speedup vs none", "wire limit"):
        result.add_column(column, justify="left" if column == "compression" else "right")

    def x(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.1f}x"

    def gbps(row: Dict, stage: str) -> str:
        cpu, wall = row[f"{stage}_gbps"], row[f"{stage}_wall_gbps"]
        if cpu is None or wall is None or wall > 1e3:  # none's "compress" is a no-op
            return "-"
        return f"{cpu:.2f} ({wall:.2f})"

    for row in rows:
        result.add_row(row["compression"], f"{row['exchange_seconds']:.3f}", f"{row['bytes_per_worker'] / 1e6:.2f}",
                       f"{row['compression_ratio']:.1f}x", f"{row['compress_seconds']:.3f}",
                       f"{row['decompress_seconds']:.3f}", gbps(row, "compress"),
                       gbps(row, "decompress"), x(row["speedup_vs_none"]), x(row["wire_limit_vs_none"]))
    return result

