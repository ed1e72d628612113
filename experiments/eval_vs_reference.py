"""`hvdat eval --attack autoattack` against the reference AutoAttack, on the same model and images, in one run.

Each measurement is AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; reference settings), seed 0, a whole
evaluation timed by the wall clock from process start to result (imports, model and data loading included):
- the reference: pyautoattack's `AutoAttack(...).run_standard_evaluation(x, y)` with its default batch size (250),
  in a fresh Python process, torch's default threads (all cores);
- `hvdat eval --np 1` with hvdat's defaults (batches: each phase's examples split evenly, at most the size the model's
  FLOPs call for; threads: all cores);
- `hvdat eval --np 2` with the same defaults (one thread per rank; each phase's batches pulled from the shared queue);
- `hvdat eval --np 1 --threads 1`: np 1 on one core, so that np 2 / np 1 at one thread per rank measures the sharding
  alone (np 1's default threads already use both cores of a 2-core machine, so there np 2 adds no hardware).

It prints examples/s for each and the ratios hvdat np 1 / reference (target >= 1.0) and np 2 / np 1 (target >= 1.8
on 2 cores), then the same for the attack alone (run_standard_evaluation's time; hvdat's phases). It checks, and
exits 1 otherwise: np 1 (either thread count) and np 2 give the same per-example results (batches do not depend on
--np); `hvdat eval --batch-size 250` (the reference's blocks, once, after the rounds) gives per example exactly the
reference's verdicts (AutoAttack's random starts and Square's draws depend on an example's position in its batch, so
with hvdat's default batches a borderline point may differ, and those are counted, not failed); np 1 runs all cores'
threads, np 2 one per rank.

After the rounds it also runs, once, the reference with the C heap setting that hvdat's workers use
(hvdat/runtime/allocator.py, here through glibc's MALLOC_*_ variables), so that the report shows how much of a
difference is that setting and how much the rest.

Without --run, a small PGD-trained CNN on digits is trained first, so that points survive APGD-CE and the whole
cascade does real work, as it does on a robust model. The machine's load (`os.getloadavg`) is printed before and
after: on a shared machine the figures move with it (two runs of the same evaluation minutes apart differed by up to
16% here), so `--repeats R` runs the four measurements in R interleaved rounds and reports medians, each ratio taken
within its round.

    python experiments/eval_vs_reference.py [--run RUN_DIR] [--n-examples 360] [--eps 0.1] [--repeats 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from common import ENV, REPO, hvdat  # experiments/common.py: the one way the experiments run hvdat

from hvdat.runtime.allocator import MMAP_THRESHOLDS, TRIM_THRESHOLD


def train_tiny(out: Path) -> None:
    print(f"training a small PGD-AT model on digits into {out} ...", file=sys.stderr)
    hvdat(
        "train", "--dataset", "digits", "--eps", "0.1", "--steps", "3", "--epochs", "3", "--batch-size", "64",
        "--eval-samples", "64", "--eval-steps", "3", "--no-tensorboard", "--out", out,
    )  # fmt: skip


# glibc's malloc set through the environment as hvdat's workers set it with mallopt (its first, preferred threshold)
KEPT_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLDS[0]), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def reference(run: Path, n: int, eps: float, env: Optional[dict] = None) -> dict:
    """The reference run_standard_evaluation (its default batch size) in a fresh process, as a user runs it (`env`:
    variables added to its environment): `wall_seconds` counts the whole process (imports, model and data loading),
    as the hvdat command's wall clock does; `seconds` the run_standard_evaluation call only."""
    import subprocess

    command = [sys.executable, __file__, "--reference-child", str(run), str(n), str(eps)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**ENV, **(env or {})}, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the reference failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        **out,
        "wall_seconds": wall,
        "examples_per_second": n / out["seconds"],
        "wall_examples_per_second": n / wall,
    }


def reference_child(run: str, n: str, eps: str) -> None:
    import torch
    from pyautoattack import AutoAttack

    from hvdat.data import load_splits
    from hvdat.eval.examples import examples
    from hvdat.eval.worker import load_model
    from hvdat.runtime import checkpoint

    n, eps = int(n), float(eps)
    model = load_model(checkpoint.load(Path(run) / "best.pt"), torch.device("cpu"))
    x, y = examples(load_splits("digits", None, 1).test, 0, n, torch.device("cpu"))
    attack = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=0)
    attack.logger.disabled = True
    start = time.perf_counter()
    x_adv, _ = attack.run_standard_evaluation(x, y)  # its default batch size (250); returns (x_adv, y_adv)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).tolist()
    print(json.dumps({"seconds": seconds, "robust": robust, "threads": torch.get_num_threads()}))


