"""sd_notify messages reach a real datagram socket, and absence is harmless."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hostdiag.agent.sdnotify import Notifier


def test_notifications_arrive(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 2.0
        assert n.ready("recording")
        assert sock.recv(1024) == b"READY=1\nSTATUS=recording"
        assert n.watchdog()
        assert sock.recv(1024) == b"WATCHDOG=1"
        assert n.stopping()
        assert sock.recv(1024) == b"STOPPING=1"


def test_disabled_without_socket_and_dead_socket_is_harmless(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None  # not our pid
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and not n.ready()
