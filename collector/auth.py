"""API tokens, roles and the audit log.

Every API meant for people and tools needs ``authorization: Bearer <token>``:
the gRPC ``IncidentService``, ``BundleService``, ``FleetService`` and
``AdminService``, and the HTTP bundle downloads.  ``AgentService`` is not
covered here (an agent is known by its certificate), nor are the health and
reflection services, ``/healthz`` and ``/metrics``.

- **Tokens** are ``hdt_`` + 32 random bytes (urlsafe base64).  The collector
  keeps only their sha256; a token is named by ``token_id``, the first
  :data:`TOKEN_ID_CHARS` hex digits of that hash, which reveals nothing of the
  secret.  The secret is shown once, when the token is made.
- **Roles**: ``viewer`` < ``responder`` < ``admin`` (each may do what the one
  before may), and ``alertmanager``, which is good for ``POST
  /api/v1/alertmanager`` only (and nothing else is).  :data:`METHOD_ROLES`
  and :data:`HTTP_ROLES` are the one table of who may call what.
- **Checks**: every call looks its token up in the store (no cache), so a
  revocation takes effect at the next call.  No token, an unknown or a revoked
  one: ``UNAUTHENTICATED`` / HTTP 401.  Too small a role: ``PERMISSION_DENIED``
  / HTTP 403.  A refused call never reaches its handler.
- **Audit**: every call on a covered API, allowed or not, appends one
  :class:`~hostdiag.collector.store.base.AuditRecord` (the token's id, name and
  role, the method or route, the incident, bundle or token it names, the peer,
  the outcome).  Nothing of a presented secret is ever stored or logged.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from hostdiag.collector.http import HttpError, Request
from hostdiag.collector.store.base import AuditRecord, MetadataStore

__all__ = [
    "Role",
    "ROLES",
    "METHOD_ROLES",
    "HTTP_ROLES",
    "PROTECTED_SERVICES",
    "TOKEN_PREFIX",
    "Identity",
    "Denied",
    "Authenticator",
    "AuthInterceptor",
    "current_identity",
    "new_token",
    "hash_token",
    "token_id_of",
    "check_token_name",
    "role_allows",
]

log = logging.getLogger("hostdiag.collector.auth")

TOKEN_PREFIX = "hdt_"
TOKEN_ID_CHARS = 12
MAX_TOKEN_CHARS = 256
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class Role:
    VIEWER = "viewer"
    RESPONDER = "responder"
    ADMIN = "admin"
    ALERTMANAGER = "alertmanager"


ROLES = (Role.VIEWER, Role.RESPONDER, Role.ADMIN, Role.ALERTMANAGER)
# The people-and-tools roles, each including the ones before it.
_LADDER = {Role.VIEWER: 1, Role.RESPONDER: 2, Role.ADMIN: 3}

_INCIDENTS = "/hostdiag.v1.IncidentService/"
_BUNDLES = "/hostdiag.v1.BundleService/"
_FLEET = "/hostdiag.v1.FleetService/"
_ADMIN = "/hostdiag.v1.AdminService/"
PROTECTED_SERVICES = (_INCIDENTS, _BUNDLES, _FLEET, _ADMIN)

# The role each gRPC method needs.  A method of a protected service missing
# here is refused to everyone (a unit test checks the table is complete).
METHOD_ROLES: Mapping[str, str] = {
    _INCIDENTS + "ListIncidents": Role.VIEWER,
    _INCIDENTS + "GetIncident": Role.VIEWER,
    _INCIDENTS + "OpenIncident": Role.RESPONDER,
    _INCIDENTS + "AcknowledgeIncident": Role.RESPONDER,
    _INCIDENTS + "PostStatusUpdate": Role.RESPONDER,
    _INCIDENTS + "ResolveIncident": Role.RESPONDER,
    _INCIDENTS + "SetIncidentSeverity": Role.RESPONDER,
    _BUNDLES + "ListBundles": Role.VIEWER,
    _BUNDLES + "GetBundle": Role.VIEWER,
    _BUNDLES + "DownloadBundle": Role.VIEWER,
    _FLEET + "ListAgents": Role.ADMIN,
    _ADMIN + "CreateToken": Role.ADMIN,
    _ADMIN + "ListTokens": Role.ADMIN,
    _ADMIN + "RevokeToken": Role.ADMIN,
    _ADMIN + "ListAuditEvents": Role.ADMIN,
}

# The role each HTTP route needs (routes not named here need none).
HTTP_ROLES: Mapping[str, str] = {
    "GET /api/v1/bundles": Role.VIEWER,
    "HEAD /api/v1/bundles": Role.VIEWER,
    "POST /api/v1/alertmanager": Role.ALERTMANAGER,
}


def role_allows(have: str, need: str) -> bool:
    """Whether a token of role ``have`` may do what needs ``need``."""
    if need == Role.ALERTMANAGER or have == Role.ALERTMANAGER:
        return have == need
    return _LADDER.get(have, 0) >= _LADDER.get(need, 99)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_id_of(token_sha256: str) -> str:
    return token_sha256[:TOKEN_ID_CHARS]


def check_token_name(name: str) -> str | None:
    """A problem with ``name`` as a token name, or None."""
    if not _NAME.fullmatch(name):
        return "a token name is 1 to 64 letters, digits, '.', '_', '-' or '@'"
    return None


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


@dataclass(frozen=True)
class Identity:
    """Who a call comes from: a valid, unrevoked token (never its secret)."""

    token_id: str
    name: str
    role: str


class Denied(Exception):
    """A refused call: ``status`` 401 (no valid token) or 403 (too small a role)."""

    def __init__(self, status: int, reason: str, identity: Identity | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.identity = identity


_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("hostdiag_identity", default=None)


def current_identity() -> Identity | None:
    """The identity of the gRPC call being served (set by :class:`AuthInterceptor`)."""
    return _IDENTITY.get()


class Authenticator:
    """Checks tokens against the store and writes the audit log."""

    def __init__(self, store: MetadataStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def check(self, authorization: str | None, need: str | None) -> Identity:
        """The caller's identity, or :class:`Denied`.  ``need`` None: refused to everyone."""
        token = bearer_token(authorization)
        if token is None:
            raise Denied(401, "an API token is required (authorization: Bearer <token>)")
        record = await self.store.token_by_sha256(hash_token(token))
        if record is None:
            raise Denied(401, "the API token is not valid")
        identity = Identity(record.token_id, record.name, record.role)
        if record.revoked_at_ms:
            raise Denied(401, f"the API token {record.name!r} was revoked", identity)
        if need is None:
            raise Denied(403, "no role may call this", identity)
        if not role_allows(record.role, need):
            raise Denied(403, f"role {record.role} may not do this (it needs {need})", identity)
        return identity

    async def audit(
        self, action: str, outcome: str, identity: Identity | None, *, target: str = "", peer: str = "",
        detail: str = "",
    ) -> None:
        at_ms = self.now_ms()
        event = AuditRecord(
            at_ms=at_ms, action=action, outcome=outcome,
            token_id=identity.token_id if identity else "", token_name=identity.name if identity else "",
            role=identity.role if identity else "", target=target[:200], peer=peer[:200], detail=detail[:500],
        )
        used = identity.token_id if identity and outcome != "denied" else ""
        try:
            await self.store.add_audit([event], used, at_ms)
        except Exception:
            log.exception("audit entry not written", extra={"event": "audit_failed", "action": action})
        if outcome == "denied":
            log.warning(
                "API call denied",
                extra={"event": "api_denied", "action": action, "token_id": event.token_id,
                       "token_name": event.token_name, "peer": event.peer, "reason": detail},
            )


    async def admit_http(self, request: Request, action: str, target: str = "") -> Identity:
        """Check an HTTP request's token for ``action`` (a key of :data:`HTTP_ROLES`) and audit it.

        Refuses with :class:`HttpError` 401 (with ``WWW-Authenticate: Bearer``) or 403.
        """
        try:
            identity = await self.check(request.headers.get("authorization"), HTTP_ROLES.get(action))
        except Denied as exc:
            await self.audit(action, "denied", exc.identity, target=target, peer=request.peer, detail=exc.reason)
            headers = {"WWW-Authenticate": 'Bearer realm="hostdiag"'} if exc.status == 401 else {}
            raise HttpError(exc.status, exc.reason, headers) from None
        await self.audit(action, "ok", identity, target=target, peer=request.peer)
        return identity


