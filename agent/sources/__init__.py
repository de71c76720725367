"""The snapshot sources, in one explicit registry.

Adding a source: write ``agent/sources/<name>.py`` (see ``base.py``), add it
here, and add ``tests/unit/agent/sources/test_<name>.py``.  The conformance test
in ``tests/unit/agent/sources/test_conformance.py`` checks every entry.
"""

from __future__ import annotations

from hostdiag.agent.sources.base import Source, SourceConfig, SourceSkipped, SnapshotContext
from hostdiag.agent.sources.declared import DeclaredSource
from hostdiag.agent.sources.host import HostSource
from hostdiag.agent.sources.journal import JournalSource
from hostdiag.agent.sources.kernel import KernelSource
from hostdiag.agent.sources.logs import LogsSource
from hostdiag.agent.sources.probes import ProbesSource
from hostdiag.agent.sources.processes import ProcessesSource
from hostdiag.agent.sources.psi import PsiSource
from hostdiag.agent.sources.recorder import RecorderSource
from hostdiag.agent.sources.sockets import SocketsSource
from hostdiag.agent.sources.units import UnitsSource

__all__ = ["REGISTRY", "Source", "SourceConfig", "SourceSkipped", "SnapshotContext"]

# Order is the order of the manifest and of progress output.
REGISTRY: dict[str, type[Source]] = {
    cls.name: cls  # type: ignore[misc]
    for cls in (
        HostSource,
        RecorderSource,
        ProcessesSource,
        SocketsSource,
        PsiSource,
        KernelSource,
        UnitsSource,
        ProbesSource,
        DeclaredSource,
        LogsSource,
        JournalSource,
    )
}
