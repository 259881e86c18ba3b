"""Configuration from ``HEXBUS_*`` environment variables (or a ``.env`` file).

Why pydantic-settings: every value is validated at start-up, and an error names the
variable (``HEXBUS_ADAPTER``) and the values it accepts, instead of failing on the
first publish. Secrets are ``SecretStr``-backed and masked in reprs and messages.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.security import kafka_security_problems, rabbitmq_tls_problems

__all__ = [
    "ADAPTERS",
    "HexbusSettings",
    "KafkaCompression",
    "KafkaSaslMechanism",
    "KafkaSecurityProtocol",
    "RabbitMQQueueType",
    "RetryDelays",
    "SECRET_FIELDS",
    "check_amqp_urls",
    "load_settings",
    "redact_url",
    "split_urls",
]

#: The adapter names (``hexbus.infrastructure.adapters.ADAPTERS`` knows how to build each).
ADAPTERS = ("memory", "rabbitmq", "kafka")
ENV_PREFIX = "HEXBUS_"

#: ``HEXBUS_KAFKA_SECURITY_PROTOCOL`` / ``HEXBUS_KAFKA_SASL_MECHANISM`` (Kafka's names).
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
#: ``HEXBUS_KAFKA_COMPRESSION``: the producer's ``compression_type`` (``none``: off).
KafkaCompression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
#: ``HEXBUS_RABBITMQ_QUEUE_TYPE``: the type of the subscriptions' work queues
#: (``docs/architecture/broker-adapters.md`` weighs them).
RabbitMQQueueType = Literal["quorum", "classic"]
#: Settings whose values are secrets: masked in ``safe_dump`` and in error messages.
SECRET_FIELDS = frozenset({"kafka_sasl_password", "kafka_ssl_key_password"})
#: Optional security settings where an empty variable means "not set".
_OPTIONAL_SECURITY = (
    "rabbitmq_ssl_cafile",
    "rabbitmq_ssl_certfile",
    "rabbitmq_ssl_keyfile",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_sasl_oauth_token_provider",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_ssl_key_password",
)


def _check_delays(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(delay < 0 for delay in value):
        raise ValueError("needs one or more delays in seconds (>= 0), e.g. 1,5,25")
    return value


#: Back-off before each retry, seconds: ``delays[n - 1]`` after failed attempt ``n``, the
#: last repeating (``RetryPolicy``). One rule for the settings and every adapter config.
RetryDelays = Annotated[tuple[float, ...], AfterValidator(_check_delays)]


_USERINFO_RE = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


#: Where a URL list (``HEXBUS_RABBITMQ_URL`` of a cluster) has its next entry: a comma
#: followed by a scheme. Why not every comma: a comma may appear inside one URL (a
#: password, a query); ``scheme://`` after it cannot.
_NEXT_URL_RE = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(value: str) -> list[str]:
    """The entries of a comma-separated URL list (one URL is a list of one).

    ``"amqp://u:p@node1/,amqp://u:p@node2/"`` -> both URLs. Each entry is a whole URL
    (scheme, credentials, host): nodes of a cluster may differ in more than the host.
    Surrounding blanks and a trailing comma are dropped.
    """
    return [part.strip() for part in _NEXT_URL_RE.split(value.strip().rstrip(",")) if part.strip()]


def check_amqp_urls(value: str) -> str:
    """``value`` if it is one amqp(s) URL or a comma-separated list of them, else
    ``ValueError`` naming the entry at fault (password masked).

    One rule for ``HEXBUS_RABBITMQ_URL`` and ``RabbitMQConfig.url``; a port that is not
    a number is left for the connection to report (it names the host then).
    """
    urls = split_urls(value)
    if not urls:
        raise ValueError("must be an amqp:// or amqps:// URL (or a comma-separated list)")
    for index, url in enumerate(urls, 1):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("amqp", "amqps"):
            where = f"entry {index} of the list, " if len(urls) > 1 else ""
            raise ValueError(
                f"must be an amqp:// or amqps:// URL, or several separated by commas; "
                f"{where}{redact_url(url)!r}, is not"
            )
    return value


#: The SQLAlchemy async dialects the outbox supports, and what to write for a sync URL.
OUTBOX_DRIVERS = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql"}
_SYNC_SPELLINGS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
}


def check_outbox_url(value: str) -> str:
    """A SQLAlchemy async URL the outbox can use, or ``ValueError`` saying what to write.

    Checked with the settings, so a wrong ``HEXBUS_OUTBOX_URL`` fails at start-up with
    the variable's name (and the password masked), not at the first publish.
    """
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme in OUTBOX_DRIVERS:
        if (scheme == "sqlite+aiosqlite" and value.rstrip("/").lower() in (
            "sqlite+aiosqlite:",
            "sqlite+aiosqlite:/",
        )) or ":memory:" in value:
            raise ValueError(
                "an in-memory SQLite database cannot hold an outbox: the relay reads it "
                "over a connection of its own; use a file, e.g. sqlite+aiosqlite:///hexbus.db"
            )
        return value
    if scheme in _SYNC_SPELLINGS:
        fixed = _SYNC_SPELLINGS[scheme] + value[len(scheme) :]
        raise ValueError(
            f"the outbox needs an async driver: write {redact_url(fixed)!r} "
            f"({_SYNC_SPELLINGS[scheme]}), not {scheme}://"
        )
    raise ValueError(
        "must be a SQLAlchemy async URL of SQLite or PostgreSQL: "
        "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user:password@host/db"
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs, reprs and errors).

    Anything that does not parse cleanly loses its whole user-info part: a URL we cannot
    read is never echoed with a secret in it. A comma-separated list has every entry
    masked (``split_urls``).
    """
    entries = split_urls(url)
    if len(entries) > 1:
        return ",".join(_redact_one(entry) for entry in entries)
    return _redact_one(url)


