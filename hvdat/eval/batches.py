"""How an evaluation's examples are cut into batches, the unit of work and of reproducibility.

An evaluation runs in phases, as the reference `AutoAttack.run_standard_evaluation` does: phase 0 predicts every
example clean, phase k runs the plan's stage k on the examples still robust after the stage before it (for each eps
of the sweep). Each phase's examples, in index order, are cut into consecutive batches. With `--batch-size B` they
are blocks of B, the reference's `bs=B`; by default each phase's examples are split into an even number of equal
batches of at most the size the model calls for, so two ranks share every phase evenly. The cut depends on the
examples, the model's size and the kind of device only, never on --np.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

# A batch should hold enough work per forward pass that the per-call overhead (Python, the attack's bookkeeping,
# a small batch's poor kernel use: about 1 ms per attack iteration, and AutoAttack runs ~7000 iterations on its
# survivors) is small next to the maths: about this many forward FLOPs per batch. A GPU does a CPU's batch in well
# under that millisecond (PreActResNet-18's CPU batch was 16 examples: an H200 idled through 14 of them in a
# 1,000-example AutoAttack), so its batches hold 250x the work, capped where a big batch's activations still fit a
# 16 GB card for the small CIFAR models.
BATCH_FLOPS = {"cpu": 4e9, "cuda": 1e12}
MIN_BATCH, MAX_BATCH = 16, {"cpu": 500, "cuda": 1000}


def default_batch_size(flops_per_example: int, device: str = "cpu") -> int:
    """The largest batch for the model's forward FLOPs per example and the kind of device the workers compute on
    (`cpu` or `cuda`: the launching host's, as a scheduler's allocation has it): about BATCH_FLOPS of forward work,
    16 to 500 examples on CPUs, to 1,000 on GPUs."""
    kind = "cuda" if device == "cuda" else "cpu"
    return min(MAX_BATCH[kind], max(MIN_BATCH, int(BATCH_FLOPS[kind] // max(flops_per_example, 1))))


def split(indices: Sequence[int], batch_size: int, even: bool) -> List[Tuple[int, ...]]:
    """Consecutive batches of `indices`: blocks of `batch_size` (the reference's cut), or with `even` the fewest
    equal batches of at most `batch_size`, their count made even (from 2 x MIN_BATCH examples on) so that two
    ranks share them evenly."""
    n = len(indices)
    if n == 0:
        return []
    size = batch_size
    if even:
        count = -(-n // batch_size)
        count += count % 2 if n >= 2 * MIN_BATCH else 0
        size = -(-n // count)
    return [tuple(indices[start : start + size]) for start in range(0, n, size)]


@dataclass(frozen=True)
class Batch:
    """One unit of work: phase 0 (clean predictions) or the plan's stage `phase - 1` at the sweep's eps number
    `eps` (-1 in phase 0), on the examples `indices`; `number` is its place in the phase's cut for that eps."""

    phase: int
    eps: int
    number: int
    indices: Tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.phase}:{self.eps}:{self.number}"
