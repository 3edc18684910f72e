"""Checking config dataclasses with pydantic: field types, ranges, modes and unknown keys.

A config dataclass annotates its fields with the types below (`Annotated` ranges, `Literal`
modes) and sets `__pydantic_config__ = FIELD_RULES`; `validate_as(cls, values)` runs pydantic's
`TypeAdapter` on it and raises `InvalidFields`, one line `dotted.key: problem, got value` per
bad field, all of them at once.

The rules: ints, bools and strings are strict (no "3" -> 3, no 1 -> True, no 3 -> "3"); ints
widen to floats; floats are finite; a list becomes a tuple where the field is a tuple; keys that
are not fields are rejected; an instance is checked again field by field.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Iterable, TypeVar

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError

T = TypeVar("T")

FIELD_RULES = ConfigDict(extra="forbid", revalidate_instances="always")

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
NonEmptyText = Annotated[Text, Field(min_length=1)]
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]  # [0, 1): dropout rates, weight decay, warmup

_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<"}
_EXPECTED = {"int_type": "expected int", "float_type": "expected float",
             "bool_type": "expected true or false", "string_type": "expected str",
             "dataclass_type": "expected a mapping", "dict_type": "expected a mapping",
             "tuple_type": "expected a list", "list_type": "expected a list",
             "finite_number": "must be finite", "missing": "required",
             "missing_argument": "required"}
_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")


class InvalidFields(ValueError):
    """Values that do not fit a config dataclass.

    `problems` holds (dotted key, problem) pairs; the message is one line per pair,
    `{prefix}{key}: {problem}`.
    """

    def __init__(self, problems: Iterable[tuple[str, str]], prefix: str = "") -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{prefix}{key}: {problem}" for key, problem in self.problems))


def validate_as(cls: type[T], values: Any, prefix: str = "") -> T:
    """`values` (a mapping or an instance of `cls`) checked and converted into a `cls`.

    Raises InvalidFields listing every bad field, each line starting with `prefix`.
    """
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as err:
        raise InvalidFields(field_problems(err, cls), prefix) from None


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def field_problems(error: ValidationError, cls: type) -> list[tuple[str, str]]:
    """(dotted key, readable problem) for each error pydantic found validating `cls`."""
    return [(dotted_key(item["loc"]), _problem(item, cls)) for item in error.errors()]


def dotted_key(loc: tuple) -> str:
    """("model", "gauss_widths", 1) -> "model.gauss_widths[1]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _problem(item: dict[str, Any], cls: type) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind in _UNKNOWN:
        known = known_keys(cls, item["loc"][:-1])
        return "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if kind in _BOUNDS:
        problem = f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}"
    elif kind == "literal_error":
        problem = f"expected {ctx['expected']}"
    elif kind in ("value_error", "assertion_error"):
        problem = str(ctx["error"])
    elif kind in ("too_short", "string_too_short"):
        low = ctx["min_length"]
        problem = "must not be empty" if low == 1 else f"needs at least {low} items"
    elif kind == "too_long":
        problem = f"takes at most {ctx['max_length']} items"
    else:
        problem = _EXPECTED.get(kind, item["msg"])
    if kind in ("missing", "missing_argument"):
        return problem
    return f"{problem}, got {item['input']!r}"


def known_keys(cls: type, loc: tuple = ()) -> list[str]:
    """The field names of the dataclass found by following `loc` down from `cls` ([] if none).

    `loc` steps through dataclass fields, mapping values and list items.
    """
    tp: Any = cls
    for part in loc:
        tp = _inner_type(without_none(tp), part)
    tp = without_none(tp)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _inner_type(tp: Any, part: str | int) -> Any:
    """The type of `part` (a field, a mapping key, a list index) inside a value of type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(part, str):
        return typing.get_type_hints(tp).get(part)
    if origin is dict and args:
        return args[1]
    if origin in (list, tuple) and args and isinstance(part, int):
        return args[0]
    return None


def without_none(tp: Any) -> Any:
    """`X` for an optional `X | None`; any other type unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp
