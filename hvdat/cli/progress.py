"""Rich rendering of worker events at the CLI edge: one kind of live progress bar on a terminal, fed by training
(with one line per epoch) and by evaluation."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def progress_bar(console: Console, *columns: ProgressColumn) -> Progress:
    """Description, bar, done/total, the caller's own columns, elapsed and remaining time; off when `console` is not
    a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


class EventProgress:
    """A progress bar fed with a job's events (`handle`), live inside a `with` block."""

    def __init__(self, console: Console, *columns: ProgressColumn):
        self.console = console
        self.progress = progress_bar(console, *columns)
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
        if kind == "start":
            self.start = event
            total = event["steps_per_epoch"] * (event["epochs"] - event["start_epoch"])
            self.task = self.progress.add_task("training", total=total, loss=0.0, acc=0.0, ips=0.0, extra="")
            self.console.print(
                f"[dim]{event['world_size']} worker(s), global batch {event['global_batch']}, "
                f"peak lr {event['peak_lr']:.4g}, epochs {event['start_epoch'] + 1}..{event['epochs']}[/]"
            )
        elif kind == "batch" and self.task is not None:
            done = (event["epoch"] - self.start["start_epoch"]) * self.start["steps_per_epoch"] + event["batch"]
            extra = f"{event['bytes_sent_per_step'] / 1e6:.2f} MB/step" if "bytes_sent_per_step" in event else ""
            self.progress.update(
                self.task,
                completed=done,
                description=f"epoch {event['epoch'] + 1}/{self.start['epochs']}",
                loss=event["loss"],
                acc=event["acc"],
                ips=event["images_per_sec"],
                extra=extra,
            )
        elif kind == "epoch":
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
        super().__init__(console, TextColumn("examples"))

    def handle(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.task = self.progress.add_task(
                "evaluating", total=event["n_examples"], completed=event["resumed_examples"]
            )
            resumed = (
                f", resuming {event['resumed_examples']} examples from the state file"
                if event["resumed_chunks"]
                else ""
            )
            self.console.print(
                f"[dim]{event['world_size']} worker(s), {event['chunks']} chunks, stages: "
                f"{', '.join(event['stages']) or 'none'}{resumed}[/]"
            )
        elif kind == "chunk" and self.task is not None:
            self.progress.advance(self.task, event["examples"])


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
