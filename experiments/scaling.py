"""Experiment 2, DAT scaling: 1 worker vs 2 workers with the same per-worker batch (the global batch doubles),
with SGD without and with linear LR scaling, and with LAMB (layer-wise adaptive LR, as in DAT) with sqrt scaling.

Reports training images/s (all workers), scaling efficiency = (images/s on 2) / (2 x images/s on 1), and clean and
PGD-20 accuracy on the first --n-eval test images. On a 2-core machine two workers share the cores one worker uses,
so the efficiency measures Horovod's overhead at equal compute, not added hardware.

    python experiments/scaling.py [--train-samples 10000] [--epochs 4] [--smoke]
"""

from __future__ import annotations

import common

SETUPS = (
    ("1 worker, sgd", 1, ["--optimizer", "sgd", "--lr-scaling", "none"]),
    ("2 workers, sgd, no lr scaling", 2, ["--optimizer", "sgd", "--lr-scaling", "none"]),
    ("2 workers, sgd, linear lr scaling", 2, ["--optimizer", "sgd", "--lr-scaling", "linear"]),
    ("2 workers, lamb, sqrt lr scaling", 2, ["--optimizer", "lamb", "--lr-scaling", "sqrt", "--lr", "0.01"]),
)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="per worker")
    p.add_argument("--attack", default="fgsm-rs")
    p.add_argument("--n-eval", type=int, default=1000)
    args = p.parse_args()
    if args.smoke:
        args.train_samples, args.test_samples, args.epochs, args.n_eval, args.batch_size = 128, 64, 1, 16, 32
    rows = []
    # the smoke runs the first and last setups (1 worker; 2 with LAMB): the rows between differ only in flags
    setups = SETUPS[:1] + SETUPS[-1:] if args.smoke else SETUPS
    for k, (name, np, extra) in enumerate(setups):
        run = args.out / "runs" / f"scaling-{k}"
        summary = common.train(
            run,
            *common.data_args(args, args.train_samples, args.test_samples),
            "--np",
            np,
            "--attack",
            args.attack,
            "--epochs",
            args.epochs,
            "--batch-size",
            args.batch_size,
            "--lr-base-batch",
            args.batch_size,
            "--eval-samples",
            0,
            *extra,
        )
        ev = common.evaluate(run, "pgd", args.n_eval, steps=20)
        final = summary["final"]
        ips = sum(e["images_per_sec"] for e in summary["epochs"]) / len(summary["epochs"])
        rows.append(
            {
                "setup": name,
                "workers": np,
                "global_batch": final["global_batch"],
                "final_lr": final["lr"],
                "images_per_s": ips,
                "clean_acc": ev["clean_acc"],
                "pgd20_acc": ev["robust_acc"],
                "train_wall_s": summary["wall_seconds"],
                "command": summary["command"],
            }
        )
    base = rows[0]["images_per_s"]
    for row in rows:
        row["scaling_efficiency"] = row["images_per_s"] / (row["workers"] * base)
    common.write(args.out, "scaling", {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    common.bar_plot(
        args.out,
        "scaling",
        [r["setup"].replace(", ", "\n") for r in rows],
        {
            "clean": [r["clean_acc"] for r in rows],
            "PGD-20": [r["pgd20_acc"] for r in rows],
            "scaling efficiency": [r["scaling_efficiency"] for r in rows],
        },
        f"{args.attack}, {args.batch_size}/worker, {args.epochs} epochs",
        "accuracy / efficiency",
    )
    print(
        common.markdown(
            rows,
            ["setup", "global_batch", "images_per_s", "scaling_efficiency", "clean_acc", "pgd20_acc", "train_wall_s"],
        )
    )


if __name__ == "__main__":
    main()
