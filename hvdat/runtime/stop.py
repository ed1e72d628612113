"""Graceful stop on SIGTERM/SIGINT: the signal only sets a flag; the ranks agree after each step to stop together.

Horovod gives a worker 5 s between SIGTERM and SIGKILL (horovodrun's safe_shell_exec), so the step in flight
finishes, rank 0 writes a checkpoint with the batch position, and every rank exits 0. A second signal kills at once,
except SIGTERM again: a scheduler signals every process of a job (Slurm's scancel, preemption), and hvdat and
horovodrun pass the same stop on, so one stop arrives several times.
"""

from __future__ import annotations

import logging
import os
import signal

import torch

log = logging.getLogger("hvdat.stop")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    def __init__(self) -> None:
        self.signum = 0

    @classmethod
    def install(cls) -> StopSignal:
        stop = cls()
        for sig in SIGNALS:
            signal.signal(sig, stop._handle)
        return stop

    def _handle(self, signum, frame) -> None:
        if signum == self.signum == signal.SIGTERM:
            return
        if self.signum:  # second signal: no more grace
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("received %s: stopping after this step", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def agreed(self, world) -> bool:
        """True on every rank once any rank was signalled (one tiny allreduce per step, so all stop together)."""
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        if world.size > 1:
            flag = world.hvd.allreduce(flag, op=world.hvd.Max, name="hvdat.stop")
        return bool(flag.item())
