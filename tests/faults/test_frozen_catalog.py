"""A catalog that stops answering (MariaDB behind a TCP proxy the test freezes) mid-backup: the backup ends within
a bound with a clear message, its qemu-nbd is stopped without the catalog, and the reconciler, once the catalog
answers again, removes everything else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from catalog import default_catalog
from catalog.db import open_catalog
from catalog.exports import exports_for_job, live_exports
from catalog.jobs import get_job
from catalog.ports import held_leases
from catalog.resources import live_resources
from catalog.restore_points import points_in_state
from flows.reconcile import reconcile
from tests.copy.helpers import our_qemu_nbd_pids, vm_snapshot_names
from tests.databases import fresh_catalog_url
from tests.faults.conftest import ROOT, subprocess_env
from tests.faults.tcp_proxy import FreezableProxy
from tests.reconcile.run_backup import backup_arguments
from tests.reconcile.test_reconcile import _wait_until_copying

pytestmark = [pytest.mark.usefixtures("prefect_backend", "nbd_port_range"), pytest.mark.mariadb]

TIMEOUT = 3  # VMFERRY_CATALOG_TIMEOUT_SECONDS of the hub under test
# The copy still running when the catalog freezes takes up to ~12 s; every catalog call after it ends within two
# timeouts (connect, then read), and the job makes about a dozen of them on its way out.
BOUND = 12 + 12 * 2 * TIMEOUT


def test_a_frozen_catalog_fails_the_backup_within_a_bound_and_reconcile_cleans_up(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, tmp_path, monkeypatch
):
    name = make_scratch_vm(disks=2, size_mib=12)
    with fresh_catalog_url("mariadb", tmp_path) as direct:
        open_catalog(direct).dispose()  # migrated while it answers
        url = make_url(direct)
        proxy = FreezableProxy((url.host, url.port))
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        monkeypatch.setenv("VMFERRY_CATALOG_URL", direct)
        catalog = default_catalog()
        # 24 MiB of disks at 2 MiB/s: about 12 s
        arguments = backup_arguments(name, repository_block, agent_block, lab_vcenter_block, 2 * 2**20)
        env = {**subprocess_env(proxied), "VMFERRY_CATALOG_TIMEOUT_SECONDS": str(TIMEOUT)}
        errors = tmp_path / "hub.stderr"
        with open(errors, "wb") as stderr:
            hub = subprocess.Popen(
                [sys.executable, "-m", "tests.reconcile.run_backup"],
                stdin=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT,
            )  # fmt: skip
        try:
            assert hub.stdin is not None
            hub.stdin.write(json.dumps(arguments).encode())
            hub.stdin.close()
            job = _wait_until_copying(catalog, agent_block, lambda: hub.poll() is None, time.monotonic() + 120)
            files = [Path(e.file_path) for e in exports_for_job(catalog, job.id)]
            assert len(our_qemu_nbd_pids(files)) == 2
            proxy.freeze()
            frozen_at = time.monotonic()
            hub.wait(BOUND + 30)
            took = time.monotonic() - frozen_at
        finally:
            if hub.poll() is None:
                hub.kill()
                hub.wait()
            proxy.close()

        assert hub.returncode != 0
        assert took < BOUND, f"the backup took {took:.0f} s to give up on a frozen catalog"
        message = errors.read_text(errors="replace")
        assert f"did not answer within {TIMEOUT} s" in message, message[-3000:]
        # compensation ran without the catalog: no qemu-nbd serves the files any more
        assert our_qemu_nbd_pids(files) == []

        report = reconcile(repository_block, lab_vcenter_block)

        assert report.errors == []
        assert live_exports(catalog) == [] and held_leases(catalog) == []
        assert points_in_state(catalog, "pending") == []
        assert repository_block.repository().partial_dirs() == []
        assert live_resources(catalog) == []
        assert vm_snapshot_names(lab, name) == []
        assert get_job(catalog, job.id).state == "failed"
        catalog.dispose()
