"""The committed generated code matches what the pinned grpcio-tools makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "gen-proto produced nothing"
    for rel in generated:
        committed = REPO / "proto" / rel
        assert committed.exists(), f"{rel} is generated but not committed: run scripts/gen-proto"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run scripts/gen-proto"
    committed_all = sorted(
        p.relative_to(REPO / "proto") for p in (REPO / "proto" / "hostdiag").rglob("*_pb2*.py*")
        if "__pycache__" not in p.parts  # byte code compiled by setup-env or an import
    )
    assert committed_all == generated, "committed generated files without a .proto"


def test_services_follow_buf_standard_names() -> None:
    from hostdiag.v1 import admin_pb2, agent_pb2, bundle_pb2, fleet_pb2, incident_pb2

    for module in (admin_pb2, agent_pb2, bundle_pb2, fleet_pb2, incident_pb2):
        fd = module.DESCRIPTOR
        assert fd.package == "hostdiag.v1"
        assert fd.name.startswith("hostdiag/v1/")
        for service in fd.services_by_name.values():
            assert service.name.endswith("Service")
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request"
                assert method.output_type.name == f"{method.name}Response"
        for enum in fd.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED")
            prefix = "".join("_" + c if c.isupper() else c.upper() for c in enum.name).lstrip("_")
            assert all(v.name.startswith(prefix + "_") for v in enum.values), enum.name
