"""API tokens and roles: the role table, token format, the store's token and audit tables, ``auth`` config."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from hostdiag.collector.admin_api import create_token
from hostdiag.collector.auth import (
    HTTP_ROLES,
    METHOD_ROLES,
    PROTECTED_SERVICES,
    ROLES,
    Authenticator,
    Denied,
    Role,
    bearer_token,
    hash_token,
    role_allows,
    token_id_of,
)
from hostdiag.collector.config import ConfigError, parse_config
from hostdiag.collector.store.base import AuditRecord
from hostdiag.collector.store.sqlite import SqliteMetadataStore
from hostdiag.v1 import admin_pb2, bundle_pb2, fleet_pb2, incident_pb2


def test_every_method_of_every_protected_service_has_a_role() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (incident_pb2, bundle_pb2, fleet_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METHOD_ROLES) == methods
    assert all(m.startswith(PROTECTED_SERVICES) for m in methods)
    assert set(METHOD_ROLES.values()) | set(HTTP_ROLES.values()) <= set(ROLES)


@pytest.mark.parametrize("method,lowest", [
    ("/hostdiag.v1.IncidentService/ListIncidents", Role.VIEWER),
    ("/hostdiag.v1.IncidentService/GetIncident", Role.VIEWER),
    ("/hostdiag.v1.BundleService/DownloadBundle", Role.VIEWER),
    ("/hostdiag.v1.IncidentService/OpenIncident", Role.RESPONDER),
    ("/hostdiag.v1.IncidentService/AcknowledgeIncident", Role.RESPONDER),
    ("/hostdiag.v1.IncidentService/PostStatusUpdate", Role.RESPONDER),
    ("/hostdiag.v1.IncidentService/ResolveIncident", Role.RESPONDER),
    ("/hostdiag.v1.IncidentService/SetIncidentSeverity", Role.RESPONDER),
    ("/hostdiag.v1.FleetService/ListAgents", Role.ADMIN),
    ("/hostdiag.v1.AdminService/CreateToken", Role.ADMIN),
    ("/hostdiag.v1.AdminService/ListAuditEvents", Role.ADMIN),
])
def test_role_table(method: str, lowest: str) -> None:
    ladder = [Role.VIEWER, Role.RESPONDER, Role.ADMIN]
    need = METHOD_ROLES[method]
    assert need == lowest
    assert [role_allows(r, need) for r in ladder] == [ladder.index(r) >= ladder.index(lowest) for r in ladder]
    assert not role_allows(Role.ALERTMANAGER, need)


def test_the_alertmanager_role_is_good_for_the_alertmanager_endpoint_only() -> None:
    need = HTTP_ROLES["POST /api/v1/alertmanager"]
    assert [r for r in ROLES if role_allows(r, need)] == [Role.ALERTMANAGER]
    assert [r for r in ROLES if role_allows(r, HTTP_ROLES["GET /api/v1/bundles"])] == [
        Role.VIEWER, Role.RESPONDER, Role.ADMIN]


@pytest.mark.parametrize("header,token", [
    ("Bearer hdt_abc", "hdt_abc"),
    ("bearer   hdt_abc  ", "hdt_abc"),
    ("Basic dXNlcjpwdw==", None),
    ("Bearer", None),
    ("", None),
    (None, None),
    ("Bearer " + "x" * 300, None),
])
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def _store(tmp_path: Path) -> SqliteMetadataStore:
    return SqliteMetadataStore(str(tmp_path / "collector.db"))


def test_tokens_are_stored_hashed_and_checked_until_revoked(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = _store(tmp_path)
        await store.open()
        try:
            record, secret = await create_token(store, "oncall", "responder", now_ms=1000)
            assert secret.startswith("hdt_") and len(secret) >= 40
            assert record.token_sha256 == hash_token(secret) and record.token_id == token_id_of(record.token_sha256)
            assert record.token_id not in secret
            auth = Authenticator(store, clock=lambda: 2.0)
            identity = await auth.check(f"Bearer {secret}", Role.RESPONDER)
            assert (identity.name, identity.role) == ("oncall", "responder")
            with pytest.raises(Denied) as too_small:
                await auth.check(f"Bearer {secret}", Role.ADMIN)
            assert too_small.value.status == 403
            with pytest.raises(Denied) as unknown:
                await auth.check("Bearer hdt_unknown", Role.VIEWER)
            assert unknown.value.status == 401 and unknown.value.identity is None
            with pytest.raises(ValueError, match="exists already"):
                await create_token(store, "oncall", "viewer")
            assert (await store.revoke_token("oncall", 3000)) is not None
            with pytest.raises(Denied) as revoked:
                await auth.check(f"Bearer {secret}", Role.VIEWER)
            assert revoked.value.status == 401
            # A revoked name can be given to a new token.
            await create_token(store, "oncall", "viewer")
            assert [t.name for t in await store.list_tokens(include_revoked=False)] == ["oncall"]
            assert len(await store.list_tokens(include_revoked=True)) == 2
        finally:
            await store.close()
        # Nothing in the database holds the secret.
        assert secret.encode() not in (tmp_path / "collector.db").read_bytes()

    asyncio.run(scenario())


def test_the_audit_log_is_append_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = _store(tmp_path)
        await store.open()
        try:
            await store.add_audit([AuditRecord(at_ms=5, action="a", outcome="ok"),
                                   AuditRecord(at_ms=9, action="b", outcome="denied")])
            assert [e.action for e in await store.list_audit(0, 10)] == ["a", "b"]
            assert [e.action for e in await store.list_audit(6, 10)] == ["b"]
            assert [e.action for e in await store.list_audit(0, 1)] == ["b"]
        finally:
            await store.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(tmp_path / "collector.db")
    for statement in ("UPDATE audit_events SET outcome = 'ok'", "DELETE FROM audit_events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()


def test_auth_defaults_to_tokens() -> None:
    assert parse_config({}, "c.toml").collector.auth == "tokens"


@pytest.mark.parametrize("section,problem", [
    ({"auth": "none", "listen": "10.0.0.1:7443", "insecure": True}, "listen"),
    ({"auth": "sometimes"}, "auth"),
])
def test_auth_none_only_on_loopback(section: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"collector": section}, "c.toml")
    assert "c.toml" in str(err.value) and problem in str(err.value)


def test_auth_none_on_loopback_is_accepted() -> None:
    assert parse_config({"collector": {"auth": "none", "insecure": True}}, "c.toml").collector.auth == "none"
