"""agentctl status prints what an engineer at 3 a.m. needs: recorder, files, probes, collector."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import orjson

from hostdiag.agent.ctl import main


def serve_status(path: str, status: dict) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as stream:
            stream.readline()
            conn.sendall(orjson.dumps({"event": "done", "status": status}) + b"\n")
        srv.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return t


def test_status_text_shows_probes_collector_and_files(tmp_path: Path) -> None:
    sock = str(tmp_path / "a.sock")
    status = {
        "pid": 42, "agent_version": "0.1.0", "uptime_s": 12.0, "host_id": "web-1", "labels": {"role": "api"},
        "recorder": {"depth_s": 11.0, "metrics_samples": 12, "metrics_capacity": 901, "top_samples": 2,
                     "top_capacity": 91},
        "logs": [{"path": "/var/log/app.log", "lag_bytes": 0, "lines": 10, "error": None}],
        "probes": {"probes": [
            {"name": "api-health", "kind": "http", "component": "api", "target": "http://127.0.0.1:8080/health",
             "last_ok": False, "consecutive_failures": 3, "last_error": "connection refused"},
            {"name": "db", "kind": "tcp", "component": "database", "target": "127.0.0.1:5432", "last_ok": True},
        ]},
        "collector": {"collector_address": "127.0.0.1:7443", "connected": False},
        "spool": {"depth": 2, "bytes": 2048, "evictions": 0},
    }
    t = serve_status(sock, status)
    out, err = io.StringIO(), io.StringIO()
    assert main(["status", "--socket", sock], out=out, err=err) == 0
    t.join(5)
    text = out.getvalue()
    assert "agent: up (pid 42" in text
    assert "/var/log/app.log: lag 0 bytes, 10 lines" in text
    assert "api-health [http api] http://127.0.0.1:8080/health: FAILING (3 in a row: connection refused)" in text
    assert "db [tcp database] 127.0.0.1:5432: ok" in text
    assert "collector: 127.0.0.1:7443 NOT connected; spool 2 bundles, 2048 bytes, 0 evicted" in text
