"""`zgate-control`: serve the control plane, migrate its database, manage admin tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from zgate_control.app import create_app
from zgate_control.auth import ROLES, create_token
from zgate_control.bootstrap import first_start
from zgate_control.db import Database, DatabaseError
from zgate_control.models import ApiToken, utc_now
from zgate_control.settings import ControlSettings
from zgate_host.errors import HostError
from zgate_host.logs import configure_logging
from zgate_host.settings import SettingsError, load_settings
from zgate_host.state import ensure_state_dir

__all__ = ["build_parser", "main"]

log = logging.getLogger("zgate.control")

DESCRIPTION = """\
zgate control plane: one place for the policies (immutable versions, publish, rollback, diff,
explain, impact), the clients and connectors with their certificates (it holds the CA), the
relays that follow its change log, and the audit trail they ship to it. REST API under
/api/v1 (OpenAPI: /api/v1/openapi.json), Prometheus metrics at /metrics.

`zgate-control serve` with no flags listens on 127.0.0.1:8080 over an embedded SQLite database
in its state directory (/var/lib/zgate/control as root, else ~/.local/state/zgate/control),
migrates it, and at the first start prints an admin token once. For production and several
replicas, give --database-url postgresql+psycopg://USER:PASSWORD@HOST/DB.
Settings come from, in rising order: defaults, the YAML --config file, ZGATE_CONTROL_*
environment variables (e.g. ZGATE_CONTROL_DATABASE_URL), and flags."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file with settings (keys as the long flags)")
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the control plane's files (the SQLite database) "
        "[/var/lib/zgate/control as root, else ~/.local/state/zgate/control]",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pass@host/zgate "
        "[sqlite: STATE_DIR/control.db]",
    )
    p.add_argument("--debug", action="store_true", help="tracebacks on errors, debug logs")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of zgate-control."""
    parser = argparse.ArgumentParser(
        prog="zgate-control",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve the API (migrates the database first)")
    _common(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="HTTP address [127.0.0.1:8080]")
    serve.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_const",
        const=False,
        help="do not migrate at start (refuse to start on an older schema instead)",
    )
    serve.add_argument(
        "--trust-domain", metavar="NAME", help="trust domain of the CA made at first start"
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this certificate chain (PEM, with --tls-key) [plain HTTP]",
    )
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="the key of --tls-cert")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", choices=("json", "text"))
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION", required=True)
    up = db_commands.add_parser("upgrade", help="migrate to the newest schema (or --revision)")
    _common(up)
    up.add_argument("--revision", default="head", help="target revision [head]")
    up.set_defaults(handler=_db_upgrade)
    down = db_commands.add_parser("downgrade", help="undo migrations down to REVISION")
    _common(down)
    down.add_argument("revision", help='target revision ("base": drop every table)')
    down.set_defaults(handler=_db_downgrade)
    current = db_commands.add_parser("current", help="the schema revision of the database")
    _common(current)
    current.set_defaults(handler=_db_current)

    token = commands.add_parser("token", help="admin API tokens (straight in the database)")
    token_commands = token.add_subparsers(title="token commands", metavar="ACTION", required=True)
    create = token_commands.add_parser("create", help="create a token and print it once")
    _common(create)
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    create.add_argument("--name", help="who or what holds it [ROLE-token]")
    create.add_argument("--relay", metavar="ID", help="relay tokens: the one relay it speaks for")
    create.set_defaults(handler=_token_create)
    listing = token_commands.add_parser("list", help="list tokens (never their secrets)")
    _common(listing)
    listing.set_defaults(handler=_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    _common(revoke)
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(handler=_token_revoke)
    return parser


class _Usage(Exception):
    """A mistake in what the user asked; exit status 2."""


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> ControlSettings:
    flags: dict[str, Any] = {"state_dir": args.state_dir, "database_url": args.database_url}
    flags.update(extra or {})
    if args.debug and flags.get("log_level") is None:
        flags["log_level"] = "debug"
    settings = load_settings(ControlSettings, args.config, flags)
    if not settings.database_url:
        ensure_state_dir(settings.state_dir)
        # The embedded database holds the CA's private key: nobody else may read it.
        os.umask(0o077)
    return settings


def _database(settings: ControlSettings) -> Database:
    db = Database(settings.resolved_database_url())
    db.check()
    return db


def _require_current(db: Database) -> None:
    current, head = db.current_revision(), db.head_revision()
    if current != head:
        raise _Usage(
            f"the database {db.display_url} is at schema {current or 'none'}, this version "
            f"needs {head}: run `zgate-control db upgrade` (or start without --no-migrate)"
        )


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        {
            "listen": args.listen,
            "migrate": args.migrate,
            "trust_domain": args.trust_domain,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "log_level": args.log_level,
            "log_format": args.log_format,
        },
    )
    configure_logging("zgate-control", level=settings.log_level, json=settings.log_format == "json")
    _quiet_libraries()
    db = _database(settings)
    try:
        if settings.migrate:
            before = db.current_revision()
            db.upgrade()
            after = db.current_revision()
            if before != after:
                log.info("database migrated", extra={"from": before or "empty", "to": after})
        _require_current(db)
        created = first_start(
            db, trust_domain=settings.trust_domain, bootstrap_token=settings.bootstrap_token
        )
        if created.admin_token is not None:
            # Shown once, on stderr beside the logs: only its hash is kept.
            print(
                "\nzgate-control: first start, an admin API token was created. It is shown "
                f"this once, keep it safe:\n\n    {created.admin_token}\n\n"
                "(make more with `zgate-control token create --role admin`)\n",
                file=sys.stderr,
                flush=True,
            )
        host, port = settings.listen_address
        _check_tls(settings)
        listener = _listen(host, port)
        log.info(
            "serving",
            extra={
                "address": f"{settings.scheme}://{host}:{port}",
                "database": db.display_url,
                "api": f"{settings.scheme}://{host}:{port}/api/v1/openapi.json",
            },
        )
        app = create_app(settings, db)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        )
        server = _Server(config, app)
        # uvicorn re-raises the stop signal once it has shut down; with this handler in place
        # that lands here instead of killing the process, so a SIGTERM stop exits 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        with listener:
            server.run(sockets=[listener])
    finally:
        db.dispose()
    return 0


class _NoColour(logging.Filter):
    """Drops uvicorn's ANSI-coloured copy of each message from our structured logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def _quiet_libraries() -> None:
    # Alembic narrates every migration context at info; our own line says what changed.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).addFilter(_NoColour())


