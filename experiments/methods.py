"""Experiment 1, method comparison: natural training vs FGSM-RS vs PGD-AT vs TRADES, all at eps 8/255.

Reports test clean accuracy, PGD-20 (with restarts) and AutoAttack robust accuracy on the first --n-eval test images,
and the wall time of each `hvdat train`.

    python experiments/methods.py [--train-samples 5000] [--epochs 3] [--n-eval 1000] [--n-autoattack 1000] [--smoke]
"""

from __future__ import annotations

import common

METHODS = (
    ("natural", ["--attack", "none"]),
    ("fgsm-rs", ["--attack", "fgsm-rs"]),
    ("pgd-at", ["--attack", "pgd", "--steps", "10"]),
    ("trades", ["--attack", "trades", "--steps", "10"]),
)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--n-autoattack", type=int, default=1000)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--methods", default=",".join(m for m, _ in METHODS))
    args = p.parse_args()
    if args.smoke:
        args.train_samples, args.test_samples, args.epochs, args.n_eval, args.n_autoattack = 128, 64, 1, 16, 16
        args.batch_size = 64
        args.restarts = 1
    wanted = args.methods.split(",")
    rows = []
    for name, method_args in METHODS:
        if name not in wanted:
            continue
        run = args.out / "runs" / f"methods-{name}"
        summary = common.train(
            run,
            *common.data_args(args, args.train_samples, args.test_samples),
            *method_args,
            "--eps",
            "8/255",
            "--epochs",
            args.epochs,
            "--batch-size",
            args.batch_size,
            "--lr",
            args.lr,
            "--eval-samples",
            0 if args.smoke else 256,
        )
        pgd = common.evaluate(run, "pgd", args.n_eval, steps=20, restarts=args.restarts)
        aa = common.evaluate(run, "autoattack", args.n_autoattack)
        rows.append(
            {
                "method": name,
                "clean_acc": pgd["clean_acc"],
                "pgd20_acc": pgd["robust_acc"],
                "autoattack_acc": aa["robust_acc"],
                "train_wall_s": summary["wall_seconds"],
                "train_images_per_s": summary["final"]["images_per_sec"],
                "command": summary["command"],
                "pgd_eval": pgd,
                "autoattack_eval": aa,
            }
        )
        print(
            f"{name}: {rows[-1]['clean_acc']:.3f} clean, {rows[-1]['pgd20_acc']:.3f} PGD-20, "
            f"{rows[-1]['autoattack_acc']:.3f} AA, {rows[-1]['train_wall_s']:.0f}s",
            flush=True,
        )
    common.write(
        args.out,
        "methods",
        {"settings": vars(args) | {"out": str(args.out), "data_dir": str(args.data_dir)}, "rows": rows},
    )
    common.bar_plot(
        args.out,
        "methods",
        [r["method"] for r in rows],
        {
            "clean": [r["clean_acc"] for r in rows],
            f"PGD-20 x{args.restarts}": [r["pgd20_acc"] for r in rows],
            "AutoAttack": [r["autoattack_acc"] for r in rows],
        },
        f"{args.arch}, {args.train_samples} train images, {args.epochs} epochs, eps 8/255",
        "accuracy",
    )
    print(common.markdown(rows, ["method", "clean_acc", "pgd20_acc", "autoattack_acc", "train_wall_s"]))


if __name__ == "__main__":
    main()
