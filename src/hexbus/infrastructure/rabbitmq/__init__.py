"""RabbitMQ adapter (needs the ``rabbitmq`` extra: ``pip install 'hexbus[rabbitmq]'``)."""

from hexbus.domain.errors import ConfigurationError

try:
    import aio_pika  # noqa: F401 - checked here so the error names the extra
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        "the RabbitMQ adapter needs aio-pika; install the extra: pip install 'hexbus[rabbitmq]'"
    ) from exc

from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig

__all__ = ["RabbitMQConfig", "RabbitMQEventBus"]