class _Server(uvicorn.Server):
    """uvicorn's server, which also releases the relays' held long polls when told to stop
    (otherwise a stop waits for each of them, up to the graceful-shutdown timeout)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._app.state.stopping = True
        # This runs as a signal handler: hand the wake-up to the loop as a callback.
        with contextlib.suppress(RuntimeError):  # no loop running: nothing is waiting
            asyncio.get_running_loop().call_soon_threadsafe(self._app.state.wakeups.wake)


def _check_tls(settings: ControlSettings) -> None:
    """Load --tls-cert/--tls-key once here, so a wrong file is one clear line at start."""
    if settings.tls_cert is None or settings.tls_key is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise _Usage(
            f"cannot use --tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: "
            f"{getattr(exc, 'strerror', None) or exc} (both PEM, the key matching the certificate)"
        ) from None


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy or wrong address is one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _Usage(f"cannot listen on {host}:{port} (--listen): {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise _Usage(
            f"could not listen on {host}:{port} (--listen): {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _db_upgrade(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    try:
        before = db.current_revision()
        db.upgrade(args.revision)
        print(f"database {db.display_url}: {before or 'empty'} -> {db.current_revision()}")
    finally:
        db.dispose()
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    try:
        before = db.current_revision()
        db.downgrade(args.revision)
        print(
            f"database {db.display_url}: {before or 'empty'} -> {db.current_revision() or 'empty'}"
        )
    finally:
        db.dispose()
    return 0


def _db_current(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    try:
        current, head = db.current_revision(), db.head_revision()
        state = "up to date" if current == head else f"behind: newest is {head}"
        print(f"{current or 'empty (never migrated)'} ({state})")
    finally:
        db.dispose()
    return 0


def _token_create(args: argparse.Namespace) -> int:
    if args.relay and args.role != "relay":
        raise _Usage("--relay is for --role relay only")
    db = _database(_settings(args))
    try:
        _require_current(db)
        with db.session() as session:
            row, text = create_token(
                session, args.name or f"{args.role}-token", args.role, "zgate-control", args.relay
            )
        print(f"token {row.id} ({row.role}), shown this once:\n{text}", file=sys.stderr)
        print(text)
    finally:
        db.dispose()
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    db = _database(_settings(args))
    try:
        _require_current(db)
        with db.reader() as session:
            rows = list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))
        print(f"{'ID':<14}{'ROLE':<10}{'STATE':<9}{'LAST USED':<22}NAME")
        for row in rows:
            state = "revoked" if row.revoked_at else "active"
            used = row.last_used_at.strftime("%Y-%m-%d %H:%M:%SZ") if row.last_used_at else "never"
            print(f"{row.id:<14}{row.role:<10}{state:<9}{used:<22}{row.name}")
    finally:
        db.dispose()
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    try:
        _require_current(db)
        with db.session() as session:
            row = session.get(ApiToken, args.token_id)
            if row is None:
                raise _Usage(f"no token with id {args.token_id} (see `zgate-control token list`)")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
        print(f"token {args.token_id} revoked")
    finally:
        db.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 for a configuration or usage error (one line on stderr),
    1 for anything else, 130 on Ctrl-C."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    debug = bool(getattr(args, "debug", False))
    try:
        return handler(args)
    except (SettingsError, DatabaseError, HostError, _Usage) as exc:
        return _fail(exc, 2, debug)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, the traceback only on request
        print(
            f"zgate-control: unexpected error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        if debug:
            traceback.print_exc()
        return 1


def _fail(exc: BaseException, status: int, debug: bool) -> int:
    print(f"zgate-control: {exc}", file=sys.stderr)
    if debug:
        traceback.print_exception(exc)
    return status


if __name__ == "__main__":
    sys.exit(main())
