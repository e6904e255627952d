"""One checker of values against types: settings, notebook parameters, grid files and their slurm settings refuse a
bad value with the same kind of message, naming the key, what it must be, what it got and, for a number read as text,
the fix.

    problem("lam", "1e-1", float)       -> lam must be float, got str '1e-1'; YAML 1.1 ... takes 1e-5 ... for text:
                                           write a dot and a signed exponent (1.0e-5, 1.0e+5) or a plain decimal
    fields_problem({"lr": 1}, TrainConfig, "teacher_train.")   -> None: every value fits its field's annotation
    annotation("list[int]")             -> list[int]: a notebook's type name as the type it names

A type is a class (int, float, str, bool, list, dict), a generic (list[int], dict[str, str]), a union (int | None),
a Literal of choices, a dataclass (its fields, from an instance or a mapping) or Any. ints fit floats; bools fit
neither (YAML and JSON tell them apart, and True is no count of anything). Nothing is converted: a checked value is
used as it was given, so what a config records (and hashes) is what the user wrote.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


@dataclass(frozen=True)
class Problem:
    """A value that does not fit its type: `key` (where it is), what it had to be, what it was, and the fix."""

    key: str
    expected: str  # 'float', 'int or None', "one of ['seed', 'method']"
    got: Any
    fix: str = ""  # how to write it instead ('' when the type says it all)
    meaning: str = ""  # what the key is, said after what it must be ('' when the key says it)

    @property
    def message(self) -> str:
        """The problem without its key, for callers that put the key elsewhere ('path: key: message')."""
        meaning = f" ({self.meaning})" if self.meaning else ""
        fix = f"; {self.fix}" if self.fix else ""
        return f"must be {self.expected}{meaning}, got {type(self.got).__name__} {self.got!r}{fix}"

    def __str__(self) -> str:
        return f"{self.key} {self.message}"


def problem(key: str, value: Any, expected: Any, meaning: str = "") -> Problem | None:
    """Why `value` (at `key`) does not fit the type `expected`; None when it fits. Items of lists and mappings, and
    a dataclass's fields, are checked too, and named by their own key (`key[1]`, `key.field`)."""
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        if isinstance(value, expected) or isinstance(value, Mapping):
            return fields_problem(value, expected, f"{key}.")
        return Problem(key, f"a mapping of {expected.__name__} fields", value, meaning=meaning)
    if not _fits(value, expected):
        return Problem(key, describe(expected), value, _number_fix(value, expected), meaning)
    return _items_problem(key, value, expected)


def fields_problem(values: Any, fields: Any, prefix: str = "") -> Problem | None:
    """The first of `values` (a mapping, or a dataclass instance) that does not fit its annotation in `fields` (a
    dataclass, a function, or a mapping of names to types); None when all fit. Names `fields` does not annotate
    are left to whoever knows which names are allowed."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}  # nested ones kept as they are
    hints = fields if isinstance(fields, Mapping) else _hints(fields)
    meanings = _meanings(fields)
    for name, value in values.items():
        if name in hints:
            found = problem(f"{prefix}{name}", value, hints[name], meanings.get(name, ""))
            if found:
                return found
    return None


def describe(expected: Any) -> str:
    """A type as a message says it: 'float', 'int or None', 'list[int]', "one of ['seed', 'method']"."""
    options = _union_args(expected)
    if len(options) > 1:
        return " or ".join(describe(option) for option in options)
    if expected is type(None):
        return "None"
    if typing.get_origin(expected) is Literal:
        return f"one of {list(typing.get_args(expected))}"
    if typing.get_args(expected):  # list[int], dict[str, str]
        return str(expected).replace("typing.", "")
    return getattr(expected, "__name__", str(expected))


def annotation(type_name: str) -> Any:
    """A type written as text ('float', 'list[int]': how a notebook declares its parameters) as the type it names;
    None for anything but TYPE_NAMES and lists of them."""
    name = type_name.replace(" ", "")
    if name in TYPE_NAMES:
        return TYPE_NAMES[name]
    item = re.fullmatch(r"list\[(\w+)\]", name)
    return list[TYPE_NAMES[item[1]]] if item and item[1] in TYPE_NAMES else None


def number_hint(text: str) -> str:
    """How to write `text`, a number that YAML read as text, so that it reads as a number ('' if it is no number)."""
    try:
        float(text.replace("_", ""))
    except ValueError:
        return ""
    if "e" in text.lower() and "inf" not in text.lower():
        return (
            "YAML 1.1 (PyYAML, which reads grids) takes 1e-5 and 1.0e5 for text: write a dot and a signed "
            "exponent (1.0e-5, 1.0e+5) or a plain decimal (0.00001)"
        )
    return "a quoted number (or inf/nan without the dot YAML wants before it: .inf) is text in YAML: drop the quotes"


# ---------------------------------------------------------------------------------------------- the checks
def _fits(value: Any, expected: Any) -> bool:
    """Whether `value` is of type `expected` at its top level (items are checked by _items_problem)."""
    options = _union_args(expected)
    if len(options) > 1:
        return any(_fits(value, option) for option in options)
    if expected is Any:
        return True
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    origin = typing.get_origin(expected)
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(expected))
    if origin is not None:
        return isinstance(value, origin)
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        return isinstance(value, (expected, Mapping))
    return isinstance(value, expected) if isinstance(expected, type) else True


def _items_problem(key: str, value: Any, expected: Any) -> Problem | None:
    """The first item of a list, or key or value of a mapping, that does not fit `expected`'s item types."""
    fitting = [option for option in _union_args(expected) if _fits(value, option)]
    args = typing.get_args(fitting[0]) if fitting else ()
    origin = typing.get_origin(fitting[0]) if fitting else None
    if origin is list and args:
        items = [(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    elif origin is dict and len(args) == 2:
        items = [(f"{key} key", name, args[0]) for name in value] + [
            (f"{key}.{name}", item, args[1]) for name, item in value.items()
        ]
    else:
        items = []
    return next(filter(None, (problem(*item) for item in items)), None)


def _number_fix(value: Any, expected: Any) -> str:
    numeric = any(option in (int, float) for option in _union_args(expected))
    return number_hint(value) if isinstance(value, str) and numeric else ""


def _union_args(expected: Any) -> tuple:
    union = typing.get_origin(expected) in (typing.Union, types.UnionType)
    return typing.get_args(expected) if union else (expected,)


@functools.lru_cache(maxsize=None)
def _hints(fields: Any) -> dict[str, Any]:
    return typing.get_type_hints(fields)


def _meanings(fields: Any) -> dict[str, str]:
    """A dataclass's fields' `metadata["meaning"]`, said in a problem after what the field must be."""
    if not (dataclasses.is_dataclass(fields) and isinstance(fields, type)):
        return {}
    return {f.name: f.metadata["meaning"] for f in dataclasses.fields(fields) if "meaning" in f.metadata}
