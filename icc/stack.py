"""Starts and stops the whole system: embedded infrastructure and one process per service.

Used by `icc up` and by the end-to-end tests, so the tests start the stack the way a user does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from icc.embedded import Broker, die_with_parent, start_postgres, stop_postgres, wait_for_port
from shared.db import migrate
from shared.kafka import ensure_topics
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("ingest", "command-centre", "gateway", "feeds")
DEFAULT_MLLP_PORT = 2575  # the port IANA registered for HL7 over MLLP


@dataclass
class Stack:
    settings: Settings
    database_url: str = ""
    bootstrap: str = ""
    broker: Broker | None = None
    embedded_postgres: bool = False
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    def port_of(self, service: str) -> int:
        s = self.settings
        return {
            "ingest": s.ingest_port,
            "command-centre": s.command_centre_port,
            "gateway": s.gateway_port,
            "feeds": s.feeds_port,
        }[service]

    def url_of(self, service: str) -> str:
        return f"http://{self.settings.host}:{self.port_of(service)}"

    @property
    def mllp_address(self) -> tuple[str, int] | None:
        """Where ingest takes HL7 over MLLP, when it does."""
        if not self.settings.mllp_port:
            return None
        return self.settings.mllp_host, self.settings.mllp_port

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = self.settings.database_url
        if not self.database_url:
            self.database_url = start_postgres(self.data_dir)
            self.embedded_postgres = True
        self.bootstrap = self.settings.kafka_bootstrap
        if not self.bootstrap:
            self.broker = Broker(self.settings.broker_port, self.data_dir / "logs" / "broker.log").start()
            self.bootstrap = self.broker.bootstrap
        migrate(self.database_url)
        asyncio.run(ensure_topics(self.bootstrap, self.settings.topic_partitions))

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            KAFKA_BOOTSTRAP=self.bootstrap,
            ICC_DATA_DIR=str(self.data_dir),
            ICC_ORG_FILE=str(self.settings.org_file.resolve()),
            ICC_LOCATION_MAP_FILE=str(self.settings.location_map_file.resolve()),
            ICC_SECRETS_FILE=str(self.settings.resolved_secrets_file.resolve()),
            ICC_INGEST_PORT=str(self.settings.ingest_port),
            ICC_COMMAND_CENTRE_PORT=str(self.settings.command_centre_port),
            ICC_GATEWAY_PORT=str(self.settings.gateway_port),
            ICC_GATEWAY_WORKERS=str(self.settings.gateway_workers),
            ICC_FEEDS_PORT=str(self.settings.feeds_port),
            ICC_FEEDS_POLL_SECONDS=str(self.settings.feeds_poll_seconds),
            ICC_FEEDS_MAX_ATTEMPTS=str(self.settings.feeds_max_attempts),
            ICC_FEEDS_RETRY_BASE_SECONDS=str(self.settings.feeds_retry_base_seconds),
            ICC_FEEDS_RETRY_MAX_SECONDS=str(self.settings.feeds_retry_max_seconds),
            ICC_FEEDS_DELIVERY_TIMEOUT_SECONDS=str(self.settings.feeds_delivery_timeout_seconds),
            ICC_MLLP_PORT=str(self.settings.mllp_port),
            ICC_MLLP_HOST=self.settings.mllp_host,
            ICC_MLLP_SOURCES=self.settings.mllp_sources,
            ICC_MAX_BODY_BYTES=str(self.settings.max_body_bytes),
            ICC_ACCESS_LOG=self.settings.access_log,
            ICC_RATE_LIMIT_PER_SECOND=str(self.settings.rate_limit_per_second),
            ICC_RATE_LIMIT_BURST=str(self.settings.rate_limit_burst),
            ICC_TOPIC_PARTITIONS=str(self.settings.topic_partitions),
            ICC_STATE_TICK_SECONDS=str(self.settings.state_tick_seconds),
            ICC_ESCALATION_RULES=str(self.settings.escalation_rules.resolve()),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start_service(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as logfile:
            process = subprocess.Popen(
                [sys.executable, "-m", "icc.cli", name, *args],
                env=self.child_env(**env),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        self.processes[name] = process
        return process

    def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        wait_for_port(self.settings.host, self.port_of(service), timeout)
        deadline = time.monotonic() + timeout
        while True:
            process = self.processes.get(service)
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with {process.returncode}; see {self.data_dir}/logs/{service}.log"
                )
            try:
                if httpx.get(f"{self.url_of(service)}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} not ready after {timeout}s")
            time.sleep(0.2)

    def start_services(self) -> None:
        for name in SERVICES:
            self.start_service(name)
        for name in SERVICES:
            self.wait_ready(name)

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_service(name)
        if self.broker is not None:
            self.broker.stop()
        if self.embedded_postgres:
            stop_postgres(self.data_dir)
