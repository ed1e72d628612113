"""The fault matrix on the namespace cluster, elastic: a host's link goes down mid-epoch (`ip link set eth0 down` in
its namespace) and the job re-forms on the hosts left. The setup is tests/test_multihost_elastic.py's (the discovery
file, the 3-host elastic job, its expected step arithmetic); the README's "What survives what" names this test.
"""

from __future__ import annotations

import time
from pathlib import Path

from test_multihost_elastic import (
    COMMIT_EVERY,
    assert_reformed_on_two_hosts,
    discovery,  # noqa: F401 (a fixture)
    elastic_args,
    finish,
    start_on_first_host,
    wait_for_event,
    write_hosts,
)


def keepalive(cluster) -> Path:
    """ssh's keepalive for the cluster's hosts, as a user sets it in ~/.ssh/config (ssh reads root's, not $HOME's):
    Horovod's elastic driver re-forms the ring only once every worker of the old one has ended, and a worker on a host
    cut off ends when its ssh session does; without a keepalive that takes TCP's retransmission timeout (minutes)."""
    path = Path(f"/etc/ssh/ssh_config.d/hvdat-test-keepalive-{cluster.hosts[0]}.conf")
    path.write_text(f"Host {' '.join(cluster.hosts)}\n    ServerAliveInterval 3\n    ServerAliveCountMax 2\n")
    return path


def test_elastic_job_whose_host_loses_its_link_finishes_on_the_others(cluster, discovery, tmp_path):  # noqa: F811
    """hv3's link goes down in epoch 0, and the cluster's discovery stops listing it (as a health check would);
    ssh's keepalive ends the session to it (see `keepalive`). The two other workers time out waiting for it
    (HOROVOD_GLOO_TIMEOUT_SECONDS), roll back to the last commit and finish on two hosts: nothing committed before
    the fault is lost or trained twice. What the re-formed world changes: 2 ranks instead of 3, so a global batch of
    2 x 16 and the epoch's uncommitted samples split two ways (more steps); the metrics then differ from a 3-host
    run's, so the test checks the step arithmetic, not equality."""
    script, hosts = discovery
    third = cluster.hosts[2]
    write_hosts(hosts, cluster.hosts)
    out = tmp_path / "run"
    log = out / "logs" / "train.log"
    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "15"}
    config = keepalive(cluster)
    args = [*elastic_args(cluster, script, out, 3), "--epochs", "1", "--json"]  # one epoch: the fault is in it
    proc = start_on_first_host(cluster, args, tmp_path / "home", env)
    try:
        seen = wait_for_event(
            log, proc, lambda e: e["event"] == "batch" and e["epoch"] == 0 and e["batch"] >= 2 * COMMIT_EVERY
        )
        cluster.link_down(third)
        cut = time.monotonic()
        write_hosts(hosts, cluster.hosts[:2])
        returncode, stdout, stderr = finish(proc)
        took = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.link_up(third)
        config.unlink()
    assert returncode == 0, (stdout, stderr[-3000:])

    assert_reformed_on_two_hosts(log, out, stdout, seen, epochs=1)
    print(f"finished {took:.0f} s after the link went down")
