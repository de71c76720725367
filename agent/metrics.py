"""The agent's metrics in the Prometheus text format 0.0.4.

Rendered on request (``{"op": "metrics"}`` on the local API, ``agentctl
metrics``) from the same status document ``agentctl status`` shows, so the
two never disagree.  Names carry the ``hostdiag_agent_`` prefix, counters end
in ``_total``, sizes are ``_bytes`` and times ``_seconds``.  Label values are
file paths, rule names, probe names and job names: never log content.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and not math.isnan(float(value)):
        return float(value)
    return None


def _text(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Writer:
    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: Any, labels: Mapping[str, str] | None = None) -> None:
        family = self.families.setdefault(name, (kind, help_text, []))
        number = _number(value)
        if number is None:
            return  # unknown yet (e.g. no bundle written): the family is listed without a sample
        pairs = ",".join(f'{k}="{_escape(str(v))}"' for k, v in (labels or {}).items())
        family[2].append(f"{name}{{{pairs}}} {_text(number)}" if pairs else f"{name} {_text(number)}")

    def render(self) -> str:
        out: list[str] = []
        for name in sorted(self.families):
            kind, help_text, samples = self.families[name]
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(sorted(set(samples)))
        return "\n".join(out) + "\n"


def render_metrics(status: Mapping[str, Any]) -> str:
    """Prometheus text for an ``Agent.status()`` document."""
    w = _Writer()
    g, c = "gauge", "counter"
    w.add("hostdiag_agent_info", g, "Constant 1 with the agent's version and host.", 1,
          {"version": str(status.get("agent_version", "")), "host": str(status.get("host_id", ""))})
    w.add("hostdiag_agent_uptime_seconds", g, "Seconds since the agent started.", status.get("uptime_s"))
    w.add("hostdiag_agent_loop_lag_max_seconds", g, "Largest event loop lag seen.",
          (status.get("max_loop_lag_ms") or 0) / 1000)

    recorder = status.get("recorder") or {}
    for ring in ("metrics", "top"):
        w.add("hostdiag_agent_recorder_samples", g, "Samples held in the flight recorder, by ring.",
              recorder.get(f"{ring}_samples"), {"ring": ring})
        w.add("hostdiag_agent_recorder_capacity_samples", g, "Flight recorder ring capacity, by ring.",
              recorder.get(f"{ring}_capacity"), {"ring": ring})
        w.add("hostdiag_agent_recorder_bytes", g, "Bytes held in the flight recorder, by ring.",
              recorder.get(f"{ring}_bytes"), {"ring": ring})
    w.add("hostdiag_agent_recorder_depth_seconds", g, "Age of the oldest recorder sample.", recorder.get("depth_s"))
    w.add("hostdiag_agent_recorder_sample_errors_total", c, "Recorder samples that failed.",
          recorder.get("sample_errors"))
    for job, js in sorted((recorder.get("jobs") or {}).items()):
        w.add("hostdiag_agent_recorder_job_runs_total", c, "Recorder job runs, by job.", js.get("runs"), {"job": job})
        w.add("hostdiag_agent_recorder_job_errors_total", c, "Recorder job errors, by job.", js.get("errors"),
              {"job": job})
        w.add("hostdiag_agent_recorder_job_skipped_ticks_total", c, "Recorder job ticks skipped (late), by job.",
              js.get("skipped_ticks"), {"job": job})

    for row in status.get("logs") or []:
        labels = {"file": str(row.get("path") or row.get("name") or "")}
        w.add("hostdiag_agent_tail_lag_bytes", g, "Bytes written to a tailed log and not read yet, by file.",
              row.get("lag_bytes"), labels)
        w.add("hostdiag_agent_tail_lines_total", c, "Lines read from a tailed log, by file.", row.get("lines"), labels)
        w.add("hostdiag_agent_tail_truncated_lines_total", c, "Lines cut at the maximum line length, by file.",
              row.get("truncated_lines"), labels)
        w.add("hostdiag_agent_tail_invalid_utf8_lines_total", c, "Lines with invalid UTF-8 replaced, by file.",
              row.get("invalid_utf8"), labels)
        w.add("hostdiag_agent_tail_rotations_total", c, "Rotations followed, by file.", row.get("rotations"), labels)

    for rule, hits in sorted((status.get("redaction_hits") or {}).items()):
        w.add("hostdiag_agent_redaction_hits_total", c, "Secrets redacted from tailed logs, by rule.", hits,
              {"rule": str(rule)})
    w.families.setdefault("hostdiag_agent_redaction_hits_total",
                          ("counter", "Secrets redacted from tailed logs, by rule.", []))

    w.add("hostdiag_agent_bundles_written_total", c, "Bundles written.", status.get("bundles_written"))
    w.add("hostdiag_agent_bundle_failures_total", c, "Bundles that failed to be written.",
          status.get("bundle_failures"))
    last = status.get("last_bundle") or {}
    w.add("hostdiag_agent_last_bundle_timestamp_seconds", g, "When the last bundle was written (Unix time).",
          last.get("at"))

    spool = status.get("spool") or {}
    w.add("hostdiag_agent_spool_items", g, "Bundles waiting in the spool for upload.", spool.get("depth"))
    w.add("hostdiag_agent_spool_bytes", g, "Bytes waiting in the spool.", spool.get("bytes"))
    w.add("hostdiag_agent_spool_max_bytes", g, "The spool's byte bound.", spool.get("max_bytes"))
    w.add("hostdiag_agent_spool_evictions_total", c, "Bundles evicted from a full spool (oldest first).",
          spool.get("evictions"))
    w.add("hostdiag_agent_spool_quarantined_total", c, "Bundles the collector refused for good (quarantined).",
          spool.get("quarantined"))

    col = status.get("collector") or {}
    w.add("hostdiag_agent_collector_connected", g, "1 while the control stream to the collector is open.",
          col.get("connected"))
    w.add("hostdiag_agent_uploads_completed_total", c, "Bundles the collector confirmed.", col.get("uploads_ok"))
    w.add("hostdiag_agent_upload_failures_total", c, "Upload attempts that failed (retried later).",
          col.get("uploads_failed"))
    w.add("hostdiag_agent_upload_sent_bytes_total", c, "Bundle bytes sent to the collector.", col.get("bytes_sent"))
    w.add("hostdiag_agent_collector_connect_failures_total", c, "Failed attempts to open the control stream.",
          col.get("connect_failures"))
    w.add("hostdiag_agent_last_bundle_uploaded_timestamp_seconds", g,
          "When the collector last confirmed a bundle (Unix time).", col.get("last_bundle_uploaded_at"))

    probes = status.get("probes") or {}
    for p in probes.get("probes") or []:
        labels = {"probe": str(p.get("name", "")), "kind": str(p.get("kind", ""))}
        up = p.get("last_ok")
        w.add("hostdiag_agent_probe_up", g, "1 when a health probe's last check passed, 0 when it failed.",
              None if up is None else bool(up), labels)
        w.add("hostdiag_agent_probe_checks_total", c, "Health probe checks run.", p.get("checks"), labels)
        w.add("hostdiag_agent_probe_failures_total", c, "Health probe checks that failed.", p.get("failures"), labels)
        latency = p.get("last_latency_ms")
        w.add("hostdiag_agent_probe_latency_seconds", g, "The last check's latency.",
              latency / 1000 if isinstance(latency, (int, float)) else None, labels)
    return w.render()
