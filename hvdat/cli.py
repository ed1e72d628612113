"""The `hvdat` command line (Typer app only: commands parse options and call plain functions)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from . import __version__
from . import options as opt
from .errors import HvdatError, UsageError
from .launch import LaunchSpec

app = typer.Typer(help="Distributed adversarial training on Horovod.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False,
                  add_completion=False)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        out.print(f"hvdat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Distributed adversarial training (DAT) on Horovod: PGD/FGSM/TRADES, LAMB, compressed gradients."""


@app.command()
@opt.launch_options
def train(
    spec: LaunchSpec = LaunchSpec(),  # the launch options (opt.LAUNCH_OPTIONS), gathered
    min_np: Annotated[Optional[int], typer.Option("--min-np", help="Elastic (Gloo): keep training while at least "
                                                  "this many workers are alive.", rich_help_panel=opt.CLUSTER)] = None,
    max_np: Annotated[Optional[int], typer.Option("--max-np", help="Elastic: grow up to this many workers.",
                                                  rich_help_panel=opt.CLUSTER)] = None,
    host_discovery_script: Annotated[Optional[Path], typer.Option(
        help="Elastic: executable printing the usable host:slots, one per line.", rich_help_panel=opt.CLUSTER)] = None,
    commit_every: Annotated[int, typer.Option(help="Elastic: batches between state commits (a lost worker costs "
                                                   "at most this many).", rich_help_panel=opt.CLUSTER)] = 10,
    dry_run: opt.DryRun = False,
    dataset: opt.Dataset = "digits",
    data_dir: opt.DataDir = None,
    train_samples: Annotated[int, typer.Option(help="Use a fixed random subset of the training set (0: all).",
                                               rich_help_panel=opt.DATA)] = 0,
    test_samples: Annotated[int, typer.Option(help="Use a fixed random subset of the test set (0: all).",
                                              rich_help_panel=opt.DATA)] = 0,
    augment: Annotated[bool, typer.Option(help="Dataset-appropriate augmentation (crop and flip for CIFAR).",
                                          rich_help_panel=opt.DATA)] = True,
    arch: opt.Arch = "small-cnn",
    attack: Annotated[str, typer.Option(help=opt.ATTACK_HELP, rich_help_panel=opt.ATTACK)] = "pgd",
    eps: opt.Eps = "8/255",
    alpha: Annotated[Optional[str], typer.Option(help="Attack step size (default: the attack's own, e.g. "
                                                      "2.5*eps/steps for PGD, 1.25*eps for FGSM-RS).",
                                                 rich_help_panel=opt.ATTACK)] = None,
    steps: Annotated[int, typer.Option(help="PGD/TRADES attack steps.", rich_help_panel=opt.ATTACK)] = 10,
    norm: opt.Norm = "linf",
    random_start: Annotated[bool, typer.Option(help="Start PGD from a random point in the eps-ball.",
                                               rich_help_panel=opt.ATTACK)] = True,
    trades_beta: Annotated[float, typer.Option(help="TRADES' robustness weight.",
                                               rich_help_panel=opt.ATTACK)] = 6.0,
    clean_weight: Annotated[float, typer.Option(help="DAT's mixed loss: λ·CE(clean) + CE(adv).",
                                                rich_help_panel=opt.ATTACK)] = 0.0,
    attack_bn: Annotated[str, typer.Option(help="BatchNorm during the attack: train (batch stats, running stats "
                                                "frozen) or eval.", rich_help_panel=opt.ATTACK)] = "train",
    eval_samples: Annotated[int, typer.Option(help="Test images attacked with PGD after each epoch.",
                                              rich_help_panel=opt.ATTACK)] = 512,
    eval_steps: Annotated[int, typer.Option(help="PGD steps for that per-epoch robust accuracy.",
                                            rich_help_panel=opt.ATTACK)] = 10,
    epochs: Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=opt.OPTIM)] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size per worker.", rich_help_panel=opt.OPTIM)] = 128,
    lr: Annotated[float, typer.Option(help="Peak LR for a global batch of --lr-base-batch.",
                                      rich_help_panel=opt.OPTIM)] = 0.1,
    lr_base_batch: Annotated[int, typer.Option(help="Global batch that --lr is meant for.",
                                               rich_help_panel=opt.OPTIM)] = 128,
    lr_scaling: Annotated[str, typer.Option(help="Scale LR with global batch: linear, sqrt or none.",
                                            rich_help_panel=opt.OPTIM)] = "linear",
    optimizer: Annotated[str, typer.Option(help=opt.OPTIMIZER_HELP, rich_help_panel=opt.OPTIM)] = "sgd",
    momentum: Annotated[float, typer.Option(rich_help_panel=opt.OPTIM)] = 0.9,
    nesterov: Annotated[bool, typer.Option(rich_help_panel=opt.OPTIM)] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (not on BN or biases).",
                                                rich_help_panel=opt.OPTIM)] = 5e-4,
    schedule: Annotated[str, typer.Option(help=opt.SCHEDULE_HELP, rich_help_panel=opt.OPTIM)] = "cosine",
    warmup_epochs: Annotated[float, typer.Option(help="Linear LR warm-up epochs.",
                                                 rich_help_panel=opt.OPTIM)] = 0.0,
    compression: Annotated[str, typer.Option(help=opt.COMPRESSION_HELP, rich_help_panel=opt.CLUSTER)] = "none",
    threads: opt.Threads = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: config.json, metrics.jsonl, last.pt, "
                                                        "best.pt, logs/.", rich_help_panel=opt.OUTPUT)]
    = Path("runs/latest"),
    seed: opt.Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out/last.pt.",
                                         rich_help_panel=opt.OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an --out that holds a run.",
                                            rich_help_panel=opt.OUTPUT)] = False,
    extra_data: Annotated[Optional[Path], typer.Option(help="Pseudo-labelled images (.npz from `hvdat pseudo-label`) "
                                                           "mixed into every batch.", rich_help_panel=opt.DATA)]
    = None,
    extra_fraction: Annotated[float, typer.Option(help="Share of each batch taken from --extra-data.",
                                                  rich_help_panel=opt.DATA)] = 0.5,
    co_guard: Annotated[bool, typer.Option("--co-guard", help="Catastrophic-overfitting guard: a PGD check on fixed "
                                                              "training images each epoch; on collapse roll back and "
                                                              "switch attack.", rich_help_panel=opt.ATTACK)] = False,
    co_guard_samples: Annotated[int, typer.Option(help="Training images the guard attacks.",
                                                  rich_help_panel=opt.ATTACK)] = 256,
    co_guard_ratio: Annotated[float, typer.Option(help="Collapse: check accuracy below this fraction of its best.",
                                                  rich_help_panel=opt.ATTACK)] = 0.5,
    co_guard_fallback: Annotated[str, typer.Option(help="Attack after a collapse (the same as --attack: half its "
                                                        "step).", rich_help_panel=opt.ATTACK)] = "pgd",
    co_guard_steps: Annotated[int, typer.Option(help="Steps of the fallback attack.",
                                                rich_help_panel=opt.ATTACK)] = 3,
    amp: Annotated[str, typer.Option(help="Mixed precision for the training step: none, bf16 or fp16 (with a "
                                          "GradScaler).", rich_help_panel=opt.FAST)] = "none",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="channels_last memory format.",
                                                rich_help_panel=opt.FAST)] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model for the training step.",
                                                rich_help_panel=opt.FAST)] = False,
    as_json: opt.Json = False,
) -> None:
    """Train a model with adversarial examples on one machine or a Horovod cluster."""
    from .config import TrainConfig, parse_eps
    from .train_run import run_training

    config = TrainConfig(
        dataset=dataset, data_dir=str(data_dir) if data_dir else None, train_samples=train_samples,
        test_samples=test_samples, augment=augment, arch=arch, attack=attack, eps=parse_eps(eps, norm=norm),
        alpha=parse_eps(alpha, "alpha", norm) if alpha is not None else None, steps=steps, norm=norm,
        random_start=random_start, trades_beta=trades_beta, clean_weight=clean_weight, attack_bn=attack_bn,
        eval_samples=eval_samples, eval_steps=eval_steps, epochs=epochs, batch_size=batch_size, lr=lr,
        lr_base_batch=lr_base_batch, lr_scaling=lr_scaling, optimizer=optimizer, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
        compression=compression, seed=seed, threads=threads, out=str(out_dir), resume=resume, np=spec.np,
        commit_every=commit_every, extra_data=str(extra_data) if extra_data else None, extra_fraction=extra_fraction,
        co_guard=co_guard, co_guard_samples=co_guard_samples, co_guard_ratio=co_guard_ratio,
        co_guard_fallback=co_guard_fallback, co_guard_steps=co_guard_steps, amp=amp, channels_last=channels_last,
        compile=compile_model)
    spec = dataclasses.replace(spec, min_np=min_np, max_np=max_np, host_discovery_script=str(
        host_discovery_script) if host_discovery_script else None)
    run_training(config, spec, dry_run=dry_run, overwrite=overwrite, as_json=as_json, out=out, err=err)


