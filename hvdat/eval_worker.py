"""A Horovod evaluation worker: `python -m hvdat.eval_worker --config WORK/config.json`.

Rank 0 reads the checkpoint and broadcasts it. Every rank evaluates its own chunks (chunk c goes to rank
c % size), appends each finished chunk to its state file, and at the end the per-example results are gathered;
rank 0 summarises them and emits the `result` event that `hvdat eval` turns into its report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import __version__, checkpoint, events
from .data import UInt8Images, load_splits
from .eval_attacks import StageRunner, make_plan
from .eval_config import EvalConfig
from .evaluate import ChunkResult, EpsResult, chunk_bounds, chunks_of_rank, evaluate_chunk, summarise
from .models import build_model
from .worker import seed_for
from .worker_main import worker_main

log = logging.getLogger("hvdat.eval_worker")
STATE_DIR = "state"


class ChunkStore:
    """Finished chunks as JSON lines, one file per rank (`state/rank-R.jsonl`), headed by the fingerprint of
    the settings. Every rank reads every file it can see and the ranks pool what they found, so a resumed run
    may use another --np and needs no shared filesystem."""

    def __init__(self, work_dir: Path, fingerprint: str, rank: int):
        self.dir = Path(work_dir) / STATE_DIR
        self.fingerprint = fingerprint
        self.path = self.dir / f"rank-{rank}.jsonl"

    def load(self) -> Dict[int, ChunkResult]:
        done: Dict[int, ChunkResult] = {}
        for path in sorted(self.dir.glob("rank-*.jsonl")) if self.dir.is_dir() else []:
            lines = path.read_text().splitlines()
            if not lines or json.loads(lines[0]).get("fingerprint") != self.fingerprint:
                continue
            for line in lines[1:]:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                record["per_eps"] = [EpsResult(**r) for r in record["per_eps"]]
                done[record["chunk"]] = ChunkResult(**record)
        return done

    def open(self) -> None:
        """Keep our file if it belongs to these settings; otherwise start it afresh."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            text = self.path.read_text()
            try:
                if json.loads(text.split("\n", 1)[0]).get("fingerprint") == self.fingerprint:
                    if not text.endswith("\n"):  # drop a last line cut short by a kill, or the next append joins it
                        self.path.write_text(text[:text.rfind("\n") + 1])
                    return
            except json.JSONDecodeError:
                pass
        self.path.write_text(json.dumps({"fingerprint": self.fingerprint, "hvdat_version": __version__}) + "\n")

    def append(self, result: ChunkResult) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def examples(test, start: int, stop: int, device: torch.device):
    if isinstance(test, UInt8Images):
        return test.images[start:stop].to(device).float().div_(255), test.labels[start:stop].to(device)
    items = [test[i] for i in range(start, stop)]
    return torch.stack([x for x, _ in items]).to(device), torch.tensor([int(y) for _, y in items], device=device)


def load_model(state: Dict, device: torch.device) -> torch.nn.Module:
    shape = tuple(state["shape"])
    model = build_model(state["arch"], state["num_classes"], shape, [0.0] * shape[0], [1.0] * shape[0])
    model.load_state_dict(state["model"])  # mean/std buffers come from the checkpoint
    model.to(device).eval()
    model.requires_grad_(False)  # attacks need input gradients only
    return model


def evaluate(cfg: EvalConfig) -> None:
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))
    device = torch.device(f"cuda:{hvd.local_rank()}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    state = checkpoint.load(Path(cfg.checkpoint)) if rank == 0 else None
    if size > 1:  # no shared filesystem needed for the checkpoint
        state = hvd.broadcast_object(state, root_rank=0, name="checkpoint")
    model = load_model(state, device)
    test = load_splits(cfg.dataset, cfg.data_dir, train_samples=1).test
    plan = make_plan(cfg.attack, cfg.version, cfg.norm, state["num_classes"], cfg.steps, cfg.restarts)
    bounds = chunk_bounds(cfg.n_examples, cfg.batch_size)
    mine = chunks_of_rank(len(bounds), rank, size)
    store = ChunkStore(Path(cfg.work_dir), cfg.fingerprint, rank)
    done = store.load()
    if size > 1:  # every rank reads before any writes (a fast rank's new chunk is not "resumed"); no shared FS needed
        done = {c: r for part in hvd.allgather_object(done, name="eval.resumed") for c, r in part.items()}
    store.open()
    runners = [StageRunner(model, plan, eps, cfg.seed, device) for eps in cfg.eps]
    resumed = sum(1 for c in range(len(bounds)) if c in done)
    resumed_examples = sum(bounds[c][1] - bounds[c][0] for c in done if c < len(bounds))
    if rank == 0:
        events.emit("start", n_examples=cfg.n_examples, chunks=len(bounds), world_size=size, stages=list(plan.stages),
                    resumed_chunks=resumed, resumed_examples=resumed_examples)
    start = time.perf_counter()
    results: List[ChunkResult] = []
    for c in mine:
        if c in done:
            results.append(done[c])
            continue
        chunk_start = time.perf_counter()
        lo, hi = bounds[c]
        x, y = examples(test, lo, hi, device)
        clean_pred, per_eps, randomized = evaluate_chunk(model, x, y, plan, runners, seed_for(cfg.seed, c))
        result = ChunkResult(c, list(range(lo, hi)), y.tolist(), clean_pred, per_eps, randomized,
                             time.perf_counter() - chunk_start)
        store.append(result)
        results.append(result)
        events.emit("chunk", rank=rank, chunk=c, examples=hi - lo, seconds=result.seconds)
    compute_seconds = time.perf_counter() - start
    gathered = hvd.allgather_object(results, name="eval.results") if size > 1 else [results]
    rank_seconds = hvd.allgather_object(compute_seconds, name="eval.seconds") if size > 1 else [compute_seconds]
    if rank == 0:
        summary = summarise([r for part in gathered for r in part], plan, cfg.eps)
        summary.update(seconds=time.perf_counter() - start, rank_seconds=rank_seconds, world_size=size,
                       plan=plan.to_dict(), num_classes=state["num_classes"], arch=state["arch"],
                       threads=torch.get_num_threads(), resumed_chunks=resumed, resumed_examples=resumed_examples)
        events.emit("result", **summary)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: evaluate(EvalConfig.load(path)), "python -m hvdat.eval_worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
