"""The one GPU device call: hvdat's CUDA/AMP paths, the GPU fast-path target and the methods table on one GPU.

Run through `experiments/gpu/device.sh PROFILE`, which unpacks the data and puts the single-process Horovod shim
(experiments/gpu/shim) first on PYTHONPATH and PATH. Every training and evaluation is the real CLI
(`python -m hvdat train|eval ... --json`) in a subprocess with its own timeout, all inside one overall --budget;
results.json in --out is rewritten after every step, so a call cut short still returns what finished.

1. smoke (aborts the run with exit code 3 if a training fails): PreActResNet-18 FGSM-RS on CIFAR-10 for one short
   epoch with `--amp bf16 --channels-last` launched through `horovodrun -np 1 -H localhost:1` (the shim) and with
   `--amp fp16` (GradScaler; its state must be in the checkpoint); a CUDA check of hvdat's World and pinned batches;
   AutoAttack on a few images (pyautoattack on CUDA).
2. target: docs/RESULTS.md's GPU fast-path command (15 epochs, batch 512, onecycle, bf16, channels_last), alone on
   the GPU, then PGD-50 with restarts on the first test images.
3. methods (issue 13's table, experiments/methods.py's settings and budgets; new methods first), several at a time
   on the GPU beside the target's evaluation: clean and PGD-20 x2 and AutoAttack on the first test images.

    experiments/gpu/device.sh device    # on the GPU machine ($OUT set by the device tool)
    experiments/gpu/device.sh local     # tiny settings on CPU, to test the harness before the call
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # experiments/: methods.py's table and budgets

import methods  # noqa: E402

NEW_FIRST = ("free-4", "free-8", "m-deat", "accelat", "fgsm-rs", "pgd-at", "natural", "trades")

PROFILES = {
    "device": dict(
        arch="preact-resnet18", smoke_train=1024, smoke_batch=256, smoke_aa=32,
        target_epochs=15, target_train=0, target_batch=512, target_lr=0.2,
        target_evals=((1000, 10, 1000), (10000, 10, 1000)),  # (images, restarts, batch size)
        target_cap=330, pgd_steps=50,
        train_samples=5000, test_samples=1000, epochs=3, batch=128, n_eval=1000, n_aa=1000, restarts=2,
        method_eval_samples=256, pool=4, threads=3, compile_train=1024,
    ),
    "local": dict(
        arch="small-cnn", smoke_train=128, smoke_batch=64, smoke_aa=8,  # preact-resnet18 fp16 on CPU: minutes
        target_epochs=1, target_train=512, target_batch=128, target_lr=0.2,
        target_evals=((32, 2, 32), (64, 1, 32)),
        target_cap=300, pgd_steps=2,
        train_samples=256, test_samples=64, epochs=1, batch=64, n_eval=32, n_aa=16, restarts=1,
        method_eval_samples=16, pool=2, threads=1, compile_train=0,
    ),
}  # fmt: skip
# the paper's batch (Wong et al. 2020: 128, lr max 0.2), after batch 512 reached 41.7% PGD-50: the target alone
PROFILES["device-b128"] = dict(PROFILES["device"], target_batch=128, compile_train=0)


class Bench:
    """The shared state: the deadline, the results file, the log."""

    def __init__(self, args):
        self.args = args
        self.p = PROFILES[args.profile]
        self.start = time.time()
        self.deadline = self.start + args.budget
        self.work = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs = self.work / "runs"
        self.lock = threading.Lock()
        self.results: Dict = {
            "profile": args.profile,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "budget_s": args.budget,
            "methods": {},
            "errors": [],
        }
        self.python = sys.executable
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def log(self, text: str) -> None:
        print(f"[{time.time() - self.start:6.1f}s] {text}", flush=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        with self.lock:
            self.results["elapsed_s"] = round(time.time() - self.start, 1)
            path = self.args.out / "results.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=1) + "\n")
            tmp.replace(path)

    def error(self, what: str) -> None:
        self.log(f"ERROR {what}")
        with self.lock:
            self.results["errors"].append(what)
        self.save()

    def hvdat(self, name: str, args: List, cap: float) -> Optional[Dict]:
        """`python -m hvdat ARGS --json` with a timeout (cap, or what is left of the budget); its JSON, or None."""
        timeout = min(cap, self.left() - 5)
        if timeout < 5:
            self.error(f"{name}: skipped, no time left")
            return None
        argv = [self.python, "-m", "hvdat", *map(str, args), "--json"]
        self.log(f"start {name} (timeout {timeout:.0f}s): hvdat {' '.join(map(str, args))}")
        began = time.time()
        with open(self.logs / f"{name}.err", "w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=self.env, cwd=REPO)
            try:
                stdout, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop(proc)
                self.error(f"{name}: timed out after {time.time() - began:.0f}s")
                return None
        wall = time.time() - began
        if proc.returncode != 0:
            tail = (self.logs / f"{name}.err").read_text()[-1500:]
            self.error(f"{name}: exit {proc.returncode} after {wall:.0f}s: {tail}")
            return None
        try:
            out = json.loads(stdout)
        except json.JSONDecodeError:
            self.error(f"{name}: no JSON on stdout: {stdout[-500:]}")
            return None
        out["command_wall_s"] = round(wall, 2)
        out["command"] = "hvdat " + " ".join(map(str, args))
        self.log(f"done {name} in {wall:.1f}s")
        return out

    def snippet(self, name: str, code: str, cap: float, *argv: str) -> Optional[str]:
        timeout = min(cap, self.left() - 5)
        try:
            proc = subprocess.run(
                [self.python, "-c", code, *argv],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired:
            self.error(f"{name}: timed out")
            return None
        (self.logs / f"{name}.err").write_text(proc.stderr)
        if proc.returncode != 0:
            self.error(f"{name}: exit {proc.returncode}: {proc.stderr[-1500:]}")
            return None
        return proc.stdout

    def data(self, train: int, test: int) -> List:
        return ["--dataset", "cifar10", "--data-dir", self.args.data_dir, "--train-samples", train,
                "--test-samples", test]  # fmt: skip

    def pack(self) -> None:
        """Run folders' small files (config, metrics, eval reports, logs) and the step logs, as one tar in --out."""
        with tarfile.open(self.args.out / "runs.tgz", "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                small = path.is_file() and path.stat().st_size < 4_000_000
                if small and path.suffix in (".json", ".jsonl", ".log", ".err", ".txt"):
                    tar.add(path, arcname=str(path.relative_to(self.work)))


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the hvdat command (it stops its workers, which run in their own session), then SIGKILL to it and
    to whatever of its process tree is left, so a timed-out job frees the GPU."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.terminate()
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def environment(b: Bench) -> bool:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "horovod": _horovod_version(),
        "pyautoattack": _module_file("pyautoattack"),
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        info["nvidia_smi"] = subprocess.run([smi], capture_output=True, text=True).stdout
        print(info["nvidia_smi"], flush=True)
    b.results["environment"] = info
    b.log(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}))
    b.save()
    if b.args.profile == "device" and not info["cuda_available"]:
        b.error("torch sees no CUDA device")
        return False
    return True


