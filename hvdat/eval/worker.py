"""A Horovod evaluation worker: `python -m hvdat.eval.worker --config WORK/config.json`.

Rank 0 reads the model's files and broadcasts their bytes; every rank builds the model from them. The ranks pull
chunks from a shared queue (a locked counter file in the work folder; where some rank cannot see that folder, chunk
c goes to rank c % size instead), append each finished chunk to their state file, and at the end the per-example
results are gathered; rank 0 summarises them and emits the `result` event that `hvdat eval` turns into its report.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .. import events
from ..data import load_splits
from ..models import build_model
from ..runtime.seeds import seed_for
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .cascade import ChunkResult, evaluate_chunk
from .chunks import EXAMPLES_FILE, ChunkQueue, ChunkStore, Examples, chunk_bounds, chunks_of_rank, examples
from .config import EvalConfig
from .plan import Plan
from .stages import StageRunner
from .summary import summarise
from .targets import build_eval_model, read_files, spec_of

__all__ = ["evaluate", "examples", "load_model", "main"]


def load_model(state: Dict, device: torch.device) -> torch.nn.Module:
    """An hvdat checkpoint's model, in eval mode (tests and the reference comparisons use it)."""
    shape = tuple(state["shape"])
    model = build_model(state["arch"], state["num_classes"], shape, [0.0] * shape[0], [1.0] * shape[0])
    model.load_state_dict(state["model"])  # mean/std buffers come from the checkpoint
    model.to(device).eval()
    model.requires_grad_(False)  # attacks need input gradients only
    return model


def evaluate(cfg: EvalConfig) -> None:
    world = World.start(cfg.threads)
    rank, size, device = world.rank, world.size, world.device
    files = read_files(spec_of(cfg)) if rank == 0 else None
    files = world.broadcast_object(files, name="model.files")  # no shared filesystem needed for the model
    model, loaded = build_eval_model(cfg, files, device)
    del files
    data = _examples(world, cfg)
    plan = Plan.from_dict(cfg.plan)  # resolved by `hvdat eval` before launch
    bounds = chunk_bounds(cfg.n_examples, cfg.batch_size)
    store = ChunkStore(Path(cfg.work_dir), cfg.fingerprint, rank)
    done = store.load()
    # every rank reads before any writes (a fast rank's new chunk is not "resumed"); no shared filesystem needed
    done = {c: r for part in world.allgather_object(done, name="eval.resumed") for c, r in part.items()}
    store.open()
    todo = [c for c in range(len(bounds)) if c not in done]
    handout, mine = _work(world, Path(cfg.work_dir), todo)
    runners = [StageRunner(model, plan, eps, cfg.seed, device) for eps in cfg.eps]
    resumed = sum(1 for c in range(len(bounds)) if c in done)
    resumed_examples = sum(bounds[c][1] - bounds[c][0] for c in done if c < len(bounds))
    if rank == 0:
        events.emit(
            "start",
            n_examples=cfg.n_examples,
            chunks=len(bounds),
            world_size=size,
            stages=list(plan.stages),
            resumed_chunks=resumed,
            resumed_examples=resumed_examples,
        )
    start = time.perf_counter()
    results: List[ChunkResult] = [r for c, r in done.items() if c < len(bounds)] if rank == 0 else []
    for c in mine:
        chunk_start = time.perf_counter()
        lo, hi = bounds[c]
        x, y = data(lo, hi, device)
        clean_pred, per_eps, randomized = evaluate_chunk(model, x, y, plan, runners, seed_for(cfg.seed, c))
        result = ChunkResult(
            c, list(range(lo, hi)), y.tolist(), clean_pred, per_eps, randomized, time.perf_counter() - chunk_start
        )
        store.append(result)
        results.append(result)
        events.emit("chunk", rank=rank, chunk=c, examples=hi - lo, seconds=result.seconds)
    compute_seconds = time.perf_counter() - start
    gathered = world.allgather_object(results, name="eval.results")
    rank_seconds = world.allgather_object(compute_seconds, name="eval.seconds")
    if rank == 0:
        summary = summarise([r for part in gathered for r in part], plan, cfg.eps)
        summary.update(
            seconds=time.perf_counter() - start,
            rank_seconds=rank_seconds,
            world_size=size,
            plan=plan.to_dict(),
            num_classes=cfg.num_classes,
            arch=loaded.arch,
            handout=handout,
            threads=torch.get_num_threads(),
            resumed_chunks=resumed,
            resumed_examples=resumed_examples,
        )
        events.emit("result", **summary)


def _examples(world: World, cfg: EvalConfig) -> Callable[[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]]:
    """Chunk [lo, hi) of the test examples: from the file `hvdat eval` wrote, its bytes read by rank 0 and broadcast
    (no shared filesystem needed, no dataset loading on any rank), or from the dataset where rank 0 has no file."""
    path = Path(cfg.work_dir) / EXAMPLES_FILE
    blob = path.read_bytes() if world.rank == 0 and path.is_file() else None
    blob = world.broadcast_object(blob, name="eval.examples")
    if blob is not None:
        return Examples(blob).chunk
    test = load_splits(cfg.dataset, cfg.data_dir, train_samples=1).test
    return lambda lo, hi, device: examples(test, lo, hi, device)


def _work(world: World, work_dir: Path, todo: List[int]) -> Tuple[str, Iterable[int]]:
    """This rank's chunks: pulled from the shared queue when every rank sees the work folder (one host, or a shared
    filesystem), else chunk c of the list goes to rank c % size."""
    nonce = uuid.uuid4().hex[:12] if world.rank == 0 else None
    if world.rank == 0:
        ChunkQueue.create(work_dir, nonce)
    nonce = world.broadcast_object(nonce, name="eval.queue")
    queue = ChunkQueue(work_dir, nonce, todo)
    if world.size > 1 and all(world.allgather_object(queue.visible(), name="eval.queue_visible")):
        return "queue", queue
    return "static", [todo[i] for i in chunks_of_rank(len(todo), world.rank, world.size)]


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: evaluate(EvalConfig.load(path)), "python -m hvdat.eval.worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
