"""Re-evaluate the runs behind bench JSON files in place (after a change of the evaluation protocol), and redraw
their bar plots: `python bench/reevaluate.py docs/results/{methods,scaling,compression,co_guard,unlabeled}.json`.

Each row's run directory is read from its `command` (`--out RUN`); the PGD-20 (and AutoAttack) settings come from
the JSON's settings. Training is not repeated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import common

FIELDS = {"methods": "method", "scaling": "setup", "compression": "compression", "co_guard": "run",
          "unlabeled": "setup"}


def main() -> None:
    for path in map(Path, sys.argv[1:]):
        payload = json.loads(path.read_text())
        settings = payload["settings"]
        n, eps = int(settings.get("n_eval", 1000)), settings.get("eps", "8/255")
        restarts = int(settings.get("restarts") or 1)
        for row in payload["rows"]:
            run = Path(row["command"].split("--out ")[-1].split()[0])
            pgd = common.evaluate(run, "pgd", n, steps=20, restarts=restarts, eps=eps)
            row.update(clean_acc=pgd["clean_acc"], pgd20_acc=pgd["robust_acc"], pgd_eval=pgd)
            if "autoattack_acc" in row:
                aa = common.evaluate(run, "autoattack", int(settings["n_autoattack"]), eps=eps,
                                     aa_attacks=settings.get("aa_attacks", "apgd-ce,apgd-t"))
                row.update(autoattack_acc=aa["robust_acc"], autoattack_eval=aa)
        payload["reevaluated"] = {"argv": sys.argv, "machine": common.machine()}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        name = payload["bench"]
        if name in ("co_guard",):
            continue
        rows = payload["rows"]
        series = {"clean": [r["clean_acc"] for r in rows], "PGD-20": [r["pgd20_acc"] for r in rows]}
        if "autoattack_acc" in rows[0]:
            series["AutoAttack (" + settings.get("aa_attacks", "") + ")"] = [r["autoattack_acc"] for r in rows]
        if name == "scaling":
            series["scaling efficiency"] = [r["scaling_efficiency"] for r in rows]
        common.bar_plot(path.parent, name, [str(r[FIELDS[name]]).replace(", ", "\n") for r in rows], series,
                        f"{name}: re-evaluated on a random {n}-image test subset", "accuracy")
        print(path, common.markdown(rows, [FIELDS[name], "clean_acc", "pgd20_acc"] +
                                    (["autoattack_acc"] if "autoattack_acc" in rows[0] else [])), sep="\n")


if __name__ == "__main__":
    main()
