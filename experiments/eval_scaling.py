"""Evaluation scaling: AutoAttack (standard, reference settings) examples/s with `hvdat eval --np 1` and `--np 2`.

Each rank runs one torch thread, so N ranks use N cores and the ideal ratio is N. Runs alternate (np 1, np 2,
np 1, ...) and medians are compared, since this machine is shared. Throughput is the workers' own timing
(`seconds` in the report: from the first chunk to the gathered result, launch excluded); wall-clock examples/s,
launch included, is printed beside it. Per-example results are checked to be identical across every run.

Without --run, a tiny PGD-trained small CNN on digits is trained first, so that points survive APGD-CE and the
whole cascade (APGD-T, FAB-T, Square) does real work, as it does on a robust model.

    python experiments/eval_scaling.py [--run RUN_DIR] [--n-examples 48] [--batch-size 8] [--eps 0.1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hvdat(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "hvdat", *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO
    )
    if proc.returncode != 0:
        raise SystemExit(f"hvdat {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory to evaluate (default: train a tiny one)")
    parser.add_argument("--n-examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="chunk size; the ranks pull chunks from a queue")
    parser.add_argument("--eps", default="0.1")
    parser.add_argument("--np", type=int, default=2, help="the larger world size to compare with --np 1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--launcher", default="gloo")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="hvdat-bench-eval-"))
    run = args.run
    if run is None:
        run = scratch / "run"
        print(f"training a tiny PGD-AT model on digits into {run} ...", file=sys.stderr)
        hvdat(
            "train",
            "--dataset",
            "digits",
            "--eps",
            "0.1",
            "--steps",
            "3",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--eval-samples",
            "64",
            "--eval-steps",
            "3",
            "--out",
            run,
        )
    results = {1: [], args.np: []}
    examples = None
    for repeat in range(args.repeats):
        for np in (1, args.np):
            out = scratch / f"np{np}-{repeat}.json"
            hvdat(
                "eval",
                run,
                "--attack",
                "autoattack",
                "--eps",
                args.eps,
                "--n-examples",
                args.n_examples,
                "--batch-size",
                args.batch_size,
                "--np",
                np,
                "--threads",
                1,
                "--launcher",
                args.launcher,
                "--out",
                out,
                "--json",
            )
            report = json.loads(out.read_text())
            if examples is None:
                examples = report["examples"]
            elif report["examples"] != examples:
                raise SystemExit(f"per-example results differ in {out}")
            results[np].append(report)
            print(
                f"np {np}: {report['examples_per_second']:.3f} examples/s (workers), "
                f"{report['n_examples'] / report['wall_seconds']:.3f} wall, rank seconds "
                f"{[round(s, 1) for s in report['rank_seconds']]}, robust {report['robust_accuracy']:.1%}",
                file=sys.stderr,
            )
    one = statistics.median(r["examples_per_second"] for r in results[1])
    many = statistics.median(r["examples_per_second"] for r in results[args.np])
    one_wall = statistics.median(r["n_examples"] / r["wall_seconds"] for r in results[1])
    many_wall = statistics.median(r["n_examples"] / r["wall_seconds"] for r in results[args.np])
    ratio = many / one
    summary = {
        "n_examples": args.n_examples,
        "batch_size": args.batch_size,
        "eps": args.eps,
        "repeats": args.repeats,
        "stages": results[1][0]["stages"],
        "clean_accuracy": results[1][0]["clean_accuracy"],
        "examples_per_second": {"np1": one, f"np{args.np}": many},
        "wall_examples_per_second": {"np1": one_wall, f"np{args.np}": many_wall},
        "ratio": ratio,
        "target": 0.9 * args.np,
        "meets_target": ratio >= 0.9 * args.np,
        "identical_per_example_results": True,
    }
    print(
        f"AutoAttack examples/s: np 1 {one:.3f}, np {args.np} {many:.3f}, ratio {ratio:.2f} "
        f"(target >= {0.9 * args.np:.1f}); wall clock incl. launch: {one_wall:.3f} vs {many_wall:.3f}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