def _redact_one(url: str) -> str:
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


#: Settings holding URLs that may carry a password (masked in reprs, dumps and errors).
_URL_FIELDS = frozenset({"rabbitmq_url", "outbox_url"})


class HexbusSettings(BaseSettings):
    """All hexbus settings; see README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    adapter: Literal["memory", "rabbitmq", "kafka"] = "memory"
    service_name: str = Field(default="hexbus", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: One amqp(s) URL, or a cluster's nodes as a comma-separated list: the adapter connects
    #: to the first that answers and fails over to the others (``split_urls``).
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    rabbitmq_exchange: str = Field(default="hexbus.events", min_length=1)
    rabbitmq_prefetch: int = Field(default=64, ge=1)
    #: Work queue type: ``quorum`` (replicated, the durable choice) or ``classic``.
    rabbitmq_queue_type: RabbitMQQueueType = "quorum"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(default=3, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    #: Producer batching: ms a batch waits for more records (0: none, see KafkaConfig),
    #: bytes per partition batch, and compression (none/gzip/snappy/lz4/zstd).
    kafka_linger_ms: int = Field(default=0, ge=0)
    kafka_batch_size: int = Field(default=256 * 1024, ge=1024)
    kafka_compression: KafkaCompression = "none"
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
    #: OpenTelemetry spans and metrics (``hexbus.infrastructure.telemetry``): ``auto`` = on
    #: when the API is installed and the application configured an SDK provider.
    otel: Literal["auto", "on", "off"] = "auto"
    #: ``json``: hexbus's log records as one JSON object per line (``configure_logging``).
    log_format: Literal["text", "json"] = "text"
    # -- the transactional outbox and the inbox (docs/architecture/adr-0004-outbox.md) ----
    #: SQLAlchemy async URL of the outbox/inbox database (``sqlite+aiosqlite:///file.db``,
    #: ``postgresql+asyncpg://user:pw@host/db``); unset = no outbox, no inbox.
    outbox_url: str | None = None
    #: Rows the relay claims and sends per round trip.
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    #: Seconds a claimed batch may wait for its send before it is freed (PostgreSQL:
    #: the claim transaction's ``idle_in_transaction_session_timeout``; SQLite: the
    #: claim's expiry); keep it above PUBLISH_TIMEOUT: a relay still sending when its
    #: lease expires cannot delete what it sent, which is then sent twice.
    outbox_lease: float = Field(default=60.0, gt=0)
    #: Longest wait between two looks at an idle outbox (NOTIFY and in-process commits
    #: wake the relay sooner), seconds.
    outbox_poll_interval: float = Field(default=1.0, gt=0)
    #: Run the relay inside the service (started and drained with the bus by the
    #: container); false when it runs alone (``hexbus relay``).
    outbox_relay: bool = True
    #: Create the outbox/inbox tables at start when missing (false: migrations own them).
    outbox_create_tables: bool = True
    #: Inbox rows older than this many seconds are deleted (a duplicate arriving later
    #: runs again); default 7 days.
    inbox_retention: float = Field(default=7 * 24 * 3600.0, gt=0)
    # -- TLS and SASL (docs/architecture/security.md); validated for the selected adapter.
    #: RabbitMQ over TLS (``amqps://`` URLs): the CA that signed the broker's certificate
    #: (default: the system's CAs), and a client certificate + key if the broker wants one.
    rabbitmq_ssl_cafile: str | None = None
    rabbitmq_ssl_certfile: str | None = None
    rabbitmq_ssl_keyfile: str | None = None
    #: Verify the broker's certificate chain and host name (off only for experiments).
    rabbitmq_ssl_verify: bool = True
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: OAUTHBEARER: ``module:attribute`` of an aiokafka ``AbstractTokenProvider`` (or of a
    #: factory returning one), loaded when the bus is built.
    kafka_sasl_oauth_token_provider: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
    )
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    #: Check that the broker's certificate names the host connected to (the chain is
    #: always verified).
    kafka_ssl_check_hostname: bool = True

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
        return check_amqp_urls(value)

    @field_validator("outbox_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return check_outbox_url(value) if value else None
        return value

    @field_validator(*_OPTIONAL_SECURITY, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", mode="before")
    @classmethod
    def _protocol_name(cls, value: Any) -> Any:
        """``sasl_ssl`` is ``SASL_SSL``: Kafka's names, whatever the case."""
        return value.strip().upper().replace("-", "_") if isinstance(value, str) else value

    @field_validator("kafka_compression", "rabbitmq_queue_type", mode="before")
    @classmethod
    def _lower_case_name(cls, value: Any) -> Any:
        """``ZSTD`` is ``zstd``, ``Quorum`` is ``quorum``."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _mechanism_name(cls, value: Any) -> Any:
        """``scram-sha-512`` (or ``SCRAM_SHA_512``) is ``SCRAM-SHA-512``."""
        return value.strip().upper().replace("_", "-") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _security(self) -> HexbusSettings:
        """TLS/SASL settings of the selected adapter that cannot work together (a SASL
        password without a SASL protocol, a CA file for an amqp:// URL, a missing file)."""
        problems: list[str] = []
        if self.adapter == "kafka":
            problems = kafka_security_problems(self._section("kafka_"))
        elif self.adapter == "rabbitmq":
            problems = rabbitmq_tls_problems(
                split_urls(self.rabbitmq_url), self._section("rabbitmq_")
            )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _section(self, prefix: str) -> dict[str, Any]:
        """This adapter's settings by their config field names (``kafka_ssl_cafile`` ->
        ``ssl_cafile``)."""
        return {
            name[len(prefix) :]: getattr(self, name)
            for name in type(self).model_fields
            if name.startswith(prefix)
        }

    def secret_values(self) -> list[str]:
        """Every secret in these settings (the URL passwords, SASL and key passwords), for
        masking text that may quote one."""
        found = [
            value.get_secret_value()
            for name in sorted(SECRET_FIELDS)
            if isinstance(value := getattr(self, name), SecretStr) and value.get_secret_value()
        ]
        for url in [*split_urls(self.rabbitmq_url), self.outbox_url or ""]:
            with contextlib.suppress(ValueError):
                if password := urlsplit(url).password:
                    found.append(password)
        return found

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_FIELDS and value else value

    def safe_dump(self) -> dict[str, Any]:
        """Settings as a dict with the broker password masked (for ``hexbus check``)."""
        data = self.model_dump()
        data["rabbitmq_url"] = redact_url(self.rabbitmq_url)
        if self.outbox_url:
            data["outbox_url"] = redact_url(self.outbox_url)
        for name in SECRET_FIELDS:
            data[name] = None if data[name] is None else "***"
        return data


def load_settings(**overrides: Any) -> HexbusSettings:
    """Read settings from the environment, apply ``overrides``; errors name the variable."""
    try:
        return HexbusSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            if not err["loc"]:  # a rule across settings: its message names the variables
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            variable = ENV_PREFIX + field.upper()
            value = err.get("input")
            secret = field in _URL_FIELDS and isinstance(value, str)
            shown = redact_url(value) if secret else "***" if field in SECRET_FIELDS else value
            message = err["msg"]
            if field == "adapter":
                message = f"unknown adapter; allowed values: {', '.join(ADAPTERS)}"
            lines.append(f"{variable}={shown!r}: {message}")
        raise ConfigurationError(
            "invalid hexbus configuration:\n  " + "\n  ".join(lines)
        ) from None