def _horovod_version() -> str:
    import horovod

    return f"{horovod.__version__} ({horovod.__file__})"


def _module_file(name: str) -> Optional[str]:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return spec.origin if spec else None


CUDA_CHECK = """
import json, torch
from hvdat.runtime.world import World
from hvdat.data.in_memory import UInt8Images
from hvdat.data.batches import batches
world = World.start()
images = UInt8Images(torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10)
x, y = next(iter(batches(images, list(range(64)), 32, world.device, 0)))
print(json.dumps({"world_device": str(world.device), "rank": world.rank, "size": world.size,
                  "batch_device": str(x.device), "batch_dtype": str(x.dtype),
                  "pin_memory_ok": bool(torch.empty(4).pin_memory().is_pinned()) if torch.cuda.is_available() else None,
                  "horovod": world.hvd.__file__}))
"""

PREWARM = """
import sys, time
from hvdat.data import load_splits
t = time.time()
s = load_splits("cifar10", sys.argv[1], 0, 0)
print(len(s.train), len(s.test), round(time.time() - t, 1))
"""


def smoke(b: Bench) -> bool:
    p = b.p
    common = [*b.data(p["smoke_train"], 256), "--arch", p["arch"], "--attack", "fgsm-rs", "--epochs", 1,
              "--batch-size", p["smoke_batch"], "--eval-samples", 64, "--overwrite"]  # fmt: skip
    runs = {
        "smoke-bf16": [*common, "--amp", "bf16", "--channels-last", "-H", "localhost:1"],  # through horovodrun
        "smoke-fp16": [*common, "--amp", "fp16"],
    }
    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(b.hvdat, n, ["train", *a, "--out", b.runs / n], 240) for n, a in runs.items()}
        cuda = pool.submit(b.snippet, "cuda-check", CUDA_CHECK, 120)
        prewarm = pool.submit(b.snippet, "prewarm", PREWARM, 180, str(b.args.data_dir))
        got = {n: f.result() for n, f in futures.items()}
        cuda_out, prewarm_out = cuda.result(), prewarm.result()
    s: Dict = {"cuda_check": json.loads(cuda_out) if cuda_out else None, "prewarm": prewarm_out}
    ok = True
    for name, out in got.items():
        if out is None:
            ok = False
            continue
        final = out["final"]
        s[name] = {k: final.get(k) for k in ("train_loss", "train_acc", "images_per_sec", "train_seconds")}
        s[name]["command"] = out["command"]
        if not math.isfinite(final["train_loss"]):
            b.error(f"{name}: train loss {final['train_loss']}")
            ok = False
    if got.get("smoke-fp16"):
        import torch

        state = torch.load(b.runs / "smoke-fp16" / "last.pt", map_location="cpu", weights_only=True)
        scale = (state.get("scaler") or {}).get("scale")
        s["smoke-fp16"]["grad_scaler_scale"] = scale
        if not scale or scale <= 0:
            b.error(f"smoke-fp16: no GradScaler state in last.pt ({scale})")
            ok = False
    b.results["smoke"] = s
    b.save()
    if ok:  # AutoAttack on a few images: pyautoattack on the device
        aa = b.hvdat(
            "smoke-aa",
            ["eval", b.runs / "smoke-bf16" / "last.pt", "--attack", "autoattack", "--n-examples", p["smoke_aa"],
             "--out", b.runs / "smoke-bf16" / "eval" / "aa.json"],
            120,
        )  # fmt: skip
        s["smoke-aa"] = None if aa is None else {k: aa[k] for k in ("clean_accuracy", "robust_accuracy", "seconds")}
        b.results["autoattack_ok"] = aa is not None
        b.save()
    return ok and s["cuda_check"] is not None


