"""The evidence the collector keeps per bundle, so rules can be re-evaluated later.

``evidence.json`` is read from each bundle at finish (with ``max_evidence_bytes``
and the decompression caps).  What is stored is that same object as compact
JSON, bounded by ``max_bytes``: when larger, whole top-level keys are dropped,
largest first, until it fits, and their names are listed under
``"_trimmed"`` — so the rules that read the other keys still work, and a
finding never silently reads a half-cut value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["stored_evidence_json", "TRIMMED_KEY"]

TRIMMED_KEY = "_trimmed"
# Never dropped: what evaluation needs to place and time the evidence.
_KEEP = ("schema_version", "host_id", "labels", "collected_at", "window_s")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def stored_evidence_json(evidence: Mapping[str, Any], max_bytes: int) -> str:
    """``evidence`` as compact JSON of at most ``max_bytes`` (see the module doc)."""
    if not isinstance(evidence, Mapping):
        return "{}"
    doc = dict(evidence)
    raw = _dumps(doc)
    if len(raw) <= max_bytes:
        return raw.decode()
    sizes = sorted(
        ((len(_dumps({k: v})), k) for k, v in doc.items() if k not in _KEEP and k != TRIMMED_KEY),
        reverse=True,
    )
    dropped: list[str] = []
    total = len(raw)
    for size, key in sizes:
        if total <= max_bytes:
            break
        doc.pop(key)
        dropped.append(str(key))
        total -= size
    doc[TRIMMED_KEY] = sorted(dropped)
    raw = _dumps(doc)
    if len(raw) > max_bytes:  # only the kept keys are left and they are still too large
        raw = _dumps({TRIMMED_KEY: sorted(str(k) for k in evidence)})
    return raw.decode()
