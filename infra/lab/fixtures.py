"""The lab as a context manager, for test fixtures (pytest or otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.lab.seed import LabManifest, seed_lab
from infra.lab.vcenter import LabVCenter, start_vcsim, stop_vcsim


@dataclass(frozen=True)
class RunningLab:
    vcenter: LabVCenter
    manifest: LabManifest
    workdir: Path

    @property
    def seed_dir(self) -> Path:
        return self.workdir / "seed"

    def reseed(self) -> LabManifest:
        """Run seeding again: restores changed lab disks; unchanged ones keep their manifest entries."""
        return seed_lab(self.vcenter, self.seed_dir)


@contextmanager
def running_lab(workdir: Path) -> Iterator[RunningLab]:
    """Start a private vcsim under workdir, seed it, yield it, and always stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    vcenter = start_vcsim(workdir / "vcenter")
    try:
        manifest = seed_lab(vcenter, workdir / "seed")
        yield RunningLab(vcenter=vcenter, manifest=manifest, workdir=workdir)
    finally:
        stop_vcsim(vcenter)
