"""Compressed gradient exchange through real `horovodrun -np 3` jobs (Gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import QUICK, REPO, read_metrics, run_hvdat

from hvdat.compression import COMPRESSORS, wire_bytes
from hvdat.runtime import checkpoint

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")


def horovod_job(np_: int, *args: str, script: str = "hvd_compression_job.py") -> list:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.run(
        [HOROVODRUN, "-np", str(np_), "--gloo", sys.executable, str(REPO / "tests" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line.split("@@result ", 1)[1]) for line in proc.stdout.splitlines() if "@@result " in line]


def test_every_compressor_keeps_three_ranks_bit_identical_in_any_buckets_and_counts_its_wire_bytes():
    names = [*COMPRESSORS.names(), "qsgd4", "qsgd2"]  # and qsgd's other widths, which the registry does not list
    results = {r["compression"]: r for r in horovod_job(3, *names)}
    assert sorted(results) == sorted(names)
    for name, result in results.items():
        assert result["size"] == 3
        assert result["identical"], result
        assert result["changed"], result  # the model really trained
        if COMPRESSORS.get(name).packed:  # packed: counted live by the optimizer
            assert result["bytes"] == result["expected"], result
            # one grouped allgather, three buckets, one allgather per tensor: the same parameters, bit for bit
            assert result["buckets_equal"], result
    # sign: 1/32 of fp32 plus a 4-byte scale and the padding of the last byte per tensor
    sign, tensors = results["sign"], 4
    assert sign["bytes"] <= sign["fp32"] / 32 + 5 * tensors
    assert results["natural"]["bytes"] == results["natural"]["fp32"] / 4 + tensors
    # qsgd: 8, 4 or 2 bits per element, a 4-byte norm and (sub-byte widths) the padding of the last byte per tensor
    assert results["qsgd"]["bytes"] == results["qsgd"]["fp32"] / 4 + 4 * tensors
    for name, bits in (("qsgd4", 4), ("qsgd2", 2)):
        assert results[name]["bytes"] <= results[name]["fp32"] * bits / 32 + 5 * tensors


def test_one_worker_still_compresses_although_horovod_registers_no_hooks():
    (result,) = horovod_job(1, "sign")
    assert result["size"] == 1 and result["bytes"] == result["expected"]


def test_train_ef_sign_on_three_ranks_reports_bytes_and_resumes_its_residuals(tmp_path):
    out = tmp_path / "run"
    common = [
        "train",
        *QUICK,
        "--np",
        "3",
        "--compression",
        "ef-sign",
        "--batch-size",
        "32",
        "--train-samples",
        "480",
        "--eval-samples",
        "48",
        "--out",
        out,
    ]
    run_hvdat(*common, "--epochs", "1", check=True)
    (metrics,) = read_metrics(out)
    state = torch.load(out / "last.pt", weights_only=True)
    numels = [v.numel() for v in state["model"].values() if v.is_floating_point() and v.dim() > 0]
    assert state["rank_shards"] == 3  # each rank's residuals in its own shard, not gathered into last.pt
    residuals = [shard["compression"] for shard in checkpoint.load_rank_states(out, 3, state["step"])]
    assert len(residuals) == 3 and all(len(r) > 0 for r in residuals)
    assert not torch.equal(next(iter(residuals[0].values())), next(iter(residuals[1].values())))
    params = sum(r.numel() for k, r in residuals[0].items() if ":" not in k)
    shapes = [state["model"][name].shape for name in residuals[0] if ":" not in name]  # not "momentum:..."
    assert metrics["bytes_sent_per_step"] == wire_bytes("ef-sign", shapes)
    assert abs(metrics["compression_ratio"] - 4 * params / metrics["bytes_sent_per_step"]) < 1e-9
    assert metrics["compression_ratio"] > 25
    assert params <= sum(numels)
    # the checkpoint holds no rank's residuals (3 ranks x residual + momentum would be 6x the model); each shard one's
    assert (out / "last.pt").stat().st_size < 2 * 4 * sum(numels)
    for rank in range(3):
        assert 2 * 4 * params <= checkpoint.rank_state_path(out, rank).stat().st_size < 3 * 4 * sum(numels)
    run_hvdat(*common, "--epochs", "2", "--resume", check=True)
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


def test_ef_sign_residuals_stay_on_their_rank_in_the_elastic_state():
    """hvdat.rank_state in a real TorchState on 2 ranks: a rollback restores the residuals of the last commit,
    re-forming keeps each rank's own (TorchState alone would broadcast rank 0's), and a worker that joins with none
    takes those of the ranks that have them."""
    results = horovod_job(2, script="hvd_rank_state_job.py")
    assert sorted(r["rank"] for r in results) == [0, 1]
    for result in results:
        assert result["moved"] and result["restored"] and result["kept_own"] and result["ranks_differ"], result
        assert result["joined_takes_rank0"], result


def test_ef_sign_follows_the_lr_set_after_the_optimizer_state_is_loaded():
    """A resume, a collapse-guard rollback and an elastic restore all load the optimizer's state, which replaces its
    param-group dicts; ef-sign's update must read the LR the schedule then sets, as if nothing had been loaded."""
    results = horovod_job(2, script="hvd_lr_after_load_job.py")
    assert len(results) == 2 and all(result["same_after_load"] for result in results), results
