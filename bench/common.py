"""Shared pieces of the experiment benches: run `hvdat train`/`hvdat eval` as a user would, write JSON + PNG.

Every bench is `python bench/NAME.py [--data-dir DIR] [--out DIR] [--smoke]`: it trains with the real CLI (a
subprocess per run), evaluates the run directories, writes `OUT/NAME.json` and `OUT/NAME.png`, and prints a
Markdown table. `--smoke` shrinks everything (a tiny subset, 1 epoch) so the test suite can run every bench.

Evaluation runs in-process by default (PGD with restarts from hvdat.attacks.pgd, AutoAttack from pyautoattack) on
a fixed random subset of N images (seed 0) of the run's test split. Not the first N: an ImageFolder test split is
sorted by class, so its first 500 CIFAR-10 images hold five classes only. `HVDAT_BENCH_EVAL=cli` sends evaluation
through `hvdat eval RUN --attack pgd|autoattack ... --json` instead, which attacks the first N test images.
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
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpg"
ENV = {**os.environ, "HVDAT_CACHE": os.environ.get("HVDAT_CACHE", str(Path.home() / ".cache" / "hvdat")), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", help="hvdat dataset name (cifar10 reads torchvision's release "
                                                        "or an ImageFolder layout; imagenet works too)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--smoke", action="store_true", help="tiny subset, 1 epoch: checks the bench end to end")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--aa-attacks", default="apgd-ce,apgd-t",
                   help="AutoAttack: 'standard' (all four attacks) or a subset, e.g. apgd-ce,apgd-t (CPU budgets)")
    return p


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def hvdat(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hvdat", *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=REPO)
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


def _has_eval() -> bool:
    return hvdat("eval", "--help", check=False).returncode == 0


def evaluate(run_dir: Path, attack: str, n: int, steps: int = 20, restarts: int = 1, eps: str = "8/255",
             aa_attacks: str = "standard") -> Dict:
    """Clean and robust accuracy of run_dir's last checkpoint on the first n test images. `aa_attacks`:
    `standard` (the full AutoAttack) or a comma-separated subset such as `apgd-ce,apgd-t` (in-process)."""
    start = time.perf_counter()
    if os.environ.get("HVDAT_BENCH_EVAL") == "cli" and _has_eval() and (attack == "pgd" or aa_attacks == "standard"):
        args = ["eval", run_dir, "--attack", attack, "--eps", eps, "--n-examples", n, "--json"]
        if attack == "pgd":
            args += ["--steps", steps, "--restarts", restarts]
        report = json.loads(hvdat(*args).stdout)
        result = {"clean_acc": report["clean_accuracy"], "robust_acc": report["robust_accuracy"], "via": "hvdat eval"}
    else:
        result = _evaluate_in_process(run_dir, attack, n, steps, restarts, eps, aa_attacks)
    if attack == "autoattack":
        result["autoattack_attacks"] = aa_attacks
    log(f"{attack} on {n} images of {run_dir}: {result['robust_acc']:.3f} ({time.perf_counter() - start:.0f}s)")
    result.update(attack=attack, n=n, steps=steps if attack == "pgd" else None,
                  restarts=restarts if attack == "pgd" else None, seconds=time.perf_counter() - start)
    return result


def _evaluate_in_process(run_dir: Path, attack: str, n: int, steps: int, restarts: int, eps: str,
                         aa_attacks: str) -> Dict:
    import torch

    from hvdat import checkpoint
    from hvdat.attacks import pgd
    from hvdat.config import TrainConfig, parse_eps
    from hvdat.data import load_splits
    from hvdat.models import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = TrainConfig.load(Path(run_dir) / "config.json")
    state = checkpoint.load(Path(run_dir) / checkpoint.LAST)
    splits = load_splits(cfg.dataset, cfg.data_dir, cfg.train_samples, cfg.test_samples)
    model = build_model(cfg.arch, splits.num_classes, splits.shape, splits.mean, splits.std)
    model.load_state_dict(state["model"])
    model.eval()
    n = min(n, len(splits.test))
    index = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:n]
    x, y = splits.test.images[index].float() / 255, splits.test.labels[index]
    eps_value = parse_eps(eps)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    if attack == "pgd":
        robust = clean.clone()
        for restart in range(restarts):
            x_adv = torch.cat([pgd(model, x[i:i + 256], y[i:i + 256], eps=eps_value, alpha=2.5 * eps_value / steps,
                                   steps=steps, generator=torch.Generator().manual_seed(restart))
                               for i in range(0, n, 256)])
            with torch.no_grad():
                robust &= model(x_adv).argmax(1) == y
    else:
        from pyautoattack import AutoAttack

        if aa_attacks == "standard":
            adversary = AutoAttack(model, eps=eps_value, norm="Linf", version="standard", seed=0)
        else:
            adversary = AutoAttack(model, eps=eps_value, norm="Linf", version="custom", seed=0,
                                   attacks=aa_attacks.split(","))
        adversary.verbose = False
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=250)
        with torch.no_grad():
            robust = model(x_adv).argmax(1) == y
    return {"clean_acc": clean.float().mean().item(), "robust_acc": robust.float().mean().item(),
            "via": "in-process (hvdat.attacks.pgd / pyautoattack)"}


def machine() -> Dict:
    import torch

    load = os.getloadavg()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "load_average_1_5_15": [round(v, 2) for v in load],
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def write(out: Path, name: str, payload: Dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "argv": sys.argv, "machine_at_end": machine(), **payload}
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def bar_plot(out: Path, name: str, labels: Sequence[str], series: Dict[str, Sequence[float]], title: str,
             ylabel: str) -> Path:
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
    out = ["--dataset", args.dataset, "--train-samples", train_samples, "--test-samples", test_samples,
           "--arch", args.arch]
    if args.data_dir and args.dataset not in ("digits", "synthetic"):
        out += ["--data-dir", args.data_dir]
    if args.threads:
        out += ["--threads", args.threads]
    return out
