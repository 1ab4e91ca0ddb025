"""One validated settings object, read from the environment (prefix-free names, as operators expect)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Which requests uvicorn's access log records (icc.access_log): error answers only, all, or none.
AccessLog = Literal["errors", "all", "off"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    environment: str = Field(default="development", alias="ICC_ENV")
    data_dir: Path = Field(default=Path(".data"), alias="ICC_DATA_DIR")
    # Empty means "use the embedded server that `icc up` started" (its address is in the data folder).
    database_url: str = Field(default="", alias="DATABASE_URL")
    kafka_bootstrap: str = Field(default="", alias="KAFKA_BOOTSTRAP")
    org_file: Path = Field(default=Path("deploy/org/sample-icb.yaml"), alias="ICC_ORG_FILE")
    opel_profile: Path = Field(default=Path("deploy/opel/default-profile.yaml"), alias="ICC_OPEL_PROFILE")
    escalation_rules: Path = Field(
        default=Path("deploy/escalation/default-rules.yaml"), alias="ICC_ESCALATION_RULES"
    )
    # Outbound escalation webhook (signed); empty is off.
    escalation_webhook_url: str = Field(default="", alias="ICC_ESCALATION_WEBHOOK_URL")
    escalation_webhook_secret: str = Field(default="", alias="ICC_ESCALATION_WEBHOOK_SECRET")
    escalation_webhook_attempts: int = Field(default=8, ge=1, alias="ICC_ESCALATION_WEBHOOK_ATTEMPTS")
    state_tick_seconds: float = Field(default=15.0, gt=0, alias="ICC_STATE_TICK_SECONDS")
    secrets_file: Path | None = Field(default=None, alias="ICC_SECRETS_FILE")

    host: str = Field(default="127.0.0.1", alias="ICC_HOST")
    access_log: AccessLog = Field(default="errors", alias="ICC_ACCESS_LOG")
    ingest_port: int = Field(default=8701, alias="ICC_INGEST_PORT")
    command_centre_port: int = Field(default=8702, alias="ICC_COMMAND_CENTRE_PORT")
    gateway_port: int = Field(default=8703, alias="ICC_GATEWAY_PORT")
    # Gateway processes sharing its port, each a full replica reading the state topics whole:
    # one per core a machine gives the gateway (fan-out is CPU-bound, one process uses one core).
    gateway_workers: int = Field(default=1, ge=1, alias="ICC_GATEWAY_WORKERS")
    # A stream connection that sends nothing (clients ping every 15 s) for this long is closed (4410);
    # one still behind its queue for this long is closed (4408).
    stream_idle_seconds: float = Field(default=45.0, gt=0, alias="ICC_STREAM_IDLE_SECONDS")
    stream_drop_after_seconds: float = Field(default=30.0, gt=0, alias="ICC_STREAM_DROP_AFTER_SECONDS")
    # Frames a connection may have waiting before its updates are coalesced (and `resync` is sent).
    stream_queue_frames: int = Field(default=1000, ge=2, alias="ICC_STREAM_QUEUE_FRAMES")
    # The kernel's send buffer of each stream connection (SO_SNDBUF). Bounded, a client that stops
    # reading holds at most this much kernel memory and is noticed sooner; 0 leaves the kernel's
    # autotuning, which lets each connection grow to `net.ipv4.tcp_wmem`'s maximum (often 4 MiB).
    stream_send_buffer_bytes: int = Field(default=262_144, ge=0, alias="ICC_STREAM_SEND_BUFFER_BYTES")
    # How long a screen may keep renewing its token (POST /v1/token/refresh) after it was first minted.
    max_session_hours: float = Field(default=168.0, gt=0, alias="ICC_MAX_SESSION_HOURS")
    feeds_port: int = Field(default=8704, alias="ICC_FEEDS_PORT")
    broker_port: int = Field(default=9092, alias="ICC_BROKER_PORT")
    # HL7 v2 over MLLP (TCP) into ingest: 0 is off; `icc up` turns it on at 2575.
    mllp_port: int = Field(default=0, alias="ICC_MLLP_PORT")
    mllp_host: str = Field(default="127.0.0.1", alias="ICC_MLLP_HOST")
    # Who may connect, and which source each address speaks for: `address-or-network=source, …`.
    mllp_sources: str = Field(default="127.0.0.1=pas,::1=pas", alias="ICC_MLLP_SOURCES")
    # An MLLP connection that sends nothing for this long is closed (a half-sent frame is dropped); 0: never.
    mllp_idle_seconds: float = Field(default=600.0, ge=0, alias="ICC_MLLP_IDLE_SECONDS")

    topic_partitions: int = Field(default=6, alias="ICC_TOPIC_PARTITIONS")
    # How long a consumer's fetch waits at the broker for data: short for the embedded broker, which
    # answers only when the wait expires; 500 for Kafka, which answers when data arrives (shared.kafka).
    kafka_fetch_wait_ms: int = Field(default=10, ge=1, le=30_000, alias="ICC_KAFKA_FETCH_WAIT_MS")
    outbox_retention_hours: float = Field(default=24.0, alias="ICC_OUTBOX_RETENTION_HOURS")
    # How long a taken HL7 message is remembered, so that a re-send is answered without new events.
    hl7_dedup_days: float = Field(default=30.0, alias="ICC_HL7_DEDUP_DAYS")
    # Retention (ingest purges hourly, in batches; 0 keeps forever). A raw message as received: 30 days,
    # as long as an HL7 re-send is recognised (recognition reads `hl7_message`, not the raw store); one
    # a quarantine row links to, or whose events are not yet published, is kept whatever its age.
    raw_retention_days: float = Field(default=30.0, ge=0, alias="ICC_RAW_RETENTION_DAYS")
    # A quarantine row once replayed, from its replay; one still open (never replayed), from when it
    # was last seen: longer, since it waits for someone to fix its cause.
    quarantine_retention_days: float = Field(default=30.0, ge=0, alias="ICC_QUARANTINE_RETENTION_DAYS")
    quarantine_open_retention_days: float = Field(
        default=90.0, ge=0, alias="ICC_QUARANTINE_OPEN_RETENTION_DAYS"
    )
    max_body_bytes: int = Field(default=1_048_576, alias="ICC_MAX_BODY_BYTES")
    webhook_max_skew_seconds: int = Field(default=300, alias="ICC_WEBHOOK_MAX_SKEW_SECONDS")
    # How far ahead of ICC's clock at receipt a source's event time may be: hospital systems' clocks
    # drift, but not by hours, and a time far ahead would win over every real event until it passes.
    max_future_skew_seconds: int = Field(default=300, ge=0, alias="ICC_MAX_FUTURE_SKEW_SECONDS")
    # Per source and per ingest replica (token bucket); 0 requests/s turns the limit off.
    rate_limit_per_second: float = Field(default=200.0, ge=0, alias="ICC_RATE_LIMIT_PER_SECOND")
    rate_limit_burst: int = Field(default=400, ge=1, alias="ICC_RATE_LIMIT_BURST")
    # Requests refused before they were authenticated (401, 413) per client address and window, per
    # ingest replica: each is kept in the quarantine; beyond the limit they are answered 429 and not
    # kept, until the window (started by the address's first failure) ends. 0 turns the limit off.
    auth_failure_limit: int = Field(default=10, ge=0, alias="ICC_AUTH_FAILURE_LIMIT")
    auth_failure_window_seconds: float = Field(default=300.0, gt=0, alias="ICC_AUTH_FAILURE_WINDOW_SECONDS")
    # How many client addresses the count is kept for; past that, new addresses share one count.
    auth_failure_addresses: int = Field(default=10_000, ge=1, alias="ICC_AUTH_FAILURE_ADDRESSES")
    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks, comma-separated);
    # empty: none, the client address is always the connection's peer.
    trusted_proxies: str = Field(default="", alias="ICC_TRUSTED_PROXIES")
    # Aliases of PAS location codes beyond those the organisation file names (a missing file: no aliases);
    # re-read when it changes, so a fix applies to the next message and to quarantine replays.
    location_map_file: Path | None = Field(
        default=Path("deploy/org/location-map.yaml"), alias="ICC_LOCATION_MAP_FILE"
    )
    consumer_group: str = Field(default="icc-command-centre", alias="ICC_CONSUMER_GROUP")
    # ICB push feed: how often due deliveries are looked for, and how a failing subscriber is retried.
    feeds_poll_seconds: float = Field(default=1.0, gt=0, alias="ICC_FEEDS_POLL_SECONDS")
    feeds_max_attempts: int = Field(default=8, ge=1, alias="ICC_FEEDS_MAX_ATTEMPTS")
    feeds_retry_base_seconds: float = Field(default=2.0, gt=0, alias="ICC_FEEDS_RETRY_BASE_SECONDS")
    feeds_retry_max_seconds: float = Field(default=600.0, gt=0, alias="ICC_FEEDS_RETRY_MAX_SECONDS")
    feeds_delivery_timeout_seconds: float = Field(
        default=10.0, gt=0, alias="ICC_FEEDS_DELIVERY_TIMEOUT_SECONDS"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        return ",".join(str(network) for network in parse_networks(value, "ICC_TRUSTED_PROXIES"))

    @model_validator(mode="after")
    def _signed_escalation_webhook(self) -> Settings:
        if self.escalation_webhook_url and len(self.escalation_webhook_secret) < 32:
            raise ValueError(
                "ICC_ESCALATION_WEBHOOK_URL needs ICC_ESCALATION_WEBHOOK_SECRET (32 characters or more)"
            )
        return self

    @model_validator(mode="after")
    def _no_dev_defaults_in_production(self) -> Settings:
        if self.environment == "production":
            if not self.database_url or not self.kafka_bootstrap:
                raise ValueError(
                    "production needs DATABASE_URL and KAFKA_BOOTSTRAP; embedded servers are for development"
                )
            if self.secrets_file is None:
                raise ValueError(
                    "production needs ICC_SECRETS_FILE; generated development secrets are refused"
                )
        return self

    @property
    def command_centre_url(self) -> str:
        return f"http://{self.host}:{self.command_centre_port}"

    @property
    def resolved_secrets_file(self) -> Path:
        return self.secrets_file or self.data_dir / "secrets.json"

    @property
    def endpoints_file(self) -> Path:
        """Where `icc up` writes the addresses of the embedded database and broker it started."""
        return self.data_dir / "endpoints.json"


def parse_networks(text: str, name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`10.0.0.5, 10.1.0.0/16` → networks (an address is a network of one)."""
    networks = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"{name} entry {entry!r} is not an address or network: {exc}") from exc
    return networks


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
