"""`python -m hvdat.pseudo_label.worker --config OUT.job.json`: label unlabeled images with a trained model.

Sharded like evaluation: rank r decodes and labels files r, r+size, ...; the shards are allgathered and rank 0
writes the `.npz` that `hvdat train --extra-data` reads (images uint8 NCHW in file order, labels, confidence,
files). Images must have the training images' size (no resizing: a silent resize would change the data).

Each rank keeps every batch it finishes in OUT.parts/FINGERPRINT/ (written atomically), so a job that was killed
continues where it stopped when the same command runs again; the fingerprint (checkpoint, images, batch, world
size) keeps other settings' batches out. Rank 0 removes the parts once the `.npz` is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .. import events
from ..data.extra import save
from ..data.unlabeled import decode, image_files
from ..errors import UsageError
from ..models import build_model
from ..runtime import checkpoint
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .config import PseudoLabelConfig


def label(job: PseudoLabelConfig) -> None:
    world = World.start(job.threads)
    hvd, rank, size, device = world.hvd, world.rank, world.size, world.device
    state = checkpoint.load(Path(job.checkpoint))
    shape = tuple(state["shape"])
    model = build_model(state["arch"], state["num_classes"], shape, (0.0,) * shape[0], (1.0,) * shape[0])
    model.load_state_dict(state["model"])  # mean/std buffers come from the checkpoint
    model.to(device).eval()
    files = image_files(job.data_dir)
    if job.limit:
        files = files[: job.limit]
    if not files:
        raise UsageError(f"no images under {job.data_dir}")
    start = time.perf_counter()
    mine = list(range(rank, len(files), size))
    parts = parts_dir(job, files, size)
    parts.mkdir(parents=True, exist_ok=True)
    batches, resumed = [], 0
    with torch.no_grad():
        for number, begin in enumerate(range(0, len(mine), job.batch_size)):
            part = parts / f"rank-{rank}-batch-{number:06d}.npz"
            if part.is_file():
                with np.load(part) as kept:
                    batches.append({key: kept[key] for key in ("images", "labels", "confidence")})
                resumed += len(batches[-1]["labels"])
                continue
            images = decode([files[i] for i in mine[begin : begin + job.batch_size]], shape)
            if tuple(images.shape[1:]) != shape:
                raise UsageError(f"images under {job.data_dir} are {tuple(images.shape[1:])}, the model takes {shape}")
            x = torch.from_numpy(images).to(device).float().div_(255)
            conf, pred = torch.softmax(model(x).float(), dim=1).max(1)
            batches.append({"images": images, "labels": pred.cpu().numpy(), "confidence": conf.cpu().numpy()})
            save_part(part, batches[-1])
    labels_t = torch.from_numpy(np.concatenate([b["labels"] for b in batches]) if batches else np.zeros(0, np.int64))
    conf_t = torch.from_numpy(
        np.concatenate([b["confidence"] for b in batches]) if batches else np.zeros(0, np.float32)
    )
    index_t = torch.tensor(mine, dtype=torch.long)
    images_t = torch.from_numpy(
        np.concatenate([b["images"] for b in batches]) if batches else np.zeros((0, *shape), dtype=np.uint8)
    )
    if size > 1:
        resumed = int(world.allreduce_sum([resumed])[0])
    if size > 1:
        index_t = hvd.allgather(index_t, name="pl.index")
        labels_t = hvd.allgather(labels_t, name="pl.labels")
        conf_t = hvd.allgather(conf_t, name="pl.conf")
        images_t = hvd.allgather(images_t, name="pl.images")
    if rank != 0:
        return
    order = torch.argsort(index_t)
    labels_np, conf_np = labels_t[order].numpy(), conf_t[order].numpy()
    save(
        Path(job.out),
        images_t[order].numpy(),
        labels_np,
        conf_np,
        [os.path.relpath(files[i], job.data_dir) for i in index_t[order].tolist()],
    )
    shutil.rmtree(parts.parent, ignore_errors=True)  # done: a rerun starts afresh
    counts = np.bincount(labels_np, minlength=state["num_classes"]).tolist()
    events.emit(
        "done",
        out=job.out,
        images=len(labels_np),
        class_counts=counts,
        mean_confidence=float(conf_np.mean()),
        seconds=time.perf_counter() - start,
        world_size=size,
        checkpoint=job.checkpoint,
        resumed_images=resumed,
    )


def parts_dir(job: PseudoLabelConfig, files: List[str], size: int) -> Path:
    """OUT.parts/FINGERPRINT: the batches finished under these settings (another setting's are not reused)."""
    ckpt = Path(job.checkpoint).stat()
    key = [job.checkpoint, ckpt.st_size, ckpt.st_mtime_ns, job.data_dir, len(files), files[-1], job.batch_size, size]
    return Path(job.out + ".parts") / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def save_part(path: Path, arrays: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(
        lambda path: label(PseudoLabelConfig.load(path)), "python -m hvdat.pseudo_label.worker", __doc__, argv
    )


if __name__ == "__main__":
    sys.exit(main())
