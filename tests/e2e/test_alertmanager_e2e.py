"""Alertmanager → hostdiag end to end: the real collector and agent as subprocesses, a
notification POSTed exactly as Alertmanager's webhook receiver sends it, the agent's bundle
attached to the incident it opened, then the resolved notification in the timeline."""

from __future__ import annotations

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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"


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
            f'data_dir = "{self.dir / "data"}"\nauth = "none"\n'
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
        self.http = orjson.loads(self.ready.read_bytes())["http"]

    def ctl(self, *args: str) -> Any:
        proc = self.cli.run("collectorctl", "--collector", self.address, "--json", *args)
        assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return orjson.loads(proc.stdout)

    def alertmanager(self, fixture: str) -> tuple[int, dict[str, Any]]:
        """POST like Alertmanager: JSON body, Content-Type application/json, its User-Agent."""
        request = urllib.request.Request(
            f"http://{self.http}/api/v1/alertmanager",
            data=(FIXTURES / fixture).read_bytes(),
            headers={"Content-Type": "application/json", "User-Agent": "Alertmanager/0.28.1"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def collector(tmp_path: Path, cli: Any) -> Iterator[Collector]:
    col = Collector(cli, tmp_path)
    yield col
    col.stop()


def test_alertmanager_notification_opens_incident_and_agent_bundle_attaches(
    tmp_path: Path, cli: Any, collector: Collector, start_agent: Any, wait_for: Any
) -> None:
    agent_cfg = cli.write_agent_config(
        tmp_path,
        labels='role = "api", env = "e2e"',
        extra=f'[collector]\naddress = "{collector.address}"\ninsecure = true\nbackoff_initial_s = 0.2\n'
        "backoff_max_s = 1.0\n",
    )
    agent = start_agent(agent_cfg)
    wait_for(lambda: any(a["host_id"] == "e2e-host" and a["connected"] for a in collector.ctl("agents", "list")),
             what="agent connected")

    status, answer = collector.alertmanager("e2e_host_firing.json")
    assert status == 200, answer
    assert answer["action"] == "opened" and answer["severity"] == "P1" and answer["hosts"] == ["e2e-host"]
    inc_id = answer["incident_id"]

    def attached() -> Any:
        hosts = collector.ctl("incident", "show", inc_id)["hosts"]
        return [h for h in hosts if h["state"] == "attached"]

    [host] = wait_for(attached, timeout_s=60, what="the agent's bundle attached")
    assert host["host_id"] == "e2e-host" and host["bundle_id"]
    incident = collector.ctl("incident", "show", inc_id)
    assert incident["title"] == "e2e-host is overloaded" and incident["severity"] == "P1"
    assert incident["alert_group_key"] == '{}/{severity="critical"}:{alertname="HostHighLoad"}'
    assert incident["opened_by"] == "alertmanager"
    assert incident["bundle_ids"] == [host["bundle_id"]]
    shown = collector.ctl("bundle", "show", host["bundle_id"])
    assert shown["bundle"]["incident_id"] == inc_id and shown["bundle"]["host_id"] == "e2e-host"
    assert shown["manifest"]["incident_id"] == inc_id and shown["manifest"]["trigger"] == "collector"

    # Alertmanager repeats the group: nothing new.
    assert collector.alertmanager("e2e_host_firing.json")[1]["action"] == "unchanged"

    status, answer = collector.alertmanager("e2e_host_resolved.json")
    assert status == 200 and answer == {"action": "resolved_noted", "incident_id": inc_id, "hosts_added": []}
    incident = collector.ctl("incident", "show", inc_id)
    assert incident["state"] == "open"  # a human resolves it
    last = incident["timeline"][-1]
    assert last["kind"] == "alerts_resolved" and last["actor"] == "alertmanager"
    assert last["message"].startswith("1 alert(s) resolved: HostHighLoad (e2e-host:9100)")

    # A malformed notification is refused with the field and changes nothing.
    bad = tmp_path / "bad.json"
    doc = orjson.loads((FIXTURES / "e2e_host_firing.json").read_bytes())
    doc["alerts"][0]["labels"]["instance"] = 9100
    bad.write_bytes(orjson.dumps(doc))
    request = urllib.request.Request(f"http://{collector.http}/api/v1/alertmanager", data=bad.read_bytes(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
    assert orjson.loads(info.value.read())["field"] == "alerts[0].labels.instance"
    assert [i["id"] for i in collector.ctl("incident", "list")] == [inc_id]
    agent.stop()
