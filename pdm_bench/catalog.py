"""What ``pdm-bench list`` shows of a component (its description and options), read from its source file.

Importing a component imports torch (over a second) and often ART; reading the class from its source does not, so
the listing of the built-ins stays well under a second. Only plain declarations are read: a keyword-only dataclass
whose fields have literal defaults, a string ``description`` and, for threat models, ``params_type = SomeParams``.
Anything else (a computed default, a base class from another package) gives ``None`` and the caller imports the
component instead; tests/test_first_use.py checks that both ways agree for every built-in.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_IGNORED_BASES = {"ABC", "object", "Generic"}


class _Unreadable(Exception):
    """The declaration is not plain enough to be read without importing it."""


@dataclass(frozen=True)
class Card:
    """A component as ``pdm-bench list`` shows it."""

    description: str
    options: str  # "name=default, ..." ('' when it has none), as options.describe_options gives it


@dataclass(frozen=True)
class _Class:
    node: ast.ClassDef
    module: str


def read_card(target: str) -> Card | None:
    """The card of ``module:Class`` read from its source, or None where that is not possible (then import it)."""
    module, _, name = target.partition(":")
    try:
        found = _resolve(module, name)
        chain = _mro(found)
        description = _class_value(chain, "description")
        params = _class_value(chain, "params_type")
        options_chain = _mro(_lookup(found.module, params)) if params is not None else chain
        return Card(_text(description), _options(options_chain))
    except (_Unreadable, OSError, SyntaxError, ImportError, ValueError):
        return None


@lru_cache(maxsize=64)
def _parse(module: str) -> tuple[dict[str, ast.ClassDef], dict[str, tuple[str, str]]]:
    """A module's top-level classes, and what each ``from X import Y as Z`` binds: Z -> (X, Y)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise _Unreadable(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    classes: dict[str, ast.ClassDef] = {}
    imports: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), spec.parent) if node.level \
                else node.module
            for alias in node.names:
                imports[alias.asname or alias.name] = (source or "", alias.name)
    return classes, imports


def _resolve(module: str, name: str) -> _Class:
    classes, imports = _parse(module)
    if name in classes:
        return _Class(classes[name], module)
    if name in imports:
        return _resolve(*imports[name])
    raise _Unreadable(f"{module}:{name}")


def _lookup(module: str, expression: ast.expr) -> _Class:
    if not isinstance(expression, ast.Name):
        raise _Unreadable(ast.dump(expression))
    return _resolve(module, expression.id)


def _mro(cls: _Class) -> list[_Class]:
    """The class and its bases, most derived first (single inheritance chains and ignorable mixins only)."""
    chain = [cls]
    for base in cls.node.bases:
        if isinstance(base, ast.Name) and base.id in _IGNORED_BASES:
            continue
        if isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name) and base.value.id in _IGNORED_BASES:
            continue
        chain += [c for c in _mro(_lookup(cls.module, base)) if c not in chain]
    return chain


def _class_value(chain: list[_Class], attribute: str) -> ast.expr | None:
    """The expression assigned to a class attribute, from the most derived class that sets it."""
    for cls in chain:
        for statement in cls.node.body:
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attribute
                                                         for t in statement.targets):
                return statement.value
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                    and statement.target.id == attribute and statement.value is not None:
                return statement.value
    return None


def _text(expression: ast.expr | None) -> str:
    if expression is None:
        return ""
    if isinstance(expression, ast.Constant) and isinstance(expression.value, str):
        return expression.value
    raise _Unreadable("description")


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "dataclass" or \
                isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return True
    return False


def _options(chain: list[_Class]) -> str:
    """``name=default, ...`` of the dataclass fields along ``chain`` in dataclass order (bases first)."""
    defaults: dict[str, str | None] = {}  # None: a field with init=False
    for cls in reversed(chain):
        if not _is_dataclass(cls.node):
            if any(isinstance(s, ast.AnnAssign) for s in cls.node.body):
                raise _Unreadable(cls.node.name)  # annotations of a non-dataclass base: not plain
            continue
        for statement in cls.node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                    and not _is_class_var(statement.annotation):
                defaults[statement.target.id] = _default(statement.value, cls.module)
    return ", ".join(f"{name}={value}" for name, value in defaults.items() if value is not None)


def _is_class_var(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar")) or text.strip("'\"").startswith("ClassVar")


def _default(value: ast.expr | None, module: str) -> str | None:
    """The field's default as ``str(default)``; None for a field outside ``__init__``. A literal, or an enum member's
    ``.value`` (``Backend.TORCH.value``) where the enum assigns it a literal."""
    if value is None:
        raise _Unreadable("a field without a default")
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        if "init" in keywords and ast.literal_eval(keywords["init"]) is False:
            return None
        if "default" not in keywords:
            raise _Unreadable("field() without a literal default")
        value = keywords["default"]
    if isinstance(value, ast.Attribute) and value.attr == "value" and isinstance(value.value, ast.Attribute):
        member = value.value
        enum = _lookup(module, member.value)
        value = _class_value([enum], member.attr)
        if value is None:
            raise _Unreadable(ast.unparse(member))
    return str(ast.literal_eval(value))
