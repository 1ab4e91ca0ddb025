"""`icc`: start the system, run one service, mint a dev token, send a signed message, or manage keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shared.settings import Settings

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("icc")
T = TypeVar("T")


def _serve(
    app_path: str,
    port: int,
    settings: Settings,
    *,
    workers: int = 1,
    ws: str = "auto",
    ws_ping_interval: float | None = 20.0,
) -> int:
    import uvicorn

    from icc.access_log import uvicorn_log_config

    uvicorn.run(
        app_path,
        factory=True,
        host=settings.host,
        port=port,
        log_level="info",
        log_config=uvicorn_log_config(settings.access_log),
        access_log=settings.access_log != "off",
        ws_max_size=65536,
        # Stream frames are small JSON deltas sent to many screens at once: compressing every frame
        # again for every connection would cost the gateway CPU in proportion to its clients.
        ws_per_message_deflate=False,
        ws=ws,
        ws_ping_interval=ws_ping_interval,
        workers=workers,
        # The client address (access log, ingest's count of failed authentications) is the peer's,
        # unless it is a proxy named in ICC_TRUSTED_PROXIES: uvicorn's own default would believe
        # X-Forwarded-For from any local process.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )
    return 0


def _raise_open_file_limit() -> None:
    """Every WebSocket is an open file: allow as many as the hard limit does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # an unlimited hard limit the kernel will not grant
            log.warning("open-file limit stays at %d: %s", soft, exc)


def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    target = {
        "ingest": ("services.ingest.app:create_app", settings.ingest_port),
        "command-centre": ("services.command_centre.app:create_app", settings.command_centre_port),
        "gateway": ("services.gateway.app:create_app", settings.gateway_port),
        "feeds": ("services.feeds.app:create_app", settings.feeds_port),
    }[args.command]
    if args.command == "gateway":
        _raise_open_file_limit()
        # each worker is a whole gateway replica: its own state, its own reading of the topics
        return _serve(
            target[0],
            args.port or target[1],
            settings,
            workers=settings.gateway_workers,
            ws="services.gateway.direct_send:DirectSendProtocol",
            # The stream has its own liveness (client pings, the idle close): no protocol pings on top,
            # which at 10,000 screens would be 500 more frames each way every second.
            ws_ping_interval=None,
        )
    return _serve(target[0], args.port or target[1], settings)


def cmd_simulator(args: argparse.Namespace, settings: Settings) -> int:
    from services.simulator.traffic import Simulator
    from shared.organisation import load_organisation
    from shared.secrets_store import load

    secrets = load(settings.resolved_secrets_file)
    simulator = Simulator(
        org=load_organisation(settings.org_file),
        ingest_url=args.ingest_url or f"http://{settings.host}:{settings.ingest_port}",
        source="simulator",
        secret=secrets.webhook_secrets["simulator"],
        rate=args.rate,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await simulator.run(stop, changes=args.changes)

    asyncio.run(main())
    log.info("simulator sent %d events (%d failed)", simulator.sent, simulator.failed)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from shared.auth import Role, mint_token
    from shared.secrets_store import load

    secrets = load(settings.resolved_secrets_file)
    print(
        mint_token(
            secrets.jwt_secret,
            subject=args.subject,
            role=Role(args.role),
            scopes=args.scope,
            ttl_seconds=int(args.ttl_hours * 3600),
        )
    )
    return 0


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from icc.watch import watch
    from shared.auth import Role, mint_token
    from shared.secrets_store import load

    scopes = list(args.scope or [])
    scopes += [f"site:{s}" for s in args.site or []]
    if not scopes:
        scopes = [f"system:{_system_id(settings)}"]
    token = args.token
    if not token:
        secrets = load(settings.resolved_secrets_file)
        token = mint_token(
            secrets.jwt_secret,
            subject="icc-watch",
            role=Role.wall_display,
            scopes=scopes,
            ttl_seconds=12 * 3600,
        )
    url = args.url or f"http://{settings.host}:{settings.gateway_port}"
    try:
        asyncio.run(watch(url, token, scopes, heartbeats=args.heartbeats))
    except KeyboardInterrupt:
        pass
    return 0


def _is_hl7(body: bytes) -> bool:
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:3] in (b"MSH", b"BHS", b"FHS")


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from shared.auth import SOURCE_HEADER, sign_webhook
    from shared.secrets_store import load

    body = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    hl7 = _is_hl7(body)
    if args.mllp:
        return _send_mllp(args.mllp, body)
    source = args.source or ("pas" if hl7 else "bedmgmt")
    secret = args.secret or load(settings.resolved_secrets_file).webhook_secrets.get(source)
    if secret is None:
        print(f"no webhook secret for source {source!r}", file=sys.stderr)
        return 2
    path = "/v1/pas/hl7v2" if hl7 else "/v1/bed-events"
    url = args.url or f"http://{settings.host}:{settings.ingest_port}{path}"
    content_type = args.content_type or ("x-application/hl7-v2+er7" if hl7 else "application/json")
    headers = {"content-type": content_type, SOURCE_HEADER: source, **sign_webhook(secret, body)}
    response = httpx.post(url, content=body, headers=headers, timeout=30)
    print(f"{response.status_code} {response.headers.get('content-type', '')}")
    print(response.text.replace("\r", "\n") if hl7 else response.text)
    return 0 if response.is_success else 1