def target(b: Bench) -> Optional[Path]:
    p = b.p
    run = b.runs / "target"
    args = [
        "train", *b.data(p["target_train"], 0), "--arch", p["arch"], "--attack", "fgsm-rs",
        "--epochs", p["target_epochs"], "--batch-size", p["target_batch"], "--lr", p["target_lr"],
        "--lr-base-batch", p["target_batch"], "--schedule", "onecycle", "--amp", "bf16", "--channels-last",
        "--eval-samples", 0, "--out", run, "--overwrite",
    ]  # fmt: skip
    out = b.hvdat("target-train", args, p["target_cap"])
    if out is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists():  # a run cut off still has its finished epochs
            b.results["target_partial_epochs"] = [json.loads(line) for line in metrics.read_text().splitlines()]
            b.save()
        return None
    epochs = out["epochs"]
    b.results["target"] = {
        "command": out["command"],
        "command_wall_s": out["command_wall_s"],
        "train_seconds_sum": round(sum(e["train_seconds"] for e in epochs), 2),
        "epoch_seconds_sum": round(sum(e["seconds"] for e in epochs), 2),
        "images_per_sec_per_epoch": [round(e["images_per_sec"], 1) for e in epochs],
        "final": out["final"],
        "evals": [],
    }
    b.log(f"target trained: {b.results['target']['train_seconds_sum']}s of training, wall {out['command_wall_s']}s")
    b.save()
    return run


def target_evals(b: Bench, run: Path) -> None:
    p = b.p
    for n, restarts, batch in p["target_evals"]:
        name = f"target-pgd{p['pgd_steps']}x{restarts}-{n}"
        out = b.hvdat(
            name,
            ["eval", run / "last.pt", "--attack", "pgd", "--steps", p["pgd_steps"], "--restarts", restarts,
             "--n-examples", n, "--batch-size", batch, "--threads", 4, "--out", run / "eval" / f"{name}.json"],
            400,
        )  # fmt: skip
        if out is None:
            break
        row = {k: out.get(k) for k in ("n_examples", "clean_accuracy", "robust_accuracy", "seconds", "batch_size",
                                       "batches", "examples_per_second", "command", "command_wall_s")}  # fmt: skip
        row["steps"], row["restarts"] = p["pgd_steps"], restarts
        with b.lock:
            b.results["target"]["evals"].append(row)
        b.save()
        b.log(f"{name}: clean {row['clean_accuracy']:.4f} robust {row['robust_accuracy']:.4f}")


