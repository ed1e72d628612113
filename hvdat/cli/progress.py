"""Rich rendering of worker events at the CLI edge: one kind of live progress bar on a terminal, fed by training
(with one line per epoch) and by evaluation; and the `--json-events` line stream for scripts."""

from __future__ import annotations

import datetime
import json
from typing import IO, Any, Dict, List, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text


class EtaColumn(ProgressColumn):
    """The time to finish that the launcher estimated from this run's own work (the events' `eta_seconds`): rich's
    own estimate would count a resumed run's earlier epochs as done now, and the pauses between epochs not at all."""

    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        if eta is None:
            return Text("eta -:--:--", style="progress.remaining")
        return Text(f"eta {datetime.timedelta(seconds=int(round(eta)))}", style="progress.remaining")


def progress_bar(console: Console, *columns: ProgressColumn, counter: Optional[ProgressColumn] = None) -> Progress:
    """Description, bar, done/total (or the caller's `counter`), the caller's own columns, elapsed time and the
    time to finish; off when `console` is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        counter or MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        EtaColumn(),
        console=console,
        disable=not console.is_terminal,
    )


class EventProgress:
    """A progress bar fed with a job's events (`handle`), live inside a `with` block."""

    def __init__(self, console: Console, *columns: ProgressColumn, counter: Optional[ProgressColumn] = None):
        self.console = console
        self.progress = progress_bar(console, *columns, counter=counter)
        self.task: Optional[int] = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def handle(self, event: Dict[str, Any]) -> None:
        raise NotImplementedError


class TrainProgress(EventProgress):
    def __init__(self, console: Console):
        super().__init__(
            console,
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[ips]:,.0f} img/s"),
            TextColumn("{task.fields[extra]}"),
        )
        self.start: Dict[str, Any] = {}

    def handle(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":  # the steps of this run only: a resumed run's bar starts empty
            self.start = event
            self.task = self.progress.add_task(
                "training", total=event["steps_total"], loss=0.0, acc=0.0, ips=0.0, extra="", eta=None
            )
            self.console.print(
                f"[dim]{event['world_size']} worker(s), global batch {event['global_batch']}, "
                f"peak lr {event['peak_lr']:.4g}, epochs {event['start_epoch'] + 1}..{event['epochs']}[/]"
            )
        elif kind == "batch" and self.task is not None:
            extra = f"{event['bytes_sent_per_step'] / 1e6:.2f} MB/step" if "bytes_sent_per_step" in event else ""
            self.progress.update(
                self.task,
                completed=event["steps_done"],
                eta=event["eta_seconds"],
                description=f"epoch {event['epoch'] + 1}/{self.start['epochs']}",
                loss=event["loss"],
                acc=event["acc"],
                ips=event["images_per_sec"],
                extra=extra,
            )
        elif kind == "epoch":
            if self.task is not None:
                self.progress.update(self.task, completed=event["steps_done"], eta=event["eta_seconds"])
            self.console.print(
                f"epoch {event['epoch']:>3}  loss {event['train_loss']:.4f}  train {event['train_acc']:.1%}  "
                f"clean {event['test_clean_acc']:.1%}  robust {percent(event['test_robust_acc'])}  "
                f"{event['images_per_sec']:,.0f} img/s  {event['seconds']:.1f}s"
            )


def percent(value: Optional[float]) -> str:
    """An accuracy for a table; `-` where it was not measured (--eval-samples 0)."""
    return "-" if value is None else f"{value:.1%}"


class EvalProgress(EventProgress):
    def __init__(self, console: Console):
        # the total is the most work left (it shrinks as examples are broken): a percentage, and the stage running
        super().__init__(console, TextColumn("{task.fields[stage]}"), counter=TextColumn("{task.percentage:>3.0f}%"))
        self.resumed = False

    def handle(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.task = self.progress.add_task("evaluating", total=event["total"], eta=None, stage="clean")
            self.console.print(
                f"[dim]{event['world_size']} worker(s), {event['n_examples']} examples, batches of at most "
                f"{event['batch_size']}, stages: {', '.join(event['stages']) or 'none'}[/]"
            )
        elif kind == "attacked" and self.task is not None:
            if event.get("resumed") and not self.resumed:
                self.resumed = True
                self.console.print("[dim]resuming finished batches from the state files[/]")
            self.progress.update(
                self.task, completed=event["done"], total=event["total"], eta=event["eta_seconds"], stage=event["stage"]
            )


def epochs_table(rows: List[Dict[str, Any]], title: str = "training") -> Table:
    table = Table(title=title)
    for name in ("epoch", "train loss", "train acc", "test clean", "test robust (PGD)", "img/s", "lr", "s"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["epoch"]),
            f"{row['train_loss']:.4f}",
            f"{row['train_acc']:.1%}",
            f"{row['test_clean_acc']:.1%}",
            percent(row["test_robust_acc"]),
            f"{row['images_per_sec']:,.0f}",
            f"{row['lr']:.4g}",
            f"{row['seconds']:.1f}",
        )
    return table


class JsonEvents:
    """`--json-events`: one JSON object per line on stdout, as the job goes, for scripts. Documented in the README:

    train: `start` (epochs, start_epoch, steps_per_epoch, world_size, global_batch, peak_lr, steps_total), `progress`
    (about every 0.5 s: epoch (1-based, the one training), batch, batches, step, steps_done, loss, acc,
    images_per_sec, bytes_sent_per_step, eta_seconds), `epoch` (the metrics.jsonl entry plus eta_seconds),
    `stopped`, and last `summary` (what --json prints);
    eval: `start` (n_examples, world_size, stages, batch_size), `progress` (after each batch: stage, done, total,
    eta_seconds), and last `summary` (the report without per-example arrays)."""

    FIELDS = {
        "start": (
            "epochs",
            "start_epoch",
            "steps_per_epoch",
            "world_size",
            "global_batch",
            "peak_lr",
            "steps_total",
            "n_examples",
            "stages",
            "batch_size",
        ),
        "batch": (
            "epoch",
            "batch",
            "batches",
            "step",
            "steps_done",
            "loss",
            "acc",
            "images_per_sec",
            "bytes_sent_per_step",
            "eta_seconds",
        ),
        "attacked": ("stage", "done", "total", "eta_seconds"),
    }
    PUBLIC = {"batch": "progress", "attacked": "progress"}
    PASSED = ("epoch", "stopped", "reset")

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, kind: str, fields: Dict[str, Any]) -> None:
        self.stream.write(json.dumps({"event": kind, **fields}) + "\n")
        self.stream.flush()

    def handle(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in self.FIELDS:
            fields = {key: event[key] for key in self.FIELDS[kind] if key in event}
            if kind == "batch":
                fields["epoch"] += 1  # as the progress bar and metrics.jsonl count epochs
            self.write(self.PUBLIC.get(kind, kind), fields)
        elif kind in self.PASSED:
            self.write(kind, {key: value for key, value in event.items() if key not in ("event", "steps_done")})
