"""NBD over TLS: qemu-nbd with qemu's x509 credentials, our NBD client, the hub's settings and the agent.

Only a client holding the hub CA's trust and a certificate signed by it may write to an export; everything
else fails before the first byte, with a message that says what to configure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig, NbdTlsSettings
from agent.dataplane.copy import copy_disk
from clients.qemu import NbdServer, create_qcow2, start_qemu_nbd, stop_qemu_nbd
from common.nbd import NBDClient, NBDError
from infra.lab.pki import NbdPKI, make_test_pki
from vmferry.settings import PortRange, Settings

MiB = 2**20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> NbdPKI:
    return make_test_pki(tmp_path_factory.mktemp("nbd-pki"))


def _context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
def agent_tls(pki: NbdPKI) -> ssl.SSLContext:
    """What the agent builds from its nbd_tls section."""
    settings = NbdTlsSettings(ca_file=str(pki.ca_file), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    return settings.ssl_context()


def _free_port(port_range: str, taken: set[int]) -> int:
    """A free port from the top of this run's range (the backup test's leases start at the bottom)."""
    for port in reversed(list(PortRange.parse(port_range))):
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port in {port_range}")


@pytest.fixture
def serve(tmp_path: Path, nbd_port_range: str) -> Iterator:
    """Start qemu-nbd on a fresh 8 MiB qcow2 the way the hub does (clients.qemu.start_qemu_nbd)."""
    started: list[NbdServer] = []
    taken: set[int] = set()

    def start(name: str = "disk", **tls: object) -> NbdServer:
        path = create_qcow2_at(tmp_path / f"{name}.qcow2")
        server = start_qemu_nbd(
            path,
            export_name=name,
            bind_address="127.0.0.1",
            port=_free_port(nbd_port_range, taken),
            log_path=tmp_path / f"{name}.log",
            **tls,  # type: ignore[arg-type]
        )
        started.append(server)
        return server

    yield start
    for server in started:
        stop_qemu_nbd(server.pid, server.file_path)


def create_qcow2_at(path: Path) -> Path:
    create_qcow2(path, 8 * MiB)
    return path


def _argv(pid: int) -> list[str]:
    return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]


# -- the NBD client against qemu-nbd with TLS -------------------------------------------------------------------


def test_mutual_tls_writes_and_reads_back(serve, pki: NbdPKI, agent_tls: ssl.SSLContext, tmp_path: Path):
    server = serve(tls_creds_dir=pki.hub_dir)
    assert server.url.startswith("nbds://127.0.0.1:")
    argv = _argv(server.pid)
    assert "--tls-creds" in argv
    assert f"tls-creds-x509,id=tls0,endpoint=server,dir={pki.hub_dir},verify-peer=on" in argv

    data = os.urandom(3 * MiB + 512)  # larger than the joined-header limit, and a small write below
    with NBDClient(server.url, tls=agent_tls, block_status=True) as client:
        assert client.size == 8 * MiB and client.can_block_status
        assert (client.tls_session or "").startswith("TLSv1.3 ")
        client.write(4096, data)
        client.write(0, b"vmferry")
        client.flush()
        assert client.read(4096, len(data)) == data
        assert client.read(0, 7) == b"vmferry"
        assert client.block_status(5 * MiB, MiB)[0][2] != 0  # never written: a hole

    # The copy engine over several TLS connections: its writes read back byte for byte.
    source = tmp_path / "source.raw"
    content = bytearray(8 * MiB)
    content[MiB : 2 * MiB] = os.urandom(MiB)
    content[6 * MiB + 123 : 6 * MiB + 200] = b"\x01" * 77
    source.write_bytes(bytes(content))
    result = copy_disk(source, server.url, tls=agent_tls, connections=2, block_size=MiB, target_is_zero=False)
    assert result.connections == 2
    with NBDClient(server.url, tls=agent_tls) as client:
        assert hashlib.sha256(client.read(0, 8 * MiB)).digest() == hashlib.sha256(content).digest()


def test_a_plaintext_client_is_told_the_export_requires_tls(serve, pki: NbdPKI):
    server = serve(tls_creds_dir=pki.hub_dir)
    plain = server.url.replace("nbds://", "nbd://")
    for block_status in (False, True):
        with pytest.raises(NBDError, match=r"requires TLS.*nbds://.*nbd_tls"):
            NBDClient(plain, block_status=block_status)


def test_a_client_trusting_another_ca_refuses_the_server(serve, pki: NbdPKI):
    server = serve(tls_creds_dir=pki.hub_dir)
    wrong_trust = _context(pki.other_ca_file, pki.client_cert, pki.client_key)
    with pytest.raises(NBDError, match="server's certificate was refused"):
        NBDClient(server.url, tls=wrong_trust)


def test_clients_without_a_certificate_of_the_ca_are_refused(serve, pki: NbdPKI):
    server = serve(tls_creds_dir=pki.hub_dir)
    for refused in (
        _context(pki.ca_file),  # no client certificate at all
        _context(pki.ca_file, pki.other_client_cert, pki.other_client_key),  # signed by another CA
    ):
        with pytest.raises(NBDError, match="needs a client certificate signed by its CA"):
            NBDClient(server.url, tls=refused)


def test_an_allow_list_lets_in_only_the_named_clients(serve, pki: NbdPKI, agent_tls: ssl.SSLContext):
    server = serve(tls_creds_dir=pki.hub_dir, tls_allowed_clients=["CN=vmferry-agent"])  # the hub's check passed
    argv = _argv(server.pid)
    assert argv[argv.index("--tls-authz") + 1] == "vmferry-authz"
    with NBDClient(server.url, tls=agent_tls) as client:
        client.write(0, b"listed")
        assert client.read(0, 6) == b"listed"
    # signed by the same CA, but not named: refused after the TLS handshake
    with pytest.raises(NBDError, match="closed the TLS connection"):
        NBDClient(server.url, tls=_context(pki.ca_file, pki.unlisted_client_cert, pki.unlisted_client_key))
    with pytest.raises(ValueError, match="needs TLS credentials with client verification on"):
        serve("other", tls_creds_dir=pki.hub_dir, tls_verify_peer=False, tls_allowed_clients=["CN=vmferry-agent"])


def test_settings_refuse_an_allow_list_without_client_verification(pki: NbdPKI, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VMFERRY_NBD_TLS_ALLOWED_CLIENTS", '["CN=vmferry-agent"]')
    with pytest.raises(ValidationError, match="needs VMFERRY_NBD_TLS_DIR"):
        Settings()
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(pki.hub_dir))
    assert Settings().nbd_tls_allowed_clients == ["CN=vmferry-agent"]
    monkeypatch.setenv("VMFERRY_NBD_TLS_VERIFY_CLIENT", "false")
    with pytest.raises(ValidationError, match="VMFERRY_NBD_TLS_VERIFY_CLIENT on"):
        Settings()


def test_without_client_verification_a_ca_file_is_enough(serve, pki: NbdPKI, tmp_path: Path):
    hub_dir = tmp_path / "hub-no-client-cert"
    hub_dir.mkdir()
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem", "dh-params.pem"):
        shutil.copy2(pki.hub_dir / name, hub_dir / name)
    server = serve(tls_creds_dir=hub_dir, tls_verify_peer=False)
    assert any(arg.endswith(",verify-peer=off") for arg in _argv(server.pid))
    with NBDClient(server.url, tls=_context(pki.ca_file)) as client:
        client.write(0, b"no client certificate needed")
        assert client.read(0, 28) == b"no client certificate needed"


def test_nbds_never_falls_back_to_plaintext(serve, agent_tls: ssl.SSLContext):
    server = serve()
    assert server.url.startswith("nbd://")
    with pytest.raises(NBDError, match=r"does not offer TLS.*never used in plaintext"):
        NBDClient(server.url.replace("nbd://", "nbds://"), tls=agent_tls)
    with pytest.raises(NBDError, match="needs a TLS context"):
        NBDClient(server.url.replace("nbd://", "nbds://"))


# -- the hub's settings -----------------------------------------------------------------------------------------


def _hub_copy(pki: NbdPKI, tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    hub_dir = tmp_path / "hub"
    shutil.copytree(pki.hub_dir, hub_dir)
    for name in without:
        (hub_dir / name).unlink()
    return hub_dir


def test_settings_accept_a_complete_tls_dir(pki: NbdPKI, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(pki.hub_dir))
    settings = Settings()
    assert settings.nbd_tls_dir == pki.hub_dir and settings.nbd_tls_verify_client
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", "")
    assert Settings().nbd_tls_dir is None


@pytest.mark.parametrize(
    ("without", "env", "message"),
    [
        (("server-key.pem",), {}, r"has no server-key.pem: put the private key of server-cert.pem there"),
        (("ca-cert.pem",), {}, r"has no ca-cert.pem"),
        (("client-cert.pem", "client-key.pem"), {}, r"has no client-cert.pem: .*VMFERRY_NBD_TLS_VERIFY_CLIENT"),
        (("client-key.pem",), {"VMFERRY_NBD_TLS_VERIFY_CLIENT": "false"}, r"client-key.pem go together"),
        ((), {"VMFERRY_NBD_BIND_ADDRESS": "10.0.0.5"}, r"does not name 10.0.0.5 .*\(127.0.0.1, localhost\)"),
    ],
)
def test_settings_name_the_missing_file_and_the_fix(pki, tmp_path, monkeypatch, without, env, message):
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(_hub_copy(pki, tmp_path, without=without)))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_settings_refuse_a_readable_private_key(pki: NbdPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hub_dir = _hub_copy(pki, tmp_path)
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(hub_dir))
    os.chmod(hub_dir / "server-key.pem", 0o644)
    with pytest.raises(ValidationError, match=r"server-key.pem is a private key readable by group or others"):
        Settings()
    monkeypatch.setenv("VMFERRY_NBD_TLS_VERIFY_CLIENT", "false")
    monkeypatch.setenv("VMFERRY_NBD_BIND_ADDRESS", "0.0.0.0")  # listening everywhere: no name to check
    os.chmod(hub_dir / "server-key.pem", 0o600)
    for name in ("client-cert.pem", "client-key.pem"):
        (hub_dir / name).unlink()
    assert Settings().nbd_tls_verify_client is False


def test_export_url_follows_the_settings(pki: NbdPKI, monkeypatch: pytest.MonkeyPatch):
    import datetime as dt

    from catalog.exports import ExportView
    from vmferry.exports import export_url

    export = ExportView(
        id=1,
        vm_disk_id=1,
        job_id="j",
        export_name="vm1-disk-2000",
        bind_address="127.0.0.1",
        port=10100,
        file_path="/x.qcow2",
        pid=None,
        state="running",
        created_at=dt.datetime.now(dt.UTC),
        stopped_at=None,
    )
    monkeypatch.delenv("VMFERRY_NBD_TLS_DIR", raising=False)
    assert export_url(export) == "nbd://127.0.0.1:10100/vm1-disk-2000"
    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(pki.hub_dir))
    assert export_url(export) == "nbds://127.0.0.1:10100/vm1-disk-2000"
    assert export_url(export, tls=False) == "nbd://127.0.0.1:10100/vm1-disk-2000"


# -- the agent --------------------------------------------------------------------------------------------------


def _agent_config(**extra: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {"token": "t" * 32, "vcenter": {"host": "vcenter.invalid", "username": "u", "password": "p"}, **extra}
    )


def _submit_to_agent(config: AgentConfig, nbd_url: str) -> tuple[int, str, int]:
    """POST one job with one target to an in-process agent: (status, detail, status of a GET of the job after)."""
    import asyncio

    import httpx

    from agent.service import create_app

    body = {
        "job_id": "tls-check",
        "vm": "vm-42",
        "kind": "full",
        "targets": [{"disk_key": 2000, "nbd_url": nbd_url, "capacity_bytes": MiB}],
    }
    headers = {"Authorization": f"Bearer {'t' * 32}"}

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(config))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            posted = await http.post("/api/v1/jobs", json=body, headers=headers)
            return posted, await http.get("/api/v1/jobs/tls-check", headers=headers)

    posted, status = asyncio.run(exchange())
    return posted.status_code, posted.json().get("detail", ""), status.status_code


def test_agent_refuses_nbds_targets_at_submission_without_nbd_tls():
    # Refused before vCenter is contacted: its host does not even resolve.
    code, detail, after = _submit_to_agent(_agent_config(), "nbds://10.0.0.5:10100/vm1-disk-2000")
    assert code == 422
    assert "nbds://10.0.0.5:10100/vm1-disk-2000 require TLS" in detail and "nbd_tls" in detail
    assert after == 404


def test_an_agent_requiring_tls_refuses_plain_targets(pki: NbdPKI):
    tls = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    code, detail, after = _submit_to_agent(
        _agent_config(nbd_tls={**tls, "required": True}), "nbd://10.0.0.5:10100/vm1-disk-2000"
    )
    assert code == 422 and after == 404
    assert "nbd://10.0.0.5:10100/vm1-disk-2000 are plain NBD" in detail and "VMFERRY_NBD_TLS_DIR" in detail
    # without `required` the hub decides: the same target passes this check (and fails later on vCenter)
    code, detail, _ = _submit_to_agent(_agent_config(nbd_tls=tls), "nbd://10.0.0.5:10100/vm1-disk-2000")
    assert "plain NBD" not in detail


def test_agent_nbd_tls_section_is_checked(pki: NbdPKI, tmp_path: Path):
    from agent.jobs import JobManager

    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        _agent_config(nbd_tls={"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert)})
    readable_key = tmp_path / "client-key.pem"
    shutil.copy(pki.client_key, readable_key)
    os.chmod(readable_key, 0o644)
    tls = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert), "key_file": str(readable_key)}
    with pytest.raises(PermissionError, match="chmod 600"):
        JobManager(_agent_config(nbd_tls=tls))
    manager = JobManager(_agent_config(nbd_tls={**tls, "key_file": str(pki.client_key)}))
    assert manager.nbd_tls is not None and manager.nbd_tls.check_hostname


# -- end to end: a backup whose exports speak TLS only ----------------------------------------------------------


@pytest.mark.usefixtures("prefect_backend", "nbd_port_range")
def test_backup_over_mutual_tls(
    pki, make_scratch_vm, lab, lab_vcenter_block, repository_block, configured_catalog, tmp_path, monkeypatch
):
    import flows.copy
    import vmferry.exports
    from blocks.agent import Agent
    from clients.qemu import content_sha256
    from flows.backup import backup_vm
    from infra.lab.agent import start_agent
    from infra.lab.mutate import read_disk_bytes
    from tests.copy.helpers import assert_nothing_left

    monkeypatch.setenv("VMFERRY_NBD_TLS_DIR", str(pki.hub_dir))
    monkeypatch.setenv("VMFERRY_NBD_TLS_ALLOWED_CLIENTS", '["CN=vmferry-agent"]')  # the agent's certificate only
    name = make_scratch_vm(disks=2)

    # What the hub really started and really sent, recorded on the way through.
    argvs: list[list[str]] = []
    start = vmferry.exports.start_qemu_nbd

    def recording_start(*args, **kwargs):
        server = start(*args, **kwargs)
        argvs.append(_argv(server.pid))
        return server

    urls: list[str] = []
    submit = flows.copy.submit_agent_job

    def recording_submit(agent, request):
        urls.extend(target.nbd_url for target in request.targets)
        return submit(agent, request)

    monkeypatch.setattr(vmferry.exports, "start_qemu_nbd", recording_start)
    monkeypatch.setattr(flows.copy, "submit_agent_job", recording_submit)

    agent_process = start_agent(
        lab.vcenter,
        tmp_path / "agent",
        nbd_tls=NbdTlsSettings(ca_file=str(pki.ca_file), cert_file=str(pki.client_cert), key_file=str(pki.client_key)),
    )
    try:
        agent = Agent(url=agent_process.url, token=agent_process.token)
        point = backup_vm(name, repository_block, agent, lab_vcenter_block)
    finally:
        agent_process.stop()

    assert point.state == "committed" and len(point.disks) == 2
    assert len(urls) == 2 and all(url.startswith("nbds://127.0.0.1:") for url in urls)
    assert len(argvs) == 2
    for argv in argvs:
        assert "--tls-creds" in argv and any("verify-peer=on" in arg for arg in argv)
        assert argv[argv.index("--tls-authz") + 1] == "vmferry-authz"
        assert '"match": "CN=vmferry-agent"' in argv[argv.index("--tls-authz") - 1]
    repo = repository_block.repository()
    for disk in point.disks:
        expected = hashlib.sha256(read_disk_bytes(lab.vcenter, name, disk.device_key)).hexdigest()
        assert disk.checksum == expected
        assert content_sha256(repo.absolute(disk.file_path)) == expected
    assert_nothing_left(configured_catalog, lab, name, [])
