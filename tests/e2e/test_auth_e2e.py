"""API tokens, roles and the audit log with the real daemons and collectorctl as subprocesses.

The first admin token is made offline (``hostdiag-collector token create``);
everything after goes through collectorctl and plain HTTP, as operators and
scripts would.  The collector's and the agent's stderr logs are kept and, at
the end, searched for every token secret and planted secret.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

PLANTED_LOG_SECRET = "hdt_PlantedInALogLine0123456789abcdefABCDEF"
PLANTED_BAD_TOKEN = "hdt_NotARealTokenButSecretAnyway9876543210zz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    def __init__(self, cli: Any, tmp: Path) -> None:
        self.cli = cli
        self.dir = tmp / "collector"
        self.dir.mkdir()
        self.address = f"127.0.0.1:{free_port()}"
        self.config = self.dir / "collector.toml"
        self.config.write_text(
            f'[collector]\nlisten = "{self.address}"\nhttp_listen = "127.0.0.1:0"\n'
            f'data_dir = "{self.dir / "data"}"\ninsecure = true\n'
        )
        self.log = self.dir / "collector.log"
        self.ready = self.dir / "ready.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = ""

    def make_token_offline(self, role: str, name: str) -> str:
        out = self.cli.run("hostdiag-collector", "token", "create", "--config", str(self.config), "--role", role,
                           "--name", name, check=True)
        return str(out.stdout.strip())

    def start(self) -> None:
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
        self.http = orjson.loads(self.ready.read_bytes())["http"]

    def ctl(self, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "HOSTDIAG_TOKEN"}
        if token is not None:
            env["HOSTDIAG_TOKEN"] = token
        return self.cli.run("collectorctl", "--collector", self.address, "--json", *args, env=env)

    def ok(self, token: str, *args: str) -> Any:
        proc = self.ctl(token, *args)
        assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return orjson.loads(proc.stdout)

    def download(self, bundle_id: str, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"http://{self.http}/api/v1/bundles/{bundle_id}")
        if authorization is not None:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def collector(tmp_path: Path, cli: Any) -> Iterator[Collector]:
    col = Collector(cli, tmp_path)
    yield col
    if col.proc is not None and col.proc.poll() is None:
        col.proc.send_signal(signal.SIGTERM)
        try:
            col.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            col.proc.kill()
            col.proc.wait(timeout=5)


def test_tokens_roles_revocation_and_audit_end_to_end(tmp_path: Path, cli: Any, collector: Collector,
                                                      start_agent: Any, wait_for: Any) -> None:
    admin = collector.make_token_offline("admin", "ops-admin")
    assert admin.startswith("hdt_") and len(admin) > 40
    collector.start()

    # Tokens made over the API by the admin; each secret is shown once, on stdout.
    responder = collector.ok(admin, "token", "create", "--role", "responder", "--name", "oncall")["secret"]
    viewer = collector.ok(admin, "token", "create", "--role", "viewer", "--name", "postmortem")["secret"]
    listed = collector.ok(admin, "token", "list")
    assert {t["name"]: t["role"] for t in listed} == {"ops-admin": "admin", "oncall": "responder",
                                                       "postmortem": "viewer"}
    assert not any(secret in orjson.dumps(listed).decode() for secret in (admin, responder, viewer))

    # An agent that tails a log holding a secret-looking line.
    app_log = tmp_path / "app.log"
    app_log.write_text(f"INFO start\nERROR upstream rejected Authorization: Bearer {PLANTED_LOG_SECRET}\n")
    agent_cfg = cli.write_agent_config(
        tmp_path, labels='role = "api"',
        extra=f'[collector]\naddress = "{collector.address}"\ninsecure = true\nbackoff_initial_s = 0.2\n'
        f'backoff_max_s = 1.0\n[[logs]]\npath = "{app_log}"\n',
    )
    agent = start_agent(agent_cfg)
    wait_for(lambda: any(a["host_id"] == "e2e-host" and a["connected"] for a in collector.ok(admin, "agents", "list")),
             what="agent connected")

    # No token: UNAUTHENTICATED on gRPC.
    anonymous = collector.ctl(None, "incident", "list")
    assert anonymous.returncode == 1
    assert "API token is required" in anonymous.stderr and "HOSTDIAG_TOKEN" in anonymous.stderr
    # A made-up token: refused the same way, and never echoed.
    forged = collector.ctl(PLANTED_BAD_TOKEN, "incident", "list")
    assert forged.returncode == 1 and "not valid" in forged.stderr
    assert PLANTED_BAD_TOKEN not in forged.stderr + forged.stdout

    # A viewer cannot open an incident, and nothing is created.
    denied = collector.ctl(viewer, "incident", "open", "--title", "not allowed", "--severity", "P2",
                           "--select", "role=api")
    assert denied.returncode == 1
    assert "role viewer may not do this" in denied.stderr
    assert collector.ok(admin, "incident", "list") == []
    # ... nor read the agent list, which is for admins.
    assert collector.ctl(viewer, "agents", "list").returncode == 1

    # A responder opens one; the agent's bundle attaches.
    inc_id = collector.ok(responder, "incident", "open", "--title", "checkout errors", "--severity", "P2",
                          "--select", "role=api")["id"]
    hosts = wait_for(
        lambda: [h for h in collector.ok(viewer, "incident", "show", inc_id)["hosts"] if h["state"] == "attached"],
        timeout_s=30, what="bundle attached",
    )
    bundle_id = hosts[0]["bundle_id"]
    opened_by = collector.ok(viewer, "incident", "show", inc_id)
    assert opened_by["timeline"][0]["actor"] == "oncall"

    # HTTP download: 401 without a token (with WWW-Authenticate), 200 for a viewer.
    status, headers, _ = collector.download(bundle_id, None)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, _ = collector.download(bundle_id, f"Bearer {PLANTED_BAD_TOKEN}")
    assert status == 401
    status, _, body = collector.download(bundle_id, f"Bearer {viewer}")
    assert status == 200 and len(body) > 0
    # gRPC download with the viewer token, verified by collectorctl.
    out = tmp_path / "bundle.tar.zst"
    collector.ok(viewer, "bundle", "download", bundle_id, "-o", str(out))
    assert out.stat().st_size == len(body)

    # Revocation takes effect at the very next call.
    assert collector.ok(admin, "token", "revoke", "postmortem")["revoked_at"]
    revoked = collector.ctl(viewer, "incident", "list")
    assert revoked.returncode == 1 and "revoked" in revoked.stderr
    assert collector.download(bundle_id, f"Bearer {viewer}")[0] == 401
    # The responder is not an admin: no audit log, no tokens.
    assert collector.ctl(responder, "audit").returncode == 1
    assert collector.ctl(responder, "token", "create", "--role", "admin", "--name", "sneaky").returncode == 1

    # The audit log: allowed and denied calls, who, what, which object, from where.
    events = collector.ok(admin, "audit", "--since", "1h", "--limit", "1000")

    def find(**want: str) -> list[dict[str, Any]]:
        return [e for e in events if all(e.get(k) == v for k, v in want.items())]
    assert find(action="hostdiag-collector token create", target="ops-admin", outcome="ok")
    assert find(action="/hostdiag.v1.IncidentService/OpenIncident", token_name="postmortem", role="viewer",
                outcome="denied")
    assert find(action="/hostdiag.v1.IncidentService/OpenIncident", token_name="oncall", target=inc_id, outcome="ok")
    assert find(action="/hostdiag.v1.IncidentService/ListIncidents", token_name="", outcome="denied")
    assert find(action="GET /api/v1/bundles", token_name="postmortem", target=bundle_id, outcome="ok")
    assert find(action="GET /api/v1/bundles", token_name="", target=bundle_id, outcome="denied")
    assert find(action="/hostdiag.v1.BundleService/DownloadBundle", token_name="postmortem", target=bundle_id)
    assert find(action="/hostdiag.v1.AdminService/RevokeToken", token_name="ops-admin", target="postmortem")
    assert find(action="/hostdiag.v1.AdminService/ListAuditEvents", token_name="oncall", outcome="denied")
    assert all(e["peer"].startswith(("ipv4:127.0.0.1:", "127.0.0.1:"))
               for e in events if e["action"] != "hostdiag-collector token create")

    agent.stop()
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGTERM)
    collector.proc.wait(timeout=15)

    # No secret in any log line or in the audit log.
    secrets = {"admin": admin, "responder": responder, "viewer": viewer, "planted log line": PLANTED_LOG_SECRET,
               "planted bad token": PLANTED_BAD_TOKEN}
    audit_text = orjson.dumps(events).decode()
    for name, log in (("collector", collector.log.read_text()), ("agent", agent.log.read_text()),
                      ("audit", audit_text)):
        assert log.strip(), f"the {name} log is empty"
        for what, secret in secrets.items():
            assert secret not in log, f"the {what} secret appears in the {name} log"
            assert secret[4:20] not in log, f"part of the {what} secret appears in the {name} log"
