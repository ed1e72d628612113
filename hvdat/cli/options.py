"""Typer options built from the config dataclasses' option declarations (`hvdat.options`), plus the few flags that
steer a command rather than fill a config (`--dry-run`, `--json`).

`@with_options()` on a command replaces each parameter annotated with a config dataclass (`config: TrainConfig`,
`spec: LaunchSpec`) by that dataclass's declared options, and calls the command with the dataclass built from them.
`given(cls)` and `rebase(base)` then tell which options the user typed and lay them over a saved config (`hvdat train
--config RUN/config.json`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, TypeVar

import typer
from typing_extensions import Annotated

from ..options import CLUSTER, OUTPUT, Option, declared_options

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print the exact launch command and exit.", rich_help_panel=CLUSTER)
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as JSON on stdout (progress goes to stderr).", rich_help_panel=OUTPUT
    ),
]


CONTEXT = "hvdat_context"  # the click context, handed to the wrapper (typer passes a parameter typed Context)
# this invocation: its click context and {config class: {option name: its command-line value}}
_INVOCATION: contextvars.ContextVar = contextvars.ContextVar("hvdat_invocation")
C = TypeVar("C")


JsonEventsFlag = Annotated[
    bool,
    typer.Option(
        "--json-events",
        help="Stream JSON lines on stdout as the job goes (start, progress with eta_seconds, epoch, summary).",
        rich_help_panel=OUTPUT,
    ),
]


def _typer_option(name: str, declared: Option, field_type: Any, default: Any) -> Any:
    cli_type = declared.cli_type or field_type
    if declared.cli_type is not None and default is None:
        cli_type = Optional[declared.cli_type]
    return Annotated[
        cli_type,
        typer.Option(
            *declared.flags,
            help=declared.help_text(),
            rich_help_panel=declared.panel or None,
            envvar=declared.envvar,
            show_envvar=declared.envvar is not None,
        ),
    ]


def parameters(cls: type, exclude: Sequence[str] = ()) -> List[inspect.Parameter]:
    """One keyword-only parameter per declared option of `cls` (required where the field has no default)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = []
    for name, declared in declared_options(cls).items():
        if name in exclude:
            continue
        default = fields[name].default
        if declared.cli_default is not None:
            default = declared.cli_default
        elif fields[name].default_factory is not dataclasses.MISSING:
            default = fields[name].default_factory()
        annotation = _typer_option(name, declared, hints[name], None if default is dataclasses.MISSING else default)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
            )
        )
    return params


def build(cls: type, values: Dict[str, Any]) -> Any:
    """The dataclass from its options' command-line values (each converted by its declaration)."""
    declared = declared_options(cls)
    return cls(**{name: spec.to_field_value(values[name], values) for name, spec in declared.items() if name in values})


def with_options(**exclude: Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Expand the command's config-dataclass parameters into their options; `exclude=dict(spec=(...))` leaves
    some of a dataclass's options out of this command."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        configs: Dict[str, type] = {}
        expanded_names: Dict[str, List[str]] = {}
        params: List[inspect.Parameter] = []
        seen: Dict[str, str] = {}
        for param in signature.parameters.values():
            if dataclasses.is_dataclass(param.annotation) and declared_options(param.annotation):
                configs[param.name] = param.annotation
                expanded_names[param.name] = []
                for expanded in parameters(param.annotation, exclude.get(param.name, ())):
                    expanded_names[param.name].append(expanded.name)
                    if expanded.name in seen:
                        raise TypeError(
                            f"option {expanded.name!r} declared by both {seen[expanded.name]} and "
                            f"{param.annotation.__name__}"
                        )
                    seen[expanded.name] = param.annotation.__name__
                    params.append(expanded)
            else:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        params.append(inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            built = {}
            raw: Dict[type, Dict[str, Any]] = {}
            _INVOCATION.set((values.pop(CONTEXT), raw))
            for name, cls in configs.items():
                own = {key: values.pop(key) for key in expanded_names[name]}
                raw[cls] = own
                built[name] = build(cls, own)
            return command(**built, **values)

        run.__signature__ = signature.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def given(cls: type) -> Set[str]:
    """The options of `cls` that the user typed on this command line (not defaults, nor HVDAT_* variables)."""
    ctx, raw = _INVOCATION.get()
    # ParameterSource.COMMANDLINE, by name: typer may run its own copy of click
    return {name for name in raw.get(cls, {}) if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def rebase(base: C) -> C:
    """`base` (a saved config) with the options typed on this command line laid over it. Each typed value is
    parsed as it would be without `base`, except that what it depends on comes from `base` unless typed too
    (`--eps 0.5` over a saved `--norm l2` is an L2 budget)."""
    cls = type(base)
    raw = _INVOCATION.get()[1].get(cls, {})
    declared = declared_options(cls)
    typed = given(cls)
    merged = {**{name: getattr(base, name) for name in declared}, **{name: raw[name] for name in typed}}
    return dataclasses.replace(base, **{name: declared[name].to_field_value(raw[name], merged) for name in typed})


def json_modes(as_json: bool, json_events: bool, stream):
    """The line stream for --json-events (None without it); --json and --json-events both print on stdout."""
    from ..errors import UsageError
    from .progress import JsonEvents

    if as_json and json_events:
        raise UsageError("give --json or --json-events, not both", "--json-events ends with the --json summary")
    return JsonEvents(stream) if json_events else None
