"""Every setting of usage-ingest, in one object loaded once at the entry point.

Each field is read from `USAGE_INGEST_<FIELD>` and can be overridden by the
matching command-line flag `--<field-with-dashes>` (see `cli`). Nothing deeper
in the code reads the environment.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from usage_ingest.errors import ConfigurationError

ENV_PREFIX = "USAGE_INGEST_"
MAX_PORT = 65535

TopicName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9._-]{1,249}$")]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a terminal, JSON lines otherwise
    JSON = "json"
    CONSOLE = "console"


def _parses_as_url(url: str) -> bool:
    """Whether `url` reads as postgresql://[user[:password]@]host[:port][,...][/db][?options]:
    a password character that was not percent-encoded ends the host part early, so a
    port is not a number, or leaves an @ of the credentials in the path or query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(",") if hosts else ():
        port = host.rpartition("]")[2] if host.startswith("[") else host
        port = port.rpartition(":")[2] if ":" in port else ""
        if port and not port.isdigit():
            return False
    return not parts.fragment and "@" not in parts.path + parts.query


def _is_address_or_network(text: str) -> bool:
    """An IP address, or a network with no host bits set (10.0.0.0/8, not 10.0.0.1/8)."""
    try:
        if "/" in text:
            ipaddress.ip_network(text)
        else:
            ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Settings(BaseSettings):
    """usage-ingest configuration (SPEC.md §9)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="localhost:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    group_id: str = Field(default="usage-ingest", min_length=1, description="Consumer group.")
    topic_events: TopicName = Field(default="usage.events", description="Input topic.")
    topic_accepted: TopicName = Field(default="usage.accepted", description="Accepted outcomes.")
    topic_rejected: TopicName = Field(default="usage.rejected", description="Rejected outcomes.")
    topic_dlq: TopicName = Field(default="usage.events.dlq", description="Dead-letter topic.")
    max_message_bytes: int = Field(
        default=65536, ge=1, le=16 * 1024 * 1024, description="Largest accepted event value."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        default=SecurityProtocol.PLAINTEXT,
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(default=None, description="CA bundle for TLS.")
    kafka_ssl_certfile: str | None = Field(default=None, description="Client certificate (mTLS).")
    kafka_ssl_keyfile: str | None = Field(default=None, description="Client key (mTLS).")
    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Consumer group session timeout."
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=60_000,
        description="Longest time the broker may hold a fetch waiting for data.",
    )
    kafka_max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1000,
        description="Longest pause between fetches before leaving the group.",
    )

    # --- Postgres ----------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None, description="postgresql://user:password@host:port/database"
    )
    db_pool_max_size: int = Field(default=4, ge=1, le=100, description="Connections per process.")
    db_statement_timeout_s: float = Field(
        default=30.0, gt=0, description="A statement slower than this is retried."
    )

    # --- The batch loop ----------------------------------------------------
    batch_max_records: int = Field(default=1000, ge=1, le=100_000, description="Records per batch.")
    batch_max_wait_ms: int = Field(
        default=200, ge=0, le=60_000, description="Longest wait for records when none are ready."
    )
    retry_initial_backoff_s: float = Field(default=0.2, gt=0, description="First retry delay.")
    retry_max_backoff_s: float = Field(default=30.0, gt=0, description="Longest retry delay.")
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="How long SIGTERM waits for the batches in flight."
    )

    # --- The HTTP API (usage-ingest api) -----------------------------------
    api_host: str = Field(
        default="127.0.0.1", min_length=1, description="Address the HTTP API listens on."
    )
    api_port: int = Field(
        default=8080, ge=1, le=MAX_PORT, description="Port the HTTP API listens on."
    )
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest HTTP request body accepted (larger: 413).",
    )
    api_statement_budget_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest a statement of one API request may run (then 504 STATEMENT_TIMEOUT).",
    )
    api_publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long POST /usages waits for the broker's acknowledgement (then 503).",
    )
    api_max_batch: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most usage events one POST /usages array may hold (more: 400).",
    )
    api_forwarded_allow_ips: str = Field(
        default="127.0.0.1,::1",
        description="Proxies whose X-Forwarded-Proto and X-Forwarded-For the API believes "
        "(comma-separated addresses or networks such as 10.0.0.0/8, * for any, empty for none).",
    )

    # --- Operations ----------------------------------------------------------
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - scraped from outside the host or pod
        description="Address of the /metrics, /healthz and /readyz server.",
    )
    metrics_port: int = Field(
        default=9464, ge=0, le=MAX_PORT, description="Port of that server; 0 turns it off."
    )

    # --- Logs --------------------------------------------------------------
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    log_format: LogFormat = Field(default=LogFormat.AUTO, description="auto, json or console.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @field_validator("api_forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        """Checked here: uvicorn takes a mistyped address as a name no proxy has, so the
        cookie would silently lose `Secure` and the console refuse every sign-in."""
        items = [item.strip() for item in value.split(",")] if value.strip() else []
        if "*" in items and items != ["*"]:
            raise ValueError("* trusts every address: give it alone")
        for item in items:
            if item != "*" and not _is_address_or_network(item):
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8, 127.0.0.1)"
                )
        return ",".join(items)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgres://", "postgresql://")
        ):
            raise ValueError("must start with postgresql://")
        if value is not None and not _parses_as_url(value.get_secret_value()):
            # Checked here because the driver's own parse error quotes the part of the
            # URL it choked on, which for an unescaped / # ? in a password is the password.
            raise ValueError(
                "is not a valid URL (a password with / # ? @ : must be percent-encoded, "
                "e.g. / as %2F)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        uses_sasl = self.kafka_security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )
        if uses_sasl and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{self.kafka_security_protocol} needs {ENV_PREFIX}KAFKA_SASL_MECHANISM, "
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
            )
        if self.kafka_sasl_mechanism and not uses_sasl:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_MECHANISM needs {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL "
                "SASL_PLAINTEXT or SASL_SSL"
            )
        return self

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError(
                f"{ENV_PREFIX}DATABASE_URL (--database-url) is not set: "
                "give it as postgresql://user:password@host:port/database"
            )
        return self.database_url.get_secret_value()

    @property
    def output_topics(self) -> tuple[str, str, str]:
        return (self.topic_accepted, self.topic_rejected, self.topic_dlq)


def settings_reference() -> str:
    """The configuration reference as a Markdown table: variable, flag, default, meaning.

    README's table under "Configuration" is this text (a test compares them); `usage-ingest
    settings` prints it.
    """
    lines = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = default_text(name)
        shown = "—" if default is None else f"`{default}`"
        meaning = (info.description or "").replace("|", "\\|")
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{flag}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


def default_text(name: str) -> str | None:
    """A setting's default as written on a command line; None when it has none."""
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if default is None:
        return None
    return str(default.value if isinstance(default, StrEnum) else default)


def value_kind(name: str) -> str:
    """What a setting's value is, for --help: INTEGER, NUMBER, BOOLEAN or TEXT."""
    annotation = Settings.model_fields[name].annotation
    kinds = {int: "INTEGER", float: "NUMBER", bool: "BOOLEAN"}
    for kind, label in kinds.items():
        if annotation is kind or annotation == kind | None:
            return label
    return "TEXT"
