"""TLS and SASL for the broker connections: contexts, client options, and what went wrong.

Three mistakes account for most secured connections that fail: a certificate the client
does not trust, a wrong password, and a plaintext client talking to a TLS port (or the
other way round). Broker clients report each in their own words, or not at all (aiokafka's
bootstrap reduces every cause to "Unable to bootstrap"). This module turns each into a
:class:`SecurityError` -- a ``ConfigurationError`` -- that says what is wrong and which
``HEXBUS_*`` variable to fix. A message never contains a secret: passwords are never
formatted into one, and what the clients say about TLS carries none.

Why no broker client is imported here: ``hexbus check`` uses this module, and broker
clients stay inside their adapter packages (an extra may not be installed). Client errors
are recognised by what they carry: stdlib ``ssl`` exceptions and Kafka protocol error
codes (``errno``); the RabbitMQ adapter says itself whether its client reported an
authentication failure, the Kafka adapter hands in a function that opens one session.

Verification is on by default everywhere: the broker's certificate must chain to the
CA file (else to the system's CAs) and name the host connected to. Turning either off
is a setting of its own (``HEXBUS_RABBITMQ_SSL_VERIFY``, ``HEXBUS_KAFKA_SSL_CHECK_HOSTNAME``)
and is logged as a warning whenever a bus is built with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from hexbus.domain.errors import ConfigurationError

if TYPE_CHECKING:
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = [
    "KAFKA_SASL_MECHANISMS",
    "KAFKA_SECURITY_PROTOCOLS",
    "SASL_PROTOCOLS",
    "TLS_PROTOCOLS",
    "KafkaSessionProbe",
    "SecurityError",
    "SecurityMode",
    "TlsFiles",
    "TlsProbe",
    "client_context",
    "explain_kafka_failure",
    "explain_rabbitmq_failure",
    "explain_tls_error",
    "kafka_client_options",
    "kafka_security_problems",
    "kafka_variable",
    "load_object",
    "probe_tls",
    "rabbitmq_tls_problems",
    "rabbitmq_variable",
    "security_mode",
    "settings_tls",
]

logger = logging.getLogger("hexbus.security")

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})

#: What went wrong, for callers that act on it (``hexbus check``).
Problem = Literal[
    "certificate",  # the broker's certificate is not trusted (CA file)
    "hostname",  # ... or does not name the host connected to
    "client-certificate",  # the broker refused (or wants) this client's certificate
    "credentials",  # user name / password / token refused
    "mechanism",  # SASL mechanism not enabled on the listener
    "protocol",  # plaintext client on a TLS port, TLS client on a plaintext port, SASL or not
    "file",  # a CA / certificate / key file that cannot be used
]

#: Names a setting in a message: ``HEXBUS_KAFKA_SASL_PASSWORD``, or a config field.
Namer = Callable[[str], str]


class SecurityError(ConfigurationError):
    """A TLS or authentication problem; the message names the variable(s) to fix.

    ``problem`` says which kind (see :data:`Problem`), ``variables`` the ``HEXBUS_*``
    variables concerned. Never contains a password, key password or token.
    """

    def __init__(self, message: str, *, problem: Problem, variables: Sequence[str]) -> None:
        super().__init__(message)
        self.problem: Problem = problem
        self.variables: tuple[str, ...] = tuple(variables)


def kafka_variable(field: str) -> str:
    """``sasl_password`` -> ``HEXBUS_KAFKA_SASL_PASSWORD`` (KafkaConfig field -> variable)."""
    return f"HEXBUS_KAFKA_{field.upper()}"


def rabbitmq_variable(field: str) -> str:
    """``ssl_cafile`` -> ``HEXBUS_RABBITMQ_SSL_CAFILE`` (RabbitMQConfig field -> variable)."""
    return f"HEXBUS_RABBITMQ_{field.upper()}"


# --------------------------------------------------------------------------- validation
# One set of rules for the settings (messages name HEXBUS_* variables) and the adapter
# configs built in code (messages name the fields): a combination that cannot work is
# refused before anything connects.

_TLS_FILE_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _given(values: Mapping[str, Any], field: str) -> bool:
    return values.get(field) not in (None, "")


def _listing(names: Sequence[str]) -> tuple[str, str, str]:
    """(``A, B``, ``is``/``are``, ``it``/``them``) for a message about ``names``."""
    return ", ".join(names), "is" if len(names) == 1 else "are", "it" if len(names) == 1 else "them"


def _tls_file_problems(values: Mapping[str, Any], name: Namer) -> list[str]:
    problems = []
    if not _given(values, "ssl_certfile"):
        for field in ("ssl_keyfile", "ssl_key_password"):
            if _given(values, field):
                problems.append(
                    f"{name(field)} is set without {name('ssl_certfile')}: a client key "
                    "goes with its certificate; set both (or neither)"
                )
    for field in _TLS_FILE_FIELDS:
        if not _given(values, field):
            continue
        path = str(values[field])
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "no such file"
            problems.append(f"{name(field)}={path!r}: {what}; it must name a PEM file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{name(field)}={path!r}: not readable by this process")
    return problems


def kafka_security_problems(values: Mapping[str, Any], name: Namer = kafka_variable) -> list[str]:
    """What is wrong with the Kafka security settings in ``values`` (KafkaConfig field
    names: ``security_protocol``, ``sasl_*``, ``ssl_*``), one sentence each; ``[]`` if
    they can work. ``name`` renders a field in the messages."""
    protocol = values.get("security_protocol") or "PLAINTEXT"
    mechanism = values.get("sasl_mechanism")
    uses = f"{name('security_protocol')}={protocol}"
    problems: list[str] = []
    if protocol in SASL_PROTOCOLS:
        if not mechanism:
            problems.append(
                f"{name('sasl_mechanism')} is required with {uses}: one of "
                f"{', '.join(KAFKA_SASL_MECHANISMS)} (managed Kafka services use "
                "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)"
            )
        elif mechanism == "OAUTHBEARER":
            if not _given(values, "sasl_oauth_token_provider"):
                problems.append(
                    f"{name('sasl_oauth_token_provider')} is required with "
                    f"{name('sasl_mechanism')}=OAUTHBEARER: module:attribute of an aiokafka "
                    "AbstractTokenProvider, or of a factory returning one"
                )
            unused = [name(f) for f in ("sasl_username", "sasl_password") if _given(values, f)]
            if unused:
                names, verb, pronoun = _listing(unused)
                problems.append(
                    f"{names} {verb} not used with {name('sasl_mechanism')}=OAUTHBEARER (the "
                    f"token provider authenticates); unset {pronoun}"
                )
        else:
            missing = [name(f) for f in ("sasl_username", "sasl_password") if not _given(values, f)]
            if missing:
                names, verb, _ = _listing(missing)
                problems.append(
                    f"{names} {verb} required with {name('sasl_mechanism')}={mechanism}"
                )
            if _given(values, "sasl_oauth_token_provider"):
                problems.append(
                    f"{name('sasl_oauth_token_provider')} is only used with "
                    f"{name('sasl_mechanism')}=OAUTHBEARER (it is {mechanism}); unset it"
                )
    else:
        sasl_fields = ("sasl_mechanism", "sasl_username", "sasl_password")
        sasl = [
            name(f) for f in (*sasl_fields, "sasl_oauth_token_provider") if _given(values, f)
        ]
        if sasl:
            names, verb, pronoun = _listing(sasl)
            problems.append(
                f"{names} {verb} set, but {uses} does not authenticate: set "
                f"{name('security_protocol')}=SASL_SSL (or SASL_PLAINTEXT), or unset {pronoun}"
            )
    tls = [name(f) for f in (*_TLS_FILE_FIELDS, "ssl_key_password") if _given(values, f)]
    if values.get("ssl_check_hostname") is False:
        tls.append(f"{name('ssl_check_hostname')}=false")
    if protocol not in TLS_PROTOCOLS:
        if tls:
            names, verb, pronoun = _listing(tls)
            problems.append(
                f"{names} {verb} set, but {uses} does not use TLS: set "
                f"{name('security_protocol')}=SASL_SSL (or SSL), or unset {pronoun}"
            )
    else:
        problems += _tls_file_problems(values, name)
    return problems


def rabbitmq_tls_problems(
    urls: Sequence[str], values: Mapping[str, Any], name: Namer = rabbitmq_variable
) -> list[str]:
    """What is wrong with the RabbitMQ TLS settings (``ssl_*`` fields of ``values``) for
    the URLs ``urls``; ``[]`` if they can work."""
    tls = [name(f) for f in _TLS_FILE_FIELDS if _given(values, f)]
    if values.get("ssl_verify") is False:
        tls.append(f"{name('ssl_verify')}=false")
    schemes = {url.split("://", 1)[0].lower() for url in urls}
    problems: list[str] = []
    if "amqp" in schemes and tls:
        names, verb, pronoun = _listing(tls)
        problems.append(
            f"{names} {verb} set, but {name('url')} uses amqp:// (no TLS): use amqps:// "
            f"and the broker's TLS port (5671 by default), or unset {pronoun}"
        )
    if "amqps" in schemes:
        problems += _tls_file_problems(values, name)
    return problems


# --------------------------------------------------------------------------- contexts


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a client TLS context is made of, and the variables that name each part.

    ``verify=False`` accepts any certificate (never in production); with
    ``check_hostname=False`` the chain is still verified, the name in it is not.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: SecretStr | None = None
    verify: bool = True
    check_hostname: bool = True
    #: ``HEXBUS_KAFKA_SSL_`` or ``HEXBUS_RABBITMQ_SSL_``: messages name ``prefix + PART``.
    prefix: str = "HEXBUS_KAFKA_SSL_"
    #: Whether ``prefix + KEY_PASSWORD`` exists (Kafka's); else the key must be unencrypted.
    has_key_password: bool = True

    def var(self, part: str) -> str:
        return self.prefix + part.upper()

    @property
    def summary(self) -> str:
        """``CA file /x, client certificate /y, hostname verification on`` (no secret)."""
        parts = [f"CA file {self.cafile}" if self.cafile else "system CAs"]
        if self.certfile:
            parts.append(f"client certificate {self.certfile}")
        if not self.verify:
            parts.append("certificate verification OFF")
        else:
            parts.append(f"hostname verification {'on' if self.check_hostname else 'OFF'}")
        return ", ".join(parts)


class _KeyNeedsPassword(Exception):
    """OpenSSL asked for the key's password and none is configured."""


