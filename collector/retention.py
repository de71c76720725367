"""Bundle retention: delete old bundles' blobs, keep their rows and incident history.

Two bounds, applied every ``retention_check_interval_s``:

- **age** (``retention_days``): a bundle received longer ago expires;
- **bytes** (``retention_max_bytes``): while the kept bundles' sizes add up to
  more than the bound, the oldest (by ``received_at``) expire first.

A bundle attached to an incident that is not resolved (as the incident's own
bundle or shared through a coalesced request) is *held*: it never expires, even
when that leaves the store over the byte bound.  Expiring is one transaction
(``expired_at_ms`` on the row, a ``bundle_expired`` timeline event on each
incident the bundle belongs to); the blob file is deleted after the commit.
A crash in between leaves an unreferenced blob, which the startup recovery
deletes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hostdiag.collector.metrics import Counter
from hostdiag.collector.store.base import BlobStore, BundleRecord, MetadataStore

__all__ = ["Retention", "RetentionResult", "expired_message"]

log = logging.getLogger("hostdiag.collector.retention")

DAY_S = 86400.0


def expired_message(b: BundleRecord) -> str:
    """What a download of a bundle that retention deleted is told."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.expired_at_ms / 1000))
    return f"bundle {b.bundle_id} expired by retention at {when}: its bytes were deleted, its metadata is kept"


@dataclass(frozen=True)
class RetentionResult:
    expired_bundles: int = 0
    expired_bytes: int = 0
    held_bundles: int = 0
    kept_bytes: int = 0


class Retention:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        *,
        retention_days: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        expired_bundles: Counter | None = None,
        expired_bytes: Counter | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.clock = clock
        self.expired_bundles = expired_bundles
        self.expired_bytes = expired_bytes

    def _choose(self, candidates: list[tuple[str, int, int, bool]], now_ms: int) -> list[str]:
        """Bundle ids to expire from (id, size, received_at_ms, held), oldest first."""
        chosen: list[str] = []
        kept = sum(size for _, size, _, _ in candidates)
        cutoff_ms = now_ms - int(self.retention_days * DAY_S * 1000) if self.retention_days > 0 else None
        for bundle_id, size, received_at_ms, held in candidates:
            if held:
                continue
            too_old = cutoff_ms is not None and received_at_ms < cutoff_ms
            too_big = self.max_bytes > 0 and kept > self.max_bytes
            if too_old or too_big:
                chosen.append(bundle_id)
                kept -= size
        return chosen

    async def run_once(self) -> RetentionResult:
        if self.retention_days <= 0 and self.max_bytes <= 0:
            return RetentionResult()
        now_ms = int(self.clock() * 1000)
        candidates = await self.store.retention_candidates()
        rows = [(b.bundle_id, b.size_bytes, b.received_at_ms, held) for b, held in candidates]
        chosen = self._choose(rows, now_ms)
        expired, digests = (await self.store.expire_bundles(chosen, now_ms)) if chosen else ([], [])
        for digest in digests:
            try:
                await self.blobs.delete(digest)
            except FileNotFoundError:
                pass
        expired_bytes = sum(b.size_bytes for b in expired)
        if self.expired_bundles is not None and expired:
            self.expired_bundles.inc(len(expired))
        if self.expired_bytes is not None and expired_bytes:
            self.expired_bytes.inc(expired_bytes)
        result = RetentionResult(
            expired_bundles=len(expired),
            expired_bytes=expired_bytes,
            held_bundles=sum(1 for *_, held in rows if held),
            kept_bytes=sum(size for _, size, _, _ in rows) - expired_bytes,
        )
        if expired:
            log.info(
                "bundles expired by retention",
                extra={"event": "retention_expired", "bundles": result.expired_bundles,
                       "bytes": result.expired_bytes, "held": result.held_bundles, "kept_bytes": result.kept_bytes},
            )
        if self.max_bytes > 0 and result.kept_bytes > self.max_bytes:
            log.warning(
                "kept bundles exceed retention_max_bytes; the rest are held by unresolved incidents",
                extra={"event": "retention_over_bytes", "kept_bytes": result.kept_bytes, "max_bytes": self.max_bytes},
            )
        return result

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention pass failed", extra={"event": "retention_failed"})
            await asyncio.sleep(interval_s)
