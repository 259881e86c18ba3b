"""Kafka adapter (extra ``hexbus[kafka]``): at-least-once, ordered per key."""

try:
    import aiokafka  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from hexbus.domain.errors import ConfigurationError

    raise ConfigurationError(
        "the Kafka adapter needs the aiokafka package; install the extra: "
        "pip install 'hexbus[kafka]'"
    ) from exc

from hexbus.infrastructure.kafka.bus import KafkaEventBus
from hexbus.infrastructure.kafka.config import KafkaConfig

__all__ = ["KafkaConfig", "KafkaEventBus"]
