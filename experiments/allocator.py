"""What keeping freed tensor memory in the C heap (hvdat/runtime/allocator.py, every worker's default) is worth on
CPUs: attack steps (forward, cross-entropy, input gradient; and a training step with the weight gradients) timed with
glibc's default heap and with the kept heap, each in fresh processes, interleaved, with their minor page faults.

It prints per model and batch: median milliseconds per step of each, their ratio (default / kept: > 1 means the kept
heap is faster), faults per step, peak resident memory, and it checks (exit 1 otherwise) that both give the same
gradients bit for bit.

    python experiments/allocator.py [--rounds 3] [--steps 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import ENV, REPO

# (model, input shape, batch): the digits CNN of eval_vs_reference at a few AutoAttack batch sizes, and a CIFAR-sized
# PreAct ResNet-18 training batch
CASES = [("small-cnn", (1, 16, 16), 85), ("small-cnn", (1, 16, 16), 250), ("preact-resnet18", (3, 32, 32), 64)]

_CHILD = """
import hashlib, json, resource, sys, time, torch
from hvdat.models import build_model
from hvdat.runtime.allocator import keep_freed_memory
mode, arch, shape, batch, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
state = keep_freed_memory() if mode == "kept" else "glibc's default"
torch.manual_seed(0)
model = build_model(arch, 10, tuple(shape), [0.5] * shape[0], [0.25] * shape[0])
x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
def attack_step():
    delta = torch.zeros_like(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x + delta), y)
    return torch.autograd.grad(loss, delta)[0]
def train_step():
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])
out = {"state": state}
for name, step, training in (("attack", attack_step, False), ("train", train_step, True)):
    model.train(training).requires_grad_(training)
    first = step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out[name] = {
        "ms": 1e3 * sorted(times)[len(times) // 2],
        "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
        "digest": hashlib.sha256(first.numpy().tobytes()).hexdigest(),
    }
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(mode: str, arch: str, shape, batch: int, steps: int) -> dict:
    argv = [sys.executable, "-c", _CHILD, mode, arch, json.dumps(list(shape)), str(batch), str(steps)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of default and kept; medians")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, failures = [], []
    for arch, shape, batch in CASES:
        runs = {"default": [], "kept": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(child(mode, arch, shape, batch, args.steps))
        row = {"arch": arch, "shape": shape, "batch": batch, "heap": runs["kept"][0]["state"]}
        for step in ("attack", "train"):
            ms = {mode: statistics.median(r[step]["ms"] for r in runs[mode]) for mode in runs}
            faults = {mode: statistics.median(r[step]["faults_per_step"] for r in runs[mode]) for mode in runs}
            row[step] = {"ms": ms, "faults_per_step": faults, "default_over_kept": ms["default"] / ms["kept"]}
            if len({r[step]["digest"] for mode in runs for r in runs[mode]}) != 1:
                failures.append(f"{arch} batch {batch}: the {step} gradients differ between the heaps")
        row["max_rss_mb"] = {mode: max(r["max_rss_mb"] for r in runs[mode]) for mode in runs}
        rows.append(row)
        if not args.json:
            print(
                f"{arch} {tuple(shape)} batch {batch}: "
                + "; ".join(
                    f"{step} step {row[step]['ms']['default']:.1f} ms default, {row[step]['ms']['kept']:.1f} ms "
                    f"kept ({row[step]['default_over_kept']:.2f}x; faults/step "
                    f"{row[step]['faults_per_step']['default']:.0f} -> {row[step]['faults_per_step']['kept']:.0f})"
                    for step in ("attack", "train")
                )
                + f"; peak RSS {row['max_rss_mb']['default']:.0f} -> {row['max_rss_mb']['kept']:.0f} MB",
                flush=True,
            )
    if args.json:
        print(json.dumps({"rounds": args.rounds, "steps": args.steps, "cases": rows, "failures": failures}))
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
