"""`hvdat eval --attack autoattack` against the reference AutoAttack, on the same model and images, in one run.

Three measurements, each AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; reference settings), seed 0:
- the reference: pyautoattack's `AutoAttack(...).run_standard_evaluation(x, y)` with its default batch size (250),
  in this process, torch's default threads (all cores);
- `hvdat eval --np 1` with hvdat's defaults (chunk size chosen from the example count and the model's size;
  threads: all cores);
- `hvdat eval --np 2` with the same defaults (one thread per rank; chunks pulled from the shared queue).

It prints examples/s for each (hvdat: the workers' own time, launch excluded, and wall clock with launch), the
ratios hvdat np 1 / reference (target >= 1.0) and np 2 / np 1 (target >= 1.8 on 2 cores), and compares the
per-example verdicts (robust or not after the cascade): np 1 against np 2 (must be identical: chunks do not depend
on --np), and hvdat against the reference. AutoAttack's random starts and Square's draws depend on an example's
position in its batch, so hvdat equals the reference exactly where hvdat's chunk is the reference's batch; with
other batches a borderline example may differ, and the script counts them. `--same-batches` also runs the
reference on hvdat's own chunks (bs = the chunk), which must agree on every example.

Without --run, a small PGD-trained CNN on digits is trained first, so that points survive APGD-CE and the whole
cascade does real work, as it does on a robust model. The machine's load (`os.getloadavg`) is printed before and
after: on a shared machine the figures move with it.

    python experiments/eval_vs_reference.py [--run RUN_DIR] [--n-examples 360] [--eps 0.1] [--same-batches] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import hvdat  # experiments/common.py: the one way the experiments run hvdat


def train_tiny(out: Path) -> None:
    print(f"training a small PGD-AT model on digits into {out} ...", file=sys.stderr)
    hvdat(
        "train", "--dataset", "digits", "--eps", "0.1", "--steps", "3", "--epochs", "3", "--batch-size", "64",
        "--eval-samples", "64", "--eval-steps", "3", "--no-tensorboard", "--out", out,
    )  # fmt: skip


def reference(run: Path, n: int, eps: float, batches=None) -> dict:
    """The reference run_standard_evaluation (default batch size, or one call per given (lo, hi) batch)."""
    import torch
    from pyautoattack import AutoAttack

    from hvdat.data import load_splits
    from hvdat.eval.chunks import examples
    from hvdat.eval.worker import load_model
    from hvdat.runtime import checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(checkpoint.load(run / "best.pt"), torch.device("cpu"))
    x, y = examples(load_splits("digits", None, 1).test, 0, n, torch.device("cpu"))
    attack = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=0)
    attack.logger.disabled = True
    start = time.perf_counter()
    if batches is None:
        x_adv, _ = attack.run_standard_evaluation(x, y)  # pyautoattack returns (x_adv, y_adv)
    else:
        x_adv = torch.cat([attack.run_standard_evaluation(x[lo:hi], y[lo:hi], bs=hi - lo)[0] for lo, hi in batches])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).tolist()
    return {"seconds": seconds, "examples_per_second": n / seconds, "robust": robust}


def hvdat_eval(run: Path, n: int, eps: float, np: int, out: Path) -> dict:
    start = time.perf_counter()
    hvdat(
        "eval", run, "--attack", "autoattack", "--eps", eps, "--n-examples", n, "--np", np, "--out", out,
        "--no-tensorboard", "--json",
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
        "chunks": report["chunks"],
        "handout": report["handout"],
        "robust_accuracy": report["robust_accuracy"],
        "robust": [b is None for b in verdict],
        "examples": report["examples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an hvdat run on digits to evaluate (default: train a small one)")
    parser.add_argument("--n-examples", type=int, default=360)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--same-batches", action="store_true", help="also run the reference on hvdat's chunks")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="hvdat-eval-vs-ref-"))
    run = args.run or scratch / "run"
    if args.run is None:
        train_tiny(run)
    load_before = os.getloadavg()
    n, eps = args.n_examples, args.eps
    one = hvdat_eval(run, n, eps, 1, scratch / "np1.json")
    print(f"hvdat np 1: {one['examples_per_second']:.3f} examples/s ({one['chunks']} chunks)", file=sys.stderr)
    ref = reference(run, n, eps)
    print(f"reference: {ref['examples_per_second']:.3f} examples/s", file=sys.stderr)
    two = hvdat_eval(run, n, eps, 2, scratch / "np2.json")
    print(f"hvdat np 2: {two['examples_per_second']:.3f} examples/s", file=sys.stderr)
    summary = {
        "n_examples": n,
        "eps": eps,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "reference_examples_per_second": ref["examples_per_second"],
        "hvdat_np1_examples_per_second": one["examples_per_second"],
        "hvdat_np2_examples_per_second": two["examples_per_second"],
        "hvdat_np1_wall_examples_per_second": one["wall_examples_per_second"],
        "hvdat_np2_wall_examples_per_second": two["wall_examples_per_second"],
        "np1_over_reference": one["examples_per_second"] / ref["examples_per_second"],
        "np2_over_np1": two["examples_per_second"] / one["examples_per_second"],
        "chunk_size": one["batch_size"],
        "chunks": one["chunks"],
        "np2_handout": two["handout"],
        "np2_rank_seconds": two["rank_seconds"],
        "robust_accuracy": {"reference": sum(ref["robust"]) / n, "hvdat": one["robust_accuracy"]},
        "np1_equals_np2": one["examples"] == two["examples"],
        "differ_from_reference": [i for i in range(n) if one["robust"][i] != ref["robust"][i]],
    }
    if args.same_batches:
        bounds = [(lo, min(lo + one["batch_size"], n)) for lo in range(0, n, one["batch_size"])]
        same = reference(run, n, eps, bounds)
        summary["differ_from_reference_on_the_same_batches"] = [
            i for i in range(n) if one["robust"][i] != same["robust"][i]
        ]
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"AutoAttack standard, {n} digits test images, eps {eps}, {summary['chunks']} chunks of "
        f"{summary['chunk_size']}, load average {load_before[0]:.1f} -> {summary['load_average_after'][0]:.1f}\n"
        f"  reference run_standard_evaluation (bs 250): {ref['examples_per_second']:.3f} examples/s\n"
        f"  hvdat eval --np 1: {one['examples_per_second']:.3f} examples/s "
        f"({one['wall_examples_per_second']:.3f} with launch); ratio to the reference "
        f"{summary['np1_over_reference']:.2f} (target >= 1.0)\n"
        f"  hvdat eval --np 2: {two['examples_per_second']:.3f} examples/s "
        f"({two['wall_examples_per_second']:.3f} with launch); np 2 / np 1 {summary['np2_over_np1']:.2f} "
        f"(target >= 1.8), rank seconds {[round(s, 1) for s in two['rank_seconds']]}\n"
        f"  robust accuracy: reference {summary['robust_accuracy']['reference']:.2%}, hvdat "
        f"{summary['robust_accuracy']['hvdat']:.2%}; np 1 == np 2 per example: {summary['np1_equals_np2']}; "
        f"examples whose verdict differs from the reference's: {len(summary['differ_from_reference'])}"
        + (
            f"; on the same batches: {len(summary['differ_from_reference_on_the_same_batches'])}"
            if args.same_batches
            else ""
        )
    )


if __name__ == "__main__":
    main()
