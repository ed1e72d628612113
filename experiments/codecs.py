"""Codec throughput, the old numpy codecs against the new ones, side by side on one core.

Encodes a model's worth of fp32 gradients (ResNet-50 by default: the shapes `hvdat bench comm` uses) with each
packed codec, and decodes k gathered payloads of each tensor (what every rank does after the allgather), with one
torch thread. "old" is the frozen numpy copy in `tests/reference_codecs`; "new" is `hvdat.compression` as CPU tensors
run it (its host kernels); "torch" is `hvdat.compression` with the torch kernels that CUDA tensors run, forced onto
the CPU (`packing.NUMPY_ON_CPU = False`), for comparison. Every repeat times them back to back (rotating which goes
first), so a shared machine's load hits all alike; the table gives medians of GB of fp32 gradient per second of this
thread's CPU time (wall-clock GB/s in parentheses) and the medians of the per-repeat ratios to old.

The new codecs decode into a gradient-sized tensor, as hvdat's exchange decodes into the gradient
(`--fresh-output`: into fresh memory, as the old codecs always do).

    python experiments/codecs.py [--arch resnet50] [--k 2] [--repeats 7] [--codecs sign,ef-sign,natural]
        [--fresh-output] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import reference_codecs  # noqa: E402  (tests/reference_codecs: the numpy codecs before the rewrite)

from hvdat.compression import COMPRESSORS, packing  # noqa: E402

OLD = {
    "sign": reference_codecs.SignCompressor,
    "ef-sign": reference_codecs.EFSignCompressor,
    "natural": reference_codecs.NaturalCompressor,
}


def gradient_shapes(arch: str) -> List[torch.Size]:
    from hvdat.models import build_model

    model = build_model(arch, 1000, (3, 224, 224), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return [p.shape for p in model.parameters() if p.requires_grad]


def timed(work: Callable) -> Dict[str, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    work()
    return {"cpu": time.thread_time() - cpu, "wall": time.perf_counter() - wall}


def measure(codec, grads: List[torch.Tensor], k: int, into_grad: bool) -> Dict[str, Dict[str, float]]:
    """One pass: compress every gradient, then decompress k copies of each payload back to back (`into_grad`: into
    a gradient-sized tensor, as hvdat's exchange decodes into the gradient, instead of fresh memory)."""
    out = {}
    packed = []
    out["encode"] = timed(lambda: packed.extend(codec.compress(g, name=str(i)) for i, g in enumerate(grads)))
    gathered = [
        (torch.cat([payload] * k), packing.with_destination(ctx, g.clone()) if into_grad else ctx)
        for (payload, ctx), g in zip(packed, grads)
    ]
    out["decode"] = timed(lambda: [codec.decompress(payload, ctx) for payload, ctx in gathered])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--k", type=int, default=2, help="payloads decoded per tensor (the world size)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--codecs", default="sign,ef-sign,natural")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-torch-kernels", action="store_true", help="leave out the torch kernels on the CPU")
    p.add_argument(
        "--fresh-output",
        action="store_true",
        help="new codecs decode into fresh memory (default: into a gradient-sized tensor, as the exchange does)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes = gradient_shapes(args.arch)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=generator) * 1e-3 for shape in shapes]
    fp32 = 4 * sum(g.numel() for g in grads)
    impls = ("old", "new") if args.no_torch_kernels else ("old", "new", "torch")
    rows = []
    for name in args.codecs.split(","):
        codecs = {"old": OLD[name](0), "new": COMPRESSORS.get(name).codec(0), "torch": COMPRESSORS.get(name).codec(0)}
        samples: Dict[str, List[Dict]] = {impl: [] for impl in impls}
        for repeat in range(args.warmup + args.repeats):
            order = impls[repeat % len(impls) :] + impls[: repeat % len(impls)]
            for impl in order:
                packing.NUMPY_ON_CPU = impl != "torch"
                result = measure(codecs[impl], grads, args.k, impl != "old" and not args.fresh_output)
                if repeat >= args.warmup:
                    samples[impl].append(result)
            packing.NUMPY_ON_CPU = True
        row = {"codec": name, "k": args.k, "fp32_bytes": fp32, "tensors": len(grads), "repeats": args.repeats}
        for stage in ("encode", "decode"):
            for impl in impls:
                for clock in ("cpu", "wall"):
                    seconds = statistics.median(s[stage][clock] for s in samples[impl])
                    row[f"{stage}_{impl}_{clock}_seconds"] = seconds
                    row[f"{stage}_{impl}_{clock}_gbps"] = fp32 / seconds / 1e9
                if impl != "old":
                    row[f"{stage}_{impl}_vs_old"] = statistics.median(
                        old[stage]["cpu"] / new[stage]["cpu"] for old, new in zip(samples["old"], samples[impl])
                    )
        rows.append(row)
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"arch": args.arch, "threads": args.threads, "k": args.k, "rows": rows}, indent=1))
        return
    print(
        f"{args.arch}: {len(grads)} tensors, {fp32 / 1e6:.1f} MB fp32, {args.threads} torch thread(s), decode of "
        f"k={args.k} payloads per tensor; medians of {args.repeats} repeats; GB/s of fp32 per core-second (wall)"
    )
    columns = [(stage, impl) for stage in ("encode", "decode") for impl in impls]
    print("| codec | " + " | ".join(f"{stage} {impl}" for stage, impl in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for r in rows:
        cells = [r["codec"]]
        for stage, impl in columns:
            cell = f"{r[f'{stage}_{impl}_cpu_gbps']:.2f} ({r[f'{stage}_{impl}_wall_gbps']:.2f})"
            if impl != "old":
                cell += f" {r[f'{stage}_{impl}_vs_old']:.2f}x"
            cells.append(cell)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
