"""What a valid id, text, timestamp and number are: one layer for the API, the CLI files
and the admin page, the same on SQLite and PostgreSQL.

Every string that passes here fits its column and can be stored and compared anywhere: no
NUL (PostgreSQL text cannot hold it), no lone surrogate (not encodable as UTF-8, so neither
database nor `hmac.compare_digest` takes it), and ids carry no control characters at all.
Failures become `InvalidInput` with one `Problem` per field, named the way a user wrote it
(`items[3].tags[1]`), with the messages our reports have always used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from engine.core.errors import InvalidInput, Problem, shown

# Column limits (engine/store/models.py) that the contract must never let past.
MAX_ID_CHARS = 256
MAX_REQUEST_ID_CHARS = 64
MAX_CATEGORY_CHARS = 200
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 100_000
MAX_QUERY_CHARS = 2_000
# Integers a JSON column, a BIGINT and a float feature all hold.
MAX_INT64 = 2**63 - 1
# Unix seconds before this are almost surely milliseconds or a bug (1990-01-01).
MIN_UNIX_S = 631_152_000
MAX_UNIX_S = 10_000_000_000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_INTEGER = re.compile(r"[+-]?[0-9]+")

M = TypeVar("M", bound=BaseModel)


def fail(message: str, kind: str = "recsearch") -> PydanticCustomError:
    """A validation error whose message is ours, word for word."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def described(value: object) -> str:
    """`int 5`, `array [1, 2]`: the type a JSON user would call it, then the value, shortened."""
    return f"{type_name(value)} {shown(value)}"


def check_text(value: object, limit: int, *, ident: bool = False, required: bool = True) -> Any:
    """A stripped string within `limit` characters; None for blank when not required."""
    if not isinstance(value, str):
        raise fail(f"must be a string, got {described(value)}", "string_type")
    stripped = value.strip()
    if not stripped:
        if required:
            raise fail("must not be empty", "string_too_short")
        return None
    if len(stripped) > limit:
        raise fail(f"is {len(stripped)} characters long; the limit is {limit}", "string_too_long")
    if _UNSTORABLE.search(stripped):
        raise fail(
            f"contains a NUL or an unpaired surrogate: {_safe_repr(stripped)}", "string_unstorable"
        )
    if ident and _CONTROL.search(stripped):
        raise fail(f"contains control characters: {_safe_repr(stripped)}", "string_unstorable")
    return stripped


def _safe_repr(value: str) -> str:
    # repr escapes control characters and lone surrogates, and keeps "café" readable.
    return shown(value)


def _text(limit: int, *, ident: bool = False, required: bool = True) -> Any:
    """The BeforeValidator behind each text type below."""

    def validate(value: object) -> Any:
        if value is None and not required:
            return None
        return check_text(value, limit, ident=ident, required=required)

    return BeforeValidator(validate)