def _encrypted(path: str) -> bool:
    with contextlib.suppress(OSError):
        with open(path, encoding="ascii", errors="replace") as fh:
            head = fh.read(65536)
        return "ENCRYPTED" in head
    return False


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client ``SSLContext``: trusts ``cafile`` (else the system's CAs), presents the
    client certificate if one is configured, verifies the broker as configured.

    Every file problem is a :class:`SecurityError` naming its variable (never a
    password prompt on the terminal: an encrypted key without a password is refused).
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.cafile)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        if isinstance(exc, ssl.SSLError):
            cause = f"no PEM certificate in it ({exc.reason or exc})"
        raise SecurityError(
            f"{tls.var('cafile')}={tls.cafile!r} cannot be used: {cause}; it must be the "
            "certificate(s) of the CA that signed the broker's certificate, in PEM format",
            problem="file",
            variables=(tls.var("cafile"),),
        ) from None
    if tls.certfile:
        _load_client_certificate(context, tls)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not tls.check_hostname:
        context.check_hostname = False
    return context


def _load_client_certificate(context: ssl.SSLContext, tls: TlsFiles) -> None:
    assert tls.certfile is not None
    key_var, cert_var, password_var = tls.var("keyfile"), tls.var("certfile"), tls.var(
        "key_password"
    )

    def password() -> str:
        if tls.key_password is None:
            raise _KeyNeedsPassword
        return tls.key_password.get_secret_value()

    for part, path in (("certfile", tls.certfile), ("keyfile", tls.keyfile)):
        if path is not None and not os.path.isfile(path):
            raise SecurityError(
                f"{tls.var(part)}={path!r}: no such file",
                problem="file",
                variables=(tls.var(part),),
            )
    key_path = tls.keyfile or tls.certfile
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=password)
    except _KeyNeedsPassword:
        fix = f"set {password_var} to its password (or use an unencrypted key in {key_var})"
        if not tls.has_key_password:
            fix = f"{key_var} must name an unencrypted key"
        raise SecurityError(
            f"the client key {key_path!r} is encrypted: {fix}",
            problem="file",
            variables=(password_var, key_var) if tls.has_key_password else (key_var,),
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = (
                f"the key in {key_var}={key_path!r} does not belong to the certificate in "
                f"{cert_var}={tls.certfile!r}; set both to one certificate and its key"
            )
            variables: tuple[str, ...] = (key_var, cert_var)
        elif tls.key_password is not None and _encrypted(key_path):
            message = f"{password_var} does not decrypt the client key {key_path!r}"
            variables = (password_var,)
        else:
            message = (
                f"cannot load the client certificate {tls.certfile!r} and key {key_path!r} "
                f"({exc.reason or exc}); both must be PEM files ({cert_var}, {key_var})"
            )
            variables = (cert_var, key_var)
        raise SecurityError(message, problem="file", variables=variables) from None
    except OSError as exc:
        raise SecurityError(
            f"cannot read the client certificate or key ({exc.strerror or exc}; "
            f"{cert_var}, {key_var})",
            problem="file",
            variables=(cert_var, key_var),
        ) from None


def load_object(spec: str, variable: str) -> Any:
    """The object ``module:attribute`` (attribute may be dotted) names; the error names
    ``variable``. Used for ``HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"{variable}={spec!r}: expected module:attribute, e.g. myapp.auth:token_provider"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{variable}={spec!r}: cannot import {module_name!r} ({exc})"
        ) from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"{variable}={spec!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    return found


def kafka_client_options(
    protocol: str,
    *,
    mechanism: str | None = None,
    username: str | None = None,
    password: SecretStr | None = None,
    token_provider: Any = None,
    context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """The security keyword arguments of every aiokafka client (producer, consumer,
    admin, connection): ``security_protocol``, ``ssl_context``, ``sasl_*``."""
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = context or ssl.create_default_context()
    if protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = token_provider
        else:
            options["sasl_plain_username"] = username
            options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True, slots=True)
class TlsProbe:
    """One TLS handshake with a broker port, and what it showed."""

    host: str
    port: int
    ok: bool
    error: BaseException | None = None
    version: str | None = None
    subject: str | None = None
    issuer: str | None = None

    @property
    def detail(self) -> str:
        if not self.ok:
            return f"{type(self.error).__name__}: {self.error}"
        parts = [self.version or "TLS"]
        if self.subject:
            parts.append(f"certificate {self.subject}")
        if self.issuer:
            parts.append(f"issued by {self.issuer}")
        return ", ".join(parts)


def _name_of(entries: Any) -> str | None:
    """``CN=localhost`` from the subject/issuer tuples of ``getpeercert()``."""
    try:
        pairs = [f"{key}={value}" for rdn in entries for key, value in rdn]
    except (TypeError, ValueError):
        return None
    common = [p for p in pairs if p.startswith("commonName=")]
    chosen = common or pairs
    return ", ".join(p.replace("commonName=", "CN=") for p in chosen) or None


def unverified_context() -> ssl.SSLContext:
    """A context that accepts any certificate: only to learn whether a port speaks TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def probe_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109
    settle: float = 0.3,
) -> TlsProbe:
    """Do one TLS handshake with ``host:port`` (nothing else is sent).

    Why the short read after the handshake: with TLS 1.3 the server judges the client's
    certificate after the client considers the handshake done; a refusal arrives as an
    alert with the first read. No data arriving within ``settle`` seconds means accepted.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
    except (OSError, TimeoutError) as exc:
        return TlsProbe(host, port, False, exc)
    try:
        tls: Any = writer.get_extra_info("ssl_object")
        cert = tls.getpeercert() if tls is not None else None
        version = tls.version() if tls is not None else None
        try:
            async with asyncio.timeout(settle):
                await reader.read(1)
        except TimeoutError:
            pass
        except OSError as exc:
            return TlsProbe(host, port, False, exc)
        subject = _name_of(cert.get("subject", ())) if cert else None
        issuer = _name_of(cert.get("issuer", ())) if cert else None
        return TlsProbe(host, port, True, None, version, subject, issuer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _first_reachable(
    servers: Sequence[tuple[str, int]], timeout: float  # noqa: ASYNC109
) -> tuple[str, int] | None:
    for host, port in servers:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return host, port
    return None


# --------------------------------------------------------------------------- explaining

#: Failures that mean nothing answered at that address: no port probe can say more.
_NOBODY_THERE = (TimeoutError, ConnectionRefusedError, socket.gaierror, ValueError)

#: OpenSSL's words for "the peer answered a TLS hello with something that is not TLS".
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LENGTH_MISMATCH",
    }
)
#: Alerts a server sends about the client's certificate (absent, untrusted, refused).
_CLIENT_CERT_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
_HOSTNAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED = {10}  # X509_V_ERR_CERT_HAS_EXPIRED


def _ssl_cause(exc: BaseException | None) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``exc`` (clients wrap it, or raise it from another)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def explain_tls_error(
    exc: BaseException,
    *,
    host: str,
    port: int,
    tls: TlsFiles,
    address: str,
    not_tls: str,
    hostname_escape: str,
) -> SecurityError | None:
    """The :class:`SecurityError` for a TLS failure with ``host:port``, or ``None`` if
    ``exc`` is not one.

    ``address`` names the variable holding the broker address; ``not_tls`` is the
    sentence for a port that does not speak TLS; ``hostname_escape`` the setting that
    turns the name check off.
    """
    error = _ssl_cause(exc)
    where = f"{host}:{port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        reason = error.verify_message or error.reason or str(error)
        if code in _HOSTNAME_MISMATCH:
            return SecurityError(
                f"the TLS certificate of {where} does not name {host!r} ({reason}): connect "
                f"by a name the certificate lists ({address}), or set {hostname_escape} "
                "(not recommended)",
                problem="hostname",
                variables=(address, hostname_escape),
            )
        if code in _EXPIRED:
            return SecurityError(
                f"the TLS certificate of {where} has expired ({reason}): the broker needs "
                f"a renewed certificate (trusted through {tls.var('cafile')})",
                problem="certificate",
                variables=(tls.var("cafile"),),
            )
        if tls.cafile:
            fix = (
                f"{tls.var('cafile')}={tls.cafile!r} does not hold the CA that signed it; set "
                f"{tls.var('cafile')} to that CA's certificate (PEM)"
            )
        else:
            fix = (
                f"the system's CAs do not trust it; set {tls.var('cafile')} to the certificate "
                "(PEM) of the CA that signed it"
            )
        return SecurityError(
            f"the TLS certificate of {where} is not trusted ({reason}): {fix}",
            problem="certificate",
            variables=(tls.var("cafile"),),
        )
    if error is not None and error.reason in _NOT_TLS:
        return SecurityError(
            f"{where} does not speak TLS ({error.reason}): {not_tls}",
            problem="protocol",
            variables=(address,),
        )
    if error is not None and error.reason in _CLIENT_CERT_ALERTS:
        if tls.certfile:
            message = (
                f"{where} refused this client's TLS certificate {tls.var('certfile')}="
                f"{tls.certfile!r} ({error.reason}): it must be signed by a CA the broker "
                f"trusts (with its key in {tls.var('keyfile')})"
            )
        else:
            message = (
                f"{where} requires a client certificate ({error.reason}): set "
                f"{tls.var('certfile')} and {tls.var('keyfile')}"
            )
        return SecurityError(
            message,
            problem="client-certificate",
            variables=(tls.var("certfile"), tls.var("keyfile")),
        )
    if error is not None:
        return SecurityError(
            f"the TLS handshake with {where} failed ({error.reason or error}); check "
            f"{address} and the {tls.prefix}* settings",
            problem="certificate",
            variables=(address,),
        )
    return None


async def explain_rabbitmq_failure(
    exc: BaseException,
    *,
    url: str,
    redacted_url: str,
    tls: TlsFiles | None,
    context: ssl.SSLContext | None,
    auth_failed: bool,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> SecurityError | None:
    """Why connecting to ``url`` failed with ``exc``, when it is a security matter.

    ``auth_failed``: the client reported refused credentials. ``None`` when it is
    something else (the broker is down, a wrong host): the caller's message stands.
    """
    variable = "HEXBUS_RABBITMQ_URL"
    parts = urlsplit(url)
    secure = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    try:
        port = parts.port or (5671 if secure else 5672)
    except ValueError:
        return None
    if isinstance(exc, _NOBODY_THERE):
        return None  # no broker answered: the caller's message (unreachable) stands
    if auth_failed:
        user = unquote(parts.username) if parts.username else "guest"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return SecurityError(
            f"RabbitMQ at {redacted_url} refused the credentials of user {user!r} (wrong user "
            f"name or password, or no access to virtual host {vhost!r}): fix them in {variable}",
            problem="credentials",
            variables=(variable,),
        )
    if secure and tls is not None and context is not None:
        escape = f"{tls.var('verify')}=false"
        not_tls = f"{variable} uses amqps://; use amqp:// for this port, or the TLS port (5671)"
        explained = explain_tls_error(
            exc,
            host=host,
            port=port,
            tls=tls,
            address=variable,
            not_tls=not_tls,
            hostname_escape=escape,
        )
        if explained is not None:
            return explained
        probe = await probe_tls(host, port, context, timeout=timeout)
        if probe.ok or probe.error is None:
            return None
        return explain_tls_error(
            probe.error,
            host=host,
            port=port,
            tls=tls,
            address=variable,
            not_tls=not_tls,
            hostname_escape=escape,
        )
    if not secure:
        # A plaintext client on a TLS port sees a reset, a closed connection or silence.
        probe = await probe_tls(host, port, unverified_context(), timeout=timeout)
        if probe.ok:
            return SecurityError(
                f"{host}:{port} speaks TLS, but {variable} uses amqp:// (plaintext): use "
                f"amqps://… for this port (and HEXBUS_RABBITMQ_SSL_CAFILE for a private CA), "
                "or the broker's plaintext port",
                problem="protocol",
                variables=(variable,),
            )
    return None


#: ``await session(host, port)``: open one authenticated connection to that broker and
#: ask for metadata; the exception it failed with, or ``None``. Made by the Kafka adapter.
KafkaSessionProbe = Callable[[str, int], Awaitable[BaseException | None]]

_SASL_AUTHENTICATION_FAILED = 58
_UNSUPPORTED_SASL_MECHANISM = 33
_ILLEGAL_SASL_STATE = 34


async def explain_kafka_failure(
    *,
    servers: Sequence[tuple[str, int]],
    protocol: str,
    mechanism: str | None,
    username: str | None,
    tls: TlsFiles,
    context: ssl.SSLContext | None,
    session: KafkaSessionProbe,
    plaintext: Callable[[str, int], Awaitable[bool]] | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> SecurityError | None:
    """Why a Kafka client could not bootstrap, when it is a security matter.

    Why a diagnosis of its own: aiokafka's bootstrap logs the cause and raises "Unable to
    bootstrap". This finds the first broker that accepts TCP, checks TLS against it
    (or that it does not speak TLS when the protocol says plaintext), then opens one
    session through ``session`` and reads the broker's answer. ``plaintext(host, port)``
    says whether a port answers Kafka without TLS: a plaintext listener just drops a TLS
    hello, which says nothing by itself. ``None``: no broker answers at all, or the cause
    is not a security matter.
    """
    found = await _first_reachable(servers, timeout)
    if found is None:
        return None
    host, port = found
    proto_var = "HEXBUS_KAFKA_SECURITY_PROTOCOL"
    sasl = protocol in SASL_PROTOCOLS
    if protocol in TLS_PROTOCOLS:
        context = context or ssl.create_default_context()
        probe = await probe_tls(host, port, context, timeout=timeout)
        if not probe.ok and probe.error is not None:
            plain = "SASL_PLAINTEXT" if sasl else "PLAINTEXT"
            unclear = not _recognised(probe.error) and plaintext is not None
            if unclear and plaintext is not None and await plaintext(host, port):
                return SecurityError(
                    f"{host}:{port} is a plaintext Kafka listener, but {proto_var}="
                    f"{protocol} asks for TLS: set {proto_var}={plain} for it, or list "
                    "the broker's TLS listener in HEXBUS_KAFKA_BOOTSTRAP_SERVERS",
                    problem="protocol",
                    variables=(proto_var,),
                )
            return explain_tls_error(
                probe.error,
                host=host,
                port=port,
                tls=tls,
                address=proto_var,
                not_tls=(
                    f"{proto_var}={protocol} asks for it; set {plain} for this listener, or "
                    "list the broker's TLS listener in HEXBUS_KAFKA_BOOTSTRAP_SERVERS"
                ),
                hostname_escape=f"{tls.var('check_hostname')}=false",
            )
    else:
        probe = await probe_tls(host, port, unverified_context(), timeout=timeout)
        if probe.ok:
            wanted = "SASL_SSL" if sasl else "SASL_SSL (or SSL)"
            return SecurityError(
                f"{host}:{port} speaks TLS, but {proto_var}={protocol} (no TLS): set "
                f"{proto_var}={wanted}, with HEXBUS_KAFKA_SSL_CAFILE for a private CA",
                problem="protocol",
                variables=(proto_var,),
            )
    error = await session(host, port)
    if error is None:
        return None
    return _explain_kafka_session(
        error, where=f"{host}:{port}", protocol=protocol, mechanism=mechanism, username=username
    )


def _recognised(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS failure ``explain_tls_error`` names precisely."""
    error = _ssl_cause(exc)
    return isinstance(error, ssl.SSLCertVerificationError) or (
        error is not None and error.reason in _NOT_TLS | _CLIENT_CERT_ALERTS
    )


