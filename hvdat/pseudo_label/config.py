"""The frozen pseudo-labelling job: the contract from `hvdat pseudo-label` to its workers, written beside the
output as OUT.job.json. Its command-line options are declared here once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..frozen_config import FrozenConfig
from ..options import THREADS, option


@dataclass(frozen=True)
class PseudoLabelConfig(FrozenConfig):
    MISSING_HINT = "point at the OUT.job.json written by `hvdat pseudo-label`"

    model: str = option(help="Run directory (or checkpoint file) of a standard model.", cli_type=Path)
    data_dir: str = option(help="Folder of unlabeled images (any depth; folder names ignored).", cli_type=Path)
    out: str = option(help="The .npz to write (for `hvdat train --extra-data`).", flags=("--out",), cli_type=Path)
    which: str = option("last.pt", "last.pt or best.pt of the run.", flags=("--checkpoint",))
    batch_size: int = option(256, "Images per forward pass.")
    limit: int = option(0, "Label only the first N images in sorted order (0: all).")
    threads: int = option(0, THREADS, panel="")
    checkpoint: str = ""  # resolved from --model and --checkpoint
