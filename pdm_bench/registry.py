"""A small registry of named, lazily imported objects, fed by built-ins and entry-point plugins.

No global state: :func:`defense_registry` builds a fresh one each call (the CLI builds one per command,
tests one per test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from pdm_bench.errors import UserError, unknown_name_error

T = TypeVar("T")

DEFENSE_ENTRY_POINT_GROUP = "pdm_bench.defenses"

BUILTIN_DEFENSES: dict[str, str] = {
    "baseline": "pdm_bench.defenses.baseline:Baseline",
    "rce": "pdm_bench.defenses.rce:ReverseCrossEntropy",
    "siamese_rvl": "pdm_bench.defenses.siamese_rvl:SiameseRVL",
    "pdm": "pdm_bench.defenses.pdm:PDM",
}


@dataclass
class _Entry:
    name: str
    target: str  # "module:attribute"
    origin: str  # "built-in" or "plugin <dist> (entry point ...)"
    loader: Callable[[], object]
    value: object | None = None
    error: str | None = None


@dataclass(frozen=True)
class EntryStatus:
    """What ``pdm-bench list`` shows of one entry."""

    name: str
    origin: str
    error: str | None
    value: object | None


class Registry(Generic[T]):
    """Name -> object, imported on first use; ``check`` validates what a plugin provides."""

    def __init__(self, kind: str, *, check: Callable[[str, object], T] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, _Entry] = {}
        self._rejected: list[EntryStatus] = []

    def register(self, name: str, target: str, *, origin: str = "built-in") -> None:
        """Register ``module:attribute`` under ``name``, imported lazily."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered (by {self._entries[name].origin})")
        self._entries[name] = _Entry(name, target, origin, lambda: _import_target(target))

    def load_entry_points(self, group: str) -> None:
        """Add every entry point of ``group``; one that shadows an existing name is rejected, not fatal."""
        for point in entry_points(group=group):
            origin = _describe(point)
            if point.name in self._entries:
                error = f"rejected: the name is already taken by {self._entries[point.name].origin}"
                self._rejected.append(EntryStatus(point.name, origin, error, None))
                continue
            self._entries[point.name] = _Entry(point.name, point.value, origin, point.load)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names and broken plugins raise :class:`UserError`."""
        entry = self._entries.get(name)
        if entry is None:
            raise unknown_name_error(self.kind, name, self._entries)
        self._resolve(entry)
        if entry.error is not None:
            raise UserError(f"The {self.kind} '{name}' ({entry.origin}) could not be loaded: {entry.error}")
        return entry.value  # type: ignore[return-value]

    def statuses(self) -> Iterator[EntryStatus]:
        """Every entry, loaded (so broken plugins show their error), then the rejected ones."""
        for name in self.names():
            entry = self._resolve(self._entries[name])
            yield EntryStatus(name, entry.origin, entry.error, entry.value)
        yield from self._rejected

    def _resolve(self, entry: _Entry) -> _Entry:
        if entry.value is None and entry.error is None:
            try:
                loaded = entry.loader()
                entry.value = self._check(entry.name, loaded) if self._check else loaded
            except Exception as error:  # a plugin may fail in any way; report it, keep the others usable
                entry.error = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        return entry


def _import_target(target: str) -> object:
    module_name, _, attribute = target.partition(":")
    value: object = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else []:
        value = getattr(value, part)
    return value


def _describe(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    source = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"plugin from {source} ({point.name} = {point.value})"


def _check_defense(name: str, value: object) -> type:
    from pdm_bench.defenses.base import Defense

    if not (isinstance(value, type) and issubclass(value, Defense)):
        raise TypeError(f"expected a subclass of pdm_bench.defenses.base.Defense, got {value!r}")
    if getattr(value, "name", None) != name:
        raise TypeError(f"expected the class attribute name = {name!r} (the entry point's name), got {getattr(value, 'name', None)!r}")
    return value


def defense_registry(*, plugins: bool = True) -> Registry[type]:
    """A fresh registry of the built-in defenses plus, unless ``plugins=False``, the installed plugins."""
    registry: Registry[type] = Registry("defense", check=_check_defense)
    for name, target in BUILTIN_DEFENSES.items():
        registry.register(name, target)
    if plugins:
        registry.load_entry_points(DEFENSE_ENTRY_POINT_GROUP)
    return registry
