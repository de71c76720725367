"""A health probe watched by the real agent daemon, and its outage in a real bundle's evidence.json."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from pathlib import Path

import orjson
import zstandard

PROBE_PASSWORD = "e2e-Probe-pw-7731"


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


def bundle_members(path: str) -> dict[str, bytes]:
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return {info.name: (tar.extractfile(info) or io.BytesIO()).read() for info in tar}


def test_probe_outage_lands_in_the_bundle_evidence(tmp_path: Path, cli, start_agent, wait_for) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = cli.write_agent_config(tmp_path, extra=f"""
[[probes]]
name = "web"
kind = "http"
target = "http://probe:{PROBE_PASSWORD}@127.0.0.1:{port}/health"
component = "website"
critical = true
interval_s = 0.2
timeout_s = 1

[expect]
processes = ["re:hostdiag-agent"]
ports = [{port}]
""")
    agent = start_agent(cfg)
    server_up = True
    try:
        def probe_status() -> dict:
            return agent.status()["probes"]["probes"][0]

        wait_for(lambda: probe_status()["checks"] >= 3, what="three probe checks")
        assert probe_status()["last_ok"] is True and probe_status()["failures"] == 0
        server.shutdown()
        server.server_close()
        server_up = False
        wait_for(lambda: probe_status()["consecutive_failures"] >= 2, what="two failed checks after the server stopped")
        status = probe_status()
        assert status["target"] == f"http://127.0.0.1:{port}/health"
        assert status["last_error"] == "connection refused"

        result = orjson.loads(cli.run("agentctl", "collect", "--config", str(cfg), "--json", check=True).stdout)
        members = bundle_members(result["path"])
        manifest = orjson.loads(members["manifest.json"])
        assert manifest["sources"]["probes"]["status"] == "ok"
        assert manifest["sources"]["declared"]["status"] == "ok"
        evidence = orjson.loads(members["evidence.json"])
        web = evidence["probes"]["web"]
        assert web["component"] == "website" and web["critical"] is True and web["kind"] == "http"
        assert web["consecutive_failures"] > 0 and web["last_ok"] is False
        assert 0 < web["uptime_ratio"] < 1
        assert web["failing_since"] is not None and web["checks"] >= 5
        history = orjson.loads(members["probes.json"])["probes"]["web"]["results"]
        assert history[0]["ok"] is True and history[-1]["ok"] is False and len(history) == web["checks"]
        declared = evidence["declared"]
        assert declared["processes"]["re:hostdiag-agent"]["running"] >= 1
        assert declared["ports"] == {str(port): {"listening": False}}  # the server is gone

        everything = b"".join(members.values())
        assert PROBE_PASSWORD.encode() not in everything
        assert PROBE_PASSWORD not in orjson.dumps(agent.status()).decode()
    finally:
        agent.stop()
        if server_up:
            server.shutdown()
            server.server_close()
    assert PROBE_PASSWORD not in agent.log.read_text()