@app.command("pseudo-label")
def pseudo_label(
    model: Annotated[Path, typer.Option(help="Run directory (or checkpoint file) of a standard model.")],
    data_dir: Annotated[Path, typer.Option(help="Folder of unlabeled images (any depth; folder names ignored).")],
    out_path: Annotated[Path, typer.Option("--out", help="The .npz to write (for `hvdat train --extra-data`).")],
    which: Annotated[str, typer.Option("--checkpoint", help="last.pt or best.pt of the run.")] = "last.pt",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    limit: Annotated[int, typer.Option(help="Label only the first N images in sorted order (0: all).")] = 0,
    threads: Annotated[int, typer.Option(help="Torch threads per worker (0: cores / workers per host).")] = 0,
    np: opt.Np = 1,
    hosts: opt.Hosts = None,
    hostfile: opt.Hostfile = None,
    launcher: opt.Launcher = "gloo",
    as_json: opt.Json = False,
) -> None:
    """Label unlabeled images with a trained model, sharded over Horovod ranks (Carmon et al. 2019)."""
    from .launch import LaunchSpec
    from .pseudo_label import run_pseudo_label

    spec = LaunchSpec(np=np, hosts=hosts, hostfile=str(hostfile) if hostfile else None, launcher=launcher)
    run_pseudo_label(model=model, data_dir=data_dir, out_path=out_path, which=which, batch_size=batch_size,
                     limit=limit, threads=threads, spec=spec, as_json=as_json, out=out, err=err)


