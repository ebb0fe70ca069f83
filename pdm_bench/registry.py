"""Registries of named, lazily imported components, fed by built-ins and entry-point plugins: defenses, detectors,
threat models (here) and the gray box's attacks (``pdm_bench.threat_models.attack_specs``). One contract for all:
a name is looked up without importing anything else, unknown names get a did-you-mean error, a plugin that fails to
load is listed as BROKEN (the others keep working), and a plugin cannot take a built-in's name.

No global state: each ``*_registry()`` call builds a fresh one (the CLI one per command, tests one per test).
Built-ins are named here as ``module:attribute`` strings, so this core module imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pdm_bench.errors import UserError, unknown_name_error

if TYPE_CHECKING:
    from pdm_bench.defense import Defense
    from pdm_bench.detectors import Detector
    from pdm_bench.threat import ThreatModel

T = TypeVar("T")

DEFENSE_ENTRY_POINT_GROUP = "pdm_bench.defenses"
DETECTOR_ENTRY_POINT_GROUP = "pdm_bench.detectors"
THREAT_MODEL_ENTRY_POINT_GROUP = "pdm_bench.threat_models"

BUILTIN_DEFENSES: dict[str, str] = {
    "baseline": "pdm_bench.defenses.baseline:Baseline",
    "rce": "pdm_bench.defenses.rce:ReverseCrossEntropy",
    "siamese_rvl": "pdm_bench.defenses.siamese_rvl:SiameseRVL",
    "pdm": "pdm_bench.defenses.pdm:PDM",
}
BUILTIN_DETECTORS: dict[str, str] = {"kde": "pdm_bench.detectors:KDEDetector",
                                     "mahalanobis": "pdm_bench.embedding_detectors:MahalanobisDetector",
                                     "lid": "pdm_bench.embedding_detectors:LIDDetector"}
BUILTIN_THREAT_MODELS: dict[str, str] = {  # the report's order: Tables 2, 3, 4
    "gray": "pdm_bench.threat_models.gray:GrayBox",
    "white": "pdm_bench.threat_models.white:WhiteBox",
    "black": "pdm_bench.threat_models.black:BlackBox",
    "adaptive": "pdm_bench.threat_models.adaptive:Adaptive",
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

    def add(self, name: str, value: object) -> None:
        """Register an object that is already loaded (cheap data, e.g. an attack's parameters)."""
        self.register(name, "", origin="built-in")
        self._entries[name].value = value

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
        """Registered names: built-ins in their order, then plugins in theirs."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def require(self, name: str) -> None:
        """A did-you-mean error for an unknown name, without importing anything (so a typo fails at once)."""
        if name not in self._entries:
            raise unknown_name_error(self.kind, name, self._entries)

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
            yield self.status(name)
        yield from self._rejected

    def status(self, name: str) -> EntryStatus:
        """One entry, loaded (a broken plugin shows its error)."""
        entry = self._resolve(self._entries[name])
        return EntryStatus(name, entry.origin, entry.error, entry.value)

    def targets(self) -> list[tuple[str, str, str]]:
        """(name, ``module:attribute`` or '' for an added object, origin) of each entry, importing nothing."""
        return [(e.name, e.target, e.origin) for e in self._entries.values()]

    def rejected(self) -> list[EntryStatus]:
        """Plugins refused because their name was taken."""
        return list(self._rejected)

    def _resolve(self, entry: _Entry) -> _Entry:
        if entry.value is None and entry.error is None:
            try:
                loaded = entry.loader()
                entry.value = self._check(entry.name, loaded) if self._check else loaded
            except (Exception, SystemExit) as error:  # a plugin may fail in any way, even sys.exit(): report it,
                # keep the others usable
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


def _checker(base: str, group: str) -> Callable[[str, object], type]:
    """Check that a plugin provides a subclass of ``base`` ("module:Class") whose ``name`` is its entry point's."""

    def check(name: str, value: object) -> type:
        expected = _import_target(base)
        if not (isinstance(value, type) and issubclass(value, expected)):  # type: ignore[arg-type]
            raise TypeError(f"expected a subclass of {base.replace(':', '.')}, got {value!r}")
        if getattr(value, "name", None) != name:
            raise TypeError(f"expected the class attribute name = {name!r} (the entry point's name in {group}), got "
                            f"{getattr(value, 'name', None)!r}")
        return value

    return check


def _registry(kind: str, base: str, builtins: dict[str, str], group: str, plugins: bool) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind, check=_checker(base, group))
    for name, target in builtins.items():
        registry.register(name, target)
    if plugins:
        registry.load_entry_points(group)
    return registry


def defense_registry(*, plugins: bool = True) -> Registry[type[Defense]]:
    """A fresh registry of the built-in defenses plus, unless ``plugins=False``, the installed plugins."""
    return _registry("defense", "pdm_bench.defenses.base:Defense", BUILTIN_DEFENSES, DEFENSE_ENTRY_POINT_GROUP, plugins)


def detector_registry(*, plugins: bool = True) -> Registry[type[Detector]]:
    """Detectors: ``kde`` plus installed plugins (subclasses of :class:`pdm_bench.detectors.Detector`)."""
    return _registry("detector", "pdm_bench.detectors:Detector", BUILTIN_DETECTORS, DETECTOR_ENTRY_POINT_GROUP,
                     plugins)


def threat_model_registry(*, plugins: bool = True) -> Registry[type[ThreatModel]]:
    """Threat models: gray, white, black plus installed plugins (subclasses of :class:`pdm_bench.threat.ThreatModel`)."""
    return _registry("threat model", "pdm_bench.threat:ThreatModel", BUILTIN_THREAT_MODELS,
                     THREAT_MODEL_ENTRY_POINT_GROUP, plugins)
