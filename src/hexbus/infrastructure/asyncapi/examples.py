"""Examples of each message: the values its author wrote down, else made-up ones.

Why made up, and why checked: AsyncAPI tools show and mock messages from their
examples; an example the event class itself would reject teaches the wrong thing. So
every example is validated by the class (as a consumer decodes it) and shown as a
producer serializes it. Values are fixed (UUIDv5s, one timestamp): the document is the
same on every run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import ENVELOPE_FIELDS

__all__ = ["EXAMPLE_NAMESPACE", "EXAMPLE_TIME", "payload_examples"]

EXAMPLE_TIME: Final = "2025-01-01T12:00:00Z"
EXAMPLE_NAMESPACE: Final = uuid.UUID("6f1c5a52-3d5e-4c1b-9a3e-5f0c2b7d8e41")


class _NoExample(Exception):
    """No value that fits the schema could be made up."""


_NAME_HINTS: Final = (
    ("email", "user@example.com"),
    ("ip", "192.0.2.10"),
    ("url", "https://example.com/"),
    ("uri", "https://example.com/"),
    ("name", "Example"),
)
_FORMAT_EXAMPLES: Final = {
    "date-time": EXAMPLE_TIME,
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "PT1M",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.10",
    "ipv6": "2001:db8::10",
}


_CATEGORIES: Final = {
    "CATEGORY_DIGIT": (r"\d", "0"),
    "CATEGORY_NOT_DIGIT": (r"\D", "a"),
    "CATEGORY_WORD": (r"\w", "a"),
    "CATEGORY_NOT_WORD": (r"\W", "-"),
    "CATEGORY_SPACE": (r"\s", " "),
    "CATEGORY_NOT_SPACE": (r"\S", "a"),
}
#: Characters tried, in order, for a ``[...]`` class (after the class's own first member).
_CHARS: Final = "aA0x_-.@ "


def _char_in(items: list[tuple[Any, Any]]) -> str:
    """A character of a parsed ``[...]`` class: rebuilt as a regex, then tried."""
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    members = items[1:] if negate else items
    parts: list[str] = []
    preferred: list[str] = []
    for op, av in members:
        kind = str(op)
        if kind == "LITERAL":
            parts.append(re.escape(chr(av)))
            preferred.append(chr(av))
        elif kind == "RANGE":
            parts.append(f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}")
            preferred.append(chr(av[0]))
        elif kind == "CATEGORY" and str(av) in _CATEGORIES:
            escape, char = _CATEGORIES[str(av)]
            parts.append(escape)
            preferred.append(char)
        else:
            raise _NoExample(f"character class item {kind}")
    compiled = re.compile("[" + ("^" if negate else "") + "".join(parts) + "]")
    for char in ([] if negate else preferred) + list(_CHARS):
        if compiled.fullmatch(char):
            return char
    raise _NoExample("no character fits the class")


def _from_parsed(nodes: Any) -> str:
    out: list[str] = []
    for op, av in nodes:
        kind = str(op)
        if kind == "LITERAL":
            out.append(chr(av))
        elif kind == "NOT_LITERAL":
            out.append("a" if chr(av) != "a" else "b")
        elif kind == "ANY":
            out.append("a")
        elif kind == "IN":
            out.append(_char_in(list(av)))
        elif kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = av
            out.append(_from_parsed(sub) * low)
        elif kind == "SUBPATTERN":
            out.append(_from_parsed(av[-1]))
        elif kind == "ATOMIC_GROUP":
            out.append(_from_parsed(av))
        elif kind == "BRANCH":
            out.append(_from_parsed(av[1][0]))
        elif kind == "AT":
            continue
        else:
            raise _NoExample(f"pattern construct {kind}")
    return "".join(out)


def _from_pattern(pattern: str) -> str:
    """A shortest string that ``pattern`` matches (first alternatives, minimal repeats).

    Uses the standard library's own regular-expression parser (``re._parser``): a made-up
    value is checked with ``re.search`` afterwards, so a construct read wrongly can only
    cost the example, never produce a wrong one.
    """
    try:
        parsed = importlib.import_module("re._parser").parse(pattern)
    except Exception as exc:  # noqa: BLE001 - not a Python pattern: no example then
        raise _NoExample(f"cannot read pattern {pattern!r}: {exc}") from None
    return _from_parsed(parsed)


def _string_example(schema: Mapping[str, Any], name: str, seed: str) -> str:
    fmt = schema.get("format")
    if fmt == "uuid":
        return str(uuid.uuid5(EXAMPLE_NAMESPACE, f"{seed}.{name}"))
    candidates = [_FORMAT_EXAMPLES[fmt]] if fmt in _FORMAT_EXAMPLES else []
    words = set(re.split(r"[\W_]+", name.lower()))
    candidates += [value for hint, value in _NAME_HINTS if hint in words]
    candidates += ["example", "user@example.com", "EXAMPLE", "example-1", "1", "a"]
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    if pattern is not None:
        with contextlib.suppress(_NoExample):
            candidates.append(_from_pattern(pattern))
    for candidate in candidates:
        text = candidate
        if len(text) < low:
            text = (text * (low // max(len(text), 1) + 1))[: max(low, len(text))]
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        try:
            if pattern is not None and not re.search(pattern, text):
                continue
        except re.error:
            raise _NoExample(f"pattern {pattern!r} is not a Python regular expression") from None
        if len(text) >= low:
            return text
    raise _NoExample(f"no string fits {dict(schema)}")


def _number_example(schema: Mapping[str, Any], integer: bool) -> int | float:
    value: float = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        value = schema["exclusiveMinimum"] + 1
    if "maximum" in schema and value > schema["maximum"]:
        value = schema["maximum"]
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        value = schema["exclusiveMaximum"] - 1
    multiple = schema.get("multipleOf")
    if multiple:
        value = multiple * max(1, -(-value // multiple))
    return int(value) if integer else float(value)


def _example(schema: Any, defs: Mapping[str, Any], name: str, seed: str, depth: int = 0) -> Any:
    """A value valid against ``schema``, preferring what its author wrote down."""
    if depth > 8 or not isinstance(schema, Mapping):
        raise _NoExample("too deep")
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(defs.get(ref.rsplit("/", 1)[-1]), defs, name, seed, depth + 1)
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("default") is not None:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if not branches:
            continue
        if combinator == "allOf" and len(branches) > 1:
            raise _NoExample("allOf of several schemas")
        ordered = sorted(branches, key=lambda b: isinstance(b, Mapping) and b.get("type") == "null")
        for branch in ordered:
            try:
                return _example(branch, defs, name, seed, depth + 1)
            except _NoExample:
                continue
        raise _NoExample(f"no branch of {combinator} has an example")
    if "default" in schema:  # None
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return _string_example(schema, name, seed)
    if kind in ("integer", "number"):
        return _number_example(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", {})
        if isinstance(items, list):
            return [_example(item, defs, name, seed, depth + 1) for item in items]
        if schema.get("maxItems") == 0:
            return []
        count = max(1, int(schema.get("minItems", 1)))
        return [_example(items, defs, name, seed, depth + 1)] * count
    if kind == "object" or "properties" in schema:
        out: dict[str, Any] = {}
        required = set(schema.get("required", ()))
        for prop, sub in schema.get("properties", {}).items():
            try:
                out[prop] = _example(sub, defs, prop, f"{seed}.{name}", depth + 1)
            except _NoExample:
                if prop in required:
                    raise
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and not schema.get("properties"):
            out["field"] = _example(extra, defs, "field", seed, depth + 1)
        return out
    raise _NoExample(f"schema without a type: {dict(schema)}")


def payload_examples(
    cls: type[DomainEvent], schema: Mapping[str, Any], defs: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Payload examples the class accepts: its own ``examples`` first, else a made-up one.

    Each candidate is validated by the class (as a consumer would decode it) and shown as
    a producer serializes it, so an example is never one hexbus itself would reject.
    """
    written = cls.model_json_schema().get("examples") or []
    out: list[dict[str, Any]] = []
    for example in written:
        if not isinstance(example, dict):
            continue
        accepted = _accepted(cls, {k: v for k, v in example.items() if k not in ENVELOPE_FIELDS})
        if accepted is not None:
            out.append(accepted)
    if out:
        return out
    try:
        made_up = _accepted(cls, _example(schema, defs, cls.event_type, cls.event_type))
    except _NoExample:
        return []
    return [] if made_up is None else [made_up]


def _accepted(cls: type[DomainEvent], payload: Any) -> dict[str, Any] | None:
    """``payload`` as a producer would send it, if the class accepts it as a consumer."""
    try:
        event = cls.model_validate_json(json.dumps(payload))
    except (ValidationError, TypeError, ValueError):
        return None
    return event.model_dump(mode="json", by_alias=True, exclude=set(ENVELOPE_FIELDS))
