"""Run `hvdat.worker` with the collapse guard's PGD check scripted (CO cannot be provoked in seconds): the check
accuracies come from HVDAT_TEST_CHECKS, comma-separated, one per epoch record (and, if set, the per-epoch test
PGD accuracies from HVDAT_TEST_ROBUST; HVDAT_TEST_SAVES names a file that collects each checkpoint's compressor
state)."""

import copy
import os
import sys

import torch

from hvdat import co_guard, worker

checks = [float(v) for v in os.environ["HVDAT_TEST_CHECKS"].split(",")]
co_guard.CollapseGuard.check_accuracy = lambda self: checks.pop(0)
robust = [float(v) for v in os.environ.get("HVDAT_TEST_ROBUST", "").split(",") if v]
if robust:  # the per-epoch test PGD accuracy, scripted too
    measured = worker.evaluate
    worker.evaluate = lambda *args: {**measured(*args), "test_robust_acc": robust.pop(0)}
if os.environ.get("HVDAT_TEST_SAVES"):  # every checkpoint's compressor state, in order
    saves, save = [], worker.Trainer.save

    def keep(self, improved):
        saves.append(copy.deepcopy(self.compression_ranks))
        torch.save(saves, os.environ["HVDAT_TEST_SAVES"])
        save(self, improved)

    worker.Trainer.save = keep
sys.exit(worker.main(sys.argv[1:]))
