"""`ocho-gateway`: the HTTP API served by waitress (ocho.gateway.serving), with the
publisher and recorder threads; SIGTERM (or Ctrl-C) stops it cleanly."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import resource
import signal
import sys
from pathlib import Path
from types import FrameType

from ocho import __version__, logs
from ocho.errors import SettingsError, StoreUnavailable
from ocho.gateway import serving
from ocho.gateway.app import create_app
from ocho.gateway.services import of
from ocho.settings import Settings

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ocho-gateway",
        description="Serve the Ocho portal's HTTP API. Flags override OCHO_* variables.")
    parser.add_argument("--bind", help="HOST:PORT to listen on (OCHO_BIND, "
                        "default 127.0.0.1:9000)")
    parser.add_argument("--amqp-url", help="RabbitMQ URL (OCHO_AMQP_URL)")
    parser.add_argument("--database-url", help="job store: sqlite:///FILE or postgresql://… "
                        "(OCHO_DATABASE_URL)")
    parser.add_argument("--tools-dir", type=Path, help="directory of tool scripts "
                        "(OCHO_TOOLS_DIR)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(bind=args.bind, amqp_url=args.amqp_url,
                                     database_url=args.database_url, tools_dir=args.tools_dir)
    except SettingsError as exc:
        print(f"ocho-gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)

    try:
        app = create_app(settings)
    except (SettingsError, StoreUnavailable) as exc:
        log.error("cannot start: %s", exc)
        return 1
    portal = of(app)
    _raise_open_files(settings.max_connections)
    server = serving.create_server(app, settings, ident="ocho-gateway")

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        portal.notifier.close()  # long-polls and event streams answer now
        raise SystemExit(0)  # waitress's loop catches it and drains its threads

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _log_exposure(settings)
    log.info("serving http://%s:%d with %d threads; jobs in %s store; tools from %s",
             settings.bind_host, settings.bind_port, settings.gateway_threads,
             portal.store.kind, settings.tools_dir)
    try:
        server.run()
    finally:
        portal.stop()
        server.close()
    log.info("stopped")
    return 0


# Descriptors beside the connections: the store, the broker, spooled bodies, the logs.
SPARE_FILES = 256


def _raise_open_files(connections: int) -> None:
    """Lift the soft open-files limit to what OCHO_MAX_CONNECTIONS needs (as far as the
    hard limit allows): past it, accept() fails and nobody gets in."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            log.warning("open files limited to %d (ulimit -Hn): fewer than the %d that "
                        "OCHO_MAX_CONNECTIONS=%d needs", raised, wanted, connections)


def _log_exposure(settings: Settings) -> None:
    if settings.tokens:
        log.info("%d API token(s) configured: every call but /healthz and the page at / needs one",
                 len(settings.tokens))
        return
    if _is_loopback(settings.bind_host):
        log.info("no OCHO_TOKENS configured: listening on loopback only (%s); set tokens "
                 "before binding another address", settings.bind)
    else:
        log.warning("no OCHO_TOKENS configured and listening on %s: anyone who can reach it "
                    "can run tools", settings.bind)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
