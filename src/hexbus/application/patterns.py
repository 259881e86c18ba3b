"""AMQP topic patterns: ``*`` matches one word, ``#`` zero or more words.

Why our own matcher: the memory adapter must route exactly as RabbitMQ does, and the
Kafka adapter must turn the same pattern into a topic regex.
"""

from __future__ import annotations

import re
from functools import lru_cache

from hexbus.domain.errors import InvalidPatternError

__all__ = ["compile_pattern", "is_pattern", "pattern_matches", "pattern_to_regex"]

_WORD_RE = re.compile(r"[A-Za-z0-9_-]+")


def is_pattern(value: str) -> bool:
    """True when a subscription string contains wildcards."""
    return "*" in value or "#" in value


def _validate(pattern: str) -> list[str]:
    if not isinstance(pattern, str) or not pattern:
        raise InvalidPatternError(
            f"subscription pattern {pattern!r} must be a non-empty string such as 'user.*' or '#'"
        )
    words = pattern.split(".")
    for word in words:
        if word in ("*", "#"):
            continue
        if not _WORD_RE.fullmatch(word):
            raise InvalidPatternError(
                f"subscription pattern {pattern!r} has an invalid word {word!r}: words are "
                "letters, digits, '_' or '-' separated by single dots, and '*' (one word) or "
                "'#' (zero or more words) must stand alone between dots, e.g. 'user.*'"
            )
    return words


def pattern_to_regex(pattern: str) -> str:
    """The anchored regular expression that matches the same event types as ``pattern``."""
    words: list[str] = []
    for word in _validate(pattern):
        if not (word == "#" and words and words[-1] == "#"):  # '#.#' means '#'
            words.append(word)
    out: list[str] = []
    first = True  # no dot before the first word that consumes characters
    for i, word in enumerate(words):
        if word == "#":
            if first and i == len(words) - 1:
                out.append(r"[^.]+(?:\.[^.]+)*")  # '#' alone: any non-empty type
            elif first:
                out.append(r"(?:[^.]+\.)*")  # leading '#': zero or more 'word.' prefixes
                continue  # the next word is still the first one that prints no dot
            else:
                out.append(r"(?:\.[^.]+)*")
        else:
            dot = "" if first else r"\."
            out.append(dot + (r"[^.]+" if word == "*" else re.escape(word)))
        first = False
    return "^" + "".join(out) + "$"


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern_to_regex(pattern))


def pattern_matches(pattern: str, event_type: str) -> bool:
    return compile_pattern(pattern).match(event_type) is not None
