"""``hostdiag-collector``: the central collector daemon.

One uvloop event loop serves gRPC (agents, incidents, bundles, fleet, health,
reflection) and HTTP (bundle downloads, /metrics, /healthz).  ``--ready-file``
receives ``{"grpc": "HOST:PORT", "http": "HOST:PORT", "pid": N}`` (plus ``"api"`` with ``api_listen``) once both
listeners serve (written tmp + rename, so a reader never sees half of it),
which is how tests and the quickstart find ports chosen with ``:0``.
SIGTERM/SIGINT stop it gracefully: health turns NOT_SERVING, new calls are
refused, open streams get ``shutdown_grace_s``; partial uploads stay on disk
and resume after a restart.

Exit status: 0 after a clean stop, 2 for a configuration error, 1 when it
cannot start (address in use, data directory not writable, newer schema).

``hostdiag-collector token create --config PATH --role ROLE --name NAME`` is
the offline way to the first admin token: run on the collector's host, it
writes a token straight into the data directory's database (the collector may
be running) and prints the secret once on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import orjson

import hostdiag
from hostdiag.agent.logsetup import setup_logging
from hostdiag.collector.config import CollectorConfig, ConfigError, load_config
from hostdiag.collector.server import Collector
from hostdiag.collector.store.sqlite import SchemaError

__all__ = ["main", "write_ready_file"]

log = logging.getLogger("hostdiag.collector")


def write_ready_file(path: str, collector: Collector) -> None:
    doc = {"grpc": collector.grpc_address, "http": collector.http_address, "pid": os.getpid()}
    if collector.api_address:
        doc["api"] = collector.api_address
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(doc) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def _amain(config: CollectorConfig, ready_file: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    collector = Collector(config)
    try:
        await collector.start()
    except BaseException:
        await collector.stop(0)
        raise
    try:
        # stderr carries only JSON log lines: the "collector serving" event names the addresses.
        if ready_file:
            write_ready_file(ready_file, collector)
        await stop.wait()
        log.info("stopping", extra={"event": "collector_stopping"})
    finally:
        await collector.stop()
        if ready_file:
            try:
                os.unlink(ready_file)
            except FileNotFoundError:
                pass
    return 0


def token_main(argv: list[str]) -> int:
    """``hostdiag-collector token create``: make an API token offline, print its secret once."""
    from hostdiag.collector.admin_api import create_token
    from hostdiag.collector.auth import ROLES
    from hostdiag.collector.store.sqlite import SqliteMetadataStore

    parser = argparse.ArgumentParser(
        prog="hostdiag-collector token",
        description="Make an API token in the collector's database (run on the collector's host).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="make a token; its secret is printed once on stdout")
    p.add_argument("--config", metavar="PATH", help="the collector's TOML config (for data_dir)")
    p.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    p.add_argument("--name", required=True, help="who or what holds it (unique among valid tokens)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hostdiag-collector: {exc}", file=sys.stderr)
        return 2

    async def make() -> tuple[str, str]:
        store = SqliteMetadataStore(os.path.join(config.data_dir, "collector.db"))
        await store.open()
        try:
            record, secret = await create_token(store, args.name, args.role, audit_action="hostdiag-collector token create")
        finally:
            await store.close()
        return record.token_id, secret

    try:
        token_id, secret = asyncio.run(make())
    except ValueError as exc:
        print(f"hostdiag-collector: token not created: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, OSError) as exc:
        print(f"hostdiag-collector: token not created: {exc}", file=sys.stderr)
        return 1
    print(secret, flush=True)
    print(f"hostdiag-collector: {args.role} token {args.name!r} (id {token_id}) created; "
          "the line above is its secret, shown only this once", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    parser = argparse.ArgumentParser(prog="hostdiag-collector", description="hostdiag central collector")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--ready-file", metavar="PATH", help="write bound addresses as JSON here once serving")
    parser.add_argument("--version", action="version", version=f"hostdiag-collector {hostdiag.__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hostdiag-collector: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{config.file}: ok")
        return 0
    setup_logging(config.collector.log_level)
    try:
        import uvloop

        return uvloop.run(_amain(config, args.ready_file))
    except SchemaError as exc:
        print(f"hostdiag-collector: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hostdiag-collector: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
