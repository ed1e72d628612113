"""The launcher builds argv lists (never shell strings); these are the exact commands users will see."""

import sys

import pytest

from hvdat.errors import UsageError
from hvdat.launch import LaunchSpec, build_argv, build_launch
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


KNOBS = dict(
    timeline_filename="t.json",
    timeline_mark_cycles=True,
    autotune=True,
    autotune_log_file="a.csv",
    fusion_threshold_mb=32,
    cycle_time_ms=2.5,
    cache_capacity=0,
    hierarchical_allreduce=False,
    hierarchical_allgather=True,
    start_timeout=60,
    log_level="INFO",
    output_filename="out",
)


def test_horovod_knobs_are_horovodrun_flags():
    """Spelled as `horovodrun --help` has them; horovodrun turns them into its workers' HOROVOD_* variables."""
    assert (
        argv(np=2, **KNOBS)
        == [
            "horovodrun",
            "-np",
            "2",
            "-H",
            "localhost:2",
            "--gloo",
            "--start-timeout",
            "60",
            "--output-filename",
            "out",
            "--fusion-threshold-mb",
            "32",
            "--cycle-time-ms",
            "2.5",
            "--cache-capacity",
            "0",
            "--no-hierarchical-allreduce",
            "--hierarchical-allgather",
            "--autotune",
            "--autotune-log-file",
            "a.csv",
            "--timeline-filename",
            "t.json",
            "--timeline-mark-cycles",
            "--log-level",
            "INFO",
        ]
        + WORKER
    )
    launch = build_launch(LaunchSpec(np=2, **KNOBS), "hvdat.train.worker", "run/config.json", horovodrun="horovodrun")
    assert launch.env == {} and launch.output_dir is None


def test_horovod_knobs_without_horovodrun_are_its_environment_variables():
    """--np 1 runs the worker directly: it gets what horovod/runner/common/util/config_parser.py would set."""
    launch = build_launch(LaunchSpec(np=1, **KNOBS), "hvdat.train.worker", "run/config.json")
    assert launch.argv == WORKER
    assert launch.env == {
        "HOROVOD_TIMELINE": "t.json",
        "HOROVOD_TIMELINE_MARK_CYCLES": "1",
        "HOROVOD_AUTOTUNE": "1",
        "HOROVOD_AUTOTUNE_LOG": "a.csv",
        "HOROVOD_FUSION_THRESHOLD": str(32 * 1024 * 1024),
        "HOROVOD_CYCLE_TIME": "2.5",
        "HOROVOD_CACHE_CAPACITY": "0",
        "HOROVOD_HIERARCHICAL_ALLREDUCE": "0",
        "HOROVOD_HIERARCHICAL_ALLGATHER": "1",
        "HOROVOD_LOG_LEVEL": "INFO",
    }
    assert launch.output_dir == "out"  # the launcher copies the worker's output to out/rank.0/stdout
    assert launch.display().startswith("HOROVOD_AUTOTUNE=1 HOROVOD_AUTOTUNE_LOG=a.csv ")
    assert build_launch(LaunchSpec(np=1), "m", "c").env == {}


@pytest.mark.parametrize(
    "kw,fragment",
    [
        ({"fusion_threshold_mb": -1}, "--fusion-threshold-mb must be >= 0, got -1"),
        ({"cycle_time_ms": -0.5}, "--cycle-time-ms must be >= 0"),
        ({"cycle_time_ms": float("nan")}, "--cycle-time-ms must be >= 0"),
        ({"cache_capacity": -2}, "--cache-capacity must be >= 0"),
        ({"start_timeout": 0}, "--start-timeout must be >= 1"),
        ({"log_level": "LOUD"}, "unknown --log-level 'LOUD'; choose from: TRACE, DEBUG"),
        ({"timeline_filename": "/nonexistent/dir/t.json"}, "the folder /nonexistent/dir does not exist"),
        ({"timeline_filename": "/tmp"}, "is a folder"),
        ({"timeline_mark_cycles": True}, "--timeline-mark-cycles needs --timeline-filename"),
        ({"autotune_log_file": "a.csv"}, "--autotune-log-file needs --autotune"),
        ({"autotune": True, "autotune_log_file": "/nonexistent/a.csv"}, "the folder /nonexistent does not exist"),
    ],
)
def test_bad_horovod_knobs_are_usage_errors(kw, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        argv(np=2, **kw)


def test_a_timeline_folder_on_a_remote_rank0_host_is_not_checked_here():
    assert "--timeline-filename" in argv(np=2, hosts="node1:2", timeline_filename="/only/on/node1/t.json")


def test_launch_options_read_hvdat_environment_variables(tmp_path):
    from conftest import run_hvdat

    env = {"HVDAT_NP": "3", "HVDAT_HOSTS": "node1:2,node2:2", "HVDAT_LAUNCHER": "mpi", "COLUMNS": "300"}
    proc = run_hvdat("train", "--out", tmp_path / "r", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert " -np 3 -H node1:2,node2:2 --mpi " in proc.stdout
    assert " -np 2 " in run_hvdat("train", "--np", "2", "--out", tmp_path / "r", "--dry-run", env=env).stdout
    assert "HVDAT_NP" in run_hvdat("train", "--help", env={"COLUMNS": "300"}).stdout
