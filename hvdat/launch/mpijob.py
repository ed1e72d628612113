"""A Kubeflow MPIJob (kubeflow.org/v2beta1) for an `hvdat train` or `hvdat eval` command. Pure: builds a dict.

The MPI Operator starts the worker pods, gives every pod the job's ssh key (at sshAuthMountPath, /root/.ssh), and
writes the launcher's hostfile (/etc/mpi/hostfile: `POD.SERVICE.NAMESPACE.svc slots=N`) and, for elastic jobs, a
script listing the running workers (/etc/mpi/discover_hosts.sh, one host a line, no slots). The workers run the
image's sshd (`hvdat-entrypoint worker`); the launcher runs the hvdat command with the hostfile (or the script and
--slots-per-host), and hvdat's horovodrun reaches the workers over ssh. Launcher and workers share one volume: the
launcher writes the run's config there and the workers read it, the data and the run folder live there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UsageError, require_at_least
from ..options import option

K8S = "Kubernetes"
API_VERSION = "kubeflow.org/v2beta1"
HOSTFILE = "/etc/mpi/hostfile"
DISCOVER_HOSTS = "/etc/mpi/discover_hosts.sh"
COMMANDS = ("train", "eval")
GPU = "nvidia.com/gpu"
# set from the pods: a command that gives them would contradict the MPIJob
OWNED = ("-H", "--hosts", "--hostfile", "--np", "--min-np", "--max-np", "--host-discovery-script", "--slots-per-host")


@dataclass(frozen=True)
class MPIJobSpec:
    name: str = option("hvdat", "The MPIJob's name (pods are NAME-launcher, NAME-worker-I).", K8S)
    namespace: Optional[str] = option(None, "Namespace (default: kubectl's).", K8S)
    image: str = option("hvdat:latest", "The hvdat image (docker/Dockerfile) for launcher and workers.", K8S)
    workers: int = option(2, "Worker pods (elastic: to start with).", K8S)
    slots_per_worker: Optional[int] = option(
        None, "Horovod ranks per worker pod, slotsPerWorker (default: --gpus-per-worker, else 1).", K8S
    )
    gpus_per_worker: int = option(0, "GPUs per worker pod (its nvidia.com/gpu limit).", K8S)
    cpu: Optional[str] = option(None, "CPU limit per worker pod, e.g. 8.", K8S)
    memory: Optional[str] = option(None, "Memory limit per worker pod, e.g. 32Gi.", K8S)
    min_workers: Optional[int] = option(None, "Elastic: keep training while this many worker pods run.", K8S)
    max_workers: Optional[int] = option(None, "Elastic: grow up to this many worker pods.", K8S)
    volume: Optional[str] = option(
        None, "PersistentVolumeClaim (ReadWriteMany) for data and runs, mounted on every pod.", K8S
    )
    mount_path: str = option("/workspace", "Where the volume is mounted; the command runs there.", K8S)
    ssh_port: int = option(22, "Port of the workers' sshd.", K8S)

    @property
    def slots(self) -> int:
        return self.slots_per_worker or self.gpus_per_worker or 1

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None or self.max_workers is not None


def validate(spec: MPIJobSpec, command: Sequence[str]) -> None:
    if not command or command[0] not in COMMANDS:
        raise UsageError(
            "give the hvdat command to run after the Kubernetes options",
            "e.g. hvdat k8s --workers 2 --gpus-per-worker 4 -- train --dataset cifar10 --out runs/c10",
        )
    owned = sorted({arg.split("=", 1)[0] for arg in command} & set(OWNED))
    if owned:
        raise UsageError(
            f"the MPIJob sets {', '.join(owned)} from its pods", "use --workers, --slots-per-worker, --min/max-workers"
        )
    for name in ("workers", "slots_per_worker", "min_workers", "max_workers"):
        require_at_least(f"--{name.replace('_', '-')}", getattr(spec, name))
    require_at_least("--gpus-per-worker", spec.gpus_per_worker, least=0)
    if not 0 < spec.ssh_port < 65536:
        raise UsageError(f"--ssh-port {spec.ssh_port} is not a port number")
    if spec.elastic:
        if command[0] != "train":
            raise UsageError("only hvdat train runs elastic", "drop --min-workers/--max-workers")
        if spec.min_workers is None or spec.max_workers is None:
            raise UsageError("an elastic MPIJob needs both --min-workers and --max-workers")
        if not spec.min_workers <= spec.workers <= spec.max_workers:
            raise UsageError(
                f"need --min-workers <= --workers <= --max-workers, got {spec.min_workers}, {spec.workers}, "
                f"{spec.max_workers}"
            )


def launcher_args(spec: MPIJobSpec, command: Sequence[str]) -> List[str]:
    """The launcher's hvdat command: the user's, with the hosts the operator gives it."""
    validate(spec, command)
    args = ["hvdat", *command]
    if spec.elastic:
        args += ["--np", str(spec.workers * spec.slots), "--min-np", str(spec.min_workers * spec.slots)]
        args += ["--max-np", str(spec.max_workers * spec.slots), "--host-discovery-script", DISCOVER_HOSTS]
        args += ["--slots-per-host", str(spec.slots)]
    else:
        args += ["--np", str(spec.workers * spec.slots), "--hostfile", HOSTFILE]
    if spec.ssh_port != 22:
        args += ["--ssh-port", str(spec.ssh_port)]
    return args


def _pod(spec: MPIJobSpec, container: Dict[str, Any]) -> Dict[str, Any]:
    pod: Dict[str, Any] = {"containers": [container]}
    if spec.volume:
        container["volumeMounts"] = [{"name": "workspace", "mountPath": spec.mount_path}]
        container["workingDir"] = spec.mount_path
        pod["volumes"] = [{"name": "workspace", "persistentVolumeClaim": {"claimName": spec.volume}}]
    return {"spec": pod}


def mpijob(spec: MPIJobSpec, command: Sequence[str]) -> Dict[str, Any]:
    """The MPIJob as a dict, ready for yaml.safe_dump and `kubectl apply -f`."""
    launcher = {"name": "launcher", "image": spec.image, "args": launcher_args(spec, command)}
    limits: Dict[str, Any] = {}
    if spec.gpus_per_worker:
        limits[GPU] = spec.gpus_per_worker
    if spec.cpu:
        limits["cpu"] = spec.cpu
    if spec.memory:
        limits["memory"] = spec.memory
    worker: Dict[str, Any] = {
        "name": "worker",
        "image": spec.image,
        "args": ["worker"],  # the image's entrypoint: sshd, public-key login only (the operator's key)
        "env": [{"name": "HVDAT_SSH_PORT", "value": str(spec.ssh_port)}],
        "ports": [{"name": "ssh", "containerPort": spec.ssh_port}],
        "readinessProbe": {"tcpSocket": {"port": spec.ssh_port}, "periodSeconds": 2},
    }
    if limits:
        worker["resources"] = {"limits": limits}
    metadata: Dict[str, Any] = {"name": spec.name}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "MPIJob",
        "metadata": metadata,
        "spec": {
            "slotsPerWorker": spec.slots,
            "sshAuthMountPath": "/root/.ssh",
            "launcherCreationPolicy": "WaitForWorkersReady",  # sshd answers before horovodrun checks the hosts
            "runPolicy": {"cleanPodPolicy": "Running"},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never", "template": _pod(spec, launcher)},
                "Worker": {"replicas": spec.workers, "restartPolicy": "Never", "template": _pod(spec, worker)},
            },
        },
    }
