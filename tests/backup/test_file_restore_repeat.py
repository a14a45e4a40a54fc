"""File restore starts its own qemu-nbd each time: it must connect only once qemu-nbd accepts, every time."""

from __future__ import annotations

import hashlib

from clients.qemu import convert_image
from infra.lab.mutate import read_disk_bytes
from vmferry.filelevel import extract_file, list_files, open_image

REPEATS = 20


def test_file_restore_repeated_never_fails(lab, tmp_path):
    """About one restore in seven used to fail with "Connection refused" (a connect between bind and listen)."""
    record = lab.manifest.vm("db3").disk("OS")
    raw = tmp_path / "os.raw"
    raw.write_bytes(read_disk_bytes(lab.vcenter, "db3", record.device_key))
    image = tmp_path / "os.qcow2"
    convert_image(raw, image, output_format="qcow2", source_format="raw")
    known = record.known_files[0]
    for attempt in range(REPEATS):
        out = tmp_path / f"out-{attempt}"
        with open_image(image) as handle:
            listed = list_files(handle, known.partition, "/")
            extracted = extract_file(handle, known.partition, known.path, out)
        assert listed, attempt
        assert hashlib.sha256(extracted.read_bytes()).hexdigest() == known.sha256, attempt
