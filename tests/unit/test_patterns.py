"""AMQP topic pattern matching: ``*`` is exactly one word, ``#`` is zero or more words.

Why these checks: the memory adapter must route exactly as a RabbitMQ topic exchange
does (and the Kafka adapter derives its topic regex from the same code), so a pattern
that matches differently in memory than on the broker would pass tests and fail in
production. The property test compares against an independent, obviously-correct
recursive matcher.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexbus.application.patterns import (
    compile_pattern,
    is_pattern,
    pattern_matches,
    pattern_to_regex,
)
from hexbus.domain.errors import HexbusError, InvalidPatternError


def reference_match(pattern: str, event_type: str) -> bool:
    """Word-by-word matcher written straight from the AMQP topic-exchange definition."""

    def match(p: tuple[str, ...], t: tuple[str, ...]) -> bool:
        if not p:
            return not t
        head, rest = p[0], p[1:]
        if head == "#":
            # zero words, or swallow one word and stay on '#'
            return match(rest, t) or (bool(t) and match(p, t[1:]))
        if not t:
            return False
        return (head == "*" or head == t[0]) and match(rest, t[1:])

    return match(tuple(pattern.split(".")), tuple(event_type.split(".")))


MATCH_TABLE = [
    # exact names
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a.b", True),
    ("a.b", "a.b.c", False),
    ("a.b.c", "a.b", False),
    ("user.registered", "user.registered", True),
    ("user.registered", "user.registeredx", False),
    ("user.registered", "xuser.registered", False),
    # '*' is exactly one word
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("*.b", "b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    # '#' is zero or more words
    ("#", "a", True),
    ("#", "a.b.c.d", True),
    ("#.b", "b", True),
    ("#.b", "a.b", True),
    ("#.b", "x.y.a.b", True),
    ("#.b", "a.bb", False),
    ("#.b", "b.a", False),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "ab", False),
    ("a.#", "b.a", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.x.y.z.c", True),
    ("a.#.c", "a.c.d", False),
    ("a.#.c", "a", False),
    ("a.#.c", "ac", False),
    ("*.#.b", "x.b", True),
    ("*.#.b", "x.y.z.b", True),
    ("*.#.b", "b", False),
    ("*.#.b", "x.b.c", False),
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("*.#", "a", True),
    ("*.#", "a.b", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.b", True),
    # regex metacharacters in words are literal
    ("a-b.c_d", "a-b.c_d", True),
    ("a-b", "axb", False),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), MATCH_TABLE)
def test_pattern_table(pattern: str, event_type: str, expected: bool) -> None:
    assert pattern_matches(pattern, event_type) is expected
    # the table itself is checked against the reference, so a wrong row cannot hide a bug
    assert reference_match(pattern, event_type) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "a..b", "a.b*", "a b", ".a", "a.", "#a", "a.**", "a.#b", ".", "..", "a/b", "a.b.", "*a"],
)
def test_malformed_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(InvalidPatternError) as info:
        pattern_matches(pattern, "a.b")
    assert isinstance(info.value, HexbusError)
    assert isinstance(info.value, ValueError)
    assert repr(pattern) in str(info.value)
    with pytest.raises(InvalidPatternError):
        pattern_to_regex(pattern)


def test_non_string_pattern_is_rejected() -> None:
    with pytest.raises(InvalidPatternError):
        pattern_to_regex(None)  # type: ignore[arg-type]


def test_is_pattern() -> None:
    assert is_pattern("user.*")
    assert is_pattern("#")
    assert not is_pattern("user.registered")


def test_compiled_regex_is_anchored_and_cached() -> None:
    regex = compile_pattern("a.*")
    assert compile_pattern("a.*") is regex
    assert regex.match("a.b")
    assert not regex.match("a.b.c")
    assert not regex.match("x.a.b")


WORDS = st.sampled_from(["a", "b", "c"])
TOKENS = st.sampled_from(["a", "b", "c", "*", "#"])
patterns = st.lists(TOKENS, min_size=1, max_size=6).map(".".join)
event_types = st.lists(WORDS, min_size=1, max_size=6).map(".".join)


@settings(max_examples=600, deadline=None)
@given(pattern=patterns, event_type=event_types)
def test_pattern_matches_agrees_with_reference(pattern: str, event_type: str) -> None:
    assert pattern_matches(pattern, event_type) is reference_match(pattern, event_type), (
        pattern,
        event_type,
        pattern_to_regex(pattern),
    )


@settings(max_examples=200, deadline=None)
@given(pattern=patterns)
def test_pattern_matches_itself_with_wildcards_filled(pattern: str) -> None:
    # Replacing '*' by a word and '#' by nothing (or by a word) yields matching types.
    words = pattern.split(".")
    one = [("x" if w in ("*", "#") else w) for w in words]
    assert pattern_matches(pattern, ".".join(one))
    zero = [("x" if w == "*" else w) for w in words if w != "#"]
    if zero:
        assert pattern_matches(pattern, ".".join(zero))
