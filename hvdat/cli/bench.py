"""`hvdat bench comm`: the gradient exchange per compressor over real Horovod ranks, as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from ..bench.config import CommBenchConfig
from ..launch import LaunchSpec
from ..launch.netns import parse_rate
from .app import app, err, out
from .options import Json, with_options

bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("comm")
@with_options(spec=tuple(f.name for f in dataclasses.fields(LaunchSpec) if f.name != "launcher"))
def bench_comm(
    cfg: CommBenchConfig,
    spec: LaunchSpec,
    np: Annotated[int, typer.Option("--np", help="Horovod ranks on this machine.")] = 2,
    bandwidth: Annotated[
        Optional[str],
        typer.Option(
            help="Shape the ranks' loopback to this rate (e.g. 1gbit) in "
            "a fresh network namespace; needs root and iproute2."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Time the gradient exchange of a model's gradients per compressor, optionally over a shaped link."""
    from ..bench.comm import run_bench

    rows = run_bench(
        cfg, np=np, bandwidth=bandwidth, launcher=spec.launcher, say=lambda text: err.print(f"[dim]{text}[/]")
    )
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        out.print(table(rows, cfg.arch, np, parse_rate(bandwidth) if bandwidth else None))


def table(rows: List[Dict], arch: str, np: int, rate: Optional[str]) -> Table:
    params = rows[0]["parameters"] if rows else 0
    result = Table(
        title=f"gradient exchange: {arch} ({params / 1e6:.1f}M parameters), {np} ranks, {rate or 'unshaped loopback'}"
    )
    for column in (
        "compression",
        "exchange s/step",
        "MB/worker",
        "ratio",
        "compress s",
        "decompress s",
        "compress GB/s/core (wall)",
        "decompress GB/s/core (wall)",
        "speedup vs none",
        "wire limit",
    ):
        result.add_column(column, justify="left" if column == "compression" else "right")

    def x(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.1f}x"

    def gbps(row: Dict, stage: str) -> str:
        cpu, wall = row[f"{stage}_gbps"], row[f"{stage}_wall_gbps"]
        if cpu is None or wall is None or wall > 1e3:  # none's "compress" is a no-op
            return "-"
        return f"{cpu:.2f} ({wall:.2f})"

    for row in rows:
        result.add_row(
            row["compression"],
            f"{row['exchange_seconds']:.3f}",
            f"{row['bytes_per_worker'] / 1e6:.2f}",
            f"{row['compression_ratio']:.1f}x",
            f"{row['compress_seconds']:.3f}",
            f"{row['decompress_seconds']:.3f}",
            gbps(row, "compress"),
            gbps(row, "decompress"),
            x(row["speedup_vs_none"]),
            x(row["wire_limit_vs_none"]),
        )
    return result
