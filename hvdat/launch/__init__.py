"""The launcher side: horovodrun/mpirun argv (static and elastic), the job process and its event stream.

Imports no torch and no worker module: it only builds argv, runs it, and reads what the workers print.
"""

from .argv import Launch, build_argv, build_launch, shell_quote
from .job import JobResult, raise_for_failure, run_collecting, run_job, run_launch
from .spec import LaunchSpec, slots_of, validate

__all__ = [
    "LaunchSpec",
    "build_argv",
    "build_launch",
    "Launch",
    "run_launch",
    "shell_quote",
    "run_job",
    "run_collecting",
    "raise_for_failure",
    "JobResult",
    "slots_of",
    "validate",
]
