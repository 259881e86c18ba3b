"""Configuration from ``HEXBUS_*`` environment variables (or a ``.env`` file).

Why pydantic-settings: every value is validated at start-up, and an error names the
variable (``HEXBUS_ADAPTER``) and the values it accepts, instead of failing on the
first publish. Secrets are ``SecretStr``-backed and masked in reprs and messages.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hexbus.domain.errors import ConfigurationError

__all__ = ["ADAPTERS", "HexbusSettings", "RetryDelays", "load_settings", "redact_url"]

#: The adapter names (``hexbus.infrastructure.adapters.ADAPTERS`` knows how to build each).
ADAPTERS = ("memory", "rabbitmq", "kafka")
ENV_PREFIX = "HEXBUS_"


def _check_delays(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(delay < 0 for delay in value):
        raise ValueError("needs one or more delays in seconds (>= 0), e.g. 1,5,25")
    return value


#: Back-off before each retry, seconds: ``delays[n - 1]`` after failed attempt ``n``, the
#: last repeating (``RetryPolicy``). One rule for the settings and every adapter config.
RetryDelays = Annotated[tuple[float, ...], AfterValidator(_check_delays)]


_USERINFO_RE = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs, reprs and errors).

    Anything that does not parse cleanly loses its whole user-info part: a URL we cannot
    read is never echoed with a secret in it.
    """
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return _USERINFO_RE.sub(r"\1***@", url)
    if password is None:
        return _USERINFO_RE.sub(r"\1***@", url) if "@" in url and not parts.netloc else url
    netloc = parts.hostname or ""
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


class HexbusSettings(BaseSettings):
    """All hexbus settings; see README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    adapter: Literal["memory", "rabbitmq", "kafka"] = "memory"
    service_name: str = Field(default="hexbus", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    rabbitmq_exchange: str = Field(default="hexbus.events", min_length=1)
    rabbitmq_prefetch: int = Field(default=64, ge=1)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(default=3, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    #: Back-off before each retry, seconds. RabbitMQ: one delay queue per tier, the last
    #: repeats. Kafka and memory: in process, the same delays (the last repeats). Env "1,5,25".
    retry_delays: Annotated[RetryDelays, NoDecode] = (1.0, 5.0, 25.0)
    handler_timeout: float = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    #: How long ``stop()`` waits for handlers in flight before requeueing / cancelling.
    drain_timeout: float = Field(default=30.0, gt=0)
    memory_mode: Literal["await", "background"] = "await"
    #: Apply MAX_ATTEMPTS / RETRY_DELAYS to the memory adapter too, and keep its dead
    #: letters (at most MEMORY_DEAD_LETTER_LIMIT per subscription). Default: fail-open.
    memory_retries: bool = False
    memory_dead_letter_limit: int = Field(default=1000, ge=1)
    audit_log_path: str | None = None

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(float(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError(
                    "must be comma-separated seconds, e.g. 1,5,25"
                ) from None
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "rabbitmq_url" else value

    def safe_dump(self) -> dict[str, Any]:
        """Settings as a dict with the broker password masked (for ``hexbus check``)."""
        data = self.model_dump()
        data["rabbitmq_url"] = redact_url(self.rabbitmq_url)
        return data


def load_settings(**overrides: Any) -> HexbusSettings:
    """Read settings from the environment, apply ``overrides``; errors name the variable."""
    try:
        return HexbusSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            variable = ENV_PREFIX + field.upper()
            value = err.get("input")
            secret = field == "rabbitmq_url" and isinstance(value, str)
            shown = redact_url(value) if secret else value
            message = err["msg"]
            if field == "adapter":
                message = f"unknown adapter; allowed values: {', '.join(ADAPTERS)}"
            lines.append(f"{variable}={shown!r}: {message}")
        raise ConfigurationError(
            "invalid hexbus configuration:\n  " + "\n  ".join(lines)
        ) from None
