"""A real collector and a real agent as subprocesses: an HTTP service the agent probes goes down,
and the incident opened for it gets a P1 suggestion naming the probe.

The default rule wants the API probe failing for 2 minutes; the collector here runs with an
operator rules file that shortens ``for_s`` to 1 s (which also exercises overriding a default
rule from ``[collector] signal_rules_file``).
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

FOR_S = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Service:
    """The API the agent probes: a tiny HTTP server on 127.0.0.1 that the test can stop."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)


class CollectorProcess:
    def __init__(self, cli, tmp: Path) -> None:
        self.cli = cli
        self.dir = tmp / "collector"
        self.dir.mkdir()
        rules = self.dir / "rules.toml"
        rules.write_text(
            "# Operator override: page on a dead API probe after 1 s instead of 2 min.\n"
            f'[[rules]]\nname = "component-down-everywhere"\nfor_s = {FOR_S}\n\n'
            f'[[rules]]\nname = "component-down-somewhere"\nfor_s = {FOR_S}\n'
        )
        self.address = f"127.0.0.1:{free_port()}"
        self.config = self.dir / "collector.toml"
        self.config.write_text(
            f'[collector]\nlisten = "{self.address}"\nhttp_listen = "127.0.0.1:0"\n'
            f'data_dir = "{self.dir / "data"}"\ninsecure = true\nauth = "none"\nsnapshot_min_interval_s = 0\nsignal_rules_file = "{rules}"\n'
        )
        self.ready = self.dir / "ready.json"
        self.log = self.dir / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = self.cli.run("hostdiag-collector", "--config", str(self.config), "--check-config")
        assert check.returncode == 0, check.stderr
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.cli.script("hostdiag-collector"), "--config", str(self.config), "--ready-file", str(self.ready)],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "collector never became ready"
            time.sleep(0.02)

    def ctl(self, *args: str) -> object:
        proc = self.cli.run("collectorctl", "--collector", self.address, "--json", *args)
        assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return orjson.loads(proc.stdout)


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.stop()


@pytest.fixture
def collector(tmp_path: Path, cli) -> Iterator[CollectorProcess]:
    col = CollectorProcess(cli, tmp_path)
    col.start()
    yield col
    if col.proc is not None and col.proc.poll() is None:
        col.proc.terminate()
        try:
            col.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            col.proc.kill()
            col.proc.wait()


def test_api_probe_down_gives_a_p1_suggestion_naming_the_probe(
    tmp_path: Path, cli, collector, service, start_agent, wait_for
) -> None:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    config = cli.write_agent_config(
        agent_dir,
        labels='role = "api", service = "checkout"',
        extra=(
            f'[collector]\naddress = "{collector.address}"\ninsecure = true\nbackoff_initial_s = 0.2\n'
            "backoff_max_s = 1.0\n\n"
            f'[[probes]]\nname = "api-health"\nkind = "http"\ncomponent = "api"\ncritical = true\n'
            f'target = "http://127.0.0.1:{service.port}/healthz"\ninterval_s = 0.2\ntimeout_s = 0.5\n'
        ),
    )
    agent = start_agent(config)
    wait_for(
        lambda: any(a["host_id"] == "e2e-host" and a["connected"] for a in collector.ctl("agents", "list")),
        timeout_s=20, what="agent connected",
    )

    def incident(title: str) -> dict:
        inc = collector.ctl("incident", "open", "--title", title, "--severity", "P3", "--service", "checkout",
                            "--select", "role=api")
        return wait_for(
            lambda: (lambda d: d if d.get("suggestion") else None)(collector.ctl("incident", "show", inc["id"])),
            timeout_s=30, what=f"a suggestion for {title!r}",
        )

    healthy = incident("before the outage")
    assert healthy["suggestion"]["severity"] in (None, "P3", "P4"), healthy["suggestion"]
    assert not [f for f in healthy["suggestion"]["findings"] if f["rule"].startswith("component-down")]

    service.stop()
    # Each incident's bundle shows how long the probe has failed so far; the first ones may be
    # inside the rule's for_s.  Poll with fresh incidents until one crosses it (bounded).
    seen: list[str] = []

    def p1() -> dict | None:
        doc = incident(f"checkout API down #{len(seen) + 1}")
        seen.append(doc["suggestion"]["explanation"])
        return doc if doc["suggestion"]["severity"] == "P1" else None

    doc = wait_for(p1, timeout_s=60, interval_s=0.0, what="a P1 suggestion")
    s = doc["suggestion"]
    assert s["explanation"].startswith("Suggest P1: api down: api-health probe failing on 1/1 hosts for ")
    assert s["explanation"].endswith("; see docs/troubleshooting/api.md")
    assert s["guide"] == "docs/troubleshooting/api.md"
    assert (s["hosts_selected"], s["hosts_reporting"], s["hosts_affected"]) == (1, 1, 1)
    finding = s["findings"][0]
    assert finding["rule"] == "component-down-everywhere" and finding["host_id"] is None
    values = finding["evidence"]["hosts"]["e2e-host"]
    assert values["probe"] == "api-health" and values["component"] == "api"
    assert values["last_ok"] is False
    assert values["duration_s"] >= FOR_S
    assert "refused" in values["last_error"]
    # Suggested, never applied: the severity stays what the responder chose.
    assert doc["severity"] == "P3"
    assert any(e["kind"] == "suggestion" and e["message"].startswith("suggestion: P1 (was none)")
               for e in doc["timeline"])

    # The responder agrees and says why; the timeline records it.
    out = cli.run("collectorctl", "--collector", collector.address, "incident", "severity", doc["id"], "P1",
                  "--reason", "checkout API refuses connections", check=True)
    assert out.stdout == f"{doc['id']} severity P3 → P1\n"
    shown = cli.run("collectorctl", "--collector", collector.address, "incident", "show", doc["id"], check=True).stdout
    assert "severity      P1" in shown
    assert "suggested  P1 (the severity is P1; only a responder changes it)" in shown
    assert "component-down-everywhere" in shown
    agent.stop()
