"""A small certificate authority for hostdiag's mTLS, over the ``openssl`` command.

``collectorctl pki init`` and ``collectorctl pki issue`` (and ``scripts/dev-certs``)
use it to make what a test bed or a small fleet needs::

    DIR/ca.key, DIR/ca.crt              the CA (EC P-256, key mode 0600)
    DIR/NAME.key, DIR/NAME.crt          an agent's certificate: SAN DNS:NAME, clientAuth
    DIR/NAME.key, DIR/NAME.crt          with server=True: serverAuth, SAN DNS:NAME and each
                                        extra --san (IP addresses become IP SANs)

The agent's identity is the certificate's SAN DNS name, so ``NAME`` must be the
agent's ``host_id``.  Every file is written under a temporary name and renamed
into place, so a collector that reloads rotated files never reads half a file.
No value reaches ``openssl`` without passing :func:`check_name` or
:func:`check_san`: nothing from the command line can add to the extension file.

A production fleet will usually have its own PKI; the collector and the agent
only need PEM files.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PkiError", "IssuedFiles", "init_ca", "issue", "check_name", "check_san", "add_commands", "CA_CERT", "CA_KEY",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825
# The same characters an agent's host_id may use (collector/agent_service.py).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_DNS = re.compile(r"[A-Za-z0-9*][A-Za-z0-9_.-]{0,252}")


class PkiError(Exception):
    """A CA or certificate could not be made; the message says why."""


@dataclass(frozen=True)
class IssuedFiles:
    cert_file: str
    key_file: str
    ca_file: str
    serial: str


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise PkiError(f"host name {name[:80]!r}: must be 1-253 characters of [A-Za-z0-9_.:-] (the agent's host_id)")
    return name


def check_san(value: str) -> str:
    """``IP:...`` or ``DNS:...`` for one extra subject alternative name."""
    try:
        return f"IP:{ipaddress.ip_address(value)}"
    except ValueError:
        pass
    if not _DNS.fullmatch(value):
        raise PkiError(f"--san {value[:80]!r}: not an IP address or a DNS name")
    return f"DNS:{value}"


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    exe = shutil.which("openssl")
    if exe is None:
        raise PkiError("the openssl command is not installed (it makes the keys and certificates)")
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PkiError(f"openssl {args[0]} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


def _write(path: str, data: bytes, mode: int) -> None:
    """tmp + fsync + rename, created with ``mode`` from the start (a key is never readable to others)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _new_key() -> bytes:
    return _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")


def _serial() -> str:
    # 127 random bits, positive: RFC 5280 wants at most 20 octets and unpredictable serials.
    return "0x" + format(secrets.randbits(127) | (1 << 120), "x")


