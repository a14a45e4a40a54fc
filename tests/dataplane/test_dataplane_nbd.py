"""The NBD client against real qemu-nbd (and nbdkit where a server feature must be missing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from common.nbd import STATE_ZERO, NBDAddress, NBDClient, NBDError, parse_nbd_url

from .conftest import NBDServers, create_qcow2, free_port

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nbd://127.0.0.1:10809/disk-2000", NBDAddress("disk-2000", "127.0.0.1", 10809)),
        ("nbd://hub.example/", NBDAddress("", "hub.example", 10809)),
        ("nbd://hub.example", NBDAddress("", "hub.example", 10809)),
        ("nbd://[::1]:10900/a%20b/c", NBDAddress("a b/c", "::1", 10900)),
        ("nbd+unix:///vol?socket=/run/q.sock", NBDAddress("vol", None, 10809, "/run/q.sock")),
        ("nbds://127.0.0.1:10100/vm1-disk-2000", NBDAddress("vm1-disk-2000", "127.0.0.1", 10100, tls=True)),
    ],
)
def test_parse_nbd_url(url: str, expected: NBDAddress):
    assert parse_nbd_url(url) == expected
    assert parse_nbd_url(expected.url) == expected


@pytest.mark.parametrize(
    "url", ["http://x/y", "nbds+unix:///e?socket=/s", "nbd+unix:///e", "nbd:///e", "nbds:///e", "nbd://h:notaport/e"]
)
def test_parse_nbd_url_rejects(url: str):
    with pytest.raises(ValueError):
        parse_nbd_url(url)


def test_roundtrip_pipelined_and_split(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", 96 * MiB))
    data = os.urandom(40 * MiB)  # larger than qemu-nbd's 32 MiB request limit: split into two requests
    with NBDClient(server.url, max_in_flight=3) as client:
        assert client.size == 96 * MiB
        assert client.max_block == 32 * MiB
        assert client.can_flush and client.can_write_zeroes and not client.read_only
        client.write(0, data)
        cookies = []
        for i in range(16):  # many small requests in flight at once, completed in any order
            cookies += client.submit_write(48 * MiB + i * 65536, data[i * 65536 : (i + 1) * 65536])
        client.wait(cookies)
        client.write_zeroes(MiB, MiB)
        client.flush()
        assert client.read(0, MiB) == data[:MiB]
        assert client.read(MiB, MiB) == bytes(MiB)
        assert client.read(2 * MiB, 38 * MiB) == data[2 * MiB :]
        assert client.read(48 * MiB, MiB) == data[:MiB]
        assert client.in_flight == 0


def test_structured_replies_block_status_and_holes(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", 8 * MiB))
    with NBDClient(server.url) as writer:
        writer.write(MiB, b"\x01" * MiB)
    with NBDClient(server.url, block_status=True) as client:
        assert client.structured_replies and client.can_block_status
        extents = client.block_status(0, 8 * MiB)
        assert extents[0][0] == 0 and sum(length for _, length, _ in extents) <= 8 * MiB
        zero_map = [(off, length, bool(flags & STATE_ZERO)) for off, length, flags in extents]
        assert (0, MiB, True) in zero_map and (MiB, MiB, False) in zero_map
        # Reads over holes come back as OFFSET_HOLE chunks: the buffer must still be filled with zeros.
        buf = bytearray(b"\xff" * (3 * MiB))
        client.readinto(0, buf)
        assert buf == bytes(MiB) + b"\x01" * MiB + bytes(MiB)


def test_unknown_export_and_refused_connection(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", MiB), export="disk-2000")
    with pytest.raises(NBDError, match="NBD_REP_ERR_UNKNOWN") as info:
        NBDClient(f"nbd://127.0.0.1:{server.port}/disk-2001")
    assert info.value.export == "disk-2001"
    with pytest.raises(NBDError, match="cannot connect"):
        NBDClient(f"nbd://127.0.0.1:{free_port()}/x", connect_timeout=2)


def test_shared_limit_reached_gives_a_hint(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", MiB), shared=1)
    with NBDClient(server.url), pytest.raises(NBDError, match="--shared"):
        NBDClient(server.url, connect_timeout=1)


def test_errors_carry_code_export_offset(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", MiB), export="vol-7")
    with NBDClient(server.url) as client:
        with pytest.raises(NBDError) as info:
            client.read(MiB - 4096, 8192)
        assert info.value.code_name == "EINVAL"
        assert info.value.command == "READ" and info.value.offset == MiB - 4096
        assert "vol-7" in str(info.value) and "EINVAL" in str(info.value)
        # A refused request leaves the connection usable.
        assert client.read(0, 4096) == bytes(4096)
    ro = nbd_servers.start(create_qcow2(tmp_path / "ro.qcow2", MiB), read_only=True)
    with NBDClient(ro.url) as client, pytest.raises(NBDError, match="read-only"):
        client.write(0, b"x")


def test_timeout_is_an_nbd_error(tmp_path: Path, nbd_servers: NBDServers):
    server = nbd_servers.start(create_qcow2(tmp_path / "t.qcow2", MiB))
    client = NBDClient(server.url, timeout=0.5)
    server.proc.send_signal(19)  # SIGSTOP: the server stops answering
    try:
        with pytest.raises(NBDError, match="timed out"):
            client.read(0, 4096)
        with pytest.raises(NBDError, match="unusable"):
            client.read(0, 4096)
    finally:
        server.proc.send_signal(18)  # SIGCONT
        client.abort()


def test_write_zeroes_fallback_without_server_support(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--filter=nozero", "memory", "4M"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        from common.nbd import wait_for_server

        wait_for_server(f"nbd://127.0.0.1:{port}/", timeout=10)
        with NBDClient(f"nbd://127.0.0.1:{port}/") as client:
            assert not client.can_write_zeroes
            client.write(0, b"\x07" * MiB)
            client.write_zeroes(4096, MiB - 8192)
            assert client.read(0, MiB) == b"\x07" * 4096 + bytes(MiB - 8192) + b"\x07" * 4096
    finally:
        proc.terminate()
        proc.wait(timeout=10)
