"""Experiment 1, method comparison: natural training vs FGSM-RS vs PGD-AT vs TRADES, and Free-AT (m=4, 8), M+DEAT
and AccelAT, all at eps 8/255.

Reports test clean accuracy, PGD-20 (with restarts) and AutoAttack robust accuracy on the first --n-eval test images,
and the wall time of each `hvdat train`.

Free-AT, M+DEAT and AccelAT get PGD-AT's budget: --epochs of PGD-10 cost 11 forward/backward passes per minibatch
(10 attack steps and the training step), so Free-AT with m replays gets round(11 * epochs / m) passes of the data;
M+DEAT (K = 1, 2, 2, then at most +1 per epoch up to 8) gets the most epochs whose worst-case K sum stays within
11 * epochs; AccelAT is PGD-AT's training with `--schedule accelat` at the same epochs (it cannot cut before its
seventh epoch). Each row reports its measured wall time, so the budgets can be checked.

    python experiments/methods.py [--train-samples 5000] [--epochs 3] [--n-eval 1000] [--n-autoattack 1000] [--smoke]
"""

from __future__ import annotations

import common

METHODS = (
    ("natural", ["--attack", "none"]),
    ("fgsm-rs", ["--attack", "fgsm-rs"]),
    ("pgd-at", ["--attack", "pgd", "--steps", "10"]),
    ("trades", ["--attack", "trades", "--steps", "10"]),
    ("free-4", ["--attack", "free", "--replays", "4"]),
    ("free-8", ["--attack", "free", "--replays", "8"]),
    ("m-deat", ["--attack", "deat"]),
    ("accelat", ["--attack", "pgd", "--steps", "10", "--schedule", "accelat"]),
)
PGD_PASSES = 11  # forward/backward passes per minibatch of PGD-10 training


def worst_case_deat_k(epoch: int, max_k: int = 8) -> int:
    """M+DEAT's largest possible K in `epoch` (0-based): 1, 2, 2, then one more per epoch."""
    return 1 if epoch == 0 else min(max(2, epoch), max_k)


def epochs_at_pgd_budget(name: str, epochs: int) -> int:
    """The epochs that give `name` PGD-AT's forward/backward passes at `epochs` (other methods: `epochs`)."""
    budget = PGD_PASSES * epochs
    if name.startswith("free-"):
        return max(1, round(budget / int(name.split("-")[1])))
    if name == "m-deat":
        total, n = 0, 0
        while total + worst_case_deat_k(n) <= budget:
            total, n = total + worst_case_deat_k(n), n + 1
        return max(1, n)
    return epochs


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
            epochs_at_pgd_budget(name, args.epochs),
            "--batch-size",
            args.batch_size,
            "--lr",
            args.lr,
            "--eval-samples",
            16 if args.smoke and name == "accelat" else 0 if args.smoke else 256,  # accelat cuts from it
        )
        pgd = common.evaluate(run, "pgd", args.n_eval, steps=20, restarts=args.restarts)
        aa = common.evaluate(run, "autoattack", args.n_autoattack)
        rows.append(
            {
                "method": name,
                "clean_acc": pgd["clean_acc"],
                "pgd20_acc": pgd["robust_acc"],
                "autoattack_acc": aa["robust_acc"],
                "epochs": epochs_at_pgd_budget(name, args.epochs),
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
    print(common.markdown(rows, ["method", "epochs", "clean_acc", "pgd20_acc", "autoattack_acc", "train_wall_s"]))


if __name__ == "__main__":
    main()
