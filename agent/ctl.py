"""``agentctl``: the engineer's command on a host.

* ``agentctl collect`` — a bundle now.  Asks the running agent over its
  socket (so the bundle holds the flight recorder's history); with no agent
  running it collects standalone in-process and the manifest says
  ``recorder: none``.
* ``agentctl inspect BUNDLE`` — verify every member's hash and summarize.
* ``agentctl status`` — is the agent up, recorder depth, tailed files.
* ``agentctl metrics`` — the running agent's metrics in the Prometheus text
  format (for node_exporter's textfile collector or a quick look).

Exit status: 0 success; 1 the bundle could not be written or did not verify,
or the agent is not running (status); 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import orjson

import hostdiag
from hostdiag.agent.config import AgentConfig, ConfigError, load_config

__all__ = ["main", "AgentClient", "AgentUnavailable"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class AgentUnavailable(Exception):
    """No agent answers on the socket."""


class AgentClient:
    """Blocking client of the agent's local API (newline-delimited JSON)."""

    def __init__(self, path: str, timeout_s: float = 120.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise AgentUnavailable(f"no agent at {self.path} ({exc.strerror})") from None
        except PermissionError:
            sock.close()
            raise
        with sock, sock.makefile("rb") as stream:
            sock.sendall(orjson.dumps(doc) + b"\n")
            for line in stream:
                event = orjson.loads(line)
                yield event
                if event.get("event") in ("done", "error"):
                    return
        raise ConnectionError(f"the agent at {self.path} closed the connection without an answer")


class _Progress:
    """Per-source progress on a terminal (stderr); silent otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        if kind == "snapshot_started":
            print(f"collecting bundle {event.get('bundle_id', '')}", file=self.stream)
        elif kind == "source_finished":
            status = event.get("status", "?")
            detail = event.get("error") or event.get("reason") or ""
            line = f"  {event.get('source', '?'):<10} {status:<8} {event.get('duration_s', 0):7.3f}s"
            print(f"{line}  {detail}".rstrip(), file=self.stream)
        elif kind == "packing":
            print("  packing bundle", file=self.stream)
        self.stream.flush()


def _install_bundle(src: str, output: str | None) -> str:
    """Put the bundle at ``output`` (a file path or an existing directory)."""
    if not output:
        return src
    dest = os.path.join(output, os.path.basename(src)) if os.path.isdir(output) else output
    if os.path.abspath(dest) == os.path.abspath(src):
        return src
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def _collect_standalone(config: AgentConfig, args: argparse.Namespace, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    import concurrent.futures

    import uvloop

    from hostdiag.agent.bundle import BundleWriteError
    from hostdiag.agent.probe import SystemProbe
    from hostdiag.agent.redact import load_redactor
    from hostdiag.agent.snapshot import take_snapshot, validate_collect_request

    request = validate_collect_request(
        config, {"profile": args.profile, "window_s": args.window, "incident_id": args.incident}, trigger="agentctl"
    )
    out_dir = config.bundle_dir
    if args.output:
        out_dir = args.output if os.path.isdir(args.output) else (os.path.dirname(os.path.abspath(args.output)))
    if not os.path.isdir(out_dir):
        try:
            os.makedirs(out_dir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise BundleWriteError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    redactor = load_redactor(config.redaction.rules_file, config.redaction.disable)

    async def run() -> Any:
        with concurrent.futures.ThreadPoolExecutor(config.agent.threads, thread_name_prefix="hostdiag-io") as pool:
            return await take_snapshot(
                config, request, out_dir=out_dir, probe=SystemProbe(proc_root=config.agent.proc_root), redactor=redactor,
                recorder=None, executor=pool, progress=progress,
            )

    info = uvloop.run(run())
    result = {"path": info.path, "bundle_id": info.bundle_id, "size_bytes": info.size_bytes, "sha256": info.sha256}
    if request.incident_id:
        result["upload"] = _spool_standalone(config, info, request.incident_id)
    return result


def _spool_standalone(config: AgentConfig, info: Any, incident_id: str) -> str:
    """With no agent running, leave an incident's bundle in the spool for the agent to upload."""
    from hostdiag.agent.spool import Spool, SpoolError

    if not config.collector.address:
        return "no collector configured: the bundle stays on this host"
    sp = config.spool
    try:
        spool = Spool(config.spool_dir, sp.max_bytes, sp.max_items,
                      quarantine_max_bytes=sp.quarantine_max_bytes, quarantine_max_items=sp.quarantine_max_items)
        spool.put(info.path, {"bundle_id": info.bundle_id, "sha256": info.sha256, "size_bytes": info.size_bytes,
                              "incident_id": incident_id, "request_id": None})
    except (SpoolError, OSError) as exc:
        return f"not queued: {exc}"
    return f"queued in the spool ({config.spool_dir}): the agent uploads it to {config.collector.address} when it runs"


def cmd_collect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from hostdiag.agent.api import ApiError
    from hostdiag.agent.bundle import BundleWriteError

    config = _load(args, err)
    if config is None:
        return EXIT_USAGE
    socket_path = args.socket or config.socket_path
    progress = _Progress(err, enabled=err.isatty() and not args.json)
    mode = "agent"
    started = time.monotonic()
    result: dict[str, Any] | None = None
    try:
        client = AgentClient(socket_path)
        request = {"op": "collect", "profile": args.profile, "window_s": args.window, "incident_id": args.incident}
        for event in client.request(request):
            if event.get("event") == "done":
                result = event["bundle"]
            elif event.get("event") == "error":
                print(f"agentctl: the agent refused: {event.get('message')}", file=err)
                return EXIT_FAILED if event.get("write_failed") else EXIT_USAGE
            else:
                progress(event)
    except AgentUnavailable:
        mode = "standalone"
        if progress.enabled:
            print(f"no agent running at {socket_path}: collecting standalone (no recorder history)", file=err)
        try:
            result = _collect_standalone(config, args, progress)
        except ApiError as exc:
            print(f"agentctl: {exc}", file=err)
            return EXIT_USAGE
        except ConfigError as exc:
            print(f"agentctl: {exc}", file=err)
            return EXIT_USAGE
        except BundleWriteError as exc:
            print(f"agentctl: bundle not written: {exc}", file=err)
            return EXIT_FAILED
    except PermissionError:
        print(f"agentctl: permission denied on {socket_path}: run as root or a member of the agent's group", file=err)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"agentctl: talking to the agent at {socket_path} failed: {exc}", file=err)
        return EXIT_FAILED
    assert result is not None
    try:
        if mode == "agent" or (args.output and os.path.abspath(result["path"]) != os.path.abspath(args.output)):
            result["path"] = _install_bundle(result["path"], args.output)
    except OSError as exc:
        print(f"agentctl: bundle not written to {args.output}: {exc.strerror or exc}", file=err)
        return EXIT_FAILED
    result["mode"] = mode
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    if args.json:
        print(orjson.dumps(result).decode(), file=out)
    else:
        print(f"bundle   {result['path']}", file=out)
        print(f"id       {result['bundle_id']}", file=out)
        print(f"size     {result['size_bytes']} bytes", file=out)
        print(f"sha256   {result['sha256']}", file=out)
        print(f"mode     {mode} ({result['elapsed_s']:.2f} s)", file=out)
        if result.get("upload"):
            print(f"upload   {result['upload']}", file=out)
        print(f"open it: tar --zstd -xf {result['path']}   verify: agentctl inspect {result['path']}", file=out)
    return EXIT_OK


