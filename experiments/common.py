"""Shared pieces of the experiment benches: run `hvdat train`/`hvdat eval` as a user would, write JSON + PNG.

Every experiment is `python experiments/NAME.py [--data-dir DIR] [--out DIR] [--smoke]`: it trains with the real CLI (a
subprocess per run), evaluates the run directories, writes `OUT/NAME.json` and `OUT/NAME.png`, and prints a
Markdown table. `--smoke` shrinks everything (a tiny subset, 1 epoch) so the test suite can run every bench.

Evaluation is `hvdat eval RUN/last.pt --attack pgd|autoattack --n-examples N --np 2 --json`, the command a user
runs: the first N images of the whole test split (an ImageFolder listing is shuffled once with a fixed seed, so they
cover every class), AutoAttack in its standard four-attack version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpg"
ENV = {
    **os.environ,
    "HVDAT_CACHE": os.environ.get("HVDAT_CACHE", str(Path.home() / ".cache" / "hvdat")),
    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset",
        default="cifar10",
        help="hvdat dataset name (cifar10 reads torchvision's release or an ImageFolder layout; imagenet works too)",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--smoke", action="store_true", help="tiny subset, 1 epoch: checks the bench end to end")
    p.add_argument("--threads", type=int, default=0)
    return p


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def hvdat(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hvdat", *map(str, args)], capture_output=True, text=True, env=ENV, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"hvdat {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train(run_dir: Path, *args) -> Dict:
    """`hvdat train ... --out run_dir --json`; returns its summary plus the wall time of the whole command."""
    start = time.perf_counter()
    proc = hvdat("train", *args, "--out", run_dir, "--overwrite", "--json")
    summary = json.loads(proc.stdout)
    summary["wall_seconds"] = time.perf_counter() - start
    log(f"trained {run_dir} in {summary['wall_seconds']:.0f}s")
    summary["command"] = "hvdat train " + " ".join(map(str, args)) + f" --out {run_dir}"
    return summary


def evaluate(
    run_dir: Path,
    attack: str,
    n: int,
    steps: Optional[int] = None,
    restarts: Optional[int] = None,
    eps: str = "8/255",
    np: int = 2,
) -> Dict:
    """Clean and robust accuracy of run_dir's last checkpoint, through `hvdat eval RUN/last.pt ... --json` on np
    ranks: the first n images of the whole test split (hvdat shuffles an ImageFolder listing once with a fixed seed,
    so they are a random sample of every class). `attack` is any `hvdat eval --attack` (autoattack: the standard
    four-attack AutoAttack of pyautoattack)."""
    start = time.perf_counter()
    args = [
        "eval",
        Path(run_dir) / "last.pt",
        "--attack",
        attack,
        "--eps",
        eps,
        "--n-examples",
        n,
        "--np",
        np,
        "--out",
        Path(run_dir) / "eval" / f"{attack}-{n}.json",
        "--json",
    ]
    if steps is not None:
        args += ["--steps", steps]
    if restarts is not None:
        args += ["--restarts", restarts]
    report = json.loads(hvdat(*args).stdout)
    result = {
        "clean_acc": report["clean_accuracy"],
        "robust_acc": report["robust_accuracy"],
        "attack": attack,
        "n": n,
        "steps": steps,
        "restarts": restarts,
        "seconds": time.perf_counter() - start,
        "command": "hvdat " + " ".join(map(str, args[:-1])),
    }
    log(f"{attack} on {n} images of {run_dir}: {result['robust_acc']:.3f} ({result['seconds']:.0f}s)")
    return result


def machine() -> Dict:
    import torch

    load = os.getloadavg()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1_5_15": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
    }


def write(out: Path, name: str, payload: Dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "argv": sys.argv, "machine_at_end": machine(), **payload}
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def bar_plot(
    out: Path, name: str, labels: Sequence[str], series: Dict[str, Sequence[float]], title: str, ylabel: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels) * max(1, len(series)) ** 0.5), 3.6))
    width = 0.8 / max(len(series), 1)
    for k, (key, values) in enumerate(series.items()):
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(positions, values, width, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows: List[Dict], columns: Sequence[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def data_args(args, train_samples: int, test_samples: int) -> List[str]:
    out = [
        "--dataset",
        args.dataset,
        "--train-samples",
        train_samples,
        "--test-samples",
        test_samples,
        "--arch",
        args.arch,
    ]
    if args.data_dir and args.dataset not in ("digits", "synthetic"):
        out += ["--data-dir", args.data_dir]
    if args.threads:
        out += ["--threads", args.threads]
    return out
