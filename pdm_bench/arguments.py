"""Arguments of the Python API checked against their type hints where they enter: a wrong type is one line naming
the argument, the value and what is valid (a :class:`UserError`), never a raw exception from deep inside."""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pdm_bench.errors import UserError, one_line

F = TypeVar("F", bound=Callable[..., Any])


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Each parameter's hint that resolves at run time (those naming ``TYPE_CHECKING``-only classes are left out)."""
    namespace = vars(sys.modules[func.__module__])
    hints = {}
    for name, annotation in getattr(func, "__annotations__", {}).items():
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        except (NameError, AttributeError, TypeError, SyntaxError):
            continue
    hints.pop("return", None)
    return hints


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (unions, Optional, Sequence[X], Mapping, Callable, Path, Any)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, os.PathLike)
    base = origin or hint
    if base is Callable:
        return callable(value)
    if not isinstance(base, type):
        return True  # a hint this checker does not know: not checked
    if not isinstance(value, base):
        return False
    args = typing.get_args(hint)
    if base in (Sequence, list) and args and isinstance(value, Sequence):
        return not isinstance(value, (str, bytes)) and all(matches(item, args[0]) for item in value)
    return True


def describe(hint: Any) -> str:
    """``int or None``, ``str or path``: a hint in words."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(arg) for arg in typing.get_args(hint)))
    if hint is None or hint is type(None):
        return "None"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is Path:
        return "a path"
    if origin is not None:
        args = typing.get_args(hint)
        item = describe(args[0]) if args else ""
        item = f"({item})" if " or " in item else item
        inner = f" of {item}" if args and origin in (Sequence, list, tuple) else ""
        return f"a {getattr(origin, '__name__', str(origin)).lower()}{inner}"
    return getattr(hint, "__name__", str(hint))


def check_argument(owner: str, name: str, value: Any, hint: Any) -> None:
    """A :class:`UserError` when ``value`` does not match ``hint``."""
    if not matches(value, hint):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(f"{owner}: {name} must be {describe(hint)}, got {shown} ({type(value).__name__})")


def checked(func: F) -> F:
    """Check every argument of ``func`` against its hint before the call (see :func:`check_argument`)."""
    signature = inspect.signature(func)
    owner = f"{func.__module__.split('.')[0]}.{func.__qualname__}"
    hints: dict[str, Any] | None = None

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal hints
        hints = _hints(func) if hints is None else hints
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise UserError(f"{owner}: {error}") from None
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if name in hints and kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                check_argument(owner, name, value, hints[name])
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_fields(instance: Any) -> None:
    """Check a dataclass instance's fields against their hints (from its ``__post_init__``)."""
    import dataclasses

    owner = f"pdm_bench.{type(instance).__qualname__}"
    namespace = vars(sys.modules[type(instance).__module__])
    for field in dataclasses.fields(instance):
        try:
            hint = eval(field.type, namespace) if isinstance(field.type, str) else field.type  # noqa: S307
        except (NameError, AttributeError, TypeError, SyntaxError):
            continue
        check_argument(owner, field.name, getattr(instance, field.name), hint)


def check_mapping(owner: str, name: str, value: Any) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UserError(f"{owner}: {name} must be a mapping of option names to values, e.g. {{'q': 0.7}}, got "
                        f"{value!r} ({type(value).__name__})")
    return value


def expand_path(value: str | os.PathLike[str], what: str) -> Path:
    """``value`` with ``~`` / ``~user`` expanded; a user or home that does not exist is one line naming ``what``."""
    try:
        return Path(value).expanduser()
    except RuntimeError as error:  # "Could not determine home directory."
        raise UserError(f"{what} {os.fspath(value)}: cannot expand '~' ({one_line(error)}); give the path without "
                        "'~' or with an existing user's home") from None