def init_ca(directory: str, *, common_name: str = "hostdiag CA", days: int = CA_DAYS, force: bool = False) -> str:
    """Make ``directory/ca.key`` and ``directory/ca.crt``; returns the certificate's path.

    An existing CA is kept (PkiError) unless ``force``: replacing it would orphan
    every certificate it issued.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path, cert_path = os.path.join(directory, CA_KEY), os.path.join(directory, CA_CERT)
    if os.path.exists(key_path) and not force:
        raise PkiError(f"{key_path} exists: this directory already holds a CA (force to replace it)")
    if not re.fullmatch(r"[A-Za-z0-9 ._-]{1,64}", common_name):
        raise PkiError(f"CA name {common_name[:80]!r}: 1-64 characters of letters, digits, space, '.', '_', '-'")
    key = _new_key()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as work:
        tmp_key = os.path.join(work, "key.pem")
        _write(tmp_key, key, 0o600)
        cert = _openssl(
            "req", "-x509", "-new", "-key", tmp_key, "-subj", f"/CN={common_name}", "-days", str(days),
            "-set_serial", _serial(), "-sha256",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        )
    _write(key_path, key, 0o600)
    _write(cert_path, cert, 0o644)
    return cert_path


def issue(
    directory: str,
    name: str,
    *,
    server: bool = False,
    sans: tuple[str, ...] | list[str] = (),
    days: int = LEAF_DAYS,
    out_name: str | None = None,
) -> IssuedFiles:
    """Issue ``NAME.crt``/``NAME.key`` in ``directory`` from its CA.

    An agent certificate (``server=False``) has SAN ``DNS:NAME`` and extended key usage
    clientAuth; a collector certificate has serverAuth and ``DNS:NAME`` plus ``sans``.
    An existing pair of the same name is replaced (that is how a certificate is rotated).
    """
    check_name(name)
    base = check_name(out_name) if out_name else name
    if base in ("ca",):
        raise PkiError("'ca' is the CA's own file name; pick another name")
    key_path, cert_path = os.path.join(directory, CA_KEY), os.path.join(directory, CA_CERT)
    if not (os.path.exists(key_path) and os.path.exists(cert_path)):
        raise PkiError(f"no CA in {directory}: run 'collectorctl pki init --dir {directory}' first")
    if sans and not server:
        raise PkiError("--san is for collector certificates (--server); an agent's only name is its host_id")
    alt = [f"DNS:{name}"]
    for value in sans:
        entry = check_san(value)
        if entry not in alt:
            alt.append(entry)
    usage = "serverAuth" if server else "clientAuth"
    ext = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        f"subjectAltName={','.join(alt)}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    serial = _serial()
    key = _new_key()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as work:
        tmp_key = os.path.join(work, "key.pem")
        _write(tmp_key, key, 0o600)
        ext_file = os.path.join(work, "ext.cnf")
        _write(ext_file, ext.encode(), 0o600)
        csr = _openssl("req", "-new", "-key", tmp_key, "-subj", f"/CN={name}")
        cert = _openssl(
            "x509", "-req", "-CA", cert_path, "-CAkey", key_path, "-set_serial", serial, "-days", str(days),
            "-sha256", "-extfile", ext_file, stdin=csr,
        )
    out_key, out_cert = os.path.join(directory, f"{base}.key"), os.path.join(directory, f"{base}.crt")
    # Key first, then certificate: a reader that sees the new certificate also finds its key.
    _write(out_key, key, 0o600)
    _write(out_cert, cert, 0o644)
    return IssuedFiles(cert_file=out_cert, key_file=out_key, ca_file=cert_path, serial=serial[2:])


# --------------------------------------------------------------------------
# collectorctl pki init | issue  (wired into collector/ctl.py by add_commands)


def add_commands(groups: Any) -> None:
    """Add the ``pki`` group to collectorctl's subcommand parsers."""
    pki = groups.add_parser("pki", help="make a CA and certificates for mTLS (uses the openssl command)")
    sub = pki.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="make a CA: DIR/ca.key (mode 0600) and DIR/ca.crt")
    p.add_argument("--dir", required=True, metavar="DIR", help="directory for the CA (created, mode 0700)")
    p.add_argument("--name", default="hostdiag CA", help="the CA's common name (default: hostdiag CA)")
    p.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    p.add_argument("--force", action="store_true", help="replace an existing CA (its certificates stop working)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the paths as JSON")
    p.set_defaults(func=_cmd_init)
    p = sub.add_parser("issue", help="issue DIR/NAME.crt and DIR/NAME.key from the CA in DIR")
    p.add_argument("--dir", required=True, metavar="DIR", help="directory holding the CA")
    p.add_argument("--host", required=True, metavar="NAME",
                   help="the agent's host_id (SAN DNS:NAME), or the collector's name with --server")
    p.add_argument("--server", action="store_true", help="a collector certificate (serverAuth) instead of an agent's")
    p.add_argument("--san", action="append", default=[], metavar="NAME|IP",
                   help="with --server: another DNS name or IP address clients connect to (repeatable)")
    p.add_argument("--out", metavar="NAME", help="file name stem (default: the host name)")
    p.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the paths as JSON")
    p.set_defaults(func=_cmd_issue)


def _days(value: int) -> int:
    if not 1 <= value <= 36500:
        raise PkiError(f"--days must be between 1 and 36500, got {value}")
    return value


def _cmd_init(args: Any, ctx: Any) -> int:
    try:
        cert = init_ca(args.dir, common_name=args.name, days=_days(args.days), force=args.force)
    except (PkiError, OSError) as exc:
        ctx.err.write(f"collectorctl: pki init: {exc}\n")
        return 1
    doc = {"ca_file": cert, "ca_key_file": os.path.join(args.dir, CA_KEY)}
    if ctx.json:
        ctx.emit(doc)
    else:
        ctx.out.write(f"CA certificate {doc['ca_file']}\nCA key         {doc['ca_key_file']} (keep it private)\n")
    return 0


def _cmd_issue(args: Any, ctx: Any) -> int:
    try:
        files = issue(args.dir, args.host, server=args.server, sans=tuple(args.san), days=_days(args.days),
                      out_name=args.out)
    except (PkiError, OSError) as exc:
        ctx.err.write(f"collectorctl: pki issue: {exc}\n")
        return 1
    doc = {"cert_file": files.cert_file, "key_file": files.key_file, "ca_file": files.ca_file,
           "serial": files.serial}
    if ctx.json:
        ctx.emit(doc)
    else:
        ctx.out.write(f"certificate {files.cert_file}\nkey         {files.key_file}\nserial      {files.serial}\n")
    return 0
