"""The embedded metadata store: one SQLite file in WAL mode.

- **Durability**: ``journal_mode=WAL`` with ``synchronous=FULL``.  WAL lets
  readers run while a write commits; FULL makes every commit durable before
  it returns.  ``NORMAL`` would be faster, but it may roll back the last
  commits on a power loss, and the collector tells an agent "stored" (after
  which the agent deletes its spooled copy) only once the bundle row is
  committed — a rolled-back row would lose that bundle.
- **Group commit**: when an incident fans out to a thousand agents, their
  acks, progress, uploads and results arrive together, and one fsync per
  method would serialise them all on the disk.  So the store thread takes
  every call waiting in its queue (up to :data:`MAX_BATCH_CALLS`) and runs
  them in one transaction, each write method inside its own SAVEPOINT (a
  failing method rolls back alone, exactly as before), then commits once.  A
  write method's caller is answered only after that COMMIT, so "returned"
  still means "durable".  A read is answered at once when nothing was written
  before it in the batch; otherwise after the COMMIT, so no caller acts on a
  change that is not durable -- except :meth:`SqliteMetadataStore.get_request`,
  which is answered at once: its callers only use it to compute their own next
  write, which commits in the same batch or a later one (see
  ``IncidentManager``, which relies on this order).
- **Schema** is versioned: ``schema_migrations`` records each applied
  migration; :data:`MIGRATIONS` lists them in order and new ones are only ever
  appended.  A database from a newer collector is refused.
- **Transactions**: every public write method is atomic (a SAVEPOINT inside
  the batch's ``BEGIN … COMMIT``), so no caller sees half of a change.
- **Threads and order**: the connection lives on one dedicated thread that
  runs calls strictly in the order they were made; the event loop only awaits
  futures.  Write methods that return a future (``update_requests``,
  ``publish_bundle``) queue their call before returning, so a caller can
  release its own lock before waiting for the COMMIT and still have every
  later call see the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
import dataclasses
from dataclasses import asdict, replace
from typing import Any, TypeVar

import orjson

from hostdiag.collector.store.base import (
    AgentRecord,
    AlertRecord,
    AuditRecord,
    BundleRecord,
    EscalationRecord,
    EvidenceRecord,
    HostRequestRecord,
    IncidentRecord,
    TimelineEventRecord,
    TokenRecord,
    UploadRecord,
)

__all__ = ["SqliteMetadataStore", "MIGRATIONS", "SchemaError", "MAX_BATCH_CALLS"]

T = TypeVar("T")

# At most this many store calls share one transaction (and its one fsync).
MAX_BATCH_CALLS = 256


class _Call:
    """One store call waiting for the store thread."""

    __slots__ = ("fn", "args", "future", "loop", "answer_now", "alone")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop, answer_now: bool, alone: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.loop = loop
        self.answer_now = answer_now  # a read answered before the batch commits
        self.alone = alone  # open/close: outside any transaction


_Outcome = tuple[_Call, Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for call, result, exc in outcomes:
        if call.future.done():  # cancelled by its caller, or already answered
            continue
        if exc is None:
            call.future.set_result(result)
        else:
            call.future.set_exception(exc)


def _answer(outcomes: list[_Outcome]) -> None:
    """Hand results to their event loops (from the store thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, group)


class SchemaError(Exception):
    """The database was written by a newer collector (or is not ours)."""


MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE agents (
            host_id TEXT PRIMARY KEY,
            labels_json TEXT NOT NULL,
            agent_version TEXT NOT NULL,
            profiles_json TEXT NOT NULL,
            capabilities_json TEXT NOT NULL,
            max_window_s REAL NOT NULL,
            boot_id TEXT NOT NULL,
            peer TEXT NOT NULL,
            first_seen_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL,
            connected_at_ms INTEGER NOT NULL
        );
        CREATE TABLE incidents (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            severity INTEGER NOT NULL,
            service TEXT NOT NULL,
            state TEXT NOT NULL,
            selector_labels_json TEXT NOT NULL,
            selector_host_ids_json TEXT NOT NULL,
            window_s REAL NOT NULL,
            profile TEXT NOT NULL,
            opened_at_ms INTEGER NOT NULL,
            opened_by TEXT NOT NULL,
            acknowledged_at_ms INTEGER NOT NULL,
            resolved_at_ms INTEGER NOT NULL
        );
        CREATE INDEX incidents_state ON incidents (state, opened_at_ms);
        CREATE TABLE host_requests (
            request_id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            host_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            sent_at_ms INTEGER NOT NULL,
            UNIQUE (incident_id, host_id)
        );
        CREATE INDEX host_requests_host ON host_requests (host_id, state);
        CREATE INDEX host_requests_expiry ON host_requests (state, expires_at_ms);
        CREATE TABLE timeline_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            at_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            host_id TEXT NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE INDEX timeline_incident ON timeline_events (incident_id, seq);
        CREATE TABLE bundles (
            bundle_id TEXT PRIMARY KEY,
            host_id TEXT NOT NULL,
            incident_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            received_at_ms INTEGER NOT NULL,
            profile TEXT NOT NULL,
            trigger TEXT NOT NULL,
            manifest_json TEXT NOT NULL
        );
        CREATE INDEX bundles_incident ON bundles (incident_id, received_at_ms);
        CREATE INDEX bundles_host ON bundles (host_id, received_at_ms);
        CREATE INDEX bundles_received ON bundles (received_at_ms);
        CREATE TABLE uploads (
            bundle_id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            incident_id TEXT NOT NULL,
            state TEXT NOT NULL,
            started_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            bundle_json TEXT
        );
        """,
    ),
    (
        2,
        # The runbook's clock and Alertmanager: when the severity was set and the
        # last status update came (timers are derived from these), the group key
        # of a webhook-opened incident, the breaches, and the alerts seen.
        """
        ALTER TABLE incidents ADD COLUMN severity_set_at_ms INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE incidents ADD COLUMN last_status_update_at_ms INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE incidents ADD COLUMN alert_group_key TEXT NOT NULL DEFAULT '';
        UPDATE incidents SET severity_set_at_ms = opened_at_ms WHERE severity_set_at_ms = 0;
        UPDATE incidents SET last_status_update_at_ms = COALESCE(
            (SELECT MAX(at_ms) FROM timeline_events t WHERE t.incident_id = incidents.id AND t.kind = 'status_update'),
            0);
        CREATE INDEX incidents_group_key ON incidents (alert_group_key, opened_at_ms) WHERE alert_group_key != '';
        CREATE TABLE escalations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            kind TEXT NOT NULL,
            severity INTEGER NOT NULL,
            at_ms INTEGER NOT NULL,
            due_at_ms INTEGER NOT NULL,
            message TEXT NOT NULL,
            notified INTEGER NOT NULL DEFAULT 0,
            UNIQUE (incident_id, kind, due_at_ms)
        );
        CREATE TABLE incident_alerts (
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            fingerprint TEXT NOT NULL,
            alertname TEXT NOT NULL,
            status TEXT NOT NULL,
            first_seen_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL,
            PRIMARY KEY (incident_id, fingerprint)
        );
        """,
    ),
    (
        3,
        # Severity signals: each bundle's evidence.json (so the rules can be re-evaluated
        # without reading bundle files) and each incident's latest suggestion.
        """
        CREATE TABLE bundle_evidence (
            bundle_id TEXT PRIMARY KEY REFERENCES bundles (bundle_id),
            incident_id TEXT NOT NULL,
            host_id TEXT NOT NULL,
            received_at_ms INTEGER NOT NULL,
            evidence_json TEXT NOT NULL
        );
        CREATE INDEX bundle_evidence_incident ON bundle_evidence (incident_id, received_at_ms);
        CREATE TABLE incident_suggestions (
            incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
            severity INTEGER NOT NULL,
            evaluated_at_ms INTEGER NOT NULL,
            suggestion_json TEXT NOT NULL
        );
        """,
    ),
    (
        4,
        # API tokens (only the sha256 of each secret) and the append-only audit log:
        # triggers refuse any UPDATE or DELETE of an audit row.
        """
        CREATE TABLE api_tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at_ms INTEGER NOT NULL,
            revoked_at_ms INTEGER NOT NULL DEFAULT 0,
            last_used_at_ms INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at_ms = 0;
        CREATE TABLE audit_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms INTEGER NOT NULL,
            token_id TEXT NOT NULL,
            token_name TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            peer TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX audit_events_at ON audit_events (at_ms);
        CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        """,
    ),
    (
        5,
        # Retention: a bundle whose blob was deleted keeps its row (and its incident's
        # history); expired_at_ms says when.  0 = the blob is kept.
        """
        ALTER TABLE bundles ADD COLUMN expired_at_ms INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX bundles_live ON bundles (expired_at_ms, received_at_ms);
        CREATE INDEX host_requests_bundle ON host_requests (bundle_id) WHERE bundle_id != '';
        """,
    ),
]


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _plain(cls: type[T]) -> Callable[[sqlite3.Row], T]:
    """A row mapper for a record whose fields are its table's columns, named alike."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def build(row: sqlite3.Row) -> T:
        columns = row.keys()
        return cls(**{name: row[name] for name in names if name in columns})

    return build


def _agent(row: sqlite3.Row) -> AgentRecord:
    return AgentRecord(
        host_id=row["host_id"],
        labels=orjson.loads(row["labels_json"]),
        agent_version=row["agent_version"],
        profiles=tuple(orjson.loads(row["profiles_json"])),
        capabilities=tuple(orjson.loads(row["capabilities_json"])),
        max_window_s=row["max_window_s"],
        boot_id=row["boot_id"],
        peer=row["peer"],
        first_seen_ms=row["first_seen_ms"],
        last_seen_ms=row["last_seen_ms"],
        connected_at_ms=row["connected_at_ms"],
    )


def _incident(row: sqlite3.Row) -> IncidentRecord:
    return IncidentRecord(
        id=row["id"],
        title=row["title"],
        severity=row["severity"],
        service=row["service"],
        state=row["state"],
        selector_labels=orjson.loads(row["selector_labels_json"]),
        selector_host_ids=tuple(orjson.loads(row["selector_host_ids_json"])),
        window_s=row["window_s"],
        profile=row["profile"],
        opened_at_ms=row["opened_at_ms"],
        opened_by=row["opened_by"],
        acknowledged_at_ms=row["acknowledged_at_ms"],
        resolved_at_ms=row["resolved_at_ms"],
        severity_set_at_ms=row["severity_set_at_ms"],
        last_status_update_at_ms=row["last_status_update_at_ms"],
        alert_group_key=row["alert_group_key"],
    )


