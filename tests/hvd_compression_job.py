"""Run under `horovodrun -np N`: train a small model for a few steps with each compressor, then check on every
rank that the parameters are bit-identical across ranks, and print one JSON line per compressor from rank 0.

Each rank sees different data, so without a correct exchange the parameters diverge at once. Each compressor trains
three times: in buckets of 25 MB (one grouped allgather for the whole model), of 1 kB (three buckets of the four
tensors) and one allgather per tensor; `buckets_equal` says whether the three gave the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import sys

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdat.compression import wire_bytes
from hvdat.runtime.distributed_optimizer import DistributedOptimizer
from hvdat.runtime.horovod_compression import build_compressor


def model_fn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(5 * 6 * 6, 10)
    )


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(name: str, bucket_bytes: int):
    model = model_fn()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    compressor = build_compressor(name, 1000 + hvd.rank())
    optimizer = DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), model.named_parameters(), compressor, bucket_bytes
    )
    generator = torch.Generator().manual_seed(hvd.rank())
    for _ in range(4):
        x = torch.randn(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer


def main(names) -> None:
    hvd.init()
    torch.set_num_threads(1)
    for name in names:
        start = digest(model_fn())
        model, optimizer = train(name, 25 * 2**20)
        variants = {bucket: digest(train(name, bucket)[0]) for bucket in (1024, 0)}
        digests = hvd.allgather_object(digest(model), name=f"digest.{name}")
        numels = [p.numel() for p in model.parameters()]
        shapes = [p.shape for p in model.parameters()]
        if hvd.rank() == 0:
            print(
                "@@result "
                + json.dumps(
                    {
                        "compression": name,
                        "identical": len(set(digests)) == 1,
                        "changed": digests[0] != start,
                        "buckets_equal": set(variants.values()) == {digest(model)},
                        "bytes": getattr(optimizer, "bytes_sent_per_step", None),
                        "expected": wire_bytes(name, shapes),
                        "fp32": 4 * sum(numels),
                        "size": hvd.size(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
