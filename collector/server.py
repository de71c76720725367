"""The collector assembled: stores, stages, gRPC services and the HTTP listener.

:class:`Collector` is what ``hostdiag-collector`` runs and what integration
tests start on ``127.0.0.1:0``::

    collector = Collector(config)
    await collector.start()          # opens the stores, recovers, serves
    collector.grpc_address, collector.http_address
    await collector.stop()           # health NOT_SERVING, drain, close

gRPC server options (the agent's keepalive must agree with these):

- ``grpc.keepalive_time_ms`` 30000 and ``grpc.keepalive_timeout_ms`` 10000:
  the collector pings an idle connection every 30 s and drops it when no
  answer comes within 10 s (a vanished agent is noticed within ~40 s);
- ``grpc.http2.min_recv_ping_interval_without_data_ms`` 10000 and
  ``grpc.keepalive_permit_without_calls`` 1 with
  ``grpc.http2.max_ping_strikes`` 0: an agent may ping as often as every
  10 s, even between calls, without ever getting GOAWAY ``too_many_pings``
  (the agent pings every 20 s);
- ``grpc.max_receive_message_length`` = ``max_message_bytes`` (one upload
  chunk of at most 1 MiB plus framing) and ``grpc.max_send_message_length``
  2 MiB (download chunks are 1 MiB).

Transport (``docs/security.md``, *Transport and identity*): with
``insecure = true`` the gRPC ports are plaintext (loopback only).  Otherwise
``listen`` is mTLS with a required agent certificate and ``api_listen``, when
set, is TLS without client certificates for collectorctl; both present
``tls_cert_file``, re-read when it changes on disk
(:class:`~hostdiag.collector.tls.ReloadingCertificates`).  One server serves
every service on both ports; AgentService refuses callers without a verified
agent certificate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hostdiag.collector.admin_api import AdminServicer
from hostdiag.collector.agent_service import AgentServicer
from hostdiag.collector.alertmanager import PATH as ALERTMANAGER_PATH
from hostdiag.collector.alertmanager import AlertMapping, AlertmanagerReceiver
from hostdiag.collector.api import BundleServicer, FleetServicer, IncidentServicer
from hostdiag.collector.auth import AuthInterceptor, Authenticator
from hostdiag.collector.config import CollectorConfig, split_host_port
from hostdiag.collector.fleet import Fleet
from hostdiag.collector.http import BodyRoute, HttpServer, Request
from hostdiag.collector.incidents import IncidentManager
from hostdiag.collector.ingest import Ingest, IngestCounters, IngestLimits
from hostdiag.collector.grpc_metrics import LatencyInterceptor
from hostdiag.collector.metrics import Registry
from hostdiag.collector.retention import Retention
from hostdiag.collector.runbook import RunbookClock, RunbookPolicy
from hostdiag.collector.signals.engine import SignalEngine
from hostdiag.collector.signals.rules import load_rules
from hostdiag.collector.store.base import IncidentStates, RequestStates
from hostdiag.collector.store.blobs import FileBlobStore, StagingArea
from hostdiag.collector.store.sqlite import SqliteMetadataStore
from hostdiag.collector.tls import ReloadingCertificates, TlsFiles
from hostdiag.collector.webhook import WebhookNotifier
from hostdiag.v1 import admin_pb2, admin_pb2_grpc
from hostdiag.v1 import agent_pb2, agent_pb2_grpc, bundle_pb2, bundle_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from hostdiag.v1 import incident_pb2, incident_pb2_grpc

__all__ = ["Collector", "grpc_server_options", "KEEPALIVE_OPTIONS", "SERVICE_NAMES"]

log = logging.getLogger("hostdiag.collector")

KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
)

SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    incident_pb2.DESCRIPTOR.services_by_name["IncidentService"].full_name,
    bundle_pb2.DESCRIPTOR.services_by_name["BundleService"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def grpc_server_options(config: CollectorConfig) -> list[tuple[str, int]]:
    return [
        *KEEPALIVE_OPTIONS,
        ("grpc.max_receive_message_length", config.collector.max_message_bytes),
        ("grpc.max_send_message_length", 2 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]


class Collector:
    def __init__(self, config: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        c = config.collector
        self.clock = clock
        data_dir = config.data_dir
        os.makedirs(data_dir, mode=0o750, exist_ok=True)
        self.executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="hostdiag-collector-io")
        self.store = SqliteMetadataStore(os.path.join(data_dir, "collector.db"))
        self.blobs = FileBlobStore(os.path.join(data_dir, "blobs"), self.executor)
        self.staging = StagingArea(os.path.join(data_dir, "uploads"), self.executor)
        self.fleet = Fleet()
        self.metrics = Registry()
        self._counts: dict[str, dict[str, int]] = {"incidents": {}, "requests": {}}
        self._overdue = 0
        self._incidents_by_severity: dict[tuple[str, int], int] = {}
        self.notifier: WebhookNotifier | None = None
        self._define_metrics()
        self.incidents = IncidentManager(
            self.store, self.fleet, request_ttl_s=c.request_ttl_s, default_window_s=c.default_window_s, clock=clock,
            snapshot_min_interval_s=c.snapshot_min_interval_s,
        )
        # Severity signals: the shipped rules plus the operator's file (already checked with the config).
        self.signals = SignalEngine(
            self.store, load_rules(c.signal_rules_file or None), clock=clock, executor=self.executor
        )
        self.incidents.on_bundle_attached = self.signals.schedule
        if c.escalation_webhook_url:
            self.notifier = WebhookNotifier(
                c.escalation_webhook_url,
                timeout_s=c.escalation_webhook_timeout_s,
                max_attempts=c.escalation_webhook_max_attempts,
                queue_length=c.escalation_webhook_queue_length,
                results=self._webhook_results,
            )
        self.runbook = RunbookClock(
            self.store, self.incidents, RunbookPolicy.from_config(c), clock=clock, notifier=self.notifier,
            breaches=self._breaches,
        )
        if self.notifier is not None:
            self.notifier.on_delivered = self.runbook.mark_notified
        self.alertmanager = AlertmanagerReceiver(
            self.incidents, self.store, AlertMapping.from_config(c), results=self._alertmanager_results
        )
        # API tokens (collector/auth.py); None with auth = "none", where nothing is checked.
        self.auth = Authenticator(self.store, clock=clock) if c.auth == "tokens" else None
        body_routes: dict[str, BodyRoute] = {}
        if c.alertmanager_enabled:
            body_routes[ALERTMANAGER_PATH] = BodyRoute(
                self.alertmanager.handle_http, c.alertmanager_max_body_bytes,
                authorize=self._authorize_alertmanager if self.auth is not None else None,
            )
        self.ingest = Ingest(
            self.store,
            self.blobs,
            self.staging,
            IngestLimits(
                max_bundle_bytes=c.max_bundle_bytes,
                max_chunk_bytes=c.max_chunk_bytes,
                max_manifest_bytes=c.max_manifest_bytes,
                max_evidence_bytes=c.max_evidence_bytes,
                max_concurrent_uploads=c.max_concurrent_uploads,
                upload_idle_timeout_s=c.upload_idle_timeout_s,
                upload_retention_s=c.upload_retention_s,
                max_stored_evidence_bytes=c.max_stored_evidence_bytes,
            ),
            publish=self.incidents.publish_bundle,
            counters=IngestCounters(
                bundles_received=self._bundles_received,
                bytes_received=self._bytes_received,
                rejections=self._rejections,
            ),
            clock=clock,
            executor=self.executor,
        )
        self.agent_servicer = AgentServicer(
            fleet=self.fleet,
            incidents=self.incidents,
            ingest=self.ingest,
            store=self.store,
            heartbeat_interval_s=c.heartbeat_interval_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            queue_length=c.command_queue_length,
            clock=clock,
            require_identity=not c.insecure,
        )
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.http = HttpServer(
            store=self.store,
            blobs=self.blobs,
            render_metrics=self.render_metrics,
            is_healthy=lambda: not self.stopping,
            header_bytes=c.http_header_bytes,
            timeout_s=c.http_timeout_s,
            max_connections=c.http_max_connections,
            body_routes=body_routes,
            authorize_bundle=self._authorize_bundle if self.auth is not None else None,
            observe=lambda route, method, status, seconds: self._http_latency.observe(
                seconds, route=route, method=method, status=str(status)),
        )
        self.retention = Retention(
            self.store, self.blobs, retention_days=c.retention_days, max_bytes=c.retention_max_bytes, clock=clock,
            expired_bundles=self._expired_bundles, expired_bytes=self._expired_bytes,
        )
        self.server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.api_port = 0
        self.http_port = 0
        self.stopping = False
        self._tasks: list[asyncio.Task[Any]] = []

    # -- API tokens on HTTP ---------------------------------------------------------------
    async def _authorize_alertmanager(self, request: Request) -> None:
        assert self.auth is not None
        await self.auth.admit_http(request, f"POST {ALERTMANAGER_PATH}")

    async def _authorize_bundle(self, request: Request, bundle_id: str) -> None:
        assert self.auth is not None
        await self.auth.admit_http(request, f"{request.method} /api/v1/bundles", target=bundle_id)

    # -- metrics --------------------------------------------------------------------------
    def _define_metrics(self) -> None:
        m = self.metrics
        m.gauge("hostdiag_collector_agents_connected", "Agents with an open control stream.",
                callback=lambda: float(len(self.fleet)))
        m.gauge("hostdiag_collector_incidents", "Incidents by state and severity (P1-P4).", ["state", "severity"],
                callback=self._incident_samples)
        m.gauge("hostdiag_collector_snapshot_requests", "Host snapshot requests by state.", ["state"],
                callback=lambda: {(s,): float(self._counts["requests"].get(s, 0)) for s in RequestStates.ALL})
        m.gauge("hostdiag_collector_uploads_active", "Upload streams being served.",
                callback=lambda: float(self.ingest.active_streams))
        self._bundles_received = m.counter("hostdiag_collector_bundles_received_total", "Bundles verified and stored.")
        self._bytes_received = m.counter(
            "hostdiag_collector_bundle_bytes_received_total", "Upload bytes committed to staging."
        )
        self._rejections = m.counter(
            "hostdiag_collector_upload_rejections_total", "Upload and QueryUpload calls refused, by reason.", ["reason"]
        )
        self._breaches = m.counter(
            "hostdiag_collector_runbook_breaches_total", "Runbook timer breaches recorded, by kind and severity.",
            ["kind", "severity"],
        )
        m.gauge("hostdiag_collector_incidents_overdue", "Unresolved incidents with an open runbook breach.",
                callback=lambda: float(self._overdue))
        self._webhook_results = m.counter(
            "hostdiag_collector_escalation_notifications_total",
            "Escalation webhook notifications by result (delivered, failed, dropped).", ["result"],
        )
        m.gauge("hostdiag_collector_escalation_webhook_queue_length", "Escalations waiting for the webhook.",
                callback=lambda: float(len(self.notifier)) if self.notifier is not None else 0.0)
        m.counter("hostdiag_collector_signal_evaluations_total", "Incident severity signal evaluations run.",
                  callback=lambda: float(self.signals.evaluations))
        self._grpc_latency = m.histogram(
            "hostdiag_collector_grpc_request_duration_seconds", "gRPC call duration by method and status code.",
            ["method", "code"],
        )
        self._http_latency = m.histogram(
            "hostdiag_collector_http_request_duration_seconds", "HTTP request duration by route, method and status.",
            ["route", "method", "status"],
        )
        self._expired_bundles = m.counter(
            "hostdiag_collector_bundles_expired_total", "Bundles whose blob retention deleted (the row stays)."
        )
        self._expired_bytes = m.counter(
            "hostdiag_collector_bundle_bytes_expired_total", "Bundle bytes retention deleted."
        )
        self._alertmanager_results = m.counter(
            "hostdiag_collector_alertmanager_notifications_total",
            "Alertmanager notifications by result (opened, updated, resolved, unchanged, ignored, rejected).",
            ["result"],
        )

    def _incident_samples(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {
            (state, f"P{n}"): 0.0 for state in IncidentStates.ALL for n in (1, 2, 3, 4)
        }
        for (state, severity), count in self._incidents_by_severity.items():
            key = (state, f"P{severity}" if 1 <= severity <= 4 else "none")
            out[key] = out.get(key, 0.0) + float(count)
        return out

    async def render_metrics(self) -> str:
        self._incidents_by_severity = await self.store.count_incidents_by_severity()
        self._counts["incidents"] = await self.store.count_incidents()
        self._counts["requests"] = await self.store.count_requests()
        self._overdue = await self.runbook.count_overdue()
        return self.metrics.render()

    # -- life cycle ----------------------------------------------------------------------
    @property
    def grpc_address(self) -> str:
        host, _ = split_host_port(self.config.collector.listen)
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    @property
    def api_address(self) -> str:
        """The API port's address; "" when ``api_listen`` is not set."""
        if not self.config.collector.api_listen:
            return ""
        host, _ = split_host_port(self.config.collector.api_listen)
        return f"[{host}]:{self.api_port}" if ":" in host else f"{host}:{self.api_port}"

    def _add_port(self, server: grpc.aio.Server, address: str, *, agents: bool) -> int:
        """Bind one gRPC port: plaintext, mTLS (agents) or server-only TLS (the API port)."""
        c = self.config.collector
        credentials = None
        if not c.insecure:
            files = TlsFiles(c.tls_cert_file, c.tls_key_file, c.tls_client_ca_file if agents else "")
            try:
                credentials = ReloadingCertificates(files).credentials(require_client_auth=agents)
            except (OSError, ValueError) as exc:
                raise OSError(f"TLS for {address}: {exc}") from None
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address} for gRPC (address in use or not available)")
        return port

    @property
    def http_address(self) -> str:
        host, _ = split_host_port(self.config.collector.http_listen)
        return f"[{host}]:{self.http_port}" if ":" in host else f"{host}:{self.http_port}"

    async def start(self) -> None:
        c = self.config.collector
        await self.store.open()
        await self.ingest.recover()
        await self.signals.schedule_unresolved()
        if self.auth is None:
            log.warning(
                'API AUTHENTICATION IS OFF (auth = "none"): anyone who can reach this collector may read '
                "every bundle and open, change or resolve incidents; use it only for development and tests",
                extra={"event": "auth_disabled"},
            )
        interceptors: list[Any] = [LatencyInterceptor(self._grpc_latency)]
        if self.auth is not None:
            interceptors.append(AuthInterceptor(self.auth))
        server = grpc.aio.server(options=grpc_server_options(self.config), interceptors=interceptors)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent_servicer, server)
        incident_pb2_grpc.add_IncidentServiceServicer_to_server(IncidentServicer(self.incidents), server)
        bundle_pb2_grpc.add_BundleServiceServicer_to_server(BundleServicer(self.store, self.blobs), server)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(FleetServicer(self.fleet, self.store), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.store), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.grpc_port = self._add_port(server, c.listen, agents=True)
        if c.api_listen:
            self.api_port = self._add_port(server, c.api_listen, agents=False)
        self.server = server
        try:
            host, http_port = split_host_port(c.http_listen)
            self.http_port = await self.http.start(host, http_port)
        except OSError as exc:
            raise OSError(f"cannot listen on {c.http_listen} for HTTP: {exc.strerror or exc}") from None
        await server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self.incidents.run_expiry(c.expiry_check_interval_s), name="request-expiry"),
            asyncio.create_task(self.ingest.run_sweeper(min(3600.0, c.upload_retention_s / 4)), name="upload-sweep"),
            asyncio.create_task(self.runbook.run(c.runbook_check_interval_s), name="runbook-clock"),
            asyncio.create_task(self.retention.run(c.retention_check_interval_s), name="retention"),
        ]
        if self.notifier is not None:
            await self.runbook.resend_unnotified()
            self._tasks.append(asyncio.create_task(self.notifier.run(), name="escalation-webhook"))
        log.info(
            "collector serving",
            extra={"event": "collector_started", "grpc": self.grpc_address, "http": self.http_address,
                   "api": self.api_address, "tls": not c.insecure, "data_dir": self.config.data_dir},
        )

    async def _set_health(self, status: Any) -> None:
        for name in ("", *SERVICE_NAMES):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, end streams after a short grace.

        In-flight uploads stay resumable: their committed bytes are on disk.
        """
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.collector.shutdown_grace_s if grace_s is None else grace_s
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.agent_servicer.stopping = True
        self.fleet.close_all("collector is shutting down", grpc.StatusCode.UNAVAILABLE)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.server is not None:
            await self.server.stop(grace)
        await self.http.stop()
        await self.signals.close()
        await self.store.close()
        self.executor.shutdown(wait=True)
        log.info("collector stopped", extra={"event": "collector_stopped"})
