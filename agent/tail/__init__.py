"""Log tailing: files (with rotation, checkpoints, multiline) and journald, into byte-bounded rings.

The daemon builds one :class:`TailManager` from ``[[logs]]``, ``[recorder]`` and
``[journal]`` and runs it; snapshot sources read its rings.  How it works is
described in ``docs/log-tailing.md``.
"""

from hostdiag.agent.tail.manager import JOURNAL_RING, TailManager
from hostdiag.agent.tail.ring import LogRing

__all__ = ["TailManager", "LogRing", "JOURNAL_RING"]
