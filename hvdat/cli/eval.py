"""`hvdat eval`: options from EvalConfig and LaunchSpec, a live progress bar, the report table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import typer
from rich.table import Table
from typing_extensions import Annotated

from ..attacks.budget import format_eps
from ..eval.config import EvalConfig
from ..launch import LaunchSpec
from ..launch.spec import ELASTIC_OPTIONS
from .allocation import slurm_hosts
from .app import app, err, out
from .options import DryRun, Json, JsonEventsFlag, json_modes, with_options
from .progress import EvalProgress


@app.command("eval")
@with_options(spec=ELASTIC_OPTIONS)
def eval_command(
    request: EvalConfig,
    spec: LaunchSpec,
    target: Annotated[
        Optional[str],
        typer.Argument(
            help="The model: a run directory (best.pt, else last.pt) or hvdat checkpoint; a TorchScript or "
            "torch.export file; package.module:factory (with --weights, --model-args); a torchvision name with "
            "--weights; a RobustBench checkpoint MODEL_DIR/DATASET/THREAT/NAME.pt.",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        Optional[Tuple[Path, Path]],
        typer.Option(help="Compare two reports point by point (A.json B.json) instead of evaluating.", metavar="A B"),
    ] = None,
    dry_run: DryRun = False,
    as_json: Json = False,
    json_events: JsonEventsFlag = False,
) -> None:
    """Evaluate robustness with AutoAttack, PGD, CW, FGSM, ... sharded over Horovod ranks; or compare two reports."""
    from ..errors import UsageError
    from ..eval.run import eval_launch, prepare, run_eval

    if compare is not None:
        compare_command(*compare, as_json)
        return
    if target is None:
        raise UsageError("missing TARGET, the model to evaluate", "see hvdat eval --help")

    spec = slurm_hosts(spec)
    cfg = prepare(Path(target), request.replace(np=spec.np))
    launch = eval_launch(cfg, spec)
    if dry_run:
        out.print(launch.display(), highlight=False, soft_wrap=True)
        return
    stream = json_modes(as_json, json_events, out.file)
    with EvalProgress(err) as progress:

        def handle(event: dict) -> None:
            progress.handle(event)
            if stream is not None:
                stream.handle(event)

        report = run_eval(cfg, launch, handle)
    if as_json:
        out.print_json(json.dumps({k: v for k, v in report.items() if k != "examples"}))
        return
    if stream is not None:
        stream.write("summary", {k: v for k, v in report.items() if k != "examples"})
        return
    out.print(report_table(report))
    for departure in report["departures"]:
        err.print(f"[yellow]departure from the reference:[/] {departure}", highlight=False)
    for entry in report["sweep"]:
        for flag, value in entry["sanity"].items():
            if value["raised"]:
                err.print(
                    f"[bold yellow]warning[/] ({flag}, eps {format_eps(entry['eps'], report['norm'])}): "
                    f"{value['detail']}",
                    highlight=False,
                )
    err.print(f"[dim]report: {cfg.out}[/]", highlight=False)


def compare_command(a: Path, b: Path, as_json: bool) -> None:
    from ..eval.compare import compare_reports, load_report

    result = compare_reports(load_report(a), load_report(b))
    if as_json:
        out.print_json(json.dumps(result))
        return
    for entry in result["sweep"]:
        table = Table(
            title=f"{a} (A) vs {b} (B), eps {entry['eps']:.4g}: {entry['compared']} examples, "
            f"robust {entry['robust_a']} vs {entry['robust_b']}, {entry['disagree']} disagree"
        )
        for column in ("index", "label", "A: broken by", "B: broken by"):
            table.add_column(column, justify="right")
        for row in entry["examples"]:
            table.add_row(str(row["index"]), str(row["label"]), str(row["a"] or "robust"), str(row["b"] or "robust"))
        if entry["examples"]:
            out.print(table)
        else:
            out.print(table.title, highlight=False)
        stages = ", ".join(f"{s} {n}" for s, n in entry["stage_disagreements"].items())
        out.print(f"disagreements after each stage: {stages}", highlight=False)
    if result["only_in_a"] or result["only_in_b"]:
        out.print(f"examples in one report only: A {result['only_in_a']}, B {result['only_in_b']}", highlight=False)
    out.print("identical per-example results" if result["identical"] else "the reports disagree", highlight=False)


def report_table(report: Dict[str, Any]) -> Table:
    norm = report["norm"]
    name = report["attack"] + (f" ({report['version']})" if report.get("version") else "")
    table = Table(
        title=f"hvdat eval: {name}, {norm}, {report['n_examples']} examples, "
        f"{report['world_size']} worker(s), {report['seconds']:.1f} s"
    )
    table.add_column("")
    for entry in report["sweep"]:
        table.add_column(f"eps {format_eps(entry['eps'], norm)}", justify="right")
    table.add_row("clean accuracy", *[f"{report['clean_accuracy']:.2%}"] * len(report["sweep"]))
    for stage in report["stages"]:
        table.add_row(f"  after {stage}", *[f"{e['stages'][stage]:.2%}" for e in report["sweep"]])
    table.add_row("[bold]robust accuracy[/]", *[f"[bold]{e['robust_accuracy']:.2%}[/]" for e in report["sweep"]])
    table.add_row(
        "max perturbation",
        *[f"{e['max_perturbation']:.4g}" + ("" if e["perturbation_ok"] else " !") for e in report["sweep"]],
    )
    return table
