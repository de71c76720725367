"""mTLS between agent and collector, as a user runs it: certificates from ``collectorctl pki``,
both daemons and collectorctl as subprocesses.

- an agent with a certificate for its host id connects and its bundle attaches;
- a certificate from another CA is refused at the handshake, and the agent never appears;
- a certificate naming another host is refused with PERMISSION_DENIED;
- the collector's certificate rotates on disk and new connections get it, without a restart.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest


class Pki:
    """A CA directory driven through ``collectorctl pki``."""

    def __init__(self, cli, directory: Path) -> None:
        self.cli = cli
        self.dir = directory
        cli.run("collectorctl", "pki", "init", "--dir", str(directory), check=True)

    def issue(self, host: str, *extra: str) -> dict:
        out = self.cli.run("collectorctl", "--json", "pki", "issue", "--dir", str(self.dir), "--host", host, *extra,
                           check=True)
        return orjson.loads(out.stdout)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


class TlsCollector:
    def __init__(self, cli, tmp: Path, pki: Pki) -> None:
        self.cli = cli
        self.pki = pki
        self.dir = tmp / "collector"
        self.dir.mkdir()
        pki.issue("collector", "--server", "--san", "127.0.0.1", "--san", "localhost")
        self.config = self.dir / "collector.toml"
        self.config.write_text(
            '[collector]\nlisten = "127.0.0.1:0"\napi_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
            f'data_dir = "{self.dir / "data"}"\ninsecure = false\n'
            f'tls_cert_file = "{pki.dir / "collector.crt"}"\ntls_key_file = "{pki.dir / "collector.key"}"\n'
            f'tls_client_ca_file = "{pki.ca}"\n'
        )
        self.ready = self.dir / "ready.json"
        self.log = self.dir / "collector.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [cli.script("hostdiag-collector"), "--config", str(self.config), "--ready-file", str(self.ready)],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "collector never became ready"
            time.sleep(0.02)
        doc = orjson.loads(self.ready.read_bytes())
        self.agent_address, self.api_address = doc["grpc"], doc["api"]
        self.env = dict(os.environ)
        # A collector that checks API tokens makes its first admin token offline; one that
        # does not has no such command.  Either way collectorctl's transport is what is tested.
        token = cli.run("hostdiag-collector", "token", "create", "--config", str(self.config), "--role", "admin",
                        "--name", "e2e")
        if token.returncode == 0:
            self.env["HOSTDIAG_TOKEN"] = token.stdout.strip()

    def ctl(self, *args: str) -> object:
        proc = self.cli.run("collectorctl", "--collector", self.api_address, "--ca-file", str(self.pki.ca), "--json",
                            *args, env=self.env)
        assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return orjson.loads(proc.stdout)

    def known_hosts(self) -> list[str]:
        return [a["host_id"] for a in self.ctl("agents", "list", "--all")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def pki(tmp_path: Path, cli) -> Pki:
    return Pki(cli, tmp_path / "pki")


@pytest.fixture
def collector(tmp_path: Path, cli, pki: Pki) -> Iterator[TlsCollector]:
    col = TlsCollector(cli, tmp_path, pki)
    yield col
    if col.proc.poll() is None:
        col.proc.kill()
        col.proc.wait()


def tls_agent_config(cli, tmp: Path, collector: TlsCollector, cert: Path, key: Path, ca: Path) -> Path:
    return cli.write_agent_config(
        tmp,
        extra=f'[collector]\naddress = "{collector.agent_address}"\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\n'
        f'tls_ca_file = "{ca}"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n',
    )


def test_agent_with_its_certificate_connects_and_its_bundle_attaches(
    tmp_path: Path, cli, pki: Pki, collector: TlsCollector, start_agent, wait_for
) -> None:
    files = pki.issue("e2e-host")
    agent = start_agent(tls_agent_config(cli, tmp_path, collector, Path(files["cert_file"]),
                                         Path(files["key_file"]), pki.ca))
    wait_for(lambda: agent.status()["collector"]["connected"], timeout_s=20, what="agent connected over mTLS")
    assert [a["host_id"] for a in collector.ctl("agents", "list")] == ["e2e-host"]
    inc_id = collector.ctl("incident", "open", "--title", "mtls", "--severity", "P3", "--host", "e2e-host")["id"]
    hosts = wait_for(
        lambda: [h for h in collector.ctl("incident", "show", inc_id)["hosts"] if h["state"] == "attached"],
        timeout_s=30, what="bundle attached",
    )
    out = tmp_path / "b.tar.zst"
    collector.ctl("bundle", "download", hosts[0]["bundle_id"], "-o", str(out))
    assert cli.run("agentctl", "inspect", str(out)).returncode == 0
    # The API port is TLS: a plaintext collectorctl gets no answer from it.
    plain = cli.run("collectorctl", "--collector", collector.api_address, "--timeout", "2", "agents", "list",
                    env=collector.env)
    assert plain.returncode == 1
    # The agent port wants an agent certificate: collectorctl (server verification only) is refused.
    no_cert = cli.run("collectorctl", "--collector", collector.agent_address, "--ca-file", str(pki.ca),
                      "--timeout", "2", "agents", "list", env=collector.env)
    assert no_cert.returncode == 1
    agent.stop()


def test_agent_certificate_from_another_ca_is_refused(
    tmp_path: Path, cli, pki: Pki, collector: TlsCollector, start_agent, wait_for
) -> None:
    other = Pki(cli, tmp_path / "other-pki")
    files = other.issue("e2e-host")
    # The agent trusts the right CA for the collector, but presents a certificate of another CA.
    agent = start_agent(tls_agent_config(cli, tmp_path, collector, Path(files["cert_file"]),
                                         Path(files["key_file"]), pki.ca))
    status = wait_for(
        lambda: (s := agent.status()["collector"])["connect_failures"] >= 2 and s,
        timeout_s=20, what="failed connection attempts",
    )
    assert not status["connected"]
    assert status["last_connect_error"].startswith("UNAVAILABLE")
    assert "e2e-host" not in collector.known_hosts()
    agent.stop()


def test_agent_certificate_naming_another_host_is_permission_denied(
    tmp_path: Path, cli, pki: Pki, collector: TlsCollector, start_agent, wait_for
) -> None:
    files = pki.issue("other-host")
    agent = start_agent(tls_agent_config(cli, tmp_path, collector, Path(files["cert_file"]),
                                         Path(files["key_file"]), pki.ca))
    status = wait_for(
        lambda: (s := agent.status()["collector"])["last_connect_error"] and s,
        timeout_s=20, what="refused connection",
    )
    assert status["last_connect_error"] == (
        "PERMISSION_DENIED: certificate names other-host, hello says e2e-host"
    )
    assert not status["connected"]
    assert collector.known_hosts() == []
    agent.stop()


def _server_serial(address: str, pki: Pki, client: dict) -> str:
    """The serial number of the certificate the collector presents to a new agent connection."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(client["cert_file"], client["key_file"])
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            cert = tls.getpeercert()
    assert cert is not None
    return str(cert["serialNumber"]).lower()