def _explain_kafka_session(
    error: BaseException,
    *,
    where: str,
    protocol: str,
    mechanism: str | None,
    username: str | None,
) -> SecurityError | None:
    code = getattr(error, "errno", None)
    proto_var, mech_var = "HEXBUS_KAFKA_SECURITY_PROTOCOL", "HEXBUS_KAFKA_SASL_MECHANISM"
    if code == _SASL_AUTHENTICATION_FAILED:
        if mechanism == "OAUTHBEARER":
            return SecurityError(
                f"Kafka at {where} refused the OAUTHBEARER token: check the token provider "
                "HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER",
                problem="credentials",
                variables=("HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER",),
            )
        return SecurityError(
            f"Kafka at {where} refused the {mechanism} credentials of user {username!r} "
            "(wrong user name or password, or a user made for another mechanism): check "
            f"HEXBUS_KAFKA_SASL_USERNAME and HEXBUS_KAFKA_SASL_PASSWORD ({mech_var}={mechanism})",
            problem="credentials",
            variables=("HEXBUS_KAFKA_SASL_USERNAME", "HEXBUS_KAFKA_SASL_PASSWORD"),
        )
    if code == _UNSUPPORTED_SASL_MECHANISM:
        return SecurityError(
            f"Kafka at {where} does not enable SASL mechanism {mechanism} on this listener "
            f"(UNSUPPORTED_SASL_MECHANISM): set {mech_var} to one it enables (managed "
            "services document theirs; often SCRAM-SHA-512 or PLAIN)",
            problem="mechanism",
            variables=(mech_var,),
        )
    if code == _ILLEGAL_SASL_STATE:
        return SecurityError(
            f"Kafka at {where} does not expect SASL on this listener (ILLEGAL_SASL_STATE): set "
            f"{proto_var} to {'SSL' if protocol in TLS_PROTOCOLS else 'PLAINTEXT'}, or list "
            "the broker's SASL listener in HEXBUS_KAFKA_BOOTSTRAP_SERVERS",
            problem="protocol",
            variables=(proto_var,),
        )
    if protocol not in SASL_PROTOCOLS and code is None:
        return SecurityError(
            f"Kafka at {where} closed the connection of a client that does not authenticate "
            f"({error}): the listener probably requires SASL; set "
            f"{proto_var}=SASL_SSL (or SASL_PLAINTEXT) and the HEXBUS_KAFKA_SASL_* settings",
            problem="protocol",
            variables=(proto_var,),
        )
    return None


