"""Kubeflow MPIJobs from `hvdat k8s`: valid against the operator's CRD schema (../shared/k8s, with unknown fields
refused, as the API server would prune them), and a launcher command that is exactly what `hvdat train --dry-run`
prints for the hostfile (or discovery script) the operator writes."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import QUICK, REPO

from hvdat.cli import main

CRD = REPO.parent / "shared" / "k8s" / "kubeflow.org_mpijobs.yaml"
HOROVODRUN = str(Path(sys.executable).parent / "horovodrun")
VARIANTS = {
    "plain": ["--workers", "2", "--slots-per-worker", "2"],
    "gpu": ["--workers", "2", "--gpus-per-worker", "4", "--cpu", "16", "--memory", "64Gi", "--volume", "runs"],
    "elastic": ["--workers", "2", "--min-workers", "1", "--max-workers", "3", "--slots-per-worker", "2"],
}


def _closed(schema):
    """The schema with every object that lists its properties closed to others: what Kubernetes keeps of an
    object (structural schemas prune unknown fields silently), so a misspelt field fails here."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


@pytest.fixture(scope="module")
def schema():
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2beta1"]
    closed = _closed(version["schema"]["openAPIV3Schema"])
    return jsonschema.validators.validator_for(closed)(closed)  # checked once, not at every validate()


def _mpijob(capsys, *args):
    assert main(["k8s", *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _dry_run(capsys, *args):
    code = main([*args, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.strip()


def _operator_files(job, folder: Path):
    """What the operator writes for the launcher: the hostfile, and the discovery script (no slots)."""
    name, slots, workers = job["metadata"]["name"], job["spec"]["slotsPerWorker"], job["spec"]["mpiReplicaSpecs"]
    hosts = [f"{name}-worker-{i}.{name}.default.svc" for i in range(workers["Worker"]["replicas"])]
    hostfile = folder / "hostfile"
    hostfile.write_text("".join(f"{host} slots={slots}\n" for host in hosts))
    discover = folder / "discover_hosts.sh"
    discover.write_text("#!/bin/sh\n" + "".join(f"echo {host}\n" for host in hosts))
    discover.chmod(0o755)
    return {"/etc/mpi/hostfile": str(hostfile), "/etc/mpi/discover_hosts.sh": str(discover)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_mpijob_validates_and_launches_what_the_dry_run_prints(schema, capsys, tmp_path, variant):
    train = ["train", *QUICK, "--epochs", "1", "--out", str(tmp_path / "run")]
    job = _mpijob(capsys, *VARIANTS[variant], "--", *train)
    schema.validate(job)
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"

    specs = job["spec"]["mpiReplicaSpecs"]
    (launcher,) = specs["Launcher"]["template"]["spec"]["containers"]
    (worker,) = specs["Worker"]["template"]["spec"]["containers"]
    assert launcher["image"] == worker["image"] == "hvdat:latest"
    assert worker["args"] == ["worker"] and job["spec"]["sshAuthMountPath"] == "/root/.ssh"
    assert specs["Worker"]["replicas"] == 2
    files = _operator_files(job, tmp_path)
    args = [files.get(arg, arg) for arg in launcher["args"]]
    assert args[0] == "hvdat"
    launched = _dry_run(capsys, *args[1:])
    module = "hvdat.train.elastic" if variant == "elastic" else "hvdat.train.worker"
    python = f"{sys.executable} -m {module} --config {tmp_path / 'run' / 'config.json'}"
    if variant == "elastic":
        assert job["spec"]["slotsPerWorker"] == 2
        by_hand = ["--np", "4", "--min-np", "2", "--max-np", "6", "--host-discovery-script", files[DISCOVER]]
        expected = (
            f"{HOROVODRUN} -np 4 --min-np 2 --max-np 6 --host-discovery-script {files[DISCOVER]} "
            f"--slots-per-host 2 --gloo {python}"
        )
        assert launched == _dry_run(capsys, *train, *by_hand, "--slots-per-host", "2") == expected
    else:
        slots = job["spec"]["slotsPerWorker"]
        expected = f"{HOROVODRUN} -np {2 * slots} --hostfile {files[HOSTFILE]} --gloo {python}"
        assert launched == _dry_run(capsys, *train, "--np", str(2 * slots), "--hostfile", files[HOSTFILE]) == expected
    if variant == "gpu":
        assert job["spec"]["slotsPerWorker"] == 4
        assert worker["resources"]["limits"] == {"nvidia.com/gpu": 4, "cpu": "16", "memory": "64Gi"}
        pod = specs["Launcher"]["template"]["spec"]
        assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "runs"}}]
        assert launcher["workingDir"] == worker["workingDir"] == "/workspace"


HOSTFILE, DISCOVER = "/etc/mpi/hostfile", "/etc/mpi/discover_hosts.sh"


def test_the_schema_check_catches_a_misplaced_field(schema, capsys):
    job = _mpijob(capsys, "--", "train")
    job["spec"]["slotsPerWorkers"] = 2  # misspelt: the API server would drop it without a word
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(job)


def test_eval_and_the_output_file(capsys, tmp_path):
    out = tmp_path / "k8s" / "eval.yaml"
    assert main(["k8s", "--name", "robust", "--namespace", "ml", "-o", str(out), "--", "eval", "runs/c10"]) == 0
    job = yaml.safe_load(out.read_text())
    assert job["metadata"] == {"name": "robust", "namespace": "ml"}
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["args"] == ["hvdat", "eval", "runs/c10", "--np", "2", "--hostfile", HOSTFILE]
    assert f"kubectl apply -f {out}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "give the hvdat command to run"),
        (["--", "train", "--np", "4"], "the MPIJob sets --np from its pods"),
        (["--", "train", "--hostfile=h"], "the MPIJob sets --hostfile"),
        (["--min-workers", "1", "--", "train"], "needs both --min-workers and --max-workers"),
        (["--min-workers", "3", "--max-workers", "4", "--", "train"], "--min-workers <= --workers"),
        (["--min-workers", "1", "--max-workers", "4", "--", "eval", "r"], "only hvdat train runs elastic"),
        (["--workers", "0", "--", "train"], "--workers must be >= 1"),
    ],
)
def test_mistakes_are_one_line(capsys, args, fragment):
    assert main(["k8s", *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], captured.err


def test_slots_per_host_needs_a_discovery_script(capsys):
    os.environ.pop("SLURM_JOB_NODELIST", None)
    assert main(["train", "--slots-per-host", "2", "--dry-run"]) == 2
    assert "--slots-per-host needs --host-discovery-script" in capsys.readouterr().err
