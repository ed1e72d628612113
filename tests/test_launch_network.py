"""`hvdat train` passes horovodrun's network options through, as list items that no shell ever parses."""

from __future__ import annotations

import shlex

import pytest
from conftest import assert_one_line_error, run_hvdat

BASE = ["train", "--dry-run", "--epochs", "1"]


def test_network_options_reach_horovodrun(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    proc = run_hvdat(
        *BASE,
        "--np",
        "16",
        "-H",
        "host1:8,host2:8",
        "--launcher",
        "mpi",
        "--ssh-port",
        "12345",
        "--ssh-identity-file",
        key,
        "--network-interfaces",
        "ib0,eth0",
        "--mpi-args",
        "-x NCCL_IB_HCA=mlx5 --mca btl_tcp_if_include eth0",
        "--out",
        tmp_path / "r",
        check=True,
    )
    argv = shlex.split(proc.stdout.replace("\n", ""))
    assert argv[0].endswith("horovodrun")
    opts = argv[: argv.index("-m") - 1]
    assert opts[1:] == [
        "-np",
        "16",
        "-H",
        "host1:8,host2:8",
        "--mpi",
        "--ssh-port",
        "12345",
        "--ssh-identity-file",
        str(key),
        "--network-interfaces",
        "ib0,eth0",
        "--mpi-args",
        "-x NCCL_IB_HCA=mlx5 --mca btl_tcp_if_include eth0",
    ]
    assert argv[-4:-1] == ["-m", "hvdat.train.worker", "--config"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--np", "2", "-H", "host1:1,$(reboot):1"], "invalid host name"),
        (["--np", "2", "-H", "host1:1;reboot"], "invalid"),
        (["--np", "2", "-H", "h1:2", "--network-interfaces", "eth0;reboot"], "invalid --network-interfaces"),
        (["--np", "2", "-H", "h1:2", "--ssh-port", "70000"], "is not a port number"),
        (["--np", "2", "-H", "h1:2", "--ssh-identity-file", "/no/such/key"], "does not exist"),
        (["--np", "2", "-H", "h1:2", "--mpi-args", "-x FOO=1"], "--mpi-args needs --launcher mpi"),
        (["--np", "3", "-H", "h1:2"], "more than the 2 slots"),
    ],
)
def test_bad_network_options_are_one_line_errors(args, fragment, tmp_path):
    assert_one_line_error(run_hvdat(*BASE, *args, "--out", tmp_path / "r"), fragment)
