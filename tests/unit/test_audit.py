"""``AuditLogHandler``: every event as one JSON line, written in buffers of 100.

Why these checks: the audit trail is a compliance record; it must see every event
type, keep each line parseable, and not lose the tail of the buffer on ``flush()``
or ``stop()``, while not writing to disk per event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hexbus import AuditLogHandler, DomainEvent, InMemoryEventBus


class UtAuditA(DomainEvent, event_type="ut.audit.a"):
    n: int = 0


class UtAuditB(DomainEvent, event_type="ut.audit.b"):
    label: str = ""


class UtOtherThing(DomainEvent, event_type="ut.othernamespace.thing"):
    pass


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus() as b:
        yield b


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_buffers_until_100_then_writes_exactly_100(
    bus: InMemoryEventBus, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "events.jsonl"
    audit = AuditLogHandler(path)
    bus.register(audit)
    events = [UtAuditA(n=i) for i in range(105)]
    for event in events[:99]:
        await bus.publish(event)
    assert not path.exists()
    assert audit.buffered == 99
    await bus.publish(events[99])
    lines = read_lines(path)
    assert len(lines) == 100
    assert audit.buffered == 0
    assert [line["n"] for line in lines] == list(range(100))
    for event in events[100:]:
        await bus.publish(event)
    assert len(read_lines(path)) == 100  # the 5 extra are still buffered
    await audit.flush()
    lines = read_lines(path)
    assert len(lines) == 105
    assert [line["event_id"] for line in lines] == [str(e.event_id) for e in events]
    await audit.flush()  # nothing buffered: nothing written
    assert len(read_lines(path)) == 105


async def test_stop_flushes(bus: InMemoryEventBus, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLogHandler(path)
    bus.register(audit)
    await bus.publish(UtAuditA(n=1))
    await bus.publish(UtAuditB(label="x"))
    assert not path.exists()
    await audit.stop()
    assert [line["event_type"] for line in read_lines(path)] == ["ut.audit.a", "ut.audit.b"]


async def test_lines_are_json_with_type_id_and_metadata(
    bus: InMemoryEventBus, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLogHandler(path)
    bus.register(audit)
    with_meta = UtAuditA(n=3)
    without_meta = UtAuditB(label="plain")
    await bus.publish(with_meta, metadata={"ip_address": "10.1.2.3", "user_agent": "ut"})
    await bus.publish(without_meta)
    await audit.flush()
    first, second = read_lines(path)
    assert first["event_type"] == "ut.audit.a"
    assert first["event_id"] == str(with_meta.event_id)
    assert first["n"] == 3
    assert first["metadata"] == {"ip_address": "10.1.2.3", "user_agent": "ut"}
    assert first["correlation_id"] == with_meta.correlation_id
    assert first["occurred_at"] == with_meta.to_dict()["occurred_at"]
    assert second["event_type"] == "ut.audit.b"
    assert second["event_id"] == str(without_meta.event_id)
    assert second["label"] == "plain"
    assert "metadata" not in second


async def test_registered_handler_receives_every_event_type(
    bus: InMemoryEventBus, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLogHandler(path)
    bus.register(audit)
    subs = list(bus.subscriptions)
    assert [sub.target for sub in subs] == ["#"]
    assert subs[0].name == "hexbus.audit"
    events: list[DomainEvent] = [UtAuditA(), UtAuditB(), UtOtherThing()]
    for event in events:
        await bus.publish(event)
    await audit.flush()
    assert [line["event_type"] for line in read_lines(path)] == [
        "ut.audit.a",
        "ut.audit.b",
        "ut.othernamespace.thing",
    ]
    assert bus.stats.failed == 0


async def test_small_buffer_size_and_appending(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"existing": true}\n', encoding="utf-8")
    audit = AuditLogHandler(path, buffer_size=2)
    async with InMemoryEventBus() as bus:
        bus.register(audit)
        for i in range(3):
            await bus.publish(UtAuditA(n=i))
        lines = read_lines(path)
        assert len(lines) == 3  # the old line plus one buffer of 2
        assert lines[0] == {"existing": True}
        await audit.stop()
    assert len(read_lines(path)) == 4
    assert audit.written == 3


def test_buffer_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        AuditLogHandler(tmp_path / "x.jsonl", buffer_size=0)