def method(b: Bench, name: str) -> None:
    p = b.p
    run = b.runs / f"methods-{name}"
    epochs = methods.epochs_at_pgd_budget(name, p["epochs"])
    method_args = dict(methods.METHODS)[name]
    train = b.hvdat(
        f"{name}-train",
        ["train", *b.data(p["train_samples"], p["test_samples"]), "--arch", "small-cnn", *method_args,
         "--eps", "8/255", "--epochs", epochs, "--batch-size", p["batch"], "--lr", 0.1,
         "--eval-samples", p["method_eval_samples"], "--threads", p["threads"], "--out", run, "--overwrite"],
        240,
    )  # fmt: skip
    if train is None:
        return
    row: Dict = {
        "epochs": epochs,
        "train_command_wall_s": train["command_wall_s"],
        "train_seconds_sum": round(sum(e["train_seconds"] for e in train["epochs"]), 2),
        "train_images_per_s": train["final"]["images_per_sec"],
        "command": train["command"],
        "final": train["final"],
    }
    with b.lock:
        b.results["methods"][name] = row
    b.save()
    common = ["--eps", "8/255", "--threads", p["threads"]]
    pgd = b.hvdat(
        f"{name}-pgd20",
        ["eval", run / "last.pt", "--attack", "pgd", "--steps", 20, "--restarts", p["restarts"],
         "--n-examples", p["n_eval"], *common, "--out", run / "eval" / "pgd20.json"],
        240,
    )  # fmt: skip
    if pgd is not None:
        row.update(clean_acc=pgd["clean_accuracy"], pgd20_acc=pgd["robust_accuracy"], pgd_eval_s=pgd["seconds"])
        row["pgd_command"] = pgd["command"]
        b.save()
    if b.results.get("autoattack_ok") is False:
        return
    aa = b.hvdat(
        f"{name}-aa",
        ["eval", run / "last.pt", "--attack", "autoattack", "--n-examples", p["n_aa"], *common,
         "--out", run / "eval" / "autoattack.json"],
        300,
    )  # fmt: skip
    if aa is not None:
        row.update(autoattack_acc=aa["robust_accuracy"], aa_clean_acc=aa["clean_accuracy"], aa_eval_s=aa["seconds"])
        row["aa_command"] = aa["command"]
        b.save()
    b.log(f"{name}: {json.dumps({k: row.get(k) for k in ('clean_acc', 'pgd20_acc', 'autoattack_acc')})}")


def compile_smoke(b: Bench) -> None:
    """--compile (torch.compile, Triton on CUDA) with bf16: trains and checkpoints."""
    n = b.p["compile_train"]
    if not n:
        return
    out = b.hvdat(
        "smoke-compile",
        ["train", *b.data(n, 256), "--arch", "small-cnn", "--attack", "fgsm-rs", "--epochs", 1, "--batch-size", 256,
         "--amp", "bf16", "--channels-last", "--compile", "--eval-samples", 0, "--threads", b.p["threads"],
         "--out", b.runs / "smoke-compile", "--overwrite"],
        180,
    )  # fmt: skip
    b.results["smoke_compile"] = (
        None
        if out is None
        else {k: out["final"].get(k) for k in ("train_loss", "images_per_sec", "train_seconds")}
        | {"command_wall_s": out["command_wall_s"]}
    )
    b.save()


def monitor(b: Bench, stop: threading.Event) -> None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return
    with open(b.logs / "nvidia-smi.log", "w") as f:
        while not stop.wait(10):
            for query in (
                ["--query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm,power.draw", "--format=csv,noheader"],
                ["--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            ):
                f.write(subprocess.run([smi, *query], capture_output=True, text=True).stdout)
            f.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="device")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=520, help="seconds for everything")
    ap.add_argument("--methods", default=",".join(NEW_FIRST), help="'' for none")
    ap.add_argument("--skip-smoke", action="store_true", help="the paths were checked in an earlier call")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args)
    stop = threading.Event()
    threading.Thread(target=monitor, args=(b, stop), daemon=True).start()
    code = 0
    try:
        if not environment(b):
            return 2
        if not args.skip_smoke and not smoke(b):
            b.error("smoke failed: stopping before the target and the methods")
            return 3
        run = target(b)
        with ThreadPoolExecutor(1 + b.p["pool"]) as pool:  # the target's evaluation beside the methods
            jobs = [pool.submit(target_evals, b, run)] if run else []
            with ThreadPoolExecutor(b.p["pool"]) as methods_pool:
                names = [m for m in args.methods.split(",") if m]
                done = [methods_pool.submit(method, b, name) for name in names]
                done.append(methods_pool.submit(compile_smoke, b))
                for f in done:
                    f.result()
            for f in jobs:
                f.result()
    except Exception as exc:  # a harness bug: record it, still pack what there is
        b.error(f"harness: {type(exc).__name__}: {exc}")
        code = 4
    finally:
        stop.set()
        b.results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        b.save()
        b.pack()
        b.log(f"finished, {len(b.results['errors'])} error(s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
