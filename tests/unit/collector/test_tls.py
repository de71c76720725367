"""mTLS pieces without a network: peer identity, reloading certificates, the PKI helper, TLS config."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from hostdiag.agent.config import load_config as load_agent_config
from hostdiag.collector import pki
from hostdiag.collector.config import ConfigError, load_config
from hostdiag.collector.ctl import main as ctl_main
from hostdiag.collector.tls import PeerIdentity, ReloadingCertificates, TlsFiles, peer_identity

# -- identity ----------------------------------------------------------------------------


def test_identity_is_the_san_dns_names() -> None:
    ctx = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"cn-name"],
        "x509_subject_alternative_name": [b"web-1", b"10.0.0.5"],
        "peer_dns": [b"web-1"],
        "x509_pem_cert": [b"-----BEGIN..."],
    }
    identity = peer_identity(ctx)
    assert identity == PeerIdentity(("web-1",))
    assert identity.allows("web-1") and not identity.allows("cn-name")


def test_identity_without_peer_dns_skips_ip_sans() -> None:
    ctx = {"transport_security_type": [b"ssl"], "x509_subject_alternative_name": [b"10.0.0.5", b"db-2", b"::1"]}
    assert peer_identity(ctx) == PeerIdentity(("db-2",))


def test_identity_falls_back_to_the_common_name_without_a_san() -> None:
    ctx = {"transport_security_type": [b"ssl"], "x509_common_name": [b"old-host"], "x509_pem_cert": [b"x"]}
    assert str(peer_identity(ctx)) == "old-host"


@pytest.mark.parametrize(
    "ctx",
    [
        None,
        {},
        {"transport_security_type": [b"insecure"], "x509_common_name": [b"h"]},
        {"transport_security_type": [b"ssl"], "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]},  # no client cert
        {"transport_security_type": [b"ssl"], "x509_pem_cert": [b"x"]},  # a certificate naming nothing
    ],
)
def test_no_verified_certificate_means_no_identity(ctx: dict | None) -> None:
    assert peer_identity(ctx) is None


# -- the PKI helper ----------------------------------------------------------------------


def _text(cert: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki") / "ca"
    pki.init_ca(str(d))
    return d


def test_init_makes_a_private_ca_and_keeps_an_existing_one(ca_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert "CA:TRUE" in _text(str(ca_dir / "ca.crt"))
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init_ca(str(ca_dir))


def test_agent_certificate_names_the_host_for_client_auth(ca_dir: Path) -> None:
    files = pki.issue(str(ca_dir), "web-1")
    text = _text(files.cert_file)
    assert "DNS:web-1" in text and "TLS Web Client Authentication" in text
    assert "Server Authentication" not in text
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"), files.cert_file],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_server_certificate_carries_its_extra_names(ca_dir: Path) -> None:
    files = pki.issue(str(ca_dir), "collector", server=True, sans=["127.0.0.1", "localhost", "::1"])
    text = _text(files.cert_file)
    assert "TLS Web Server Authentication" in text
    assert "DNS:collector, IP Address:127.0.0.1, DNS:localhost, IP Address:0:0:0:0:0:0:0:1" in text


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "bad name"}, "must be 1-253 characters"),
        ({"name": "x,DNS:evil"}, "must be 1-253 characters"),
        ({"name": "h", "sans": ["a.example"]}, "--san is for collector certificates"),
        ({"name": "h", "server": True, "sans": ["a b"]}, "not an IP address or a DNS name"),
        ({"name": "ca"}, "the CA's own file name"),
    ],
)
def test_issue_refuses_names_that_do_not_fit(ca_dir: Path, kwargs: dict, fragment: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(pki.PkiError, match=fragment):
        pki.issue(str(ca_dir), name, **kwargs)


def test_issue_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="pki init"):
        pki.issue(str(tmp_path), "web-1")


def test_collectorctl_pki_commands(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert ctl_main(["pki", "init", "--dir", str(tmp_path / "ca")], out, err) == 0
    assert "CA certificate" in out.getvalue()
    out = io.StringIO()
    assert ctl_main(["--json", "pki", "issue", "--dir", str(tmp_path / "ca"), "--host", "db-1"], out, err) == 0
    doc = orjson.loads(out.getvalue())
    assert doc["cert_file"] == str(tmp_path / "ca" / "db-1.crt")
    assert doc["key_file"] == str(tmp_path / "ca" / "db-1.key")
    err = io.StringIO()
    assert ctl_main(["pki", "issue", "--dir", str(tmp_path / "none"), "--host", "db-1"], io.StringIO(), err) == 1
    assert err.getvalue().startswith("collectorctl: pki issue: no CA in")


# -- reloading server certificates -------------------------------------------------------


def test_certificates_reload_only_when_the_files_change_and_match(tmp_path: Path) -> None:
    d = str(tmp_path / "ca")
    pki.init_ca(d)
    pki.issue(d, "collector", server=True)
    files = TlsFiles(f"{d}/collector.crt", f"{d}/collector.key", f"{d}/ca.crt")
    fetcher = ReloadingCertificates(files)
    assert fetcher.load() is not None
    assert fetcher() is None, "unchanged files: keep the current configuration"
    pki.issue(d, "collector", server=True)  # rotation
    assert fetcher() is not None
    assert fetcher.reloads == 1
    assert fetcher() is None
    # Half a rotation (a new key, the old certificate): keep serving the previous pair.
    other = pki.issue(d, "other", server=True)
    os.replace(other.key_file, files.key_file)
    assert fetcher() is None
    # The certificate arrives too: now it loads.
    os.replace(other.cert_file, files.cert_file)
    assert fetcher() is not None
    os.unlink(files.cert_file)
    assert fetcher() is None, "a file missing for a moment changes nothing"


def test_mismatched_files_fail_at_start(tmp_path: Path) -> None:
    d = str(tmp_path / "ca")
    pki.init_ca(d)
    a, b = pki.issue(d, "a", server=True), pki.issue(d, "b", server=True)
    with pytest.raises(ValueError, match="does not match"):
        ReloadingCertificates(TlsFiles(a.cert_file, b.key_file)).load()


# -- configuration -----------------------------------------------------------------------


def _collector(tmp_path: Path, text: str) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    load_config(str(path))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("tls") / "ca")
    pki.init_ca(d)
    server = pki.issue(d, "collector", server=True)
    agent = pki.issue(d, "web-1")
    return {"ca": f"{d}/ca.crt", "cert": server.cert_file, "key": server.key_file,
            "agent_cert": agent.cert_file, "agent_key": agent.key_file}


def test_collector_tls_config_loads(tmp_path: Path, tls_files: dict[str, str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[collector]\nlisten = "0.0.0.0:7443"\napi_listen = "0.0.0.0:7444"\ninsecure = false\n'
        f'tls_cert_file = "{tls_files["cert"]}"\ntls_key_file = "{tls_files["key"]}"\n'
        f'tls_client_ca_file = "{tls_files["ca"]}"\n'
    )
    c = load_config(str(path)).collector
    assert (c.insecure, c.tls_client_ca_file, c.api_listen) == (False, tls_files["ca"], "0.0.0.0:7444")


@pytest.mark.parametrize(
    ("keys", "key", "fragment"),
    [
        ('insecure = false\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n', "collector.tls_client_ca_file",
         "required unless insecure = true"),
        ('insecure = false\ntls_cert_file = "{cert}"\ntls_client_ca_file = "{ca}"\n', "collector.tls_key_file",
         "required"),
        ('insecure = false\ntls_cert_file = "/nonexistent.crt"\ntls_key_file = "{key}"\ntls_client_ca_file = "{ca}"\n',
         "collector.tls_cert_file", "cannot read '/nonexistent.crt'"),
        ('tls_cert_file = "{cert}"\n', "collector.tls_cert_file", "insecure = true serves plaintext"),
        ('api_listen = "10.0.0.1:7444"\n', "collector.api_listen", "only allowed on a loopback"),
        ('listen = "10.0.0.1:7443"\n', "collector.listen", "set insecure = false"),
    ],
)
def test_collector_tls_config_errors(tmp_path: Path, tls_files: dict[str, str], keys: str, key: str,
                                     fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _collector(tmp_path, "[collector]\n" + keys.format(**tls_files))
    assert info.value.key == key
    assert fragment in info.value.message


def test_agent_tls_config_loads(tmp_path: Path, tls_files: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[collector]\naddress = "collector.example.com:7443"\ntls_ca_file = "{tls_files["ca"]}"\n'
        f'tls_cert_file = "{tls_files["agent_cert"]}"\ntls_key_file = "{tls_files["agent_key"]}"\n'
        'tls_server_name = "collector"\n'
    )
    col = load_agent_config(str(path)).collector
    assert (col.insecure, col.tls_server_name) == (False, "collector")


@pytest.mark.parametrize(
    ("keys", "key", "fragment"),
    [
        ('tls_cert_file = "{agent_cert}"\ntls_key_file = "{agent_key}"\n', "collector.tls_ca_file", "required for mTLS"),
        ('tls_ca_file = "{ca}"\ntls_key_file = "{agent_key}"\n', "collector.tls_cert_file", "required for mTLS"),
        ('tls_ca_file = "{ca}"\ntls_cert_file = "{agent_cert}"\ntls_key_file = "/nope.key"\n',
         "collector.tls_key_file", "cannot read '/nope.key'"),
        ('tls_ca_file = "{ca}"\ntls_cert_file = "{agent_cert}"\ntls_key_file = "{agent_key}"\n'
         'tls_server_name = "a b"\n', "collector.tls_server_name", "not a host name"),
        ('insecure = true\ntls_ca_file = "{ca}"\n', "collector.tls_ca_file", "insecure = true sends plaintext"),
    ],
)
def test_agent_tls_config_errors(tmp_path: Path, tls_files: dict[str, str], keys: str, key: str,
                                 fragment: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[collector]\naddress = "127.0.0.1:7443"\n' + keys.format(**tls_files))
    with pytest.raises(ConfigError) as info:
        load_agent_config(str(path))
    assert info.value.key == key
    assert fragment in info.value.message
