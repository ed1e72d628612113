"""Evaluation work in fixed chunks (the unit of work and of reproducibility): their default size, the queue that hands
them out to the ranks, and the store of finished chunks that makes an evaluation resumable.

Chunk boundaries depend on the example count and the model's size only, never on --np or on which rank runs a
chunk: each chunk runs the whole cascade seeded by --seed alone, so its per-example results are the same whoever
computes it, in whatever order. (AutoAttack's own per-example results do depend on the batch an example sits in:
APGD's random start and Square's draws are taken per batch position. So a chunk equals the reference
`run_standard_evaluation` on the same examples with `bs` = the chunk's size, and another chunking may differ on
borderline points.)"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import __version__
from .cascade import ChunkResult, EpsResult

STATE_DIR = "state"


def chunk_bounds(n_examples: int, batch_size: int) -> List[Tuple[int, int]]:
    return [(start, min(start + batch_size, n_examples)) for start in range(0, n_examples, batch_size)]


def chunks_of_rank(n_chunks: int, rank: int, size: int) -> List[int]:
    return list(range(rank, n_chunks, size))


# A chunk should hold enough work per forward pass that the per-call overhead (Python, the attack's bookkeeping,
# a small batch's poor kernel use: about 1 ms per attack iteration, and AutoAttack runs ~7000 iterations per chunk
# on its survivors) is small next to the maths: about this many forward FLOPs per batch. A GPU does a CPU's chunk
# in well under that millisecond (PreActResNet-18's CPU chunk was 16 examples: an H200 idled through 14 chunks of a
# 1,000-example AutoAttack), so its chunks hold 250x the work, capped where a big chunk's activations still fit a
# 16 GB card for the small CIFAR models.
CHUNK_FLOPS = {"cpu": 4e9, "cuda": 1e12}
MIN_CHUNK, MAX_CHUNK = 16, {"cpu": 500, "cuda": 1000}


def default_chunk_size(n_examples: int, flops_per_example: int, device: str = "cpu") -> int:
    """Examples per chunk from the example count, the model's forward FLOPs per example and the kind of device the
    workers compute on (`cpu` or `cuda`: the launching host's, as a scheduler's allocation has it), never from --np:
    chunks of about CHUNK_FLOPS of forward work (16 to 500 examples on CPUs, to 1,000 on GPUs; a tiny model gets few
    large chunks, a large model many small ones that the queue balances), an even number of them (two ranks share
    them evenly), of equal size."""
    kind = "cuda" if device == "cuda" else "cpu"
    target = min(MAX_CHUNK[kind], max(MIN_CHUNK, int(CHUNK_FLOPS[kind] // max(flops_per_example, 1))))
    count = -(-n_examples // target)
    count += count % 2 if n_examples >= 2 * MIN_CHUNK else 0
    return max(1, -(-n_examples // count))


def examples(test, start: int, stop: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Test examples [start, stop) as a [0,1] float batch and their labels."""
    from ..data import UInt8Images

    if isinstance(test, UInt8Images):
        return test.images[start:stop].to(device).float().div_(255), test.labels[start:stop].to(device)
    items = [test[i] for i in range(start, stop)]
    return torch.stack([x for x, _ in items]).to(device), torch.tensor([int(y) for _, y in items], device=device)


EXAMPLES_FILE = "examples.pt"


def save_examples(test, n_examples: int, path: Path) -> None:
    """The first n test examples, as `examples` gives them, in one file of the work folder (written by `hvdat
    eval`): the workers read it instead of loading the dataset (scikit-learn's import, a folder's listing and
    JPEG decoding: seconds of every rank's start-up). Stored as uint8 where that is exact ([0,1] images of k/255)."""
    x, y = examples(test, 0, n_examples, torch.device("cpu"))
    pixels = x.mul(255).round_().to(torch.uint8)
    exact = torch.equal(pixels.float().div_(255), x)
    torch.save({"x": pixels if exact else x, "y": y}, path)


class Examples:
    """The evaluated examples in memory (from `save_examples`' bytes): chunk [lo, hi) as `examples` gives it."""

    def __init__(self, blob: bytes):
        import io

        data = torch.load(io.BytesIO(blob), weights_only=True)
        self.x, self.y = data["x"], data["y"]

    def chunk(self, lo: int, hi: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.x[lo:hi].to(device)
        return (x.float().div_(255) if x.dtype == torch.uint8 else x), self.y[lo:hi].to(device)


QUEUE_DIR = "queue"


class ChunkQueue:
    """Chunks handed out one at a time, first come first served: a counter in a file that every rank increments
    under an exclusive lock (fcntl.flock), so a slow rank or host takes fewer chunks instead of holding the rest.
    The file's name is fresh for each run (a nonce from rank 0), so a killed run's counter is never reused; the
    chunks to do are the same list on every rank (resumed chunks are left out before it is built)."""

    def __init__(self, work_dir: Path, nonce: str, todo: Sequence[int]):
        self.path = Path(work_dir) / QUEUE_DIR / f"{nonce}.counter"
        self.todo = list(todo)

    @staticmethod
    def create(work_dir: Path, nonce: str) -> None:
        """Rank 0, before the others look: clear old counters and start this run's at 0."""
        folder = Path(work_dir) / QUEUE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.counter"):
            old.unlink(missing_ok=True)
        (folder / f"{nonce}.counter").write_text("0")

    def visible(self) -> bool:
        return self.path.is_file()

    def __iter__(self) -> Iterator[int]:
        while True:
            chunk = self.take()
            if chunk is None:
                return
            yield chunk

    def take(self) -> Optional[int]:
        import fcntl

        with open(self.path, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            taken = int(handle.read().strip() or 0)
            if taken >= len(self.todo):
                return None
            handle.seek(0)
            handle.write(str(taken + 1))
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        return self.todo[taken]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
                        self.path.write_text(text[: text.rfind("\n") + 1])
                    return
            except json.JSONDecodeError:
                pass
        self.path.write_text(json.dumps({"fingerprint": self.fingerprint, "hvdat_version": __version__}) + "\n")

    def append(self, result: ChunkResult) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
