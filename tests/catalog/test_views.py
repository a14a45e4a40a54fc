"""ORM rows to catalog views by one rule (catalog.views.view): a field is the row's attribute of that name."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from pydantic import BaseModel
from sqlalchemy import inspect

from catalog import models
from catalog.errors import CatalogError
from catalog.exports import ExportView, exports_for_job, record_export
from catalog.failovers import FailoverView, FailoverVolumeView
from catalog.inventory import RecordedDisk, RecordedNic, RecordedVM, record_vm
from catalog.jobs import JobView, create_job, finish_job, get_job
from catalog.replication import VolumeView
from catalog.resources import ResourceView
from catalog.restore_points import PointDiskView, PointView
from catalog.views import view
from tests.factories import disk, vm


class Sample(BaseModel):
    id: int
    name: str | None
    note: str = "default"
    derived: int


def test_fields_come_from_attributes_and_given_values() -> None:
    row = SimpleNamespace(id=3, name="x", note="from row", derived=1, unrelated=object())
    assert view(Sample, row, derived=9) == Sample(id=3, name="x", note="from row", derived=9)
    # a column that is NULL stays None; a field the row has not keeps the view's default
    assert view(Sample, SimpleNamespace(id=4, name=None), derived=0) == Sample(id=4, name=None, derived=0)


def test_a_field_nothing_provides_is_an_error_not_a_silent_none() -> None:
    with pytest.raises(CatalogError, match=r"Sample.derived has no attribute to read on SimpleNamespace"):
        view(Sample, SimpleNamespace(id=1, name="x"))
    with pytest.raises(CatalogError, match=r"Sample has no field\(s\) \['typo'\]"):
        view(Sample, SimpleNamespace(id=1, name="x", derived=1), typo=2)


def test_values_are_validated_like_any_view() -> None:
    with pytest.raises(ValueError):
        view(Sample, SimpleNamespace(id="not a number", name="x", derived=1))


# Every catalog view, the table it is read from, and the fields the catalog module gives explicitly: a column
# renamed in catalog/models.py without its view breaks here, not in a flow.
VIEWS = [
    (ExportView, models.NbdExport, set()),
    (JobView, models.Job, set()),
    (VolumeView, models.ReplicatedVolume, set()),
    (ResourceView, models.JobResource, set()),
    (FailoverView, models.Failover, {"volumes"}),
    (FailoverVolumeView, models.FailoverVolume, set()),
    (PointView, models.RestorePoint, {"disks"}),
    (PointDiskView, models.RestorePointDisk, {"disk_id", "device_key"}),
    (RecordedVM, models.VmContext, {"vm_context_id", "disks", "nics"}),
    (RecordedDisk, models.VmDisk, {"vm_disk_id", "is_boot", "change"}),
    (RecordedNic, models.VmNic, set()),
]


@pytest.mark.parametrize(("model", "table", "given"), VIEWS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_view_field_is_a_column_or_given(model: type[BaseModel], table: type, given: set[str]) -> None:
    columns = {attribute.key for attribute in inspect(table).column_attrs}
    missing = {name for name in model.model_fields if name not in given} - columns
    required_missing = {name for name in missing if model.model_fields[name].is_required()}
    assert required_missing == set()
    # a defaulted field no column feeds would always show its default: none exists today
    assert missing == set(), f"{model.__name__} fields {sorted(missing)} are read from no column of {table.__name__}"


def test_views_read_from_a_real_catalog(catalog) -> None:
    recorded = record_vm(catalog, vm(disk(2000, unit=0, label="OS"), disk(2001, unit=1), name="mapped", uuid="u-1"))
    assert (recorded.name, recorded.instance_uuid) == ("mapped", "u-1")
    assert [(d.disk_id, d.device_key, d.label, d.change) for d in recorded.disks] == [
        ("disk-2000", 2000, "OS", "new"),
        ("disk-2001", 2001, "Hard disk 2001", "new"),
    ]
    job_id = create_job(catalog, "backup", vm_context_id=recorded.vm_context_id, flow_run_id="run-1")
    finish_job(catalog, job_id, "failed", "it broke")
    job = get_job(catalog, job_id)
    assert (job.kind, job.vm_context_id, job.state, job.error, job.flow_run_id) == (
        "backup", recorded.vm_context_id, "failed", "it broke", "run-1"
    )  # fmt: skip
    assert isinstance(job.created_at, dt.datetime) and job.created_at.tzinfo is not None
    record_export(
        catalog, vm_disk_id=recorded.disks[0].vm_disk_id, job_id=job_id, export_name="vm1-disk-2000",
        bind_address="127.0.0.1", port=10809, file_path="/repo/x.qcow2",
    )  # fmt: skip
    (export,) = exports_for_job(catalog, job_id)
    assert (export.vm_disk_id, export.export_name, export.port, export.state, export.pid) == (
        recorded.disks[0].vm_disk_id, "vm1-disk-2000", 10809, "starting", None
    )  # fmt: skip
