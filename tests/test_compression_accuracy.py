"""Compressed 2-worker PGD-AT through real horovodrun on digits reaches the robustness of uncompressed training.

About 2-2.5 minutes on 2 cores (three 40-55 s runs; 144 s at load average 7). The recipe is test_train.RECIPE
made cheaper (PGD-3, 5 epochs, PGD-5 evaluation on 256 test images), which still ends clearly robust (about 75%
robust accuracy, chance is 10%). The per-tensor ef-sign that fed raw gradients to EF fails it (42%).
"""

from __future__ import annotations

import pytest
from conftest import read_metrics, run_hvdat

RECIPE = [
    "--dataset",
    "digits",
    "--eps",
    "0.1",
    "--steps",
    "3",
    "--epochs",
    "5",
    "--lr",
    "0.4",
    "--np",
    "2",
    "--batch-size",
    "32",
    "--eval-samples",
    "256",
    "--eval-steps",
    "5",
]
TOLERANCE = 0.08  # robust accuracy points below none; 256 evaluation images alone give about ±3 points of noise


def robust_accuracy(out, compression: str) -> float:
    run_hvdat("train", *RECIPE, "--compression", compression, "--out", out / compression, check=True)
    return read_metrics(out / compression)[-1]["test_robust_acc"]


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory) -> float:
    robust = robust_accuracy(tmp_path_factory.mktemp("accuracy"), "none")
    assert robust > 0.6, robust  # the baseline must be robust for the comparison to mean anything
    return robust


@pytest.mark.parametrize("compression", ["ef-sign", "natural"])
def test_compressed_pgd_at_is_within_a_few_points_of_uncompressed(tmp_path, uncompressed, compression):
    robust = robust_accuracy(tmp_path, compression)
    assert robust >= uncompressed - TOLERANCE, (compression, robust, uncompressed)
