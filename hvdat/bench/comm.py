"""`hvdat bench comm`: time the gradient exchange of a named model's gradients for each compressor.

Launches `hvdat.bench.comm_worker` on `--np` real Horovod ranks (optionally behind a `tc tbf`-shaped loopback in a
fresh network namespace), collects one row per compressor and adds the ratios against `none`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..compression import COMPRESSORS
from ..errors import UsageError
from ..launch import LaunchSpec, build_argv, raise_for_failure, run_collecting
from ..launch.netns import parse_rate, shaped_namespace
from .config import CommBenchConfig

WORKER = "hvdat.bench.comm_worker"


def wire_limit(row: Dict, none: Dict) -> float:
    """The speedup the wire alone allows: ring allreduce moves 2(n-1)/n of the fp32 buffer per worker, allgather
    moves (n-1) payloads."""
    n = row["world_size"]
    allgather = COMPRESSORS.get(row["compression"]).packed
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


def run_bench(
    cfg: CommBenchConfig,
    *,
    np: int,
    bandwidth: Optional[str],
    launcher: str,
    say: Callable[[str], None] = lambda text: None,
) -> List[Dict]:
    """Run the exchange benchmark on `np` ranks and return one row per compressor (ratios included)."""
    if np < 2:
        raise UsageError(f"--np must be >= 2 to exchange gradients, got {np}")
    if cfg.steps < 1 or cfg.warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    from ..models import MODELS

    MODELS.get(cfg.arch)
    rate = parse_rate(bandwidth) if bandwidth else None
    with tempfile.TemporaryDirectory(prefix="hvdat-bench-") as tmp:
        config = Path(tmp) / "bench.json"
        cfg.save(config)
        argv = build_argv(LaunchSpec(np=np, launcher=launcher), WORKER, config)
        shaping = shaped_namespace(rate) if rate else contextlib.nullcontext([])
        with shaping as prefix:
            say(
                f"{cfg.arch} gradients, {np} ranks, {'link ' + rate if rate else 'unshaped loopback'}: "
                f"{', '.join(cfg.compressions)}"
            )
            result, found = run_collecting(prefix + argv, Path(tmp) / "bench.log", lambda event: None, ("row",))
            raise_for_failure(result, "the benchmark", Path(tmp) / "bench.log")
    return finish_rows([{k: v for k, v in row.items() if k != "event"} for row in found["row"]])
