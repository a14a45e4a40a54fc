"""Building vcsim: cached by input hash, and a patch that does not apply stops the build."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infra.lab import build

pytestmark = pytest.mark.lab


def test_binary_is_cached() -> None:
    first = build.ensure_vcsim_binary()
    started = time.monotonic()
    second = build.ensure_vcsim_binary()
    assert first == second
    assert second.is_file()
    assert time.monotonic() - started < 5
    assert build.build_key() in str(second)


def test_overlay_carries_the_fixes(tmp_path: Path) -> None:
    main_dir = build.prepare_overlay(tmp_path / "gopath")
    simulator = tmp_path / "gopath" / "src" / build.GOVMOMI_IMPORT / "simulator"
    assert (main_dir / "main.go").is_file()
    assert "CreateTask(Map.Get(v.Vm)" in (simulator / "snapshot.go").read_text()
    assert "vm.Snapshot = nil" in (simulator / "virtual_machine.go").read_text()
    assert "len(obj.MissingSet) == 0" in (simulator / "property_collector.go").read_text()
    assert not list(simulator.rglob("*.orig"))


def test_patch_that_does_not_apply_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = tmp_path / "bogus.patch"
    bogus.write_text(
        "--- a/simulator/snapshot.go\n"
        "+++ b/simulator/snapshot.go\n"
        "@@ -1,3 +1,3 @@\n"
        " this line is not in snapshot.go\n"
        "-nor is this one\n"
        "+replacement\n"
        " nor this\n"
    )
    monkeypatch.setattr(build, "PATCHES", [bogus])
    with pytest.raises(build.VcsimBuildError, match="patch"):
        build.prepare_overlay(tmp_path / "gopath")