def test_collector_certificate_rotates_without_restart(
    tmp_path: Path, cli, pki: Pki, collector: TlsCollector, start_agent, wait_for
) -> None:
    client = pki.issue("e2e-host")
    first = _server_serial(collector.agent_address, pki, client)
    old = pki.dir / "collector.crt"
    assert first == subprocess.run(
        ["openssl", "x509", "-in", str(old), "-noout", "-serial"], capture_output=True, text=True, check=True
    ).stdout.strip().split("=")[1].lower()
    rotated = pki.issue("collector", "--server", "--san", "127.0.0.1", "--san", "localhost")
    assert rotated["serial"].lower().lstrip("0") != first.lstrip("0")
    wait_for(
        lambda: _server_serial(collector.agent_address, pki, client).lstrip("0") == rotated["serial"].lstrip("0"),
        timeout_s=10, what="new connections present the rotated certificate",
    )
    assert _server_serial(collector.api_address, pki, client).lstrip("0") == rotated["serial"].lstrip("0")
    # Same process, and an agent still connects with the rotated certificate in place.
    assert collector.proc.poll() is None
    agent = start_agent(tls_agent_config(cli, tmp_path, collector, Path(client["cert_file"]),
                                         Path(client["key_file"]), pki.ca))
    wait_for(lambda: agent.status()["collector"]["connected"], timeout_s=20, what="agent connected after rotation")
    agent.stop()
