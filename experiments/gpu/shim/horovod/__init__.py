"""A single-process stand-in for Horovod, for machines without it (the lent GPU machine has no Horovod and no
internet). It is NOT Horovod: every collective is the identity of a one-rank job, and it refuses to start in a job
of more than one rank. Only what hvdat's `--np 1` path imports is provided. Put `experiments/gpu/shim` first on
PYTHONPATH (and `experiments/gpu/shim/bin` first on PATH for `horovodrun`) to use it; see experiments/gpu/README.md.
"""

__version__ = "0.28.1+single-process-shim"
