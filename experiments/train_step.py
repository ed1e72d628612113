"""Step efficiency: hvdat's PGD-AT training throughput against a minimal hand-written PyTorch PGD-AT loop.

Both train the same model (hvdat's registry) on the same in-memory batches with the same thread count, PGD-10
L-inf at 8/255. hvdat runs as a user runs it (`hvdat train --np 1`, train-only images/s from metrics.jsonl); the
baseline is the textbook loop below. Runs alternate and the medians are compared, since this machine is shared.

FGSM-RS against natural training is measured the same way (both through `hvdat train`): an FGSM-RS step is one
attack forward+backward plus the training forward+backward, so its ideal images/s ratio to natural training is 0.5.

    python experiments/train_step.py [--arch small-cnn] [--batch-size 128] [--samples 2048] [--repeats 5] [--out DIR]
                               [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def baseline(arch: str, batch_size: int, samples: int, steps: int, attack: str, threads: int) -> float:
    """The minimal loop: PGD (or FGSM-RS) examples via autograd.grad, then one SGD step. Returns images/s."""
    import torch
    import torch.nn.functional as F

    from hvdat.data import load_splits
    from hvdat.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    splits = load_splits("synthetic", None, train_samples=samples, test_samples=64)
    model = build_model(arch, 10, splits.shape, splits.mean, splits.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images, labels = splits.train.images, splits.train.labels
    eps = 8 / 255
    alpha, k, rs = (1.25 * eps, 1, True) if attack == "fgsm-rs" else (2.5 * eps / steps, steps, True)
    if attack == "none":
        k = 0
    model.train()
    seen, start = 0, time.perf_counter()
    for i in range(0, len(labels) - batch_size + 1, batch_size):
        x = images[i : i + batch_size].float() / 255
        y = labels[i : i + batch_size]
        delta = (torch.rand_like(x) * 2 - 1) * eps if rs and k else torch.zeros_like(x)
        for _ in range(k):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def hvdat_run(arch: str, batch_size: int, samples: int, steps: int, attack: str, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "hvdat",
            "train",
            "--np",
            "1",
            "--dataset",
            "synthetic",
            "--train-samples",
            str(samples),
            "--test-samples",
            "64",
            "--arch",
            arch,
            "--attack",
            attack,
            "--steps",
            str(steps),
            "--batch-size",
            str(batch_size),
            "--epochs",
            "1",
            "--eval-samples",
            "0",
            "--no-augment",
            "--threads",
            str(threads),
            "--out",
            f"{tmp}/run",
            "--lr",
            "0.05",
        ]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        return json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])["images_per_sec"]


def measure(args, attack: str, steps: int):
    """Alternate hvdat and baseline runs; the baseline runs in a fresh process too, for a like-for-like start."""
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(hvdat_run(args.arch, args.batch_size, args.samples, steps, attack, args.threads))
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--baseline-only",
                "--arch",
                args.arch,
                "--batch-size",
                str(args.batch_size),
                "--samples",
                str(args.samples),
                "--attack",
                attack,
                "--steps",
                str(steps),
                "--threads",
                str(args.threads),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        theirs.append(float(out.stdout.strip()))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attack", default="pgd")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results", help="train_step.json/.png go here")
    parser.add_argument("--smoke", action="store_true", help="tiny: 1 repeat of 128 images")
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_only:
        print(baseline(args.arch, args.batch_size, args.samples, args.steps, args.attack, args.threads))
        return
    if args.smoke:
        args.samples, args.repeats, args.batch_size = 128, 1, 32
    rows = []
    for attack, steps in ((args.attack, args.steps),):
        ours, theirs = measure(args, attack, steps)
        rows.append(
            {
                "attack": f"{attack}-{steps}" if attack == "pgd" else attack,
                "arch": args.arch,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "hvdat_images_per_sec": ours,
                "baseline_images_per_sec": theirs,
                "ratio": ours / theirs,
                "target": 0.95,
            }
        )
    fgsm, natural = [], []
    for _ in range(args.repeats):  # alternate, as above
        fgsm.append(hvdat_run(args.arch, args.batch_size, args.samples, 1, "fgsm-rs", args.threads))
        natural.append(hvdat_run(args.arch, args.batch_size, args.samples, 1, "none", args.threads))
    fgsm_ips, natural_ips = statistics.median(fgsm), statistics.median(natural)
    single = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "fgsm_rs_images_per_sec": fgsm_ips,
        "natural_images_per_sec": natural_ips,
        "ratio": fgsm_ips / natural_ips,
        "ideal": 0.5,
    }
    sys.path.insert(0, str(Path(__file__).parent))
    import common

    common.write(
        args.out,
        "train_step",
        {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "pgd_vs_hand_written": rows,
            "fgsm_rs_vs_natural": single,
        },
    )
    common.bar_plot(
        args.out,
        "train_step",
        ["PGD-10: hvdat", "PGD-10: hand-written", "FGSM-RS: hvdat", "natural: hvdat"],
        {"images/s": [rows[0]["hvdat_images_per_sec"], rows[0]["baseline_images_per_sec"], fgsm_ips, natural_ips]},
        f"{args.arch}, batch {args.batch_size}, {args.threads} threads; PGD ratio {rows[0]['ratio']:.3f}, "
        f"FGSM-RS/natural {single['ratio']:.3f}",
        "training images/s",
    )
    if args.json:
        print(json.dumps({"pgd_vs_hand_written": rows, "fgsm_rs_vs_natural": single}, indent=2))
        return
    print(f"{'attack':<10} {'arch':<16} {'hvdat img/s':>12} {'hand-written img/s':>19} {'ratio':>7}  target")
    for r in rows:
        print(
            f"{r['attack']:<10} {r['arch']:<16} {r['hvdat_images_per_sec']:>12.1f} "
            f"{r['baseline_images_per_sec']:>19.1f} {r['ratio']:>7.3f}  >= {r['target']}"
        )
    print(f"fgsm-rs vs natural: {fgsm_ips:.1f} vs {natural_ips:.1f} images/s, ratio {single['ratio']:.3f} (ideal 0.5)")
    print(f"medians of {args.repeats} alternating runs, batch {args.batch_size}, {args.threads} threads")


if __name__ == "__main__":
    main()
