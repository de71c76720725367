"""Bundles: one ``.tar.zst`` per snapshot (spec: ``docs/bundle-format.md``).

* :class:`BundleWriter` -- the ``MemberSink`` sources write to; ``finish`` packs
  the bundle, ``abort`` drops it.
* :func:`verify_bundle` / :func:`read_manifest_and_evidence` -- defensive
  streaming readers, safe on bytes from an untrusted agent.
* :func:`uuid7` -- time-ordered bundle ids.
"""

from hostdiag.agent.bundle.ids import is_uuid7, uuid7, uuid7_unix_ms
from hostdiag.agent.bundle.reader import (
    EVIDENCE_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleFormatError,
    ReadLimits,
    VerifyReport,
    member_name_problem,
    read_manifest_and_evidence,
    verify_bundle,
)
from hostdiag.agent.bundle.writer import (
    REASON_BUNDLE_CAP,
    REASON_MEMBER_CAP,
    REASON_TIMED_OUT,
    BundleInfo,
    BundleWriteError,
    BundleWriter,
    bundle_file_name,
    remove_stale_temp,
)

__all__ = [
    "BundleWriter",
    "BundleInfo",
    "BundleWriteError",
    "BundleFormatError",
    "ReadLimits",
    "VerifyReport",
    "verify_bundle",
    "read_manifest_and_evidence",
    "member_name_problem",
    "bundle_file_name",
    "remove_stale_temp",
    "uuid7",
    "uuid7_unix_ms",
    "is_uuid7",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "EVIDENCE_NAME",
    "REASON_MEMBER_CAP",
    "REASON_BUNDLE_CAP",
    "REASON_TIMED_OUT",
]
