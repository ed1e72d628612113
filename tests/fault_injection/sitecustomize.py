"""Test-only fault injection, loaded by Python at start-up when this folder is on PYTHONPATH (tests/test_faults.py).

HVDAT_TEST_SIGKILL_IN_ALLGATHER=RANK:STEP makes the worker of that rank SIGKILL itself right after it has handed
step STEP's first packed gradient to Horovod's allgather (`--compression sign|ef-sign|natural|qsgd...`): the other
ranks are then inside that allgather, waiting for a rank that is gone. Nothing in hvdat knows of it; every other
process (hvdat, horovodrun, the other ranks) leaves Horovod alone.

HVDAT_TEST_HOLD_AT_STEP=N:PATH makes every worker, after its N-th training minibatch (counted across epochs, from the
start of the process), create PATH.RANK and wait there until it has been sent SIGTERM/SIGINT (at most 120 s) before
the ranks agree whether to stop. A test that signals once PATH.0 exists stops the job after exactly that minibatch,
however fast or slow the machine is (`hold_after` in tests/test_signals.py; used there, in test_methods.py and
test_slurm.py).
"""

import os
import signal
import time

_FAULT = os.environ.get("HVDAT_TEST_SIGKILL_IN_ALLGATHER", "")
_RANK = os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", ""))

if _FAULT and _FAULT.split(":")[0] == _RANK:
    from horovod.torch import mpi_ops

    _original = mpi_ops.allgather_async
    _step_at = int(_FAULT.split(":")[1])
    _seen = {"first": None, "steps": 0}

    def allgather_async(tensor, *args, **kwargs):
        name = kwargs.get("name") or ""
        handle = _original(tensor, *args, **kwargs)
        if name.startswith("hvdat.packed."):
            if _seen["first"] is None:
                _seen["first"] = name
            if name == _seen["first"]:
                _seen["steps"] += 1
                if _seen["steps"] == _step_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        return handle

    mpi_ops.allgather_async = allgather_async


_HOLD = os.environ.get("HVDAT_TEST_HOLD_AT_STEP", "")

if _HOLD and _RANK:
    from hvdat.runtime.stop import StopSignal

    _agreed = StopSignal.agreed
    _hold_at, _, _hold_file = _HOLD.partition(":")
    _hold_at = int(_hold_at)
    _calls = {"n": 0}

    def agreed(self, world):
        _calls["n"] += 1
        if _calls["n"] == _hold_at:
            with open(f"{_hold_file}.{_RANK}", "w"):
                pass
            deadline = time.monotonic() + 120
            while not self.requested and time.monotonic() < deadline:
                time.sleep(0.05)
        return _agreed(self, world)

    StopSignal.agreed = agreed