# --------------------------------------------------------------------------- describing


@dataclass(frozen=True, slots=True)
class SecurityMode:
    """How the configured adapter secures its connections (for ``hexbus check``)."""

    adapter: str
    #: ``SASL_SSL``, ``PLAINTEXT`` ... (Kafka); ``TLS`` or ``plaintext`` (RabbitMQ).
    mode: str
    tls: TlsFiles | None
    #: ``SCRAM-SHA-512``, ``PLAIN``, ``OAUTHBEARER``; ``None``: no authentication.
    mechanism: str | None
    user: str | None

    @property
    def text(self) -> str:
        parts = [self.mode]
        if self.mechanism:
            who = f" as {self.user!r}" if self.user else ""
            parts.append(f"{self.mechanism}{who}")
        if self.tls is not None:
            parts.append(self.tls.summary)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        tls = self.tls
        return {
            "mode": self.mode,
            "tls": tls is not None,
            "mechanism": self.mechanism,
            "user": self.user,
            "cafile": tls.cafile if tls else None,
            "certfile": tls.certfile if tls else None,
            "verify": tls.verify if tls else None,
            "check_hostname": (tls.verify and tls.check_hostname) if tls else None,
        }


def _rabbitmq_tls(settings: HexbusSettings) -> TlsFiles:
    return TlsFiles(
        cafile=settings.rabbitmq_ssl_cafile,
        certfile=settings.rabbitmq_ssl_certfile,
        keyfile=settings.rabbitmq_ssl_keyfile,
        verify=settings.rabbitmq_ssl_verify,
        check_hostname=settings.rabbitmq_ssl_verify,
        prefix="HEXBUS_RABBITMQ_SSL_",
        has_key_password=False,
    )


