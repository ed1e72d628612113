"""Experiment 7, the whole DAT step over a slow link: 2 hosts (network namespaces of the one-machine test cluster,
tests/cluster.py) joined by links shaped to 1 Gbit/s and 10 Gbit/s, training ResNet-sized models with every
compressor.

For each (rate, attack, compression) it runs `hvdat train --np 2 -H h1:1,h2:1` from inside the first host (one
worker and one torch thread per host) on synthetic images and reports the training images/s of the last epoch
(training time only). The exchange that backward does not hide is measured against the same step without any
exchange: `hvdat train --np 1` with the same per-worker batch on one host (no compression, so codec time counts as
exposed exchange too):

    exposed share = 1 - (step seconds without exchange) / (step seconds on 2 hosts)

    python experiments/slow_link.py [--arch resnet18] [--rates 1gbit,10gbit] [--attacks fgsm-rs,pgd] [--smoke]

Needs root (namespaces, sshd, tc), as the multi-host tests do. Writes OUT/slow_link.json and OUT/slow_link.png.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import common

sys.path.insert(0, str(common.REPO / "tests"))
from cluster import Cluster  # noqa: E402  (the test cluster, shared with tests/test_multihost*.py)

COMPRESSORS = ("none", "fp16", "sign", "ef-sign", "natural")


def step_seconds(summary: Dict) -> float:
    """Seconds per optimiser step of the last epoch (its training time only; the first epoch warms up)."""
    last = summary["epochs"][-1]
    steps = summary["final"]["step"] / summary["final"]["epoch"]
    return last["train_seconds"] / steps


def train_on(cluster: Cluster, run: Path, args: List[str], home: Path) -> Dict:
    argv = [sys.executable, "-m", "hvdat", "train", *map(str, args), "--out", str(run), "--overwrite", "--json"]
    start = time.perf_counter()
    proc = subprocess.run(
        cluster.argv_on(cluster.hosts[0], argv),
        capture_output=True,
        text=True,
        env={**common.ENV, "HOME": str(home)},
        cwd=common.REPO,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hvdat train {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def main() -> None:
    p = common.parser(__doc__)
    p.set_defaults(dataset="synthetic", arch="resnet18")
    p.add_argument("--rates", default="1gbit,10gbit")
    p.add_argument("--attacks", default="fgsm-rs,pgd")
    p.add_argument("--pgd-steps", type=int, default=3, help="PGD-k of the pgd rows")
    p.add_argument("--compressors", default=",".join(COMPRESSORS))
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--steps", type=int, default=6, help="optimiser steps per epoch (2 epochs; the last is timed)")
    p.add_argument("--repeats", type=int, default=1, help="runs per row (the median step is reported)")
    args = p.parse_args()
    if args.smoke:
        args.arch, args.rates, args.attacks, args.compressors, args.steps = (
            "small-cnn",
            "1gbit",
            "fgsm-rs",
            "none,sign",
            2,
        )
    samples = args.steps * args.batch_size * 2
    base = [
        *common.data_args(args, samples, 32),
        "--batch-size",
        args.batch_size,
        "--epochs",
        2,
        "--eval-samples",
        0,
        "--threads",
        1,
        "--steps",
        args.pgd_steps,
        "--eps",
        "8/255",
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hvdat-slow-link-") as tmp, Cluster(n=2, prefix=f"sl{os.getpid()}") as c:
        home = Path(tmp)
        remote = ["-H", c.hosts_arg(1, n=2), "--ssh-port", c.port, "--ssh-identity-file", c.key]
        remote += ["--network-interfaces", "eth0"]
        for attack in args.attacks.split(","):
            alone = [
                step_seconds(
                    train_on(c, args.out / "runs" / f"slow-link-{attack}-np1", [*base, "--attack", attack], home)
                )
                for _ in range(args.repeats)
            ]
            compute = statistics.median(alone)
            common.log(f"{attack}: {compute:.3f} s/step with no exchange (--np 1)")
            for rate in args.rates.split(","):
                for host in c.hosts:
                    c.shape(host, rate)
                for name in args.compressors.split(","):
                    run = args.out / "runs" / f"slow-link-{attack}-{rate}-{name}"
                    train_args = [*base, "--attack", attack, "--np", 2, *remote, "--compression", name]
                    summaries = [train_on(c, run, train_args, home) for _ in range(args.repeats)]
                    step = statistics.median(step_seconds(s) for s in summaries)
                    final = summaries[-1]["final"]
                    row = {
                        "rate": rate,
                        "attack": attack,
                        "compression": name,
                        "images_per_sec": 2 * args.batch_size / step,
                        "step_s": step,
                        "step_s_no_exchange": compute,
                        "exposed_share": max(0.0, 1 - compute / step),
                        "bytes_per_step": final["bytes_sent_per_step"],
                        "compression_ratio": final["compression_ratio"],
                        "command": f"ip netns exec HOST1 hvdat train {' '.join(map(str, train_args))}",
                    }
                    rows.append(row)
                    common.log(f"{rate} {attack} {name}: {row['images_per_sec']:.1f} img/s, "
                               f"exposed {row['exposed_share']:.0%}")  # fmt: skip
            for host in c.hosts:
                c.unshape(host)
    for row in rows:  # speedup of the whole step against uncompressed, same rate and attack
        none = next(
            r for r in rows if (r["rate"], r["attack"], r["compression"]) == (row["rate"], row["attack"], "none")
        )
        row["speedup_vs_none"] = none["step_s"] / row["step_s"]
    settings = {k: str(v) for k, v in vars(args).items()}
    common.write(args.out, "slow_link", {"settings": settings, "rows": rows})
    labels = [f"{r['rate']} {r['attack']} {r['compression']}" for r in rows]
    common.bar_plot(
        args.out,
        "slow_link",
        labels,
        {"images/s": [r["images_per_sec"] for r in rows]},
        f"{args.arch}, 2 hosts, {args.batch_size}/worker",
        "images/s",
    )
    columns = ["rate", "attack", "compression", "images_per_sec", "step_s", "exposed_share", "speedup_vs_none"]
    print(common.markdown(rows, columns + ["bytes_per_step", "compression_ratio"]))


if __name__ == "__main__":
    main()
