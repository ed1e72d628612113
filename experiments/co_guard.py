"""Experiment 5, catastrophic overfitting: FGSM without random init at a large budget, unguarded vs --co-guard.

The unguarded run is expected to collapse (PGD accuracy of the training check falls to about zero while FGSM
training accuracy climbs); the guarded run detects it after the epoch, rolls back to the last good epoch and
continues with PGD (--co-guard-fallback). Reports the per-epoch guard check accuracy and per-epoch PGD test accuracy
of both runs, the guard's decisions, and the final clean / PGD-20 accuracy.

    python experiments/co_guard.py [--train-samples 5000] [--epochs 8] [--eps 8/255] [--smoke]
"""

from __future__ import annotations

import common

from hvdat.train.run_folder import METRICS


def read_metrics(run):
    import json

    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--fallback", default="pgd")
    args = p.parse_args()
    if args.smoke:
        args.train_samples, args.test_samples, args.epochs, args.n_eval, args.batch_size = 128, 64, 1, 16, 32
    runs = {}
    rows = []
    for name, extra in (
        ("unguarded", []),
        (
            "guarded",
            ["--co-guard", "--co-guard-fallback", args.fallback, "--co-guard-samples", 64 if args.smoke else 512],
        ),
    ):
        run = args.out / "runs" / f"co-{name}"
        # the unguarded run also reports the same check (its guard never acts: ratio ~0), for a like-for-like curve
        watch = (
            [] if extra else ["--co-guard", "--co-guard-ratio", "1e-9", "--co-guard-samples", 64 if args.smoke else 512]
        )
        summary = common.train(
            run,
            *common.data_args(args, args.train_samples, args.test_samples),
            "--attack",
            "fgsm",
            "--eps",
            args.eps,
            "--epochs",
            args.epochs,
            "--lr",
            args.lr,
            "--batch-size",
            args.batch_size,
            "--eval-samples",
            64 if args.smoke else 500,
            *extra,
            *watch,
        )
        ev = common.evaluate(run, "pgd", args.n_eval, steps=20, eps=args.eps)
        runs[name] = read_metrics(run)
        collapses = [m for m in runs[name] if m.get("co_guard_collapsed")]
        rows.append(
            {
                "run": name,
                "clean_acc": ev["clean_acc"],
                "pgd20_acc": ev["robust_acc"],
                "collapses_detected": len(collapses) if extra else 0,
                "final_attack": runs[name][-1].get("attack"),
                "train_wall_s": summary["wall_seconds"],
                "command": summary["command"],
                "epochs": [
                    {
                        k: m.get(k)
                        for k in (
                            "epoch",
                            "train_acc",
                            "test_robust_acc",
                            "co_guard_acc",
                            "co_guard_collapsed",
                            "attack",
                        )
                    }
                    for m in runs[name]
                ],
            }
        )
    common.write(args.out, "co_guard", {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    plot(args, runs)
    print(
        common.markdown(rows, ["run", "clean_acc", "pgd20_acc", "collapses_detected", "final_attack", "train_wall_s"])
    )
    for row in rows:
        print(
            row["run"],
            [
                (e["epoch"], round(e["co_guard_acc"] or 0, 3), e["co_guard_collapsed"], e["attack"])
                for e in row["epochs"]
            ],
        )


def plot(args, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, metrics in runs.items():
        xs = list(range(1, len(metrics) + 1))
        ax.plot(xs, [m["co_guard_acc"] for m in metrics], marker="o", label=f"{name}: PGD acc (train check)")
        ax.plot(xs, [m["train_acc"] for m in metrics], linestyle="--", label=f"{name}: FGSM train acc")
        for x, m in zip(xs, metrics):
            if m.get("co_guard_collapsed") and name == "guarded":
                ax.axvline(x, color="red", alpha=0.3)
    ax.set_xlabel("epoch record (a red line: collapse detected, epoch discarded)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"FGSM (no random init), eps {args.eps}: catastrophic overfitting guard", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "co_guard.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
