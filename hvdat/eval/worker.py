"""A Horovod evaluation worker: `python -m hvdat.eval.worker --config WORK/config.json`.

Rank 0 reads the model's files and broadcasts their bytes; every rank builds the model from them. The evaluation
runs phase by phase (hvdat.eval.batches): the ranks pull a phase's batches from a shared queue (a locked counter
file in the work folder; where some rank cannot see that folder, batch b of the phase goes to rank b % size),
append each finished batch to their state file, and gather the phase's results, from which every rank cuts the
next phase's batches. At the end rank 0 summarises the per-example results and emits the `result` event that
`hvdat eval` turns into its report.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from .. import events
from ..data import load_splits
from ..models import build_model
from ..runtime import allocator
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .batches import Batch
from .cascade import BatchResult, Cascade, fold, run_batch
from .config import EvalConfig
from .examples import EXAMPLES_FILE, Examples, examples
from .plan import Plan
from .queue import WorkQueue
from .stages import StageRunner
from .store import BatchStore
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
    store = BatchStore(Path(cfg.work_dir), cfg.fingerprint, rank)
    done = store.load()
    # every rank reads before any writes (a fast rank's new batch is not "resumed"); no shared filesystem needed
    done = {k: r for part in world.allgather_object(done, name="eval.resumed") for k, r in part.items()}
    store.open()
    runners = [StageRunner(model, plan, eps, cfg.seed, device) for eps in cfg.eps]
    cascade = Cascade(data.labels, plan, len(cfg.eps), cfg.batch_size, cfg.even_batches)
    if rank == 0:
        events.emit(
            "start",
            n_examples=cfg.n_examples,
            world_size=size,
            stages=list(plan.stages),
            batch_size=cfg.batch_size,
            work_total=cascade.total_work(),
        )
    start = time.perf_counter()
    busy, handout = 0.0, None
    counts: Dict[str, int] = {}
    work = {"done": 0.0, "resumed": 0.0}
    resumed_batches = 0
    for phase in range(cascade.phases):
        batches = cascade.batches(phase)
        name = "clean" if phase == 0 else plan.stages[phase - 1]
        counts[name] = len(batches)
        kept = {b.key: done[b.key] for b in batches if b.key in done and done[b.key].indices == list(b.indices)}
        todo = [b for b in batches if b.key not in kept]
        handout, mine = _work(world, Path(cfg.work_dir), todo, handout)
        for batch in batches if rank == 0 else []:
            if batch.key in kept:
                _report(cascade, batch, kept[batch.key], name, rank, resumed=True)
        own: Dict[str, BatchResult] = {}
        for batch in mine:
            x, y = data.take(batch.indices, device)
            result = run_batch(batch, model, x, y, plan, runners, cfg.seed)
            store.append(result)
            own[batch.key] = result
            busy += result.seconds
            _report(cascade, batch, result, name, rank, resumed=False)
        results = dict(kept)
        for part in world.allgather_object(own, name=f"eval.phase.{phase}"):
            results.update(part)
        by_key = {b.key: b for b in batches}
        for key, result in results.items():
            share = cascade.work(by_key[key], result)[0]
            work["done"] += share
            work["resumed"] += share if key in kept else 0.0
        resumed_batches += len(kept)
        fold(cascade, ((by_key[k], r) for k, r in results.items()))
    rank_seconds = world.allgather_object(busy, name="eval.seconds")
    if rank == 0:
        summary = summarise(cascade.result(), plan, cfg.eps)
        summary.update(
            seconds=time.perf_counter() - start,
            rank_seconds=rank_seconds,
            world_size=size,
            plan=plan.to_dict(),
            num_classes=cfg.num_classes,
            arch=loaded.arch,
            handout=handout,
            threads=torch.get_num_threads(),
            heap=allocator.state(),
            batches=counts,
            resumed_batches=resumed_batches,
            resumed_share=work["resumed"] / work["done"] if work["done"] else 0.0,
        )
        events.emit("result", **summary)


def _report(cascade: Cascade, batch: Batch, result: BatchResult, stage: str, rank: int, resumed: bool) -> None:
    """The launcher's progress event for a finished (or resumed) batch."""
    work, dropped = cascade.work(batch, result)
    events.emit(
        "attacked",
        rank=rank,
        stage=stage,
        examples=len(batch.indices),
        seconds=result.seconds,
        work=work,
        dropped=dropped,
        resumed=resumed,
    )


def _examples(world: World, cfg: EvalConfig) -> Examples:
    """The evaluated examples: from the file `hvdat eval` wrote, its bytes read by rank 0 and broadcast (no shared
    filesystem needed, no dataset loading on any rank), or from the dataset where rank 0 has no file."""
    path = Path(cfg.work_dir) / EXAMPLES_FILE
    blob = path.read_bytes() if world.rank == 0 and path.is_file() else None
    blob = world.broadcast_object(blob, name="eval.examples")
    if blob is not None:
        return Examples.from_bytes(blob)
    test = load_splits(cfg.dataset, cfg.data_dir, train_samples=1).test
    return Examples(*examples(test, 0, cfg.n_examples, torch.device("cpu")))


def _work(world: World, work_dir: Path, todo: List[Batch], handout: Optional[str]) -> Tuple[str, Iterable[Batch]]:
    """This rank's batches of a phase: pulled from the phase's shared queue when every rank sees the work folder
    (one host, or a shared filesystem; checked in the first phase), else batch b of the list goes to rank
    b % size."""
    if handout == "static":
        return handout, todo[world.rank :: world.size]
    nonce = uuid.uuid4().hex[:12] if world.rank == 0 else None
    if world.rank == 0:
        WorkQueue.create(work_dir, nonce)
    nonce = world.broadcast_object(nonce, name="eval.queue")
    queue = WorkQueue(work_dir, nonce, todo)
    if handout is None:
        visible = world.size > 1 and all(world.allgather_object(queue.visible(), name="eval.queue_visible"))
        handout = "queue" if visible else "static"
    if handout == "queue":
        return handout, queue
    return handout, todo[world.rank :: world.size]


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: evaluate(EvalConfig.load(path)), "python -m hvdat.eval.worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
