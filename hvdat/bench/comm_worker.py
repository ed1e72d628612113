"""`horovodrun -np N python -m hvdat.bench.comm_worker --config bench.json`: time the gradient exchange.

For each compressor it wraps a model-shaped set of gradients in hvdat's DistributedOptimizer and, per step, hands
the gradients over in reverse order (as backward produces them, through the optimizer's own backward hook, so a
bucket's exchange starts once its last gradient is there), then `synchronize()`s, which decodes each result while
later ones are in flight. Separately, rank 0 times compress and decompress alone on one core, in wall and thread CPU
time (packed codecs decoding into a gradient-sized tensor, as the exchange decodes into the gradient). Rank 0 prints
one `@@hvdat` `row` event per compressor.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from .. import events
from ..compression import wire_bytes
from ..compression.packing import with_destination
from ..runtime.distributed_optimizer import DistributedOptimizer, bucket_bytes
from ..runtime.horovod_compression import build_compressor
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .config import CommBenchConfig


def gradient_shapes(arch: str) -> List[torch.Size]:
    from ..models import build_model

    model = build_model(arch, 1000, (3, 224, 224), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return [p.shape for p in model.parameters() if p.requires_grad]


def time_codec(compressor, grads: List[torch.Tensor], size: int, repeats: int) -> Dict[str, float]:
    """Median seconds to compress every gradient, and to decompress `size` gathered payloads of each: wall time,
    and this thread's CPU time (what one core spent, robust to a shared, loaded machine)."""
    times: Dict[str, List[float]] = {
        key: [] for key in ("compress_seconds", "compress_cpu_seconds", "decompress_seconds", "decompress_cpu_seconds")
    }

    def timed(key: str, work):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = work()
        times[f"{key}_cpu_seconds"].append(time.thread_time() - cpu)
        times[f"{key}_seconds"].append(time.perf_counter() - wall)
        return result

    packed_ = getattr(compressor, "packed", False)

    def compress_all():
        return [compressor.compress(g, name=str(i)) if packed_ else compressor.compress(g) for i, g in enumerate(grads)]

    def decompress_all(gathered):
        return lambda: [compressor.decompress(payload, ctx) for payload, ctx in gathered]

    for _ in range(repeats):
        packed = timed("compress", compress_all)
        # packed codecs decode into the gradient's memory, as the exchange does (a copy: `grads` stay intact)
        gathered = [
            (torch.cat([payload] * size), with_destination(ctx, g.clone())) if packed_ else (payload, ctx)
            for (payload, ctx), g in zip(packed, grads)
        ]
        timed("decompress", decompress_all(gathered))
    return {key: statistics.median(values) for key, values in times.items()}


def bench(cfg: CommBenchConfig) -> None:
    world = World.start(threads=1)  # one core per rank: the throughput figures are per core
    hvd, rank, size = world.hvd, world.rank, world.size
    shapes = gradient_shapes(cfg.arch)
    generator = torch.Generator().manual_seed(rank)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    grads = [torch.randn(shape, generator=generator) * 1e-3 for shape in shapes]
    numels = [g.numel() for g in grads]
    fp32 = 4 * sum(numels)
    for name in cfg.compressions:
        compressor = build_compressor(name, rank)
        optimizer = DistributedOptimizer(
            torch.optim.SGD(params, lr=0.0),
            [(str(i), p) for i, p in enumerate(params)],
            compressor,
            bucket_bytes(cfg.bucket_mb),
        )
        seconds = []
        for step in range(cfg.warmup + cfg.steps):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            hvd.barrier()
            start = time.perf_counter()
            for p in reversed(params):  # backward order; each gradient "arrives" through the hook backward calls
                optimizer._make_hook(p)()
            optimizer.synchronize()
            elapsed = time.perf_counter() - start
            if step >= cfg.warmup:
                seconds.append(elapsed)
        # every rank waits for the slowest: report the slowest rank's median
        exchange = max(hvd.allgather_object(statistics.median(seconds), name=f"bench.{name}"))
        if rank == 0:
            codec = time_codec(build_compressor(name, rank), grads, size, cfg.codec_repeats)
            events.emit(
                "row",
                compression=name,
                exchange_seconds=exchange,
                bytes_per_worker=wire_bytes(name, shapes),
                fp32_bytes=fp32,
                world_size=size,
                parameters=sum(numels),
                tensors=len(numels),
                **codec,
            )
        hvd.barrier()


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(
        lambda path: bench(CommBenchConfig.load(path)), "python -m hvdat.bench.comm_worker", __doc__, argv
    )


if __name__ == "__main__":
    sys.exit(main())
