"""The collector's side of TLS: server credentials that follow rotated files, and peer identity.

Two gRPC ports can be served (``docs/security.md``, *Transport and identity*):

* ``listen``, for agents: TLS with a **required** client certificate signed by
  ``tls_client_ca_file``.  The agent's identity is its certificate's SAN DNS
  names (or its CN when it has no SAN): :func:`peer_identity`.
* ``api_listen``, for collectorctl and other API clients: TLS with the same
  server certificate, no client certificate (API tokens identify callers).

Certificates rotate without a restart: :class:`ReloadingCertificates` is the
certificate-configuration fetcher of ``grpc.dynamic_ssl_server_credentials``.
gRPC calls it before each new handshake; it re-reads the files only when one
of them changed on disk (inode, size or mtime), checks that the new key
matches the new certificate, and otherwise keeps serving what it had, so a
rotation caught half-way never breaks new connections.  Connections already
open keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["PeerIdentity", "peer_identity", "ReloadingCertificates", "TlsFiles"]

log = logging.getLogger("hostdiag.collector.tls")


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified client certificate names: its SAN DNS names, else its CN."""

    names: tuple[str, ...]

    def allows(self, host_id: str) -> bool:
        return host_id in self.names

    def __str__(self) -> str:
        return ", ".join(self.names) if self.names else "nothing"


def _texts(values: Sequence[Any]) -> list[str]:
    out = []
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text:
            out.append(text)
    return out


def peer_identity(auth_context: Mapping[str, Sequence[Any]] | None) -> PeerIdentity | None:
    """The identity in a call's ``context.auth_context()``; None without a verified certificate.

    gRPC lists only certificates it verified against the client CA.  DNS names come from
    ``peer_dns`` where gRPC provides it (DNS SANs only), else from
    ``x509_subject_alternative_name``, keeping the entries that are not IP addresses;
    with no SAN the common name (``x509_common_name``) is the identity.
    """
    if not auth_context:
        return None
    if _texts(auth_context.get("transport_security_type", ())) != ["ssl"]:
        return None
    if "x509_pem_cert" not in auth_context and "x509_common_name" not in auth_context \
            and "x509_subject_alternative_name" not in auth_context:
        return None  # TLS without a client certificate (the API port)
    if "peer_dns" in auth_context:
        dns = _texts(auth_context["peer_dns"])
    else:
        dns = [v for v in _texts(auth_context.get("x509_subject_alternative_name", ())) if not _is_ip(v)]
    names = dns or _texts(auth_context.get("x509_common_name", ()))
    if not names:
        return None
    return PeerIdentity(tuple(dict.fromkeys(names)))


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # empty: no client certificates asked for


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingCertificates:
    """A ``dynamic_ssl_server_credentials`` fetcher: the files' current contents, checked.

    :meth:`load` reads them once (raising ``OSError``/``ValueError`` at start, so a
    collector with unreadable or mismatched files does not start).  After that,
    the fetcher returns a new configuration only when the files changed and read
    back consistent; anything else keeps the current one (logged once per change).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamps: tuple[tuple[int, int, int], ...] | None = None
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        self.reloads = 0

    def _paths(self) -> tuple[str, ...]:
        f = self.files
        return (f.cert_file, f.key_file, f.client_ca_file) if f.client_ca_file else (f.cert_file, f.key_file)

    def _read(self) -> tuple[Any, tuple[tuple[int, int, int], ...]]:
        paths = self._paths()
        before = tuple(_stamp(p) for p in paths)
        contents = []
        for path in paths:
            with open(path, "rb") as fh:
                contents.append(fh.read())
        # The key must belong to the certificate: ssl checks exactly that.
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.files.cert_file, self.files.key_file)
        except ssl.SSLError as exc:
            raise ValueError(f"{self.files.key_file} does not match {self.files.cert_file} ({exc.reason})") from None
        if self.files.client_ca_file:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=self.files.client_ca_file)
            except ssl.SSLError as exc:
                raise ValueError(f"{self.files.client_ca_file}: not a PEM CA certificate ({exc.reason})") from None
        after = tuple(_stamp(p) for p in paths)
        if before != after:
            raise ValueError("the certificate files changed while being read")
        config = grpc.ssl_server_certificate_configuration(
            [(contents[1], contents[0])], root_certificates=contents[2] if self.files.client_ca_file else None
        )
        return config, after

    def load(self) -> Any:
        """The initial configuration; raises ``OSError`` or ``ValueError``."""
        with self._lock:
            config, self._stamps = self._read()
            return config

    def __call__(self) -> Any:
        """Called by gRPC before a handshake: a new configuration, or None for "unchanged"."""
        with self._lock:
            try:
                stamps = tuple(_stamp(p) for p in self._paths())
            except OSError:
                return None  # a file is being replaced right now: keep serving what we have
            if stamps == self._stamps or stamps == self._failed:
                return None
            try:
                config, read_stamps = self._read()
            except (OSError, ValueError) as exc:
                self._failed = stamps
                log.warning(
                    "rotated TLS files not loaded; serving the previous certificate",
                    extra={"event": "tls_reload_failed", "error": str(exc), "cert_file": self.files.cert_file},
                )
                return None
            self._stamps = read_stamps
            self._failed = None
            self.reloads += 1
            log.info(
                "TLS certificate reloaded",
                extra={"event": "tls_reloaded", "cert_file": self.files.cert_file, "reloads": self.reloads},
            )
            return config

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.load(), self, require_client_authentication=require_client_auth
        )
