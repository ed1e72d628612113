"""`hvdat report RUN_DIR`: PNG plots of a run's training curves and of robust accuracy against eps.

- `training.png` from `metrics.jsonl`: clean and robust test accuracy, training loss, learning rate, images/s.
- `robust_vs_eps.png` from the `hvdat eval` reports in `RUN_DIR/eval/*.json` (one line per attack and norm),
  written when at least one report holds a sweep such as `--eps 1/255,2/255,4/255,8/255`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import UsageError
from ..out_dirs import make_dir
from ..train.run_folder import METRICS

log = logging.getLogger(__name__)
TRAINING_PNG, EPS_PNG = "training.png", "robust_vs_eps.png"


def read_metrics(run_dir: Path) -> List[Dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def read_eval_reports(run_dir: Path) -> List[Dict]:
    reports = []
    for path in sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []:
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("skipping %s: not valid JSON", path)
            continue
        if isinstance(report, dict) and len(report.get("sweep") or []) > 1:
            reports.append(report)
    return reports


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_training(rows: List[Dict], path: Path) -> Path:
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0][0]
    ax.plot(epochs, [r["test_clean_acc"] for r in rows], "o-", label="clean (test)")
    ax.plot(epochs, [_or_nan(r["test_robust_acc"]) for r in rows], "s-", label="robust (test, PGD)")
    ax.plot(epochs, [r["train_acc"] for r in rows], "--", color="grey", label="train (adversarial)")
    ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    ax.legend()
    ax = axes[0][1]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-")
    ax.set(title="training loss", xlabel="epoch")
    ax = axes[1][0]
    ax.plot(epochs, [r["lr"] for r in rows], "o-")
    ax.set(title="learning rate (end of epoch)", xlabel="epoch")
    ax = axes[1][1]
    ax.plot(epochs, [r["images_per_sec"] for r in rows], "o-")
    ax.set(
        title=f"throughput ({rows[-1].get('world_size', 1)} worker(s))",
        xlabel="epoch",
        ylabel="images/s",
        ylim=(0, None),
    )
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("hvdat training")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_eps(reports: List[Dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for report in reports:
        sweep = sorted(report["sweep"], key=lambda e: e["eps"])
        xs = [0.0] + [e["eps"] for e in sweep]
        ys = [report["clean_accuracy"]] + [e["robust_accuracy"] for e in sweep]
        name = report["attack"] + (f" ({report['version']})" if report.get("version") not in (None, "standard") else "")
        scale = 255 if report["norm"] == "linf" else 1
        ax.plot([x * scale for x in xs], ys, "o-", label=f"{name}, {report['norm']}, n={report['n_examples']}")
    linf_only = all(r["norm"] == "linf" for r in reports)
    ax.set(
        xlabel="eps (x/255)" if linf_only else "eps",
        ylabel="robust accuracy",
        ylim=(0, 1),
        title="robust accuracy against eps",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(run_dir: Path, out_dir: Optional[Path] = None) -> List[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no run directory at {run_dir}", "point at the --out of `hvdat train`")
    rows = read_metrics(run_dir)
    reports = read_eval_reports(run_dir)
    if not rows and not reports:
        raise UsageError(
            f"{run_dir} holds neither {METRICS} nor eval reports",
            "train into it with `hvdat train --out`, or evaluate it with `hvdat eval`",
        )
    out_dir = Path(out_dir) if out_dir else run_dir / "plots"
    make_dir(out_dir)
    written = []
    if rows:
        written.append(plot_training(rows, out_dir / TRAINING_PNG))
    if reports:
        written.append(plot_eps(reports, out_dir / EPS_PNG))
    return written
