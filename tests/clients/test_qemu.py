"""The qemu-nbd manager against the real qemu-nbd: start, serve, stop idempotently, never a stranger's pid."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from clients.qemu import (
    QemuError,
    create_qcow2,
    image_info,
    is_our_qemu_nbd,
    start_qemu_nbd,
    stop_qemu_nbd,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_backing_file_is_recorded_relative(tmp_path):
    base = tmp_path / "points" / "1" / "disk.qcow2"
    top = tmp_path / "points" / "2" / "disk.qcow2"
    base.parent.mkdir(parents=True)
    top.parent.mkdir(parents=True)
    create_qcow2(base, 2**20)
    create_qcow2(top, 2**20, backing_file=base)
    assert image_info(top)["backing-filename"] == "../1/disk.qcow2"
    moved = tmp_path / "moved"
    (tmp_path / "points").rename(moved)
    chain = image_info(moved / "2" / "disk.qcow2", backing_chain=True)
    assert [entry["filename"] for entry in chain][1].endswith("moved/2/../1/disk.qcow2")


def test_start_serves_and_stop_is_idempotent(tmp_path):
    image = tmp_path / "t.qcow2"
    create_qcow2(image, 4 * 2**20)
    port = free_port()
    server = start_qemu_nbd(image, export_name="disk-203", bind_address="127.0.0.1", port=port)
    assert server.url == f"nbd://127.0.0.1:{port}/disk-203"
    assert is_our_qemu_nbd(server.pid, image, port)
    info = subprocess.run(["nbdinfo", "--size", server.url], capture_output=True, text=True, check=True)
    assert int(info.stdout) == 4 * 2**20
    assert stop_qemu_nbd(server.pid, image) is True
    assert stop_qemu_nbd(server.pid, image) is False
    assert not is_our_qemu_nbd(server.pid, image)
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_stop_refuses_a_pid_that_is_not_our_qemu_nbd(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert stop_qemu_nbd(sleeper.pid, tmp_path / "x.qcow2") is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_qemu_nbd_that_ignores_sigterm_is_killed(tmp_path):
    image = tmp_path / "t.qcow2"
    create_qcow2(image, 2**20)
    server = start_qemu_nbd(image, export_name="x", bind_address="127.0.0.1", port=free_port())
    os.kill(server.pid, 19)  # SIGSTOP: SIGTERM stays pending, so only SIGKILL ends it
    started = time.monotonic()
    assert stop_qemu_nbd(server.pid, image, grace=0.5) is True
    assert time.monotonic() - started < 5
    assert not is_our_qemu_nbd(server.pid, image)


def test_start_failure_quotes_qemu(tmp_path):
    with pytest.raises(QemuError, match="exited"):
        start_qemu_nbd(
            tmp_path / "missing.qcow2",
            export_name="x",
            bind_address="127.0.0.1",
            port=free_port(),
            log_path=tmp_path / "nbd.log",
        )


def test_unsafe_export_names_are_refused(tmp_path):
    for name in ("../x", "a b", "", "x;rm"):
        with pytest.raises(ValueError):
            start_qemu_nbd(tmp_path / "x", export_name=name, bind_address="127.0.0.1", port=free_port())
