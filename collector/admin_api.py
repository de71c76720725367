"""``AdminService``: API tokens and the audit log (admin role only; see :mod:`hostdiag.collector.auth`).

:func:`create_token` is also what ``hostdiag-collector token create`` calls,
offline, to make the first admin token.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from hostdiag.collector.auth import ROLES, check_token_name, hash_token, new_token, token_id_of
from hostdiag.collector.store.base import AuditRecord, MetadataStore, TokenRecord
from hostdiag.v1 import admin_pb2, admin_pb2_grpc

__all__ = ["AdminServicer", "create_token", "token_to_proto", "ROLE_TO_PROTO", "ROLE_FROM_PROTO"]

log = logging.getLogger("hostdiag.collector.admin")

ROLE_TO_PROTO = {
    "viewer": admin_pb2.TOKEN_ROLE_VIEWER,
    "responder": admin_pb2.TOKEN_ROLE_RESPONDER,
    "admin": admin_pb2.TOKEN_ROLE_ADMIN,
    "alertmanager": admin_pb2.TOKEN_ROLE_ALERTMANAGER,
}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}
_OUTCOME_TO_PROTO = {
    "ok": admin_pb2.AUDIT_OUTCOME_OK,
    "error": admin_pb2.AUDIT_OUTCOME_ERROR,
    "denied": admin_pb2.AUDIT_OUTCOME_DENIED,
}
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 1000


async def create_token(
    store: MetadataStore, name: str, role: str, *, now_ms: int | None = None, audit_action: str = "",
) -> tuple[TokenRecord, str]:
    """Make a token: (its record, the secret).  Raises ``ValueError`` for a bad name or role.

    ``audit_action`` adds an audit entry in the same transaction (the offline
    command has no call the interceptor could audit).
    """
    problem = check_token_name(name)
    if problem:
        raise ValueError(f"name: {problem}")
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}")
    at_ms = int(time.time() * 1000) if now_ms is None else now_ms
    secret = new_token()
    digest = hash_token(secret)
    record = TokenRecord(token_id=token_id_of(digest), name=name, role=role, token_sha256=digest, created_at_ms=at_ms)
    audit = [
        AuditRecord(at_ms=at_ms, action=audit_action, outcome="ok", target=name, detail=f"{role} token {record.token_id}")
    ] if audit_action else []
    await store.create_token(record, audit)
    log.info("API token created", extra={"event": "token_created", "token_id": record.token_id, "token_name": name,
                                         "role": role})
    return record, secret


def token_to_proto(t: TokenRecord) -> admin_pb2.ApiToken:
    return admin_pb2.ApiToken(
        id=t.token_id, name=t.name, role=ROLE_TO_PROTO.get(t.role, admin_pb2.TOKEN_ROLE_UNSPECIFIED),
        created_at_unix_ms=t.created_at_ms, revoked_at_unix_ms=t.revoked_at_ms, last_used_at_unix_ms=t.last_used_at_ms,
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def CreateToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = ROLE_FROM_PROTO.get(request.role)
        if role is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "role: choose viewer, responder, admin or alertmanager")
            return None  # not reached: abort raises
        try:
            record, secret = await create_token(self.store, request.name, role)
        except ValueError as exc:
            code = grpc.StatusCode.ALREADY_EXISTS if "exists already" in str(exc) else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        return admin_pb2.CreateTokenResponse(token=token_to_proto(record), secret=secret)

    async def ListTokens(self, request: Any, context: Any) -> Any:  # noqa: N802
        tokens = await self.store.list_tokens(request.include_revoked)
        return admin_pb2.ListTokensResponse(tokens=[token_to_proto(t) for t in tokens])

    async def RevokeToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        if not request.name_or_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name_or_id: must not be empty")
        record = await self.store.revoke_token(request.name_or_id, int(time.time() * 1000))
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no valid token named or with id {request.name_or_id[:80]!r}")
        log.info("API token revoked", extra={"event": "token_revoked", "token_id": record.token_id,
                                             "token_name": record.name})
        return admin_pb2.RevokeTokenResponse(token=token_to_proto(record))

    async def ListAuditEvents(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.limit < 0 or request.since_unix_ms < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit and since_unix_ms must not be negative")
        limit = min(request.limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT)
        events = await self.store.list_audit(request.since_unix_ms, limit)
        return admin_pb2.ListAuditEventsResponse(
            events=[
                admin_pb2.AuditEvent(
                    seq=e.seq, at_unix_ms=e.at_ms, token_id=e.token_id, token_name=e.token_name,
                    role=ROLE_TO_PROTO.get(e.role, admin_pb2.TOKEN_ROLE_UNSPECIFIED), action=e.action,
                    target=e.target, peer=e.peer,
                    outcome=_OUTCOME_TO_PROTO.get(e.outcome, admin_pb2.AUDIT_OUTCOME_UNSPECIFIED), detail=e.detail,
                )
                for e in events
            ]
        )
