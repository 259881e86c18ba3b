"""Logs that join up: hexbus's records as JSON lines, with the event and trace they are about.

Why: an operator follows one request across services by its trace id, and finds the log
lines of one failing delivery by event id, type, subscription and attempt. hexbus puts
those on every record about an event (``extra`` fields: ``event_id``, ``event_type``,
``subscription``, ``attempt``, ``trace_id``); this formatter writes them as JSON fields,
one object per line, for log shippers that index fields.

Opt-in, as a library's logging should be: ``HEXBUS_LOG_FORMAT=json`` (the registry's
``build_bus`` calls ``configure_logging`` then), or ``configure_logging()`` yourself, or
put ``JsonFormatter()`` on your own handler to get every logger's records as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from hexbus.infrastructure import telemetry

__all__ = ["JsonFormatter", "configure_logging"]

#: What every LogRecord has: anything else on a record came in through ``extra``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
#: The fields that join a record to an event and a trace, always written (``null``).
JOIN_FIELDS: Final = ("event_id", "event_type", "subscription", "attempt", "trace_id")
_MARK = "_hexbus_json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the join fields, extras.

    The join fields are present on every line (``null`` when the record is not about an
    event) so a query like ``trace_id = "..."`` never needs a "field exists" guard.
    Values that are not JSON (an exception object, a UUID) are written as text.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = vars(record)
        for name in JOIN_FIELDS:
            out[name] = fields.get(name)
        for name, value in fields.items():
            if name not in _STANDARD and name not in out and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    log_format: str = "json",
    *,
    logger: str = "hexbus",
    level: int | None = None,
    stream: TextIO | None = None,
) -> logging.Handler | None:
    """Write ``logger``'s records (hexbus's) as JSON lines to ``stream`` (stderr).

    Idempotent: a second call returns the handler of the first. ``log_format="text"``
    changes nothing (returns ``None``): hexbus then logs through your configuration.
    The logger stops propagating, so a record is not written twice (JSON here, text by
    a root handler). With the OpenTelemetry API installed, records logged inside a span
    get its ``trace_id`` / ``span_id`` when they carry none of their own.
    """
    if log_format != "json":
        return None
    target = logging.getLogger(logger)
    for handler in target.handlers:
        if getattr(handler, _MARK, False):
            return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _MARK, True)
    trace_filter = telemetry.trace_log_filter()
    if trace_filter is not None:
        handler.addFilter(trace_filter)
    target.addHandler(handler)
    target.propagate = False
    if level is not None:
        target.setLevel(level)
    elif target.level == logging.NOTSET:
        target.setLevel(logging.INFO)
    return handler
