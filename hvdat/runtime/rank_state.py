"""Elastic state for a per-rank object, such as ef-sign's error-feedback residuals.

`hvd.elastic.TorchState` broadcasts what it holds from rank 0 when the ring (re-)forms, which is right for the
model and optimizer but wrong for residuals: each worker's is its own untransmitted part of the update. This
handler keeps them on their rank instead. `save` (at each commit) snapshots them, `restore` (after a worker
failure) rolls them back with the model to the last commit, and `sync` (after the ring re-forms) pools every
rank's snapshot and lets the object choose with `load_rank_states`: if every worker has one (a worker left),
each keeps its own; otherwise (a worker joined) all take the mean of those there are, which keeps the
untransmitted part of the averaged update.
"""

from __future__ import annotations

from horovod.torch.elastic.state import StateHandler, get_handler_registry, set_handler_registry


class RankStateHandler(StateHandler):
    """For objects with `state_dict()` (returning copies), `load_state_dict()` and `load_rank_states()`."""

    def __init__(self, value):
        super().__init__(value)
        self.save()

    def save(self) -> None:
        self._saved = self.value.state_dict()

    def restore(self) -> None:
        self.value.load_state_dict(self._saved)

    def sync(self) -> None:
        import horovod.torch as hvd

        # a worker that just joined has nothing yet; the ranks that have a state decide
        states = [s for s in hvd.allgather_object(self._saved, name="elastic.rank_state") if s]
        self.value.load_rank_states(states, hvd.rank(), hvd.size())
        self.save()


def has_rank_state(value) -> bool:
    return all(hasattr(value, m) for m in ("state_dict", "load_state_dict", "load_rank_states"))


def register(value) -> None:
    """Make `TorchState(..., name=value)` hold value through RankStateHandler."""
    registry = get_handler_registry()
    if not any(kind is type(value) for kind, _ in registry):
        set_handler_registry([(type(value), RankStateHandler)] + list(registry))
