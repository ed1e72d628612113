"""The launcher builds argv lists (never shell strings); these are the exact commands users will see."""

import sys

import pytest

from hvdat.errors import UsageError
from hvdat.launch import LaunchSpec, build_argv
from hvdat.launch.spec import parse_hostfile, parse_hosts

WORKER = [sys.executable, "-m", "hvdat.train.worker", "--config", "run/config.json"]


def argv(**kw):
    return build_argv(LaunchSpec(**kw), "hvdat.train.worker", "run/config.json", horovodrun="horovodrun")


def test_single_local_worker_runs_directly():
    assert argv(np=1) == WORKER


def test_local_gloo_job():
    assert argv(np=2) == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo"] + WORKER


def test_cluster_mpi_job_with_network_options(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("key")
    assert (
        argv(
            np=8,
            hosts="host1:4,host2:4",
            launcher="mpi",
            ssh_port=12345,
            ssh_identity_file=str(key),
            network_interfaces="eth0,ib0",
            mpi_args="-x NCCL_DEBUG=INFO",
        )
        == [
            "horovodrun",
            "-np",
            "8",
            "-H",
            "host1:4,host2:4",
            "--mpi",
            "--ssh-port",
            "12345",
            "--ssh-identity-file",
            str(key),
            "--network-interfaces",
            "eth0,ib0",
            "--mpi-args",
            "-x NCCL_DEBUG=INFO",
        ]
        + WORKER
    )


def test_hostfile_is_passed_through(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode-1 slots=4\nnode-2:4\n")
    assert parse_hostfile(str(hostfile)) == [("node-1", 4), ("node-2", 4)]
    assert (
        argv(np=8, hostfile=str(hostfile)) == ["horovodrun", "-np", "8", "--hostfile", str(hostfile), "--gloo"] + WORKER
    )


def test_hosts_default_to_one_slot():
    assert parse_hosts("a,b:2, c") == [("a", 1), ("b", 2), ("c", 1)]


@pytest.mark.parametrize(
    "kw,fragment",
    [
        ({"np": 0}, "--np must be >= 1"),
        ({"np": 5, "hosts": "a:2,b:2"}, "more than the 4 slots"),
        ({"np": 2, "hosts": "a;rm -rf /:2"}, "invalid host name"),
        ({"np": 2, "hosts": "$(reboot):2"}, "invalid host name"),
        ({"np": 2, "hosts": "a:0"}, "invalid slot count"),
        ({"np": 2, "hosts": "a:x"}, "invalid slot count"),
        ({"np": 2, "launcher": "nccl"}, "unknown launcher"),
        ({"np": 2, "network_interfaces": "eth0;ls"}, "--network-interfaces"),
        ({"np": 2, "ssh_port": 70000}, "--ssh-port"),
        ({"np": 2, "mpi_args": "-x A=1"}, "--mpi-args needs --launcher mpi"),
        ({"np": 2, "hostfile": "/nonexistent/hosts"}, "does not exist"),
    ],
)
def test_bad_launch_input_is_a_usage_error(kw, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace("$", r"\$")):
        argv(**kw)
