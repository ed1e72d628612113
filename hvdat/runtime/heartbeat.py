"""Each worker's heartbeat: a daemon thread that prints a `beat` event every `events.HEARTBEAT_SECONDS`, read by the
launcher's watchdog (`--hang-timeout`, hvdat.launch.job).

It beats whatever the main thread does (computing, evaluating, writing a checkpoint, compiling, or waiting in a
collective: torch and Horovod release the GIL), and stops only when the whole process does: a stopped (SIGSTOP)
process, one frozen in the kernel, a host that is gone or cut off. The last beat says `end` so a rank that finished
before the others is not taken for a hung one.
"""

from __future__ import annotations

import contextlib
import threading

from .. import events


class Heartbeat:
    def __init__(self, interval: float = events.HEARTBEAT_SECONDS) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hvdat-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)
        self._beat(end=True)

    def _run(self) -> None:
        self._beat()
        while not self._stop.wait(self._interval):
            self._beat()

    @staticmethod
    def _beat(**fields) -> None:
        with contextlib.suppress(OSError, ValueError):  # stdout closed or its reader gone: nothing to tell
            events.emit("beat", **fields)
