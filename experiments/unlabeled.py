"""Experiment 6, unlabeled data (Carmon et al. 2019; DAT's CIFAR-10 + 500K): keep the labels of L training images,
treat U others as unlabeled. A standard (natural) model trained on the L images pseudo-labels the U
(`hvdat pseudo-label`, sharded over 2 ranks); then AT on the L alone is compared with AT on L plus the U
pseudo-labelled images (`hvdat train --extra-data extra.npz --extra-fraction 0.5`). An epoch is one pass over the
labeled images, so with fraction 0.5 the second run takes twice the steps (the table reports them).

Needs an ImageFolder layout (`--data-dir` with train/ and test/): the U images are the training files outside the
L-image subset hvdat draws for `--train-samples L`, linked into a temporary folder.

    python experiments/unlabeled.py [--labeled 10000] [--unlabeled 40000] [--epochs 5] [--smoke]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import common


def unlabeled_folder(data_dir: Path, labeled: int, unlabeled: int, target: Path) -> int:
    """Link U training files that hvdat's `--train-samples labeled` subset leaves out into target (no labels)."""
    from hvdat.data.folders import folder_files
    from hvdat.data.in_memory import take

    files, _ = folder_files(data_dir / "train")
    kept = take(labeled, len(files), 1)
    kept_set = set(kept.tolist()) if kept is not None else set(range(len(files)))
    rest = [path for i, (path, _) in enumerate(files) if i not in kept_set][:unlabeled]
    target.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(rest):
        os.symlink(path, target / f"{i:06d}{Path(path).suffix}")
    return len(rest)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--labeled", type=int, default=10000)
    p.add_argument("--unlabeled", type=int, default=40000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--attack", default="fgsm-rs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--extra-fraction", type=float, default=0.5)
    p.add_argument("--n-eval", type=int, default=1000)
    args = p.parse_args()
    if args.smoke:
        args.labeled, args.unlabeled, args.test_samples, args.epochs, args.teacher_epochs = 128, 64, 64, 1, 1
        args.n_eval, args.batch_size = 16, 32
    data = common.data_args(args, args.labeled, args.test_samples)
    teacher = common.train(
        args.out / "runs" / "unlabeled-teacher",
        *data,
        "--attack",
        "none",
        "--epochs",
        args.teacher_epochs,
        "--batch-size",
        args.batch_size,
        "--eval-samples",
        0,
    )
    teacher_eval = common.evaluate(args.out / "runs" / "unlabeled-teacher", "clean", args.n_eval)
    with tempfile.TemporaryDirectory(prefix="hvdat-unlabeled-") as tmp:
        n_unlabeled = unlabeled_folder(Path(args.data_dir), args.labeled, args.unlabeled, Path(tmp) / "images")
        extra = args.out / "runs" / "unlabeled-extra.npz"
        label = common.hvdat(
            "pseudo-label",
            "--model",
            args.out / "runs" / "unlabeled-teacher",
            "--data-dir",
            Path(tmp) / "images",
            "--out",
            extra,
            "--np",
            2,
            "--json",
        )
    import json

    pseudo = json.loads(label.stdout)
    pseudo_accuracy = pseudo_label_accuracy(Path(args.data_dir), args.labeled, extra)
    rows = []
    matched = round(args.epochs / (1 - args.extra_fraction))  # the labeled-only epochs with the same steps
    setups = (
        ("alone", "AT on labeled only", args.epochs, []),
        ("alone-matched", f"AT on labeled only, {matched} epochs (same steps)", matched, []),
        (
            "plus",
            "AT on labeled + pseudo-labelled",
            args.epochs,
            ["--extra-data", extra, "--extra-fraction", args.extra_fraction],
        ),
    )
    # the smoke leaves out the matched-steps row: the same command as the first with more epochs
    for key, name, epochs, more in (setup for setup in setups if not (args.smoke and setup[0] == "alone-matched")):
        run = args.out / "runs" / f"unlabeled-{key}"
        summary = common.train(
            run,
            *data,
            "--attack",
            args.attack,
            "--epochs",
            epochs,
            "--batch-size",
            args.batch_size,
            "--eval-samples",
            0,
            *more,
        )
        ev = common.evaluate(run, "pgd", args.n_eval, steps=20)
        rows.append(
            {
                "setup": name,
                "clean_acc": ev["clean_acc"],
                "pgd20_acc": ev["robust_acc"],
                "steps": summary["final"]["step"],
                "train_wall_s": summary["wall_seconds"],
                "command": summary["command"],
            }
        )
    common.write(
        args.out,
        "unlabeled",
        {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "teacher": {"clean_acc": teacher_eval["clean_acc"], "command": teacher["command"]},
            "pseudo_label": {
                **pseudo,
                "unlabeled_images": n_unlabeled,
                "label_accuracy_vs_true": pseudo_accuracy,
                "command": f"hvdat pseudo-label --model {args.out / 'runs' / 'unlabeled-teacher'} "
                f"--data-dir UNLABELED --out {extra} --np 2",
            },
        },
    )
    common.bar_plot(
        args.out,
        "unlabeled",
        [r["setup"] for r in rows],
        {"clean": [r["clean_acc"] for r in rows], "PGD-20": [r["pgd20_acc"] for r in rows]},
        f"{args.labeled} labeled + {n_unlabeled} pseudo-labelled, {args.attack}, {args.epochs} epochs",
        "accuracy",
    )
    print(
        f"teacher clean accuracy {teacher_eval['clean_acc']:.3f}; pseudo-labels correct on "
        f"{pseudo_accuracy:.3f} of {n_unlabeled} images"
    )
    print(common.markdown(rows, ["setup", "clean_acc", "pgd20_acc", "steps", "train_wall_s"]))


def pseudo_label_accuracy(data_dir: Path, labeled: int, extra: Path) -> float:
    """How many pseudo-labels match the true labels the bench hid (the links are in the same order)."""
    import numpy as np

    from hvdat.data.folders import folder_files
    from hvdat.data.in_memory import take

    files, _ = folder_files(data_dir / "train")
    kept = take(labeled, len(files), 1)
    kept_set = set(kept.tolist()) if kept is not None else set(range(len(files)))
    truth = [label for i, (_, label) in enumerate(files) if i not in kept_set]
    with np.load(extra) as blob:
        labels = blob["labels"]
    return float((labels == np.asarray(truth[: len(labels)])).mean())


if __name__ == "__main__":
    main()