@app.command("list")
def list_registries(
    kind: Annotated[Optional[str], typer.Argument(help="models, datasets, attacks, optimizers, schedules or "
                                                       "compressors (default: all).")] = None,
) -> None:
    """List the names each option accepts."""
    from rich.table import Table

    from .registries import all_registries

    table = Table(show_header=True)
    table.add_column("kind")
    table.add_column("names")
    registries = all_registries()
    if kind is not None and kind not in registries:
        raise UsageError(f"unknown kind {kind!r}", f"choose from: {', '.join(registries)}")
    for name, registry in registries.items():
        if kind in (None, name):
            table.add_row(name, ", ".join(registry.names()))
    out.print(table)


@app.command()
def doctor(
    launcher: Annotated[Optional[List[str]], typer.Option(help="Setup to judge (repeatable): gloo or mpi.",
                                                          rich_help_panel=opt.CLUSTER)] = None,
    np: Annotated[Optional[int], typer.Option("--np", help="Workers the job will ask for (checked against the "
                                                           "slots).", rich_help_panel=opt.CLUSTER)] = None,
    hosts: opt.Hosts = None,
    hostfile: opt.Hostfile = None,
    ssh_port: opt.SshPort = None,
    ssh_identity_file: opt.SshIdentity = None,
    elastic: Annotated[bool, typer.Option("--elastic", help="Also judge elastic training (--min-np/--max-np).",
                                          rich_help_panel=opt.CLUSTER)] = False,
    as_json: opt.Json = False,
) -> None:
    """Check the Horovod build, MPI, NCCL, GPUs and hosts; exit 1 when a requested setup cannot run."""
    from .doctor import diagnose, render

    report = diagnose(launcher or ["gloo"], np, hosts, str(hostfile) if hostfile else None, ssh_port,
                      str(ssh_identity_file) if ssh_identity_file else None, elastic)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        render(report, out)
    if not report.ok:
        raise typer.Exit(1)


bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("comm")
def bench_comm(
    arch: Annotated[str, typer.Option(help="Model whose gradient shapes are exchanged (resnet50: 25.6M).")]
    = "resnet50",
    np: Annotated[int, typer.Option("--np", help="Horovod ranks on this machine.")] = 2,
    compression: Annotated[str, typer.Option(help="Comma-separated compressors, e.g. none,fp16,sign,ef-sign,"
                                                  "natural.")] = "none,fp16,sign,ef-sign,natural",
    bandwidth: Annotated[Optional[str], typer.Option(help="Shape the ranks' loopback to this rate (e.g. 1gbit) in "
                                                          "a fresh network namespace; needs root and iproute2.")]
    = None,
    steps: Annotated[int, typer.Option(help="Timed exchanges per compressor (the median is reported).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed exchanges first.")] = 1,
    launcher: opt.Launcher = "gloo",
    as_json: opt.Json = False,
) -> None:
    """Time the gradient exchange of a model's gradients per compressor, optionally over a shaped link."""
    from .bench.comm import parse_compressions, run_bench

    run_bench(arch=arch, np=np, compressions=parse_compressions(compression), bandwidth=bandwidth, steps=steps,
              warmup=warmup, launcher=launcher, as_json=as_json, out=out, err=err)
@app.command("eval")
@opt.launch_options
def eval_command(
    target: Annotated[Path, typer.Argument(help="A run directory (uses best.pt, else last.pt) or a checkpoint.")],
    attack: Annotated[str, typer.Option(help=opt.EVAL_ATTACK_HELP, rich_help_panel=opt.ATTACK)] = "autoattack",
    version: Annotated[str, typer.Option(help="AutoAttack version: standard, plus or rand.",
                                         rich_help_panel=opt.ATTACK)] = "standard",
    eps: Annotated[str, typer.Option(help="Budget in [0,1] pixels: 8/255, or a sweep 1/255,2/255,4/255,8/255.",
                                     rich_help_panel=opt.ATTACK)] = "8/255",
    norm: Annotated[str, typer.Option(help="Threat model: linf, l2 or l1.", rich_help_panel=opt.ATTACK)] = "linf",
    steps: Annotated[Optional[int], typer.Option(help="Iterations (default: the attack's reference value; "
                                                      "any change is reported).", rich_help_panel=opt.ATTACK)]
    = None,
    restarts: Annotated[Optional[int], typer.Option(help="Restarts (default: the reference value).",
                                                    rich_help_panel=opt.ATTACK)] = None,
    n_examples: Annotated[Optional[int], typer.Option(help="Evaluate the first N test images (default: 1000, "
                                                           "or all if fewer).", rich_help_panel=opt.DATA)] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per chunk; chunks are the unit of work and of "
                                                 "reproducibility.", rich_help_panel=opt.DATA)] = 50,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset (default: the run's own).",
                                                   rich_help_panel=opt.DATA)] = None,
    data_dir: opt.DataDir = None,
    spec: LaunchSpec = LaunchSpec(),  # the launch options (opt.LAUNCH_OPTIONS), gathered
    dry_run: opt.DryRun = False,
    threads: opt.Threads = 0,
    seed: opt.Seed = 0,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="The JSON report (default: "
                                                     "RUN/eval/ATTACK-NORM.json).", rich_help_panel=opt.OUTPUT)]
    = None,
    as_json: opt.Json = False,
) -> None:
    """Evaluate robustness with AutoAttack, PGD, CW, FGSM, ... sharded over Horovod ranks."""
    from .eval_run import prepare, run_eval

    config = prepare(target, attack=attack, version=version, eps=eps, norm=norm, steps=steps, restarts=restarts,
                     n_examples=n_examples, batch_size=batch_size, dataset=dataset, data_dir=data_dir, seed=seed,
                     threads=threads, out_path=out_path, np=spec.np)
    run_eval(config, spec, dry_run=dry_run, as_json=as_json, out=out, err=err)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `hvdat train` (and `hvdat eval`).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where the PNGs go (default: RUN_DIR/plots).")]
    = None,
) -> None:
    """Plot training curves (metrics.jsonl) and robust accuracy against eps (eval reports) as PNGs."""
    from .report import write_plots

    for path in write_plots(run_dir, out_dir):
        out.print(str(path), highlight=False)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: every HvdatError and usage mistake becomes one line on stderr (HVDAT_DEBUG=1: traceback)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="hvdat", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except HvdatError as exc:
        if os.environ.get("HVDAT_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors: unknown option, bad type, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            err.print(exc.format_message(), highlight=False)
            return 0
        if os.environ.get("HVDAT_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {exc.format_message()}; see 'hvdat {_command_of(argv)}--help'",
                  highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130


def _command_of(argv: Optional[List[str]]) -> str:
    args = sys.argv[1:] if argv is None else argv
    return f"{args[0]} " if args and not args[0].startswith("-") else ""


if __name__ == "__main__":
    sys.exit(main())
