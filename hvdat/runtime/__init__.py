"""What every worker shares: Horovod start-up (`World`), seeds, stop signals, per-rank elastic state, checkpoints,
the worker entry point, and Horovod's DistributedOptimizer extended with hvdat's packed compressors."""
