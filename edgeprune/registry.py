"""One registry per kind of pluggable part (after timm's `register_model`): a name is written once, where the
part is defined, and the CLI's choices, the config's validation and the lookups all read it from here.

Runners are registered lazily (module path and class name), because importing one may need a runtime that is
not installed (TensorRT on a CPU host): the name must be listed without importing it."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T | tuple[str, str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@POLICIES.register("latency-sensitive") class LatencySensitivePolicy: ...`."""
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj
        return add

    def register_lazy(self, name: str, module: str, attr: str) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = (module, attr)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}")
        item = self._items[name]
        if isinstance(item, tuple):
            item = getattr(importlib.import_module(item[0]), item[1])
            self._items[name] = item
        return item  # type: ignore[return-value]

    def names(self) -> list[str]:
        self._load_all()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_all()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_all(self) -> None:
        """Eager registries fill as their defining modules are imported: import them on first use."""
        for module in _DEFINED_IN.get(self.kind, ()):
            importlib.import_module(module)


# Where each eager kind is defined: importing these modules fills the registries.
_DEFINED_IN: dict[str, tuple[str, ...]] = {
    "policy": ("edgeprune.pipeline.policies",),
    "criterion": ("edgeprune.pruning.importance",),
    "allocation": ("edgeprune.pruning.allocation",),
    "runner": ("edgeprune.backends",),
}

POLICIES: Registry[Any] = Registry("policy")
CRITERIA: Registry[Any] = Registry("criterion")
ALLOCATIONS: Registry[Any] = Registry("allocation")
RUNNERS: Registry[Any] = Registry("runner")


def choice(registry: Registry[Any], *extra: str):
    """A click.Choice over a registry's names, read when the CLI parses or prints help, not when it is imported
    (listing criteria and allocations imports torch, which `edgeprune devices` need not pay for)."""
    import click

    class _RegistryChoice(click.Choice):
        def __init__(self) -> None:
            super().__init__([])

        @property
        def choices(self):  # type: ignore[override]
            return [*extra, *registry.names()]

        @choices.setter
        def choices(self, value) -> None:
            pass

    return _RegistryChoice()
