"""Run `hvdat.train.worker` with the collapse guard's PGD check scripted (CO cannot be provoked in seconds): the check
accuracies come from HVDAT_TEST_CHECKS, comma-separated, one per epoch record (and, if set, the per-epoch test
PGD accuracies from HVDAT_TEST_ROBUST; HVDAT_TEST_SAVES names a file that collects each checkpoint's compressor
state)."""

import copy
import os
import sys

import torch

from hvdat.train import co_guard, worker
from hvdat.train.trainer import Trainer

checks = [float(v) for v in os.environ["HVDAT_TEST_CHECKS"].split(",")]
co_guard.CollapseGuard.check_accuracy = lambda self, trainer: checks.pop(0)
robust = [float(v) for v in os.environ.get("HVDAT_TEST_ROBUST", "").split(",") if v]
if robust:  # the per-epoch test PGD accuracy, scripted too
    measured = Trainer.evaluate
    Trainer.evaluate = lambda self: {**measured(self), "test_robust_acc": robust.pop(0)}
if os.environ.get("HVDAT_TEST_SAVES"):  # every checkpoint's compressor state, in order
    saves, save = [], Trainer.save

    def keep(self, improved, with_buffers=False):
        saves.append([copy.deepcopy(self.rank_state_dict()["compression"])])  # one rank (this job runs on one)
        torch.save(saves, os.environ["HVDAT_TEST_SAVES"])
        save(self, improved, with_buffers)

    Trainer.save = keep
sys.exit(worker.main(sys.argv[1:]))
