"""A tiny named registry: the single source of the CLI's choices for each kind (models, datasets, ...)."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, fallback: Optional[Callable[[str], Optional[T]]] = None, extra_hint: str = ""):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._fallback = fallback  # resolves names outside the registry (e.g. any torchvision model)
        self._extra_hint = extra_hint

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return add

    def add(self, name: str, item: T) -> T:
        return self.register(name)(item)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if self._fallback is not None:
            found = self._fallback(name)
            if found is not None:
                return found
        choices = ", ".join(self.names())
        raise UsageError(f"unknown {self.kind} {name!r}", f"choose from: {choices}{self._extra_hint}")

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UsageError:
            return False
        return True

    def names(self) -> List[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
