"""Experiment 3, gradient compression on 2 workers: none / fp16 / ef-sign / natural / sign / qsgd (DAT's quantizer).

Reports clean and PGD-20 accuracy, gradient bytes per step and worker (counted exactly), and the training step
time without shaping and, with --bandwidth (e.g. 1gbit; needs root and iproute2), with the two workers' link shaped
by `tc tbf` in a fresh network namespace (the same one `hvdat bench comm` uses).

    python experiments/compression.py [--train-samples 10000] [--epochs 3] [--bandwidth 1gbit] [--smoke]
"""

from __future__ import annotations

import json
import time

import common

COMPRESSORS = ("none", "fp16", "ef-sign", "natural", "sign", "qsgd")  # also qsgd4, qsgd2 via --compressors


def shaped_train(rate: str, run, args):
    """`hvdat train` run behind the shaped loopback."""
    import subprocess
    import sys

    from hvdat.launch.netns import shaped_namespace

    with shaped_namespace(rate) as prefix:
        start = time.perf_counter()
        proc = subprocess.run(
            prefix
            + [sys.executable, "-m", "hvdat", "train", *map(str, args), "--out", str(run), "--overwrite", "--json"],
            capture_output=True,
            text=True,
            env=common.ENV,
            cwd=common.REPO,
        )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def step_seconds(summary) -> float:
    steps_per_epoch = summary["final"]["step"] / summary["final"]["epoch"]
    return sum(e["train_seconds"] for e in summary["epochs"]) / (steps_per_epoch * len(summary["epochs"]))


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="per worker")
    p.add_argument("--attack", default="fgsm-rs")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--bandwidth", default=None, help="also time the step over a link of this rate, e.g. 1gbit")
    p.add_argument("--shaped-epochs", type=int, default=1, help="epochs of the shaped timing run")
    p.add_argument("--compressors", default=",".join(COMPRESSORS))
    args = p.parse_args()
    if args.smoke:
        args.train_samples, args.test_samples, args.epochs, args.n_eval, args.batch_size = 128, 64, 1, 16, 32
    rows = []
    for name in args.compressors.split(","):
        run = args.out / "runs" / f"compression-{name}"
        train_args = [
            *common.data_args(args, args.train_samples, args.test_samples),
            "--np",
            2,
            "--attack",
            args.attack,
            "--batch-size",
            args.batch_size,
            "--compression",
            name,
            "--eval-samples",
            0,
        ]
        summary = common.train(run, *train_args, "--epochs", args.epochs)
        ev = common.evaluate(run, "pgd", args.n_eval, steps=20)
        row = {
            "compression": name,
            "clean_acc": ev["clean_acc"],
            "pgd20_acc": ev["robust_acc"],
            "bytes_per_step": summary["final"]["bytes_sent_per_step"],
            "compression_ratio": summary["final"]["compression_ratio"],
            "step_s": step_seconds(summary),
            "command": summary["command"],
        }
        if args.bandwidth:
            shaped = shaped_train(
                args.bandwidth,
                args.out / "runs" / f"compression-{name}-shaped",
                [*train_args, "--epochs", args.shaped_epochs],
            )
            row[f"step_s_{args.bandwidth}"] = step_seconds(shaped)
        rows.append(row)
        common.log(f"{name}: {row}")
    common.write(args.out, "compression", {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    series = {"step s (unshaped)": [r["step_s"] for r in rows]}
    if args.bandwidth:
        series[f"step s ({args.bandwidth})"] = [r[f"step_s_{args.bandwidth}"] for r in rows]
    series["PGD-20 acc"] = [r["pgd20_acc"] for r in rows]
    common.bar_plot(
        args.out,
        "compression",
        [r["compression"] for r in rows],
        series,
        f"2 workers, {args.attack}, {args.batch_size}/worker",
        "seconds / accuracy",
    )
    columns = ["compression", "clean_acc", "pgd20_acc", "bytes_per_step", "compression_ratio", "step_s"]
    print(common.markdown(rows, columns + ([f"step_s_{args.bandwidth}"] if args.bandwidth else [])))


if __name__ == "__main__":
    main()
