"""`python -m hvdat.pseudo_label.worker --config OUT.job.json`: label unlabeled images with a trained model.

Sharded like evaluation: rank r decodes and labels files r, r+size, ...; the shards are allgathered and rank 0
writes the `.npz` that `hvdat train --extra-data` reads (images uint8 NCHW in file order, labels, confidence,
files). Images must have the training images' size (no resizing: a silent resize would change the data).
"""

from __future__ import annotations

import os
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
    images = decode([files[i] for i in mine], shape)
    if len(images) and tuple(images.shape[1:]) != shape:
        raise UsageError(f"images under {job.data_dir} are {tuple(images.shape[1:])}, the model takes {shape}")
    labels, confidence = [], []
    with torch.no_grad():
        for begin in range(0, len(images), job.batch_size):
            x = torch.from_numpy(images[begin : begin + job.batch_size]).to(device).float().div_(255)
            p = torch.softmax(model(x).float(), dim=1)
            conf, pred = p.max(1)
            labels.append(pred.cpu())
            confidence.append(conf.cpu())
    labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    conf_t = torch.cat(confidence) if confidence else torch.zeros(0)
    index_t = torch.tensor(mine, dtype=torch.long)
    images_t = torch.from_numpy(images)
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
    )


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(
        lambda path: label(PseudoLabelConfig.load(path)), "python -m hvdat.pseudo_label.worker", __doc__, argv
    )


if __name__ == "__main__":
    sys.exit(main())