def numeric_id(value: object) -> object:
    """Numeric ids (MovieLens userId) are ids too; booleans are not."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# Each text type strips, checks its column's limit and documents it as maxLength.
# What /openapi.json says of ids and required text, so a client (or a fuzzer) can tell a
# valid value: not blank, and for ids no control characters.
ID_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
NOT_BLANK = r"\S"

Id = Annotated[
    str,
    _text(MAX_ID_CHARS, ident=True),
    Field(min_length=1, max_length=MAX_ID_CHARS, json_schema_extra={"pattern": ID_PATTERN}),
]
Title = Annotated[
    str,
    _text(MAX_TITLE_CHARS),
    Field(min_length=1, max_length=MAX_TITLE_CHARS, json_schema_extra={"pattern": NOT_BLANK}),
]
OptionalId = Annotated[
    Annotated[str, Field(max_length=MAX_ID_CHARS)] | None,
    _text(MAX_ID_CHARS, ident=True, required=False),
]
OptionalText = Annotated[
    Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None, _text(MAX_TEXT_CHARS, required=False)
]
Category = Annotated[
    Annotated[str, Field(max_length=MAX_CATEGORY_CHARS)] | None,
    _text(MAX_CATEGORY_CHARS, required=False),
]
QueryText = Annotated[
    Annotated[str, Field(max_length=MAX_QUERY_CHARS)] | None, _text(MAX_QUERY_CHARS, required=False)
]
RequestId = Annotated[
    Annotated[str, Field(max_length=MAX_REQUEST_ID_CHARS)] | None,
    _text(MAX_REQUEST_ID_CHARS, ident=True, required=False),
]


def finite_number(value: object) -> float:
    """A JSON number (or numeric string) that is finite; integers within 64 bits."""
    if isinstance(value, bool):
        raise fail(f"must be a finite number, got {described(value)}", "float_type")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise fail(f"must be a finite number, got {described(value)}", "float_type") from None
    if not math.isfinite(number) or (isinstance(value, int) and abs(value) > MAX_INT64):
        raise fail(
            f"must be a finite number (integers within 64 bits), got {shown(value)}", "float_range"
        )
    return number


def naive_utc(parsed: datetime) -> datetime:
    """An aware time → naive UTC (what every DateTime column holds); raises at the limits."""
    if parsed.tzinfo is None:
        return parsed
    try:
        return parsed.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise fail(
            f"{parsed.isoformat()} is outside 0001-01-01..9999-12-31 in UTC", "datetime_range"
        ) from None


def iso_datetime(value: object) -> datetime:
    """An ISO 8601 string → naive UTC."""
    if not isinstance(value, str):
        raise fail(f"must be an ISO 8601 string, got {described(value)}", "datetime_type")
    text = value.strip()
    if _UNSTORABLE.search(text):
        raise fail(f"is not an ISO 8601 date or time: {_safe_repr(text)}", "datetime_parsing")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"is not an ISO 8601 date or time: {shown(value)}", "datetime_parsing") from None
    return naive_utc(parsed)


def iso_or_unix(value: object) -> datetime:
    """ISO 8601 or Unix seconds (a number or a numeric string) → naive UTC."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = finite_float(value)  # None for an integer too large for a float
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return iso_datetime(value)
    else:
        raise fail(
            f"must be an ISO 8601 string or Unix seconds, got {described(value)}", "datetime_type"
        )
    if seconds is None or not math.isfinite(seconds) or not MIN_UNIX_S <= seconds < MAX_UNIX_S:
        raise fail(f"Unix seconds out of range (milliseconds?): {shown(value)}", "datetime_range")
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def field_name(loc: tuple[int | str, ...]) -> str:
    """('items', 3, 'tags', 1) → 'items[3].tags[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(row)"


def problems_of(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    line: int | None = None,
    source: str | None = None,
    prefix: str = "",
) -> list[Problem]:
    """One Problem per pydantic error, in our words."""
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        name = field_name(loc)
        if prefix and name == "(row)":
            name = prefix
        elif prefix:
            name = prefix + name if name.startswith("[") else f"{prefix}.{name}"
        problems.append(Problem(name, _message(err, model, loc), line=line, source=source))
    return problems


def _is_union_tag(part: int | str) -> bool:
    # pydantic names the branch of a union it tried ("str", "int", "function-before[...]").
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _message(err: Any, model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if "message" in ctx and len(ctx) == 1:
        return str(ctx["message"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = ", ".join(f.alias or n for n, f in owner.model_fields.items()) if owner else ""
        return f"unknown field; allowed fields are {allowed}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        what = "a JSON object" if loc else "a JSON object"
        return f"expected {what}, got {type_name(value)}"
    if kind == "list_type":
        return f"must be an array, got {described(value)}"
    if kind == "too_long" and isinstance(value, list | dict):
        return f"has {len(value)} entries; the limit is {ctx.get('max_length')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {described(value)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {shown(value)}".replace(
            "input should be", "must be"
        )
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {described(value)}"
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected')}, got {described(value)}"
    if kind == "string_type":
        return f"must be a string, got {described(value)}"
    msg: str = err["msg"]
    return (msg[0].lower() + msg[1:]).replace("input should be", "must be")


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The nested model class that a location points into (for its list of fields)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = _first_model(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def validate(
    model: type[M],
    raw: object,
    *,
    context: Mapping[str, Any] | None = None,
    line: int | None = None,
    source: str | None = None,
    prefix: str = "",
) -> M:
    """raw → model, or InvalidInput naming every bad field (at line/source when given)."""
    if not isinstance(raw, Mapping):
        problem = Problem(
            prefix or "(row)", f"expected a JSON object, got {type_name(raw)}", line, source
        )
        raise InvalidInput(str(problem), [problem])
    try:
        return model.model_validate(raw, context=dict(context or {}))
    except ValidationError as exc:
        problems = problems_of(exc, model, line=line, source=source, prefix=prefix)
        raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems) from None


def check_id(value: object, name: str) -> str:
    """One id outside a model (a URL path segment): stripped and checked, else InvalidInput."""
    try:
        checked: str = check_text(value, MAX_ID_CHARS, ident=True)
    except PydanticCustomError as exc:
        problem = Problem(name, exc.message())
        raise InvalidInput(str(problem), [problem]) from None
    return checked


_TRUE = ("true", "1", "yes", "on")


_FALSE = ("false", "0", "no", "off")


def as_flag(value: object) -> object:
    """true/false as JSON or as a query-string word."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise fail(f"must be true or false, got {described(value)}", "bool_parsing")


def as_integer(value: object) -> object:
    """An integer as JSON or as a query-string word; not a boolean, not 2.5."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # 5.0 is an integer in JSON Schema
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            if _INTEGER.fullmatch(text):  # over Python's int_max_str_digits (4,300)
                raise fail(too_many_digits(len(text.lstrip("+-"))), "int_range") from None
    raise fail(f"must be an integer, got {described(value)}", "int_type")


def too_many_digits(digits: int) -> str:
    """What an integer longer than Python reads (int_max_str_digits) is told."""
    return f"is an integer of {digits:,} digits, beyond every limit of the API"


Flag = Annotated[bool, BeforeValidator(as_flag)]


def as_number(value: object) -> object:
    """A number as JSON or as a query-string word; not a boolean."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"must be a number, got {described(value)}", "float_type")
    return value


def finite_float(value: object) -> float | None:
    """A JSON number (int or float, never a boolean) as a finite float, else None: an
    attribute read as a number. An integer too large for a float is None, not an error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def absent(value: object) -> bool:
    """For `Field(exclude_if=absent)`: a response field left out when it has no value, rather
    than written as null (an explanation only when asked for, say)."""
    return value is None
