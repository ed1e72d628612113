"""Two evaluation reports compared point by point: where their per-example results disagree.

Each report's `examples` holds, per test index and per eps, whether the example was still robust after each stage
(`robust_after`) and the stage that broke it (`broken_by`). Two reports are compared on the indices and eps they
share, stage by stage for the stages they share, and on the final verdict (robust to the end or not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from ..errors import UsageError


def load_report(path: Path) -> Dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"no report at {path}", "point at the JSON file `hvdat eval` wrote (--out)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg})") from None
    if not isinstance(report, dict) or "robust_after" not in (report.get("examples", {}).get("by_eps") or [{}])[0]:
        raise UsageError(
            f"{path} holds no per-example record",
            "compare the JSON files written by `hvdat eval` (not its --json output, which leaves them out)",
        )
    return report


def _by_eps(report: Dict[str, Any]) -> Dict[float, Dict[str, Any]]:
    return {round(e["eps"], 9): e for e in report["examples"]["by_eps"]}


def compare_reports(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Per shared eps: how many shared examples, how many disagree on the final verdict and on each shared stage,
    and each disagreeing example (index, label, what broke it in A and in B)."""
    index_a = {i: k for k, i in enumerate(a["examples"]["index"])}
    index_b = {i: k for k, i in enumerate(b["examples"]["index"])}
    shared = sorted(set(index_a) & set(index_b))
    eps_a, eps_b = _by_eps(a), _by_eps(b)
    per_eps: List[Dict[str, Any]] = []
    for eps in sorted(set(eps_a) & set(eps_b)):
        ea, eb = eps_a[eps], eps_b[eps]
        stages = [s for s in ea["robust_after"] if s in eb["robust_after"]]
        final_a, final_b = (list(e["robust_after"].values())[-1] for e in (ea, eb))
        stage_disagreements = {
            s: sum(ea["robust_after"][s][index_a[i]] != eb["robust_after"][s][index_b[i]] for i in shared)
            for s in stages
        }
        examples = [
            {
                "index": i,
                "label": a["examples"]["label"][index_a[i]],
                "a": ea["broken_by"][index_a[i]],
                "b": eb["broken_by"][index_b[i]],
                "robust_a": final_a[index_a[i]],
                "robust_b": final_b[index_b[i]],
            }
            for i in shared
            if final_a[index_a[i]] != final_b[index_b[i]]
            or any(ea["robust_after"][s][index_a[i]] != eb["robust_after"][s][index_b[i]] for s in stages)
        ]
        per_eps.append(
            {
                "eps": ea["eps"],
                "compared": len(shared),
                "robust_a": sum(final_a[index_a[i]] for i in shared),
                "robust_b": sum(final_b[index_b[i]] for i in shared),
                "disagree": sum(final_a[index_a[i]] != final_b[index_b[i]] for i in shared),
                "stage_disagreements": stage_disagreements,
                "examples": examples,
            }
        )
    if not shared or not per_eps:
        raise UsageError("the two reports share no test index and eps", "compare evaluations of the same test split")
    return {
        "a": {"checkpoint": a.get("checkpoint"), "attack": a.get("attack"), "norm": a.get("norm")},
        "b": {"checkpoint": b.get("checkpoint"), "attack": b.get("attack"), "norm": b.get("norm")},
        "only_in_a": len(set(index_a) - set(index_b)),
        "only_in_b": len(set(index_b) - set(index_a)),
        "sweep": per_eps,
        "identical": all(not e["examples"] for e in per_eps),
    }
