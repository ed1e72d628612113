"""A frozen dataclass saved as JSON: the one loader and saver of every config that the CLI hands to its workers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Type, TypeVar

from .errors import UsageError

C = TypeVar("C", bound="FrozenConfig")


class FrozenConfig:
    """Mixin for a `@dataclass(frozen=True)`: to_dict/save and from_dict/load, strict about unknown keys.

    JSON has no tuples, so lists read back become tuples (every sequence field of a frozen config is a tuple).
    """

    MISSING_HINT = ""  # what to do when `load` finds no file

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def from_dict(cls: Type[C], values: Dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"config has unknown keys {unknown}", "was it written by a newer hvdat?")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def load(cls: Type[C], path: Path) -> C:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UsageError(f"no config at {path}", cls.MISSING_HINT) from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc.msg})") from None
