"""A throw-away network namespace whose loopback is shaped by `tc tbf`: a slow cluster link on one machine.

    ip netns add NS; ip netns exec NS ip link set lo mtu 9000 up
    ip netns exec NS tc qdisc add dev lo root tbf rate RATE burst 512kb latency 50ms

The namespace is deleted on every exit path (the context manager's finally). Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from typing import Iterator, List

from ..errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(k|m|g)?(bit|bps)\s*$", re.IGNORECASE)
MTU, BURST, LATENCY = 9000, "512kb", "50ms"  # the burst must exceed the MTU


def parse_rate(text: str) -> str:
    """`1gbit`, `100mbit`, `500kbit` -> tc's spelling (validated, lower case)."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"invalid --bandwidth {text!r}", "write a tc rate such as 1gbit, 100mbit or 500kbit")
    return f"{match.group(1)}{(match.group(2) or '').lower()}{match.group(3).lower()}"


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise UsageError("--bandwidth shapes a network namespace and needs root", "run as root, or drop --bandwidth")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UsageError(f"--bandwidth needs `{tool}`", "install iproute2 (apt-get install iproute2)")


def _run(argv: List[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(
            f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}",
            "is this a container without CAP_NET_ADMIN?",
        )


def tbf_argv(device: str, rate: str, verb: str = "replace") -> List[str]:
    """`tc` shaping `device`'s sends to `rate` (a token bucket; the burst must exceed the MTU)."""
    return ["tc", "qdisc", verb, "dev", device, "root", "tbf", "rate", rate, "burst", BURST, "latency", LATENCY]


@contextlib.contextmanager
def shaped_namespace(rate: str) -> Iterator[List[str]]:
    """Yield the argv prefix (`ip netns exec NS`) that runs a command behind the shaped loopback."""
    _check_tools()
    name = f"hvdat-bench-{os.getpid()}"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "mtu", str(MTU), "up"])
        _run(["ip", "netns", "exec", name, *tbf_argv("lo", rate, "add")])
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