def hvdat_eval(run: Path, n: int, eps: float, np: int, out: Path, *extra) -> dict:
    start = time.perf_counter()
    hvdat(
        "eval", run, "--attack", "autoattack", "--eps", eps, "--n-examples", n, "--np", np, "--out", out,
        "--no-tensorboard", "--json", *extra,
    )  # fmt: skip
    wall = time.perf_counter() - start
    report = json.loads(out.read_text())
    verdict = report["examples"]["by_eps"][0]["broken_by"]
    return {
        "examples_per_second": report["examples_per_second"],
        "wall_examples_per_second": n / wall,
        "seconds": report["seconds"],
        "rank_seconds": report["rank_seconds"],
        "batch_size": report["batch_size"],
        "batches": report["batches"],
        "handout": report["handout"],
        "robust_accuracy": report["robust_accuracy"],
        "threads": report["threads"],
        "heap": report["heap"],
        "wall_seconds": wall,
        "robust": [b is None for b in verdict],
        "examples": report["examples"],
    }


def _median_run(runs: list) -> dict:
    """The run with the median wall clock (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["wall_seconds"])[(len(runs) - 1) // 2]


def _median_ratio(rounds: list, numerator: str, denominator: str, key: str = "wall_seconds") -> float:
    """The median over rounds of one configuration's seconds over another's, each ratio within its own round."""
    return statistics.median(x[numerator][key] / x[denominator][key] for x in rounds)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--reference-child":
        return reference_child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an hvdat run on digits to evaluate (default: train a small one)")
    parser.add_argument("--n-examples", type=int, default=360)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of the four runs; medians")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="hvdat-eval-vs-ref-"))
    run = args.run or scratch / "run"
    if args.run is None:
        train_tiny(run)
    load_before = os.getloadavg()
    n, eps = args.n_examples, args.eps
    rounds = []
    for r in range(args.repeats):  # interleaved, so that a shared machine's drift hits every configuration alike
        one = hvdat_eval(run, n, eps, 1, scratch / f"np1-{r}.json")
        print(f"[{r}] hvdat np 1: {n / one['wall_seconds']:.3f} examples/s {one['batches']}", file=sys.stderr)
        ref = reference(run, n, eps)
        print(f"[{r}] reference: {ref['wall_examples_per_second']:.3f} examples/s", file=sys.stderr)
        two = hvdat_eval(run, n, eps, 2, scratch / f"np2-{r}.json")
        print(f"[{r}] hvdat np 2: {n / two['wall_seconds']:.3f} examples/s", file=sys.stderr)
        # the sharding alone: np 1 on one core (np 2's threads per rank), so that np 2 adds a core, as on a cluster
        one_core = hvdat_eval(run, n, eps, 1, scratch / f"np1-1thread-{r}.json", "--threads", "1")
        print(f"[{r}] hvdat np 1, 1 thread: {n / one_core['wall_seconds']:.3f} examples/s", file=sys.stderr)
        rounds.append({"one": one, "ref": ref, "two": two, "one_core": one_core})
    one, ref, two, one_core = (_median_run([x[k] for x in rounds]) for k in ("one", "ref", "two", "one_core"))
    # the equality check: hvdat cutting the reference's blocks of 250 (AutoAttack's draws depend on the batch)
    same = hvdat_eval(run, n, eps, 1, scratch / "np1-bs250.json", "--batch-size", "250")
    # what hvdat's workers' heap setting alone is worth: the reference with the same setting, once
    kept = reference(run, n, eps, KEPT_HEAP)
    cores = os.cpu_count()
    summary = {
        "n_examples": n,
        "eps": eps,
        "cores": cores,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        # the headline: whole evaluations, wall clock of the command / process (start-up included)
        "reference_wall_seconds": ref["wall_seconds"],
        "hvdat_np1_wall_seconds": one["wall_seconds"],
        "hvdat_np2_wall_seconds": two["wall_seconds"],
        "np1_over_reference": _median_ratio(rounds, "ref", "one"),
        "np2_over_np1": _median_ratio(rounds, "one", "two"),
        "hvdat_np1_one_thread_wall_seconds": one_core["wall_seconds"],
        "np2_over_np1_one_thread": _median_ratio(rounds, "one_core", "two"),
        "repeats": args.repeats,
        "rounds_wall_seconds": [{k: x[k]["wall_seconds"] for k in x} for x in rounds],
        # the attack alone: run_standard_evaluation's time, hvdat's workers' phases
        "reference_attack_seconds": ref["seconds"],
        "hvdat_np1_attack_seconds": one["seconds"],
        "hvdat_np2_attack_seconds": two["seconds"],
        "attack_np1_over_reference": _median_ratio(rounds, "ref", "one", "seconds"),
        # hvdat on the reference's batches: its own overhead, apart from what its batching costs or saves
        "hvdat_bs250_attack_seconds": same["seconds"],
        "attack_bs250_over_reference": ref["seconds"] / same["seconds"],
        "hvdat_heap": one["heap"],
        "reference_kept_heap_attack_seconds": kept["seconds"],
        "reference_kept_heap_wall_seconds": kept["wall_seconds"],
        "attack_np2_over_np1": _median_ratio(rounds, "one", "two", "seconds"),
        "threads": {"reference": ref["threads"], "hvdat_np1": one["threads"], "hvdat_np2_per_rank": two["threads"]},
        "batch_size": one["batch_size"],
        "batches": one["batches"],
        "np2_handout": two["handout"],
        "np2_rank_seconds": two["rank_seconds"],
        # what 2 threads buy the same batches over 1 thread (np 1's time against np 2's ranks' busy seconds): np 2 /
        # np 1 can reach about 2 / this (less the ranks' imbalance and start-up)
        "two_threads_speedup": sum(two["rank_seconds"]) / one["seconds"],
        "robust_accuracy": {"reference": sum(ref["robust"]) / n, "hvdat": one["robust_accuracy"]},
        "np1_equals_np2": all(x[k]["examples"] == one["examples"] for x in rounds for k in ("one", "two", "one_core")),
        "differ_from_reference_on_the_same_batches": [i for i in range(n) if same["robust"][i] != ref["robust"][i]],
        "differ_from_reference_default_batches": [i for i in range(n) if one["robust"][i] != ref["robust"][i]],
    }
    failures = [
        text
        for ok, text in (
            (summary["np1_equals_np2"], "np 1 and np 2 differ per example"),
            (not summary["differ_from_reference_on_the_same_batches"], "hvdat differs from the reference per example"),
            (one["threads"] == cores, f"hvdat np 1 ran {one['threads']} threads on {cores} cores"),
            (two["threads"] == max(1, cores // 2), f"hvdat np 2 ran {two['threads']} threads per rank"),
        )
        if not ok
    ]
    summary["failures"] = failures
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"AutoAttack standard, {n} digits test images, eps {eps}, batches {summary['batches']} (at most "
            f"{summary['batch_size']}), medians of {args.repeats} interleaved round(s), load average "
            f"{load_before[0]:.1f} -> {summary['load_average_after'][0]:.1f}\n"
            f"  whole evaluation (wall clock, start-up included), examples/s:\n"
            f"    reference run_standard_evaluation (batch size 250, {ref['threads']} threads): "
            f"{n / ref['wall_seconds']:.3f}\n"
            f"    hvdat eval --np 1 ({one['threads']} threads): {n / one['wall_seconds']:.3f}; "
            f"np 1 / reference {summary['np1_over_reference']:.2f} (target >= 1.0)\n"
            f"    hvdat eval --np 2 ({two['threads']} thread per rank): {n / two['wall_seconds']:.3f}; "
            f"np 2 / np 1 {summary['np2_over_np1']:.2f} (target >= 1.8)\n"
            f"    hvdat eval --np 1 --threads 1: {n / one_core['wall_seconds']:.3f}; np 2 / np 1 at one thread "
            f"per rank {summary['np2_over_np1_one_thread']:.2f} (the sharding: np 2 adds the second core)\n"
            f"  the attack alone (run_standard_evaluation; hvdat's phases), examples/s: reference "
            f"{n / ref['seconds']:.3f}, np 1 {n / one['seconds']:.3f} ({summary['attack_np1_over_reference']:.2f}), "
            f"np 2 {n / two['seconds']:.3f} ({summary['attack_np2_over_np1']:.2f}); hvdat on the reference's "
            f"batches of 250 {n / same['seconds']:.3f} (/ reference {summary['attack_bs250_over_reference']:.2f}); "
            f"np 2 rank seconds {[round(s, 1) for s in two['rank_seconds']]}; 2 threads speed the work up "
            f"{summary['two_threads_speedup']:.2f}x over 1\n"
            f"  hvdat's workers' heap: {one['heap']}; the reference with the same setting (once, after the rounds): "
            f"{n / kept['wall_seconds']:.3f} examples/s whole, {n / kept['seconds']:.3f} its attack\n"
            f"  robust accuracy: reference {summary['robust_accuracy']['reference']:.2%}, hvdat "
            f"{summary['robust_accuracy']['hvdat']:.2%}; np 1 == np 2 per example: {summary['np1_equals_np2']}; "
            f"verdicts of hvdat --batch-size 250 differing from the reference's: "
            f"{len(summary['differ_from_reference_on_the_same_batches'])} (must be 0), of hvdat's default batches: "
            f"{len(summary['differ_from_reference_default_batches'])} (borderline points; AutoAttack's draws depend "
            f"on the batch)"
        )
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
