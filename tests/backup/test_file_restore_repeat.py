"""File restore starts its own qemu-nbd each time: it must connect only once qemu-nbd accepts, every time."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from clients.qemu import connect_when_served, convert_image, read_only_client, stop_child
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


def test_the_wait_ends_when_the_server_accepts_not_when_its_socket_file_appears(tmp_path):
    """The race made certain: a socket bound a whole second before it listens. Connecting as soon as the
    file exists (the old wait) is refused; the wait file restore and image scans share connects after."""
    image = tmp_path / "disk.raw"
    data = os.urandom(1 << 20)
    image.write_bytes(data)
    upstream = tmp_path / "real.sock"
    real = subprocess.Popen(
        ["qemu-nbd", "--read-only", "--persistent", "--format", "raw", "--socket", str(upstream), "--", str(image)]
    )
    late = None
    try:
        with read_only_client(image, image_format="raw") as direct:
            assert direct.read(0, 65536) == data[:65536]
        deadline = time.monotonic() + 15
        while not upstream.exists():
            assert time.monotonic() < deadline and real.poll() is None
            time.sleep(0.01)
        socket_path = tmp_path / "late.sock"
        late = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("late_listener.py")), str(socket_path), str(upstream), "1"]
        )
        started = time.monotonic()
        client = connect_when_served(late, socket_path, image, errors=lambda: "")
        with client:
            waited = time.monotonic() - started
            assert client.read(0, len(data)) == data
        assert waited >= 0.9  # it connected after the listen, not at the bind
    finally:
        for process in (late, real):
            if process is not None:
                stop_child(process)
