"""The state-handler registry that hvdat's per-rank elastic state registers into (used only by elastic jobs)."""

from __future__ import annotations


class StateHandler:
    def __init__(self, value):
        self.value = value

    def save(self):
        raise NotImplementedError()

    def restore(self):
        raise NotImplementedError()

    def sync(self):
        raise NotImplementedError()

    def set_value(self, value):
        self.value = value
        self.save()


_registry = []


def get_handler_registry():
    return _registry


def set_handler_registry(registry):
    global _registry
    _registry = registry