def _kafka_tls(settings: HexbusSettings) -> TlsFiles:
    return TlsFiles(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        key_password=settings.kafka_ssl_key_password,
        check_hostname=settings.kafka_ssl_check_hostname,
    )


def security_mode(settings: HexbusSettings) -> SecurityMode | None:
    """The security mode of the configured adapter; ``None`` for the memory adapter."""
    if settings.adapter == "kafka":
        protocol = settings.kafka_security_protocol
        mechanism = settings.kafka_sasl_mechanism if protocol in SASL_PROTOCOLS else None
        user = settings.kafka_sasl_username if mechanism != "OAUTHBEARER" else None
        tls = _kafka_tls(settings) if protocol in TLS_PROTOCOLS else None
        return SecurityMode("kafka", protocol, tls, mechanism, user)
    if settings.adapter == "rabbitmq":
        url = _first_url(settings.rabbitmq_url)
        parts = urlsplit(url)
        secure = parts.scheme == "amqps"
        user = unquote(parts.username) if parts.username else "guest"
        tls = _rabbitmq_tls(settings) if secure else None
        mode = "TLS (amqps)" if secure else "plaintext (amqp)"
        return SecurityMode("rabbitmq", mode, tls, "PLAIN", user)
    return None


def _first_url(value: str) -> str:
    # Imported here: settings imports this module (for the validation rules above).
    from hexbus.infrastructure.settings import split_urls  # noqa: PLC0415

    urls = split_urls(value)
    return urls[0] if urls else value


def settings_tls(settings: HexbusSettings) -> tuple[TlsFiles, ssl.SSLContext] | None:
    """The TLS files and client context the configured adapter uses; ``None`` without
    TLS. Raises :class:`SecurityError` for a file that cannot be used."""
    mode = security_mode(settings)
    if mode is None or mode.tls is None:
        return None
    return mode.tls, client_context(mode.tls)
