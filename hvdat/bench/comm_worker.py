"""`horovodrun -np N python -m hvdat.bench.comm_worker --config bench.json`: time the gradient exchange.

For each compressor it wraps a model-shaped set of gradients in hvdat's DistributedOptimizer and, per step, hands
the gradients over in reverse order (as backward produces them, through the same `_allreduce_grad_async` that the
hooks call), then `synchronize()`s, which decodes each result while later ones are in flight. Separately, rank 0
times compress and decompress alone on one core. Rank 0 prints one `@@hvdat` `row` event per compressor.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from .. import events
from ..worker_main import worker_main


def gradient_shapes(arch: str) -> List[torch.Size]:
    from ..models import build_model

    model = build_model(arch, 1000, (3, 224, 224), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return [p.shape for p in model.parameters() if p.requires_grad]


def time_codec(compressor, grads: List[torch.Tensor], size: int, repeats: int) -> Dict[str, float]:
    """Median seconds to compress every gradient, and to decompress `size` gathered payloads of each."""
    compress_s, decompress_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        packed = [compressor.compress(g, name=str(i)) if getattr(compressor, "packed", False)
                  else compressor.compress(g) for i, g in enumerate(grads)]
        compress_s.append(time.perf_counter() - start)
        gathered = [(torch.cat([payload] * size) if getattr(compressor, "packed", False) else payload, ctx)
                    for payload, ctx in packed]
        start = time.perf_counter()
        for payload, ctx in gathered:
            compressor.decompress(payload, ctx)
        decompress_s.append(time.perf_counter() - start)
    return {"compress_seconds": statistics.median(compress_s), "decompress_seconds": statistics.median(decompress_s)}


def bench(settings: Dict) -> None:
    import horovod.torch as hvd

    from ..compression import COMPRESSORS, wire_bytes
    from ..compression.optimizer import DistributedOptimizer

    hvd.init()
    torch.set_num_threads(1)  # one core per rank: the throughput figures are per core
    rank, size = hvd.rank(), hvd.size()
    shapes = gradient_shapes(settings["arch"])
    generator = torch.Generator().manual_seed(rank)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    grads = [torch.randn(shape, generator=generator) * 1e-3 for shape in shapes]
    numels = [g.numel() for g in grads]
    fp32 = 4 * sum(numels)
    for name in settings["compressions"]:
        compressor = COMPRESSORS.get(name).build(rank)
        optimizer = DistributedOptimizer(torch.optim.SGD(params, lr=0.0), [(str(i), p) for i, p in
                                                                            enumerate(params)], compressor)
        seconds = []
        for step in range(settings["warmup"] + settings["steps"]):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            hvd.barrier()
            start = time.perf_counter()
            for p in reversed(params):  # backward order; each exchange starts as its gradient "arrives"
                optimizer._handles[p] = optimizer._allreduce_grad_async(p)
            optimizer.synchronize()
            elapsed = time.perf_counter() - start
            if step >= settings["warmup"]:
                seconds.append(elapsed)
        # every rank waits for the slowest: report the slowest rank's median
        exchange = max(hvd.allgather_object(statistics.median(seconds), name=f"bench.{name}"))
        if rank == 0:
            codec = time_codec(COMPRESSORS.get(name).build(rank), grads, size, settings["codec_repeats"])
            events.emit("row", compression=name, exchange_seconds=exchange,
                        bytes_per_worker=wire_bytes(name, numels), fp32_bytes=fp32, world_size=size,
                        parameters=sum(numels), tensors=len(numels), **codec)
        hvd.barrier()


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: bench(json.loads(path.read_text())), "python -m hvdat.bench.comm_worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
