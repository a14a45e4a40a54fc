"""Start, reach and stop the lab's vCenter (our patched vcsim build)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from common.vsphere import CertificateNotTrusted, certificate_thumbprint, pinned_ssl_context
from infra.lab.build import BINARY_NAME, ensure_vcsim_binary

# The lab verifies its vCenter exactly as production does; these names stay for the lab's callers.
ThumbprintMismatchError = CertificateNotTrusted
__all__ = ["ThumbprintMismatchError", "pinned_ssl_context"]

INFO_FILE = "vcsim.json"
LOG_FILE = "vcsim.log"
TMP_DIR = "tmp"

# Popen handles of the vcsim processes this interpreter started: stop() must reap them, or a stopped child
# lingers as a zombie that still looks alive to os.kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LabError(RuntimeError):
    """The lab vCenter could not be started, reached or verified."""


@dataclass(frozen=True)
class LabVCenter:
    """A running lab vCenter. thumbprint is the SHA-1 of its certificate in "AA:BB:..." form."""

    host: str
    port: int
    user: str
    password: str
    thumbprint: str
    pid: int
    datacenter: str
    datastore: str
    url: str
    workdir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabVCenter:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def format_thumbprint(der: bytes) -> str:
    return certificate_thumbprint(der, "sha1")


def connect(lab: LabVCenter) -> vim.ServiceInstance:
    """Log in to the lab vCenter with pyvmomi, verifying its certificate against the recorded thumbprint."""
    context = pinned_ssl_context(lab.host, lab.port, lab.thumbprint)
    return SmartConnect(
        host=lab.host,
        port=lab.port,
        user=lab.user,
        pwd=lab.password,
        sslContext=context,
        thumbprint=lab.thumbprint,
    )


@contextlib.contextmanager
def session(lab: LabVCenter) -> Iterator[vim.ServiceInstance]:
    si = connect(lab)
    try:
        yield si
    finally:
        with contextlib.suppress(Exception):
            Disconnect(si)


def _proc_state(pid: int) -> str | None:
    """State letter from /proc/<pid>/stat (R, S, Z, ...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def _is_vcsim_process(pid: int) -> bool:
    """True if pid is a live (not zombie) vcsim of ours, so a recycled pid is never signalled."""
    if pid <= 0:
        return False
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name == BINARY_NAME


def _answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_running(lab: LabVCenter) -> bool:
    return _is_vcsim_process(lab.pid) and _answers(lab.host, lab.port)


def _log_tail(workdir: Path, limit: int = 4000) -> str:
    try:
        return (workdir / LOG_FILE).read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""


def _discover_names(si: vim.ServiceInstance) -> tuple[str, str]:
    """First datacenter and its first datastore: vcsim's VPX model has one of each (DC0, LocalDS_0)."""
    for entity in si.content.rootFolder.childEntity:
        if isinstance(entity, vim.Datacenter):
            if not entity.datastore:
                raise LabError(f"datacenter {entity.name} has no datastore")
            return entity.name, entity.datastore[0].name
    raise LabError("no datacenter in the lab vCenter")


def start_vcsim(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    binary: Path | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> LabVCenter:
    """Start vcsim in its own session with workdir as its private state and temp dir; wait until it answers.

    vcsim keeps its datastore under $TMPDIR, which is pointed into workdir, so the lab never writes to /tmp
    and stopping the lab can remove everything it made.
    """
    binary = binary or ensure_vcsim_binary()
    workdir = workdir.resolve()
    tmp = workdir / TMP_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    info_path = workdir / INFO_FILE
    info_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)
    with (workdir / LOG_FILE).open("ab") as log:
        proc = subprocess.Popen(
            [str(binary), "-host", host, "-port", str(port), "-info", str(info_path), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            # Its own session: a Ctrl-C meant for the CLI that started the lab must not stop the lab.
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            raise LabError(f"vcsim exited with {proc.returncode}:\n{_log_tail(workdir)}")
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            break
        time.sleep(0.05)
    if info is None:
        _terminate(proc.pid)
        raise LabError(f"vcsim did not report its address within {timeout} s:\n{_log_tail(workdir)}")

    provisional = LabVCenter(
        host=info["host"],
        port=int(info["port"]),
        user=info["user"],
        password=info["password"],
        thumbprint=info["thumbprint_sha1"],
        pid=proc.pid,
        datacenter="",
        datastore="",
        url=f"https://{info['host']}:{info['port']}/sdk",
        workdir=str(workdir),
    )
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with session(provisional) as si:
                datacenter, datastore = _discover_names(si)
            break
        except (OSError, ssl.SSLError, vim.fault.VimFault) as exc:
            last_error = exc
            time.sleep(0.1)
    else:
        _terminate(proc.pid)
        raise LabError(f"vcsim did not answer within {timeout} s: {last_error}\n{_log_tail(workdir)}")
    return LabVCenter(**{**provisional.to_dict(), "datacenter": datacenter, "datastore": datastore})


def _wait_gone(pid: int, timeout: float) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        _CHILDREN.pop(pid, None)
        return True
    # Not our child (started by an earlier CLI call): its parent is init, which reaps it.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_vcsim_process(pid):
            return True
        time.sleep(0.05)
    return not _is_vcsim_process(pid)


def _terminate(pid: int, timeout: float = 10.0) -> None:
    if not _is_vcsim_process(pid):
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.poll()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, timeout):
        raise LabError(f"vcsim pid {pid} survived SIGKILL")


def stop_vcsim(lab: LabVCenter, *, timeout: float = 10.0) -> None:
    """Stop the lab vCenter: SIGTERM, wait, then SIGKILL. Safe to call on a lab that is already gone."""
    _terminate(lab.pid, timeout)


def tag_vms(lab: LabVCenter, category: str, tag: str, vm_names: Sequence[str]) -> list[str]:
    """Tag the lab VMs ``vm_names`` with ``category``/``tag`` (both made when missing) through vCenter's vAPI
    tagging REST API, as an operator's tooling would; returns the tagged VMs' morefs."""
    from clients.vsphere_tags import VSphereTags
    from common.vsphere import VSphereEndpoint

    with session(lab) as si:
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        try:
            morefs = {vm.name: vm._moId for vm in view.view if vm.name in vm_names}
        finally:
            view.Destroy()
    if missing := sorted(set(vm_names) - set(morefs)):
        raise LabError(f"the lab vCenter has no VM {missing}")
    endpoint = VSphereEndpoint(
        host=lab.host, port=lab.port, username=lab.user, password=lab.password, thumbprint=lab.thumbprint
    )
    with VSphereTags(endpoint) as tags:
        category_id = tags.categories().get(category) or tags.create_category(category)
        tag_id = tags.tags_of(category_id).get(tag) or tags.create_tag(category_id, tag)
        for name in vm_names:
            tags.attach(tag_id, morefs[name])
    return [morefs[name] for name in vm_names]