def _escalation(row: sqlite3.Row) -> EscalationRecord:
    return EscalationRecord(
        incident_id=row["incident_id"],
        kind=row["kind"],
        at_ms=row["at_ms"],
        due_at_ms=row["due_at_ms"],
        message=row["message"],
        severity=row["severity"],
        notified=bool(row["notified"]),
        seq=row["seq"],
    )


_alert = _plain(AlertRecord)
_token = _plain(TokenRecord)
_audit = _plain(AuditRecord)
_request = _plain(HostRequestRecord)
_event = _plain(TimelineEventRecord)


def _bundle(row: sqlite3.Row) -> BundleRecord:
    return BundleRecord(
        bundle_id=row["bundle_id"],
        host_id=row["host_id"],
        incident_id=row["incident_id"],
        request_id=row["request_id"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        created_at_ms=row["created_at_ms"],
        received_at_ms=row["received_at_ms"],
        profile=row["profile"],
        trigger=row["trigger"],
        manifest_json=row["manifest_json"],
        expired_at_ms=row["expired_at_ms"],
    )


def _upload(row: sqlite3.Row) -> UploadRecord:
    bundle = None
    if row["bundle_json"]:
        bundle = BundleRecord(**orjson.loads(row["bundle_json"]))  # evidence_json included
    return UploadRecord(
        bundle_id=row["bundle_id"],
        request_id=row["request_id"],
        incident_id=row["incident_id"],
        state=row["state"],
        started_at_ms=row["started_at_ms"],
        updated_at_ms=row["updated_at_ms"],
        bundle=bundle,
    )


_REQUEST_COLUMNS = (
    "request_id, incident_id, host_id, state, reason, bundle_id, created_at_ms, updated_at_ms, expires_at_ms, sent_at_ms"
)


def _request_values(r: HostRequestRecord) -> tuple[Any, ...]:
    return (
        r.request_id, r.incident_id, r.host_id, r.state, r.reason, r.bundle_id,
        r.created_at_ms, r.updated_at_ms, r.expires_at_ms, r.sent_at_ms,
    )


class SqliteMetadataStore:
    """:class:`~hostdiag.collector.store.base.MetadataStore` on SQLite."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._conn: sqlite3.Connection | None = None
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._in_batch = False  # the store thread has a batch transaction open
        self._wrote = False  # ... and a write method changed something in it
        self.commits = 0  # batch transactions committed (for tests and benchmarks)

    # -- plumbing --------------------------------------------------------------------
    def _submit(
        self, fn: Callable[..., T], *args: Any, answer_now: bool = False, alone: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for the store thread now; the future of its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="hostdiag-sqlite", daemon=True)
            self._thread.start()
        self._calls.put(_Call(fn, args, future, loop, answer_now, alone))
        return future

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(fn, *args)

    def _serve(self) -> None:
        """The store thread: run queued calls in batches until the stop mark."""
        while True:
            call = self._calls.get()
            if call is None:
                return
            batch = [call]
            stop = False
            while len(batch) < MAX_BATCH_CALLS:
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any one batch
                # Whatever was not answered yet gets the error (answered calls are skipped).
                _answer([(c, None, exc) for c in batch])
            if stop:
                return

    def _run_batch(self, batch: list[_Call]) -> None:
        held: list[_Outcome] = []
        try:
            for call in batch:
                if call.alone:
                    held = self._commit(held)
                elif not self._in_batch and self._conn is not None:
                    try:
                        self._conn.execute("BEGIN")
                    except BaseException as exc:  # noqa: BLE001 - e.g. a disk error: this call fails
                        _answer([(call, None, exc)])
                        continue
                    self._in_batch, self._wrote = True, False
                try:
                    outcome: _Outcome = (call, call.fn(*call.args), None)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    outcome = (call, None, exc)
                if self._in_batch and self._wrote and not call.answer_now:
                    held.append(outcome)
                else:
                    _answer([outcome])
        finally:
            self._commit(held)

    def _commit(self, held: list[_Outcome]) -> list[_Outcome]:
        """Commit the open batch (if any), then answer the calls that waited for it."""
        if self._in_batch:
            self._in_batch = False
            try:
                self.conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # noqa: BLE001 - every held caller learns it
                with contextlib.suppress(Exception):
                    self.conn.execute("ROLLBACK")
                held = [(call, None, exc) for call, _, _ in held]
        _answer(held)
        return []

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("metadata store is not open")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.conn
        if self._in_batch:
            conn.execute("SAVEPOINT store_write")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK TO store_write")
                conn.execute("RELEASE store_write")
                raise
            conn.execute("RELEASE store_write")
            self._wrote = True
            return result
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def open_sync(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise SchemaError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate()

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        known = {v for v, _ in MIGRATIONS}
        newer = sorted(applied - known)
        if newer:
            raise SchemaError(
                f"{self.path}: schema version {newer[-1]} is newer than this collector understands "
                f"(up to {max(known)}); upgrade the collector"
            )
        for version, script in MIGRATIONS:
            if version in applied:
                continue

            def apply(c: sqlite3.Connection, version: int = version, script: str = script) -> None:
                # Split at each ";" that ends a whole statement (a trigger body holds several).
                pending = ""
                for piece in script.split(";"):
                    pending += piece + ";"
                    if sqlite3.complete_statement(pending):
                        if pending.strip(" \n;"):
                            c.execute(pending)
                        pending = ""
                c.execute(
                    "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)",
                    (version, int(time.time() * 1000)),
                )

            self._write(apply)

    def schema_version_sync(self) -> int:
        row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        await self._submit(self.open_sync, alone=True)

    async def close(self) -> None:
        await self._submit(self.close_sync, alone=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            thread.join(timeout=10)

    async def schema_version(self) -> int:
        return await self._run(self.schema_version_sync)

    # -- agents ------------------------------------------------------------------------
    def _upsert_agent(self, a: AgentRecord) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                """INSERT INTO agents (host_id, labels_json, agent_version, profiles_json, capabilities_json,
                       max_window_s, boot_id, peer, first_seen_ms, last_seen_ms, connected_at_ms)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (host_id) DO UPDATE SET
                       labels_json = excluded.labels_json, agent_version = excluded.agent_version,
                       profiles_json = excluded.profiles_json, capabilities_json = excluded.capabilities_json,
                       max_window_s = excluded.max_window_s, boot_id = excluded.boot_id, peer = excluded.peer,
                       last_seen_ms = excluded.last_seen_ms, connected_at_ms = excluded.connected_at_ms""",
                (
                    a.host_id, _dumps(dict(a.labels)), a.agent_version, _dumps(list(a.profiles)),
                    _dumps(list(a.capabilities)), a.max_window_s, a.boot_id, a.peer,
                    a.first_seen_ms or a.last_seen_ms, a.last_seen_ms, a.connected_at_ms,
                ),
            )

        self._write(tx)

    async def upsert_agent(self, agent: AgentRecord) -> None:
        await self._run(self._upsert_agent, agent)

    async def touch_agent(self, host_id: str, last_seen_ms: int) -> None:
        await self._run(
            self._write,
            lambda c: c.execute("UPDATE agents SET last_seen_ms = ? WHERE host_id = ?", (last_seen_ms, host_id)),
        )

    def _get_agent(self, host_id: str) -> AgentRecord | None:
        row = self.conn.execute("SELECT * FROM agents WHERE host_id = ?", (host_id,)).fetchone()
        return _agent(row) if row else None

    async def get_agent(self, host_id: str) -> AgentRecord | None:
        return await self._run(self._get_agent, host_id)

    async def list_agents(self) -> list[AgentRecord]:
        return await self._run(
            lambda: [_agent(r) for r in self.conn.execute("SELECT * FROM agents ORDER BY host_id")]
        )

    # -- incidents ---------------------------------------------------------------------
    @staticmethod
    def _insert_events(c: sqlite3.Connection, events: Sequence[TimelineEventRecord]) -> None:
        c.executemany(
            "INSERT INTO timeline_events (incident_id, at_ms, kind, message, host_id, actor) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.incident_id, e.at_ms, e.kind, e.message, e.host_id, e.actor) for e in events],
        )

    @staticmethod
    def _incident_values(i: IncidentRecord) -> tuple[Any, ...]:
        return (
            i.title, i.severity, i.service, i.state, _dumps(dict(i.selector_labels)),
            _dumps(list(i.selector_host_ids)), i.window_s, i.profile, i.opened_at_ms, i.opened_by,
            i.acknowledged_at_ms, i.resolved_at_ms, i.severity_set_at_ms, i.last_status_update_at_ms,
            i.alert_group_key, i.id,
        )

    def _create_incident(
        self, inc: IncidentRecord, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                """INSERT INTO incidents (title, severity, service, state, selector_labels_json,
                       selector_host_ids_json, window_s, profile, opened_at_ms, opened_by,
                       acknowledged_at_ms, resolved_at_ms, severity_set_at_ms, last_status_update_at_ms,
                       alert_group_key, id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                self._incident_values(inc),
            )
            c.executemany(
                f"INSERT INTO host_requests ({_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_request_values(r) for r in requests],
            )
            self._insert_events(c, events)

        self._write(tx)

    async def create_incident(
        self, incident: IncidentRecord, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> None:
        await self._run(self._create_incident, incident, list(requests), list(events))

    def _update_incident(self, inc: IncidentRecord, events: Sequence[TimelineEventRecord]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            cur = c.execute(
                """UPDATE incidents SET title = ?, severity = ?, service = ?, state = ?, selector_labels_json = ?,
                       selector_host_ids_json = ?, window_s = ?, profile = ?, opened_at_ms = ?, opened_by = ?,
                       acknowledged_at_ms = ?, resolved_at_ms = ?, severity_set_at_ms = ?,
                       last_status_update_at_ms = ?, alert_group_key = ? WHERE id = ?""",
                self._incident_values(inc),
            )
            if cur.rowcount != 1:
                raise KeyError(inc.id)
            self._insert_events(c, events)

        self._write(tx)

    async def update_incident(self, incident: IncidentRecord, events: Sequence[TimelineEventRecord]) -> None:
        await self._run(self._update_incident, incident, list(events))

    async def get_incident(self, incident_id: str) -> IncidentRecord | None:
        def read() -> IncidentRecord | None:
            row = self.conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            return _incident(row) if row else None

        return await self._run(read)

    async def list_incidents(self, state: str | None, limit: int) -> list[IncidentRecord]:
        def read() -> list[IncidentRecord]:
            if state:
                rows = self.conn.execute(
                    "SELECT * FROM incidents WHERE state = ? ORDER BY opened_at_ms DESC, id DESC LIMIT ?",
                    (state, limit),
                )
            else:
                rows = self.conn.execute(
                    "SELECT * FROM incidents ORDER BY opened_at_ms DESC, id DESC LIMIT ?", (limit,)
                )
            return [_incident(r) for r in rows]

        return await self._run(read)

    async def unresolved_incidents(self) -> list[IncidentRecord]:
        return await self._run(
            lambda: [
                _incident(r)
                for r in self.conn.execute(
                    "SELECT * FROM incidents WHERE state != 'resolved' ORDER BY opened_at_ms, id"
                )
            ]
        )

    async def find_unresolved_by_group_key(self, group_key: str) -> IncidentRecord | None:
        def read() -> IncidentRecord | None:
            row = self.conn.execute(
                """SELECT * FROM incidents WHERE alert_group_key = ? AND alert_group_key != ''
                       AND state != 'resolved' ORDER BY opened_at_ms DESC, id DESC LIMIT 1""",
                (group_key,),
            ).fetchone()
            return _incident(row) if row else None

        return await self._run(read)

    # -- runbook breaches ----------------------------------------------------------------
    def _add_escalations(
        self, escalations: Sequence[EscalationRecord], events: Sequence[TimelineEventRecord]
    ) -> list[EscalationRecord]:
        def tx(c: sqlite3.Connection) -> list[EscalationRecord]:
            inserted: list[EscalationRecord] = []
            for i, e in enumerate(escalations):
                cur = c.execute(
                    """INSERT INTO escalations (incident_id, kind, severity, at_ms, due_at_ms, message, notified)
                       VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id, kind, due_at_ms) DO NOTHING""",
                    (e.incident_id, e.kind, e.severity, e.at_ms, e.due_at_ms, e.message, int(e.notified)),
                )
                if cur.rowcount != 1:
                    continue
                inserted.append(replace(e, seq=int(cur.lastrowid or 0)))
                if i < len(events):
                    self._insert_events(c, [events[i]])
            return inserted

        return self._write(tx)

    async def add_escalations(
        self, escalations: Sequence[EscalationRecord], events: Sequence[TimelineEventRecord]
    ) -> list[EscalationRecord]:
        return await self._run(self._add_escalations, list(escalations), list(events))

    async def list_escalations(self, incident_id: str) -> list[EscalationRecord]:
        return await self._run(
            lambda: [
                _escalation(r)
                for r in self.conn.execute(
                    "SELECT * FROM escalations WHERE incident_id = ? ORDER BY seq", (incident_id,)
                )
            ]
        )

    async def unnotified_escalations(self) -> list[EscalationRecord]:
        return await self._run(
            lambda: [
                _escalation(r)
                for r in self.conn.execute(
                    """SELECT e.* FROM escalations e JOIN incidents i ON i.id = e.incident_id
                       WHERE e.notified = 0 AND i.state != 'resolved' ORDER BY e.seq"""
                )
            ]
        )

    async def mark_escalation_notified(self, seq: int) -> None:
        await self._run(self._write, lambda c: c.execute("UPDATE escalations SET notified = 1 WHERE seq = ?", (seq,)))

    # -- Alertmanager alerts -------------------------------------------------------------
    async def list_alerts(self, incident_id: str) -> list[AlertRecord]:
        return await self._run(
            lambda: [
                _alert(r)
                for r in self.conn.execute(
                    "SELECT * FROM incident_alerts WHERE incident_id = ? ORDER BY first_seen_ms, fingerprint",
                    (incident_id,),
                )
            ]
        )

    def _put_alerts(self, alerts: Sequence[AlertRecord], events: Sequence[TimelineEventRecord]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.executemany(
                """INSERT INTO incident_alerts (incident_id, fingerprint, alertname, status, first_seen_ms,
                       last_seen_ms) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (incident_id, fingerprint) DO UPDATE SET alertname = excluded.alertname,
                       status = excluded.status, last_seen_ms = excluded.last_seen_ms""",
                [(a.incident_id, a.fingerprint, a.alertname, a.status, a.first_seen_ms, a.last_seen_ms)
                 for a in alerts],
            )
            self._insert_events(c, events)

        self._write(tx)

    async def put_alerts(self, alerts: Sequence[AlertRecord], events: Sequence[TimelineEventRecord]) -> None:
        await self._run(self._put_alerts, list(alerts), list(events))

    # -- host requests -------------------------------------------------------------------
    def _add_requests(self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.executemany(
                f"INSERT INTO host_requests ({_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_request_values(r) for r in requests],
            )
            self._insert_events(c, events)

        self._write(tx)

    async def add_requests(self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]) -> None:
        await self._run(self._add_requests, list(requests), list(events))

    @staticmethod
    def _update_request_rows(c: sqlite3.Connection, requests: Sequence[HostRequestRecord]) -> None:
        for r in requests:
            cur = c.execute(
                """UPDATE host_requests SET incident_id = ?, host_id = ?, state = ?, reason = ?, bundle_id = ?,
                       created_at_ms = ?, updated_at_ms = ?, expires_at_ms = ?, sent_at_ms = ?
                   WHERE request_id = ?""",
                _request_values(r)[1:] + (r.request_id,),
            )
            if cur.rowcount != 1:
                raise KeyError(r.request_id)

    def _update_requests(self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            self._update_request_rows(c, requests)
            self._insert_events(c, events)

        self._write(tx)

    def update_requests(
        self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> asyncio.Future[None]:
        """Queued before this returns (see the module notes); await the result for the COMMIT."""
        return self._submit(self._update_requests, list(requests), list(events))

    async def get_request(self, request_id: str) -> HostRequestRecord | None:
        """Answered at once, even when it sees a change whose batch has not committed yet.

        Its callers read a request to compute their own next change of it, which
        commits after (or fails with) the change they saw; waiting for every
        COMMIT here would serialise the incident manager on the disk.
        """

        def read() -> HostRequestRecord | None:
            row = self.conn.execute("SELECT * FROM host_requests WHERE request_id = ?", (request_id,)).fetchone()
            return _request(row) if row else None

        return await self._submit(read, answer_now=True)

    async def list_requests(self, incident_id: str) -> list[HostRequestRecord]:
        return await self._run(
            lambda: [
                _request(r)
                for r in self.conn.execute(
                    "SELECT * FROM host_requests WHERE incident_id = ? ORDER BY host_id", (incident_id,)
                )
            ]
        )

    async def requests_for_host(self, host_id: str, states: Iterable[str]) -> list[HostRequestRecord]:
        wanted = list(states)
        marks = ", ".join("?" for _ in wanted)

        def read() -> list[HostRequestRecord]:
            rows = self.conn.execute(
                f"SELECT * FROM host_requests WHERE host_id = ? AND state IN ({marks}) ORDER BY created_at_ms",
                (host_id, *wanted),
            )
            return [_request(r) for r in rows]

        return await self._run(read)

    async def requests_expired(self, now_ms: int, states: Iterable[str]) -> list[HostRequestRecord]:
        wanted = list(states)
        marks = ", ".join("?" for _ in wanted)

        def read() -> list[HostRequestRecord]:
            rows = self.conn.execute(
                f"SELECT * FROM host_requests WHERE state IN ({marks}) AND expires_at_ms <= ? ORDER BY expires_at_ms",
                (*wanted, now_ms),
            )
            return [_request(r) for r in rows]

        return await self._run(read)

    async def list_events(self, incident_id: str) -> list[TimelineEventRecord]:
        return await self._run(
            lambda: [
                _event(r)
                for r in self.conn.execute(
                    "SELECT * FROM timeline_events WHERE incident_id = ? ORDER BY seq", (incident_id,)
                )
            ]
        )

    # -- uploads -------------------------------------------------------------------------
    def _put_upload(self, u: UploadRecord) -> None:
        bundle_json = _dumps(asdict(u.bundle)) if u.bundle is not None else None

        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                """INSERT INTO uploads (bundle_id, request_id, incident_id, state, started_at_ms, updated_at_ms,
                       bundle_json) VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (bundle_id) DO UPDATE SET request_id = excluded.request_id,
                       incident_id = excluded.incident_id, state = excluded.state,
                       updated_at_ms = excluded.updated_at_ms, bundle_json = excluded.bundle_json""",
                (u.bundle_id, u.request_id, u.incident_id, u.state, u.started_at_ms, u.updated_at_ms, bundle_json),
            )

        self._write(tx)

    async def put_upload(self, upload: UploadRecord) -> None:
        await self._run(self._put_upload, upload)

    async def get_upload(self, bundle_id: str) -> UploadRecord | None:
        def read() -> UploadRecord | None:
            row = self.conn.execute("SELECT * FROM uploads WHERE bundle_id = ?", (bundle_id,)).fetchone()
            return _upload(row) if row else None

        return await self._run(read)

    async def list_uploads(self) -> list[UploadRecord]:
        return await self._run(
            lambda: [_upload(r) for r in self.conn.execute("SELECT * FROM uploads ORDER BY bundle_id")]
        )

    async def delete_upload(self, bundle_id: str) -> None:
        await self._run(self._write, lambda c: c.execute("DELETE FROM uploads WHERE bundle_id = ?", (bundle_id,)))

    # -- bundles -------------------------------------------------------------------------
    def _publish_bundle(
        self, b: BundleRecord, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM uploads WHERE bundle_id = ?", (b.bundle_id,))
            cur = c.execute(
                """INSERT INTO bundles (bundle_id, host_id, incident_id, request_id, size_bytes, sha256,
                       created_at_ms, received_at_ms, profile, trigger, manifest_json)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bundle_id) DO NOTHING""",
                (
                    b.bundle_id, b.host_id, b.incident_id, b.request_id, b.size_bytes, b.sha256,
                    b.created_at_ms, b.received_at_ms, b.profile, b.trigger, b.manifest_json,
                ),
            )
            if cur.rowcount != 1:
                return False
            if b.evidence_json:
                c.execute(
                    """INSERT INTO bundle_evidence (bundle_id, incident_id, host_id, received_at_ms, evidence_json)
                       VALUES (?, ?, ?, ?, ?) ON CONFLICT (bundle_id) DO NOTHING""",
                    (b.bundle_id, b.incident_id, b.host_id, b.received_at_ms, b.evidence_json),
                )
            self._update_request_rows(c, requests)
            self._insert_events(c, events)
            return True

        return self._write(tx)

    def publish_bundle(
        self, bundle: BundleRecord, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> asyncio.Future[bool]:
        """Queued before this returns (see the module notes); await the result for the COMMIT."""
        return self._submit(self._publish_bundle, bundle, list(requests), list(events))

    async def get_bundle(self, bundle_id: str) -> BundleRecord | None:
        def read() -> BundleRecord | None:
            row = self.conn.execute("SELECT * FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
            return _bundle(row) if row else None

        return await self._run(read)

    async def list_bundles(self, incident_id: str, host_id: str, limit: int) -> list[BundleRecord]:
        def read() -> list[BundleRecord]:
            where, args = [], []
            if incident_id:
                where.append("incident_id = ?")
                args.append(incident_id)
            if host_id:
                where.append("host_id = ?")
                args.append(host_id)
            clause = ("WHERE " + " AND ".join(where)) if where else ""
            rows = self.conn.execute(
                f"SELECT * FROM bundles {clause} ORDER BY received_at_ms DESC, bundle_id DESC LIMIT ?",
                (*args, limit),
            )
            return [_bundle(r) for r in rows]

        return await self._run(read)

    async def bundle_ids_for_incident(self, incident_id: str) -> list[str]:
        return await self._run(
            lambda: [
                r[0]
                for r in self.conn.execute(
                    "SELECT bundle_id FROM bundles WHERE incident_id = ? ORDER BY received_at_ms, bundle_id",
                    (incident_id,),
                )
            ]
        )

    async def count_incidents(self) -> dict[str, int]:
        return await self._run(
            lambda: {r[0]: r[1] for r in self.conn.execute("SELECT state, COUNT(*) FROM incidents GROUP BY state")}
        )

    async def count_requests(self) -> dict[str, int]:
        return await self._run(
            lambda: {r[0]: r[1] for r in self.conn.execute("SELECT state, COUNT(*) FROM host_requests GROUP BY state")}
        )

    async def count_incidents_by_severity(self) -> dict[tuple[str, int], int]:
        return await self._run(
            lambda: {
                (r[0], r[1]): r[2]
                for r in self.conn.execute("SELECT state, severity, COUNT(*) FROM incidents GROUP BY state, severity")
            }
        )

    # -- retention -----------------------------------------------------------------------
    _HELD = """EXISTS (SELECT 1 FROM incidents i WHERE i.state != 'resolved' AND (i.id = b.incident_id
                   OR i.id IN (SELECT r.incident_id FROM host_requests r WHERE r.bundle_id = b.bundle_id)))"""

    async def retention_candidates(self) -> list[tuple[BundleRecord, bool]]:
        """Every bundle whose blob is kept, oldest received first, with whether it is held.

        Held: attached (as its incident's bundle or through a host request) to an
        incident that is not resolved.  Retention never expires a held bundle.
        """

        def read() -> list[tuple[BundleRecord, bool]]:
            rows = self.conn.execute(
                f"""SELECT b.*, {self._HELD} AS held FROM bundles b WHERE b.expired_at_ms = 0
                    ORDER BY b.received_at_ms, b.bundle_id"""
            )
            return [(_bundle(r), bool(r["held"])) for r in rows]

        return await self._run(read)

    def _expire_bundles(self, bundle_ids: Sequence[str], at_ms: int) -> tuple[list[BundleRecord], list[str]]:
        def tx(c: sqlite3.Connection) -> tuple[list[BundleRecord], list[str]]:
            expired: list[BundleRecord] = []
            for bundle_id in bundle_ids:
                held = c.execute(
                    f"SELECT {self._HELD} FROM bundles b WHERE b.bundle_id = ? AND b.expired_at_ms = 0", (bundle_id,)
                ).fetchone()
                if held is None or held[0]:
                    continue  # already expired, gone, or held since it was chosen
                c.execute("UPDATE bundles SET expired_at_ms = ? WHERE bundle_id = ?", (at_ms, bundle_id))
                row = c.execute("SELECT * FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
                bundle = _bundle(row)
                expired.append(bundle)
                incidents = {bundle.incident_id} if bundle.incident_id else set()
                incidents.update(
                    r[0] for r in c.execute("SELECT incident_id FROM host_requests WHERE bundle_id = ?", (bundle_id,))
                )
                self._insert_events(c, [
                    TimelineEventRecord(
                        incident_id=incident_id, at_ms=at_ms, kind="bundle_expired", host_id=bundle.host_id,
                        message=f"bundle {bundle_id} expired by retention ({bundle.size_bytes} bytes deleted)",
                        actor="retention",
                    )
                    for incident_id in sorted(incidents)
                    if c.execute("SELECT 1 FROM incidents WHERE id = ?", (incident_id,)).fetchone()
                ])
            # Blobs no kept bundle still points at (content-addressed: two rows may share one).
            digests = sorted({
                b.sha256 for b in expired
                if c.execute("SELECT 1 FROM bundles WHERE sha256 = ? AND expired_at_ms = 0", (b.sha256,)).fetchone()
                is None
            })
            return expired, digests

        return self._write(tx)

    async def expire_bundles(self, bundle_ids: Sequence[str], at_ms: int) -> tuple[list[BundleRecord], list[str]]:
        """Mark bundles expired (skipping held ones) with a timeline event on each incident they
        are attached to, in one transaction; the expired bundles and the blob digests to delete."""
        return await self._run(self._expire_bundles, list(bundle_ids), at_ms)

    async def referenced_digests(self) -> set[str]:
        def read() -> set[str]:
            out = {r[0] for r in self.conn.execute("SELECT sha256 FROM bundles WHERE expired_at_ms = 0")}
            for r in self.conn.execute("SELECT bundle_json FROM uploads WHERE bundle_json IS NOT NULL"):
                out.add(orjson.loads(r[0])["sha256"])
            return out

        return await self._run(read)

    # -- severity signals ------------------------------------------------------------------
    async def evidence_for_incident(self, incident_id: str) -> list[EvidenceRecord]:
        def read() -> list[EvidenceRecord]:
            rows = self.conn.execute(
                """SELECT bundle_id, incident_id, host_id, received_at_ms, evidence_json FROM bundle_evidence
                   WHERE incident_id = ? ORDER BY received_at_ms, bundle_id""",
                (incident_id,),
            )
            return [
                EvidenceRecord(
                    bundle_id=r["bundle_id"], host_id=r["host_id"], incident_id=r["incident_id"],
                    received_at_ms=r["received_at_ms"], evidence_json=r["evidence_json"],
                )
                for r in rows
            ]

        return await self._run(read)

    async def get_suggestion(self, incident_id: str) -> str | None:
        def read() -> str | None:
            row = self.conn.execute(
                "SELECT suggestion_json FROM incident_suggestions WHERE incident_id = ?", (incident_id,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(read)

    def _put_suggestion(
        self, incident_id: str, severity: int, evaluated_at_ms: int, suggestion_json: str,
        events: Sequence[TimelineEventRecord],
    ) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                """INSERT INTO incident_suggestions (incident_id, severity, evaluated_at_ms, suggestion_json)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (incident_id) DO UPDATE SET severity = excluded.severity,
                       evaluated_at_ms = excluded.evaluated_at_ms, suggestion_json = excluded.suggestion_json""",
                (incident_id, severity, evaluated_at_ms, suggestion_json),
            )
            self._insert_events(c, events)

        self._write(tx)

    async def put_suggestion(
        self, incident_id: str, severity: int, evaluated_at_ms: int, suggestion_json: str,
        events: Sequence[TimelineEventRecord],
    ) -> None:
        await self._run(self._put_suggestion, incident_id, severity, evaluated_at_ms, suggestion_json, list(events))

    # -- API tokens and the audit log ---------------------------------------------------------
    @staticmethod
    def _insert_audit(c: sqlite3.Connection, events: Sequence[AuditRecord]) -> None:
        c.executemany(
            """INSERT INTO audit_events (at_ms, token_id, token_name, role, action, target, peer, outcome, detail)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [(e.at_ms, e.token_id, e.token_name, e.role, e.action, e.target, e.peer, e.outcome, e.detail)
             for e in events],
        )

    def _create_token(self, t: TokenRecord, audit: Sequence[AuditRecord]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    """INSERT INTO api_tokens (token_id, name, role, token_sha256, created_at_ms, revoked_at_ms,
                           last_used_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    (t.token_id, t.name, t.role, t.token_sha256, t.created_at_ms, t.revoked_at_ms, t.last_used_at_ms),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"a token named {t.name!r} exists already (revoke it first)") from None
            self._insert_audit(c, audit)

        self._write(tx)

    async def create_token(self, token: TokenRecord, audit: Sequence[AuditRecord] = ()) -> None:
        await self._run(self._create_token, token, list(audit))

    async def token_by_sha256(self, token_sha256: str) -> TokenRecord | None:
        def read() -> TokenRecord | None:
            row = self.conn.execute("SELECT * FROM api_tokens WHERE token_sha256 = ?", (token_sha256,)).fetchone()
            return _token(row) if row else None

        return await self._run(read)

    async def list_tokens(self, include_revoked: bool) -> list[TokenRecord]:
        clause = "" if include_revoked else "WHERE revoked_at_ms = 0"
        return await self._run(
            lambda: [_token(r) for r in self.conn.execute(f"SELECT * FROM api_tokens {clause} ORDER BY created_at_ms, name")]
        )

    def _revoke_token(self, name_or_id: str, at_ms: int, audit: Sequence[AuditRecord]) -> TokenRecord | None:
        def tx(c: sqlite3.Connection) -> TokenRecord | None:
            row = c.execute(
                "SELECT * FROM api_tokens WHERE revoked_at_ms = 0 AND (name = ? OR token_id = ?)",
                (name_or_id, name_or_id),
            ).fetchone()
            if row is None:
                return None
            c.execute("UPDATE api_tokens SET revoked_at_ms = ? WHERE token_id = ?", (at_ms, row["token_id"]))
            self._insert_audit(c, audit)
            return replace(_token(row), revoked_at_ms=at_ms)

        return self._write(tx)

    async def revoke_token(
        self, name_or_id: str, at_ms: int, audit: Sequence[AuditRecord] = ()
    ) -> TokenRecord | None:
        return await self._run(self._revoke_token, name_or_id, at_ms, list(audit))

    def _add_audit(self, events: Sequence[AuditRecord], used_token_id: str, used_at_ms: int) -> None:
        def tx(c: sqlite3.Connection) -> None:
            self._insert_audit(c, events)
            if used_token_id:
                c.execute(
                    "UPDATE api_tokens SET last_used_at_ms = MAX(last_used_at_ms, ?) WHERE token_id = ?",
                    (used_at_ms, used_token_id),
                )

        self._write(tx)

    async def add_audit(self, events: Sequence[AuditRecord], used_token_id: str = "", used_at_ms: int = 0) -> None:
        await self._run(self._add_audit, list(events), used_token_id, used_at_ms)

    async def list_audit(self, since_ms: int, limit: int) -> list[AuditRecord]:
        def read() -> list[AuditRecord]:
            rows = self.conn.execute(
                "SELECT * FROM audit_events WHERE at_ms >= ? ORDER BY seq DESC LIMIT ?", (since_ms, limit)
            ).fetchall()
            return [_audit(r) for r in reversed(rows)]

        return await self._run(read)

