"""``Container.handlers``: EventHandler objects registered on start, stopped with the bus."""

from __future__ import annotations

import json
from pathlib import Path

from dependency_injector import providers

from hexbus import AuditLogHandler, Container, DomainEvent


class ContainerAudited(DomainEvent, event_type="ut.container.audited"):
    n: int


async def test_registered_handler_receives_events_and_is_flushed_on_shutdown(
    tmp_path: Path,
) -> None:
    audit = AuditLogHandler(tmp_path / "audit.jsonl", buffer_size=100)
    container = Container()
    container.config.from_dict({"adapter": "memory"})
    container.handlers.override(providers.List(providers.Object(audit)))
    await container.init_resources()
    bus = container.event_bus()
    for n in range(3):
        await bus.publish(ContainerAudited(n=n))
    assert audit.buffered == 3  # below the buffer size: nothing written yet
    assert not audit.path.exists()

    await container.shutdown_resources()

    lines = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    assert all(line["event_type"] == "ut.container.audited" for line in lines)
