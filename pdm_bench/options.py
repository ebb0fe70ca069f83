"""Typed options of a component (a defense, detector or threat model): a keyword-only dataclass whose fields are
its options. Set from strings (``-o NAME=VALUE`` on the CLI) or from Python values, validated once, where they
enter (the dataclass's ``__post_init__`` raises ``ValueError``; it becomes one line naming the component)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pdm_bench.errors import UserError, one_line, unknown_name_error

T = TypeVar("T")


def parse_pairs(pairs: Sequence[str], *, flag: str) -> dict[str, str]:
    """``["q=0.7", "rvl_weight=1"]`` -> ``{"q": "0.7", "rvl_weight": "1"}``; a name given twice is an error."""
    options: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"{flag} expects NAME=VALUE, got '{pair}'")
        if name in options:
            raise UserError(f"{flag} sets {name} twice ({name}={options[name]} and {name}={value.strip()}); give it once")
        options[name] = value.strip()
    return options


def build_options(cls: type[T], values: Mapping[str, Any], *, owner: str) -> T:
    """``cls(**values)`` where strings are converted to each field's type; unknown names and bad values are one-line
    :class:`UserError` s naming ``owner`` (e.g. "defense 'pdm'")."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            if not fields:
                raise UserError(f"The {owner} has no options, got '{key}'")
            raise unknown_name_error(f"option of {owner}", key, fields)
        converted[key] = parse_value(owner, key, value, hints[key]) if isinstance(value, str) else value
    try:
        return cls(**converted)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"Bad options for {owner}: {one_line(error)}") from None
    except Exception as error:  # a plugin's option class may fail in any way: still one line naming it
        raise UserError(f"Bad options for {owner}: its options class {cls.__qualname__} raised "
                        f"{type(error).__name__}: {one_line(error)}") from None



def parse_value(owner: str, key: str, text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint`` (bool, int, float, str, Literal[...], X | None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() == "none" and len(args) < len(typing.get_args(hint)):
            return None
        hint = args[0] if len(args) == 1 else str
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    if choices:
        if text not in choices:
            raise UserError(f"Option {key} of {owner} must be one of {', '.join(map(str, choices))}; got '{text}'")
        return text
    try:
        if hint is bool:
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return text.lower() in {"true", "1", "yes"}
        return hint(text)
    except (TypeError, ValueError):
        raise UserError(f"Option {key} of {owner} expects {getattr(hint, '__name__', hint)}, got '{text}'") from None


def describe_options(cls: type) -> str:
    """``name=default, ...`` of a component's options ('' when it has none)."""
    return ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls) if f.init)


def option_values(component: object) -> dict[str, Any]:
    """The values of a dataclass component's options (its ``init`` fields)."""
    return {f.name: getattr(component, f.name) for f in dataclasses.fields(component) if f.init}  # type: ignore[arg-type]


def non_default_options(component: object) -> dict[str, Any]:
    """The options of a dataclass component that differ from their declared defaults."""
    changed = {}
    for f in dataclasses.fields(component):  # type: ignore[arg-type]
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(component, f.name)
        if default is dataclasses.MISSING or value != default:
            changed[f.name] = value
    return changed


def variant_label(name: str, changed: Mapping[str, Any]) -> str:
    """``name`` at its defaults; ``name[k=v, ...]`` with the options that differ, so each configuration of a component
    is its own column in a report."""
    if not changed:
        return name
    return f"{name}[{', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in sorted(changed.items()))}]"