def _metadata(details: Any, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == key and isinstance(v, str):
            return v
    return None


def _target(request: Any, response: Any = None) -> str:
    """The incident, bundle or token a call names (request fields, else an opened incident's id)."""
    for name in ("id", "bundle_id", "incident_id", "name_or_id", "name"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            return value
    incident = getattr(response, "incident", None)
    value = getattr(incident, "id", None)
    return value if isinstance(value, str) else ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires a token with the role :data:`METHOD_ROLES` names on every protected method."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(PROTECTED_SERVICES):
            return handler
        need = METHOD_ROLES.get(method)
        authorization = _metadata(handler_call_details, "authorization")
        auth = self.auth

        async def admit(context: Any) -> Identity:
            try:
                return await auth.check(authorization, need)
            except Denied as exc:
                await auth.audit(method, "denied", exc.identity, peer=context.peer() or "", detail=exc.reason)
                code = grpc.StatusCode.UNAUTHENTICATED if exc.status == 401 else grpc.StatusCode.PERMISSION_DENIED
                await context.abort(code, exc.reason)
                raise  # not reached: abort raises

        async def finish(identity: Identity, context: Any, request: Any, response: Any, exc: BaseException | None) -> None:
            outcome, detail = "ok", ""
            if exc is not None:
                code = context.code() if hasattr(context, "code") else None
                outcome = "error"
                detail = getattr(code, "name", "") or type(exc).__name__
            await auth.audit(method, outcome, identity, target=_target(request, response), peer=context.peer() or "",
                             detail=detail)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                identity = await admit(context)
                token = _IDENTITY.set(identity)
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    await finish(identity, context, request, None, exc)
                    raise
                finally:
                    _IDENTITY.reset(token)
                await finish(identity, context, request, response, None)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                identity = await admit(context)
                # A download is audited when it starts: what was asked for, by whom.
                await auth.audit(method, "ok", identity, target=_target(request), peer=context.peer() or "")
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # No protected method streams its requests: refuse rather than serve unchecked.
        return grpc.unary_unary_rpc_method_handler(_refuse_unchecked)


async def _refuse_unchecked(request: Any, context: Any) -> Any:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this method is not available")