def _load(args: argparse.Namespace, err: TextIO) -> AgentConfig | None:
    """The agent config named by ``--config`` (None, after saying why, when it is bad)."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"agentctl: {exc}", file=err)
        return None


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args, err)
    if config is None:
        return EXIT_USAGE
    socket_path = args.socket or config.socket_path
    try:
        events = list(AgentClient(socket_path, timeout_s=10).request({"op": "status"}))
    except AgentUnavailable as exc:
        if args.json:
            print(orjson.dumps({"up": False, "socket": socket_path, "error": str(exc)}).decode(), file=out)
        else:
            print(f"agent: not running ({exc})", file=out)
        return EXIT_FAILED
    except OSError as exc:
        print(f"agentctl: cannot reach the agent at {socket_path}: {exc}", file=err)
        return EXIT_FAILED
    status = events[-1].get("status", {})
    if args.json:
        print(orjson.dumps({"up": True, "socket": socket_path, **status}).decode(), file=out)
        return EXIT_OK
    rec = status.get("recorder", {})
    print(f"agent: up (pid {status.get('pid')}, version {status.get('agent_version')}, "
          f"uptime {status.get('uptime_s')} s)", file=out)
    print(f"host:  {status.get('host_id')}  labels {status.get('labels')}", file=out)
    print(f"recorder: {rec.get('depth_s')} s of history, {rec.get('metrics_samples')}/{rec.get('metrics_capacity')} "
          f"metrics samples, {rec.get('top_samples')}/{rec.get('top_capacity')} top samples", file=out)
    logs = status.get("logs", [])
    print(f"tailed files: {len(logs)}", file=out)
    for entry in logs:
        err_text = f"  error: {entry['error']}" if entry.get("error") else ""
        print(f"  {entry.get('path')}: lag {entry.get('lag_bytes', 0)} bytes, {entry.get('lines', 0)} lines{err_text}",
              file=out)
    probes = (status.get("probes") or {}).get("probes") or []
    if probes:
        print(f"probes: {len(probes)}", file=out)
        for p in probes:
            state = "ok" if p.get("last_ok") else ("FAILING" if p.get("last_ok") is False else "not run yet")
            detail = f" ({p.get('consecutive_failures')} in a row: {p.get('last_error')})" if state == "FAILING" else ""
            print(f"  {p.get('name')} [{p.get('kind')} {p.get('component')}] {p.get('target')}: {state}{detail}", file=out)
    collector = status.get("collector")
    if collector:
        conn = "connected" if collector.get("connected") else "NOT connected"
        spool = status.get("spool") or {}
        print(f"collector: {collector.get('collector_address')} {conn}; spool {spool.get('depth', 0)} "
              f"bundles, {spool.get('bytes', 0)} bytes, {spool.get('evictions', 0)} evicted", file=out)
    last = status.get("last_bundle")
    if last:
        print(f"last bundle: {last.get('path')}", file=out)
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args, err)
    if config is None:
        return EXIT_USAGE
    socket_path = args.socket or config.socket_path
    try:
        events = list(AgentClient(socket_path, timeout_s=10).request({"op": "metrics"}))
    except AgentUnavailable as exc:
        print(f"agentctl: agent not running ({exc})", file=err)
        return EXIT_FAILED
    except OSError as exc:
        print(f"agentctl: cannot reach the agent at {socket_path}: {exc}", file=err)
        return EXIT_FAILED
    last = events[-1] if events else {}
    if last.get("event") != "done" or not isinstance(last.get("metrics"), str):
        print(f"agentctl: the agent did not send metrics: {last.get('message', 'no answer')}", file=err)
        return EXIT_FAILED
    out.write(last["metrics"])
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from hostdiag.agent.inspect import run_inspect

    return run_inspect(args.bundle, args.json, out=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentctl", description="hostdiag: collect and inspect diagnostic bundles")
    parser.add_argument("--version", action="version", version=f"agentctl {hostdiag.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH", help="agent config file (default: built-in defaults)")
        p.add_argument("--socket", metavar="PATH", help="agent socket (default: from the config)")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("collect", help="collect a bundle now")
    common(p)
    p.add_argument("--output", "-o", metavar="PATH", help="bundle file or existing directory to write to")
    p.add_argument("--window", type=_positive_float, metavar="SECONDS", help="history to include")
    p.add_argument("--profile", default="default", help="named profile from the agent config")
    p.add_argument("--incident", metavar="ID", help="incident id to record in the bundle")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("inspect", help="verify a bundle and summarize it")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("status", help="is the agent up; recorder and tailing state")
    common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="the agent's metrics in the Prometheus text format")
    p.add_argument("--config", metavar="PATH", help="agent config file (default: built-in defaults)")
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: from the config)")
    p.set_defaults(func=cmd_metrics)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args, out or sys.stdout, err or sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