def _send_mllp(address: str, body: bytes) -> int:
    """One MLLP frame out, one framed ACK back (printed with a line per segment)."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=30) as sock:
        sock.sendall(b"\x0b" + body + b"\x1c\x0d")
        reply = b""
        while b"\x1c\x0d" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                print(
                    "connection closed without an answer (is this address in ICC_MLLP_SOURCES?)",
                    file=sys.stderr,
                )
                return 1
            reply += chunk
    ack = reply[reply.find(b"\x0b") + 1 : reply.index(b"\x1c\x0d")].decode("utf-8", "replace")
    print(ack.replace("\r", "\n"))
    return 0 if "MSA|AA" in ack else 1


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import migrate

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    migrate(settings.database_url)
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from shared.events import json_schemas

    out = Path(args.directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(json_schemas())} schemas to {out}")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from icc.stack import DEFAULT_MLLP_PORT, SERVICES, Stack
    from shared.auth import Role, mint_token
    from shared.organisation import load_organisation
    from shared.secrets_store import load_or_create

    if "ICC_MLLP_PORT" not in os.environ:
        settings = settings.model_copy(update={"mllp_port": DEFAULT_MLLP_PORT})
    stack = Stack(settings)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        secrets = load_or_create(settings.resolved_secrets_file)
        print(f"data folder: {stack.data_dir}")
        stack.start_infrastructure()
        print("database:", "embedded PostgreSQL" if stack.embedded_postgres else "DATABASE_URL")
        print("broker:  ", f"embedded (Tansu) on {stack.bootstrap}" if stack.broker else stack.bootstrap)
        stack.start_services()
        if not args.no_simulator:
            stack.start_service("simulator", "--rate", str(args.rate))
        org = load_organisation(settings.org_file)
        token = mint_token(
            secrets.jwt_secret,
            subject="wall-display",
            role=Role.wall_display,
            scopes=[f"system:{org.system.id}"],
        )
        first_site = f"site:{org.sites[0].id}"
        manager = mint_token(
            secrets.jwt_secret, subject="site-manager", role=Role.site_manager, scopes=[first_site]
        )
        print()
        for name in SERVICES:
            print(f"  {name:<15} {stack.url_of(name)}")
        if stack.mllp_address is not None:
            host, port = stack.mllp_address
            print(f"  {'HL7 over MLLP':<15} tcp://{host}:{port} (source per ICC_MLLP_SOURCES)")
        print(f"\nWall display:  {stack.url_of('gateway')}/#token={token}")
        print(f"Tablet view:   {stack.url_of('gateway')}/tablet#token={manager}&scope={first_site}")
        print(f"Live feed in a terminal: `icc watch --site {org.sites[0].id}`.")
        print(f"Dev credentials (JWT key, webhook secrets): {settings.resolved_secrets_file.resolve()}")
        print("Mint more tokens with `icc token --role site_manager --scope site:RXN01`.")
        print("Ctrl-C stops everything.")
        while not stopping:
            for name, process in list(stack.processes.items()):
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; see {stack.data_dir}/logs/{name}.log")
                    stopping = True
            time.sleep(0.5)
    finally:
        print("stopping…")
        stack.stop()
    return 0


def cmd_secrets_raw_keys(args: argparse.Namespace, settings: Settings) -> int:
    from shared.raw_store_keys import key_usage
    from shared.secrets_store import load

    sealer = load(settings.resolved_secrets_file).raw_store_sealer()
    roles: dict[str | None, str] = {kid: "previous (opens only)" for kid in sealer.key_ids}
    roles[sealer.key_id] = "current (seals)"
    if not settings.database_url:
        for kid, role in roles.items():
            print(f"{kid}  {role}")
        print("(set DATABASE_URL to count the stored rows each key sealed)")
        return 0
    usage = asyncio.run(_with_connection(settings.database_url, key_usage))
    for rows in usage.values():
        for kid in rows:
            roles.setdefault(kid, "stored before sealing" if kid is None else "NOT HELD: cannot open")
    print(f"{'key id':<10}{'':<23}" + "".join(f"{table:>14}" for table in usage))
    for kid, role in roles.items():
        counts = "".join(f"{rows.get(kid, 0):>14,}" for rows in usage.values())
        print(f"{kid or '-':<10}{role:<23}{counts}")
    return 0


def cmd_secrets_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.sealed import key_id
    from shared.secrets_store import rotate_raw_store_key

    path = settings.resolved_secrets_file
    if not path.exists():
        print(f"no secrets file at {path}", file=sys.stderr)
        return 2
    rotated = rotate_raw_store_key(path)
    print(f"current raw store key: {key_id(rotated.raw_store_key)} (new)")
    for old in rotated.raw_store_previous_keys:
        print(f"kept to open only:     {key_id(old)}")
    print(
        "Restart every ingest replica: each seals with the key it started with. "
        "Then `icc secrets reseal`, and `icc secrets retire-raw-key ID` for a key no row uses."
    )
    return 0


def cmd_secrets_reseal(args: argparse.Namespace, settings: Settings) -> int:
    from shared.raw_store_keys import ResealReport, reseal
    from shared.secrets_store import load

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    sealer = load(settings.resolved_secrets_file).raw_store_sealer()

    def progress(report: ResealReport) -> None:
        log.info("%s: %d resealed after %d batches", report.table, report.resealed, report.batches)

    reports = asyncio.run(
        _with_connection(
            settings.database_url,
            lambda conn: reseal(
                conn, sealer, batch_rows=args.batch, batch_bytes=args.batch_mib << 20, on_batch=progress
            ),
        )
    )
    for r in reports:
        print(
            f"{r.table}: {r.resealed:,} resealed under key {sealer.key_id} "
            f"({r.from_plain:,} of them stored before sealing) in {r.batches:,} batches"
        )
    unreadable = {r.table: r.unreadable for r in reports if r.unreadable}
    if unreadable:
        for table, ids in unreadable.items():
            shown = ", ".join(map(str, ids[:20])) + (" …" if len(ids) > 20 else "")
            print(f"{table}: {len(ids):,} rows no key held can open, left as they were (ids {shown})")
        return 1
    return 0


def cmd_secrets_retire(args: argparse.Namespace, settings: Settings) -> int:
    from shared.raw_store_keys import key_usage
    from shared.secrets_store import KeyNotRetirable, load, retire_raw_store_key

    if not settings.database_url:
        print(
            "DATABASE_URL is not set: retiring a key needs to see that no stored row uses it", file=sys.stderr
        )
        return 2
    retired = args.key_id.lower()
    sealer = load(settings.resolved_secrets_file).raw_store_sealer()
    if retired == sealer.key_id:
        print(f"{retired} is the current raw store key; rotate first", file=sys.stderr)
        return 1
    usage = asyncio.run(_with_connection(settings.database_url, key_usage))
    in_use = {table: rows[retired] for table, rows in usage.items() if rows.get(retired)}
    if in_use:
        counts = ", ".join(f"{table} {n:,}" for table, n in in_use.items())
        print(
            f"refused: {sum(in_use.values()):,} stored rows are still sealed with {retired} ({counts}); "
            "run `icc secrets reseal` first",
            file=sys.stderr,
        )
        return 1
    try:
        retire_raw_store_key(settings.resolved_secrets_file, retired)
    except KeyNotRetirable as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"retired raw store key {retired}: no stored row uses it, and it is gone from the secrets file")
    return 0


async def _with_connection(url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await work(conn)
    finally:
        await conn.close()


def _system_id(settings: Settings) -> str:
    from shared.organisation import load_organisation

    return load_organisation(settings.org_file).system.id


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from shared.auth import Role

    parser = argparse.ArgumentParser(prog="icc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start everything on embedded defaults (database, broker, services, simulator)"
    )
    up.add_argument("--no-simulator", action="store_true")
    up.add_argument("--rate", type=float, default=5.0, help="simulated bed changes per second")
    up.set_defaults(func=cmd_up)

    for name in ("ingest", "command-centre", "gateway", "feeds"):
        service = sub.add_parser(name, help=f"run the {name} service")
        service.add_argument("--port", type=int, default=0)
        service.set_defaults(func=cmd_service)

    sim = sub.add_parser("simulator", help="post synthetic bed traffic to ingest")
    sim.add_argument("--rate", type=float, default=5.0)
    sim.add_argument("--changes", type=int, default=None, help="stop after this many changes")
    sim.add_argument("--ingest-url", default="")
    sim.set_defaults(func=cmd_simulator)

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
    )
    token.add_argument(
        "--scope", action="append", required=True, help="system:ID, site:ID or ward:ID (repeatable)"
    )
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--ttl-hours", type=float, default=12)
    token.set_defaults(func=cmd_token)

    send = sub.add_parser(
        "send", help="sign a file and post it to a webhook (HL7 v2 files go to /v1/pas/hl7v2, or over --mllp)"
    )
    send.add_argument("file", help="the message body (- for stdin)")
    send.add_argument("--source", default="", help="default: pas for HL7 v2, bedmgmt otherwise")
    send.add_argument("--url", default="")
    send.add_argument("--content-type", default="", help="default: by content (HL7 v2 ER7 or JSON)")
    send.add_argument(
        "--mllp", default="", metavar="HOST:PORT", help="send an HL7 v2 message over MLLP instead"
    )
    send.add_argument("--secret", default="", help="webhook secret (default: the dev secret of --source)")
    send.set_defaults(func=cmd_send)

    watch = sub.add_parser("watch", help="print the live stream of a site, ward or system in the terminal")
    watch.add_argument("--site", action="append", help="site id (repeatable)")
    watch.add_argument("--scope", action="append", help="system:ID, site:ID or ward:ID (repeatable)")
    watch.add_argument("--token", default="", help="a JWT (default: one minted from the dev secrets)")
    watch.add_argument("--url", default="", help="gateway base URL (default: the local gateway)")
    watch.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
    watch.set_defaults(func=cmd_watch)

    mig = sub.add_parser("migrate", help="apply database migrations to DATABASE_URL")
    mig.set_defaults(func=cmd_migrate)

    keys = sub.add_parser(
        "secrets", help="the keys that seal raw messages at rest: list, rotate, reseal, retire"
    )
    keys_sub = keys.add_subparsers(dest="secrets_command", required=True)
    raw_keys = keys_sub.add_parser(
        "raw-keys", help="the raw store keys held, and (with DATABASE_URL) how many stored rows each sealed"
    )
    raw_keys.set_defaults(func=cmd_secrets_raw_keys)
    rotate = keys_sub.add_parser(
        "rotate-raw-key", help="add a new current raw store key; the old ones are kept to open only"
    )
    rotate.set_defaults(func=cmd_secrets_rotate)
    reseal = keys_sub.add_parser(
        "reseal", help="seal every stored raw body under the current key, a committed batch at a time"
    )
    reseal.add_argument("--batch", type=_positive, default=500, help="rows per batch (default 500)")
    reseal.add_argument(
        "--batch-mib",
        type=int,
        default=16,
        help="body bytes per batch, in MiB, past its first row (default 16)",
    )
    reseal.set_defaults(func=cmd_secrets_reseal)
    retire = keys_sub.add_parser(
        "retire-raw-key", help="drop a previous raw store key that no stored row uses any more"
    )
    retire.add_argument("key_id", help="the key's id, as `icc secrets raw-keys` shows it")
    retire.set_defaults(func=cmd_secrets_retire)

    schemas = sub.add_parser("schemas", help="write the JSON Schemas of every event type")
    schemas.add_argument("directory")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("embedded_postgres", "alembic", "aiokafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
