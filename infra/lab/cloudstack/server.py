"""The CloudStack API simulator: CloudStack's wire format at ``/client/api``, signed requests, async jobs, and
a small admin API at ``/_sim/`` for tests (fault injection, ids, volume files).

Wire format as apache/cloudstack's ApiServlet / ApiServer / ApiResponseSerializer / ApiAsyncJobDispatcher:
- every answer is ``{"<command lower-case>response": {...}}``; errors carry ``uuidList, errorcode, cserrorcode,
  errortext`` and the HTTP status is the errorcode (401 bad signature, 431 parameter error, 530 internal error);
- a request naming a command that does not exist gets 432 "The given command does not exist or it is not
  available for user" before anything else is checked; one that fails verification gets 401 and "unable to verify
  user credentials and/or request signature"; a known key whose user may not use the command (an admin-only
  command with a user's keys) gets 432 "The given command:<name> does not exist or it is not available for user
  with id:null" before its signature is compared (ApiServer.verifyRequest; response name ``errorresponse``);
- top-level parameter names are case-insensitive (ParamUnpackWorker lower-cases them); the keys inside a map
  parameter (``details[0].cpuNumber``) are kept exactly as sent;
- async commands answer ``{"jobid"}`` (create-style commands ``{"id", "jobid"}``); queryAsyncJobResult gives
  jobstatus 0/1/2, jobresultcode, jobresulttype "object" and jobresult ``{"volume": {...}}`` or, on failure,
  ``{"errorcode", "errortext"}`` with jobresultcode 431 for invalid-parameter errors, else 530.
Without ``response=json`` the answer is XML, CloudStack's default (ApiResponseSerializer.toXMLSerializedString).
Two key pairs exist: the root admin's (``api_key``) and a plain user's (``user_api_key``), who gets the
restricted response view (no ``path``/``storage``/``storageid`` on volumes) and 432 for admin-only commands.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from infra.lab.cloudstack.api import COMMANDS, AsyncWork, Command, Param, process_parameters
from infra.lab.cloudstack.cloud import ACCOUNT_ID, KVM_MAX_DATA_VOLUMES, ApiError, Cloud, cs_time, now
from infra.lab.cloudstack.signature import verify_request

log = logging.getLogger("vmferry.cloudstack_simulator")

API_PATH = "/client/api"
ADMIN_PREFIX = "/_sim"
UNVERIFIED = "unable to verify user credentials and/or request signature"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
XML_CONTENT_TYPE = "text/xml; charset=UTF-8"
CLOUDSTACK_VERSION = "4.19.1.0"
UNSUPPORTED = "The given command does not exist or it is not available for user"
# ApiErrorCode.UNSUPPORTED_ACTION_ERROR
UNSUPPORTED_ACTION = 432
_MAP_PARAM = re.compile(r"^(?P<name>[^\[]+)(?P<rest>\[.*)$")
FAULT_KINDS = ("error", "timeout", "job-failure")
USER_ID = "8a1c1d2a-0e5f-11ef-9b1d-0242ac110002"


def error_body(response_name: str, errorcode: int, errortext: str, cserrorcode: int | None = None) -> dict[str, Any]:
    """ExceptionResponse as ApiResponseSerializer writes it (cserrorcode only when the exception had one)."""
    inner: dict[str, Any] = {"uuidList": [], "errorcode": errorcode}
    if cserrorcode is not None:
        inner["cserrorcode"] = cserrorcode
    inner["errortext"] = errortext
    return {response_name: inner}


def unpack_names(params: dict[str, str]) -> dict[str, str]:
    """ParamUnpackWorker: every top-level name lower-cased; in ``name[0].key`` only ``name`` is."""
    out: dict[str, str] = {}
    for name, value in params.items():
        match = _MAP_PARAM.match(name)
        key = match["name"].lower() + match["rest"] if match else name.lower()
        out.setdefault(key, value)
    return out


def _xml_value(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_xml_value(name, item) for item in value)
    if isinstance(value, dict):
        return f"<{name}>{''.join(_xml_value(k, v) for k, v in value.items())}</{name}>"
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"<{name}>{escape(text)}</{name}>"


def xml_body(body: dict[str, Any]) -> str:
    """ApiResponseSerializer's XML: the response element carries cloud-stack-version; lists repeat their
    element; empty lists (uuidList) are left out."""
    [(name, inner)] = body.items()
    children = "".join(_xml_value(k, v) for k, v in inner.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><{name} cloud-stack-version="{CLOUDSTACK_VERSION}">{children}</{name}>'
    )


@dataclass
class Fault:
    """The ``nth`` next call of ``command`` (counted from when the fault is added) fails as ``kind`` says."""

    command: str
    kind: str = "error"
    nth: int = 1
    errortext: str | None = None
    errorcode: int = 530
    cserrorcode: int = 4250
    hang_seconds: float = 60.0
    execute: bool = False  # timeout only: do the work, then lose the answer
    seen: int = 0

    @property
    def text(self) -> str:
        return self.errortext or f"Simulated failure of {self.command}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    id: str
    command: Command
    work: AsyncWork
    due: float
    fault: Fault | None
    created: datetime = field(default_factory=now)
    status: int = 0
    result_code: int = 0
    result: dict[str, Any] | None = None
    completed: datetime | None = None

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accountid": ACCOUNT_ID,
            "userid": USER_ID,
            "cmd": self.command.cmd_class,
            "jobstatus": self.status,
            "jobprocstatus": 0,
            "jobresultcode": self.result_code,
        }
        if self.result is not None:
            out["jobresulttype"] = "object"
            out["jobresult"] = self.result
        if self.work.instance_id:
            out["jobinstancetype"] = self.work.instance_type
            out["jobinstanceid"] = self.work.instance_id
        out["created"] = cs_time(self.created)
        if self.completed is not None:
            out["completed"] = cs_time(self.completed)
        out["jobid"] = self.id
        return out


@dataclass(frozen=True)
class SimulatorInfo:
    """What a client (or a test) needs to talk to a running simulator."""

    url: str  # the API endpoint, .../client/api
    admin_url: str
    api_key: str
    secret_key: str
    zone_id: str
    custom_disk_offering_id: str
    fixed_disk_offering_id: str
    service_offering_id: str
    custom_service_offering_id: str
    template_id: str
    hub_vm_id: str
    state_dir: str
    dev_root: str
    max_data_disks: int
    user_api_key: str = ""  # a plain user's keys: restricted view, no admin-only commands
    user_secret_key: str = ""
    isolated_network_id: str = ""
    shared_network_id: str = ""
    cluster_id: str = ""
    primary_pool_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sim: CloudStackSimulator


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, keep-alive clients wait for a delayed ACK each call
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    wants_xml = False

    def _dispatch(self, method: str) -> None:
        self.wants_xml = False  # per request: a keep-alive connection reuses the handler
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sim = self.server.sim
        if split.path == API_PATH and method in ("GET", "POST"):
            try:
                pairs = parse_qsl(split.query, keep_blank_values=True, errors="strict")
                if method == "POST" and "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                    pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
            except (UnicodeDecodeError, ValueError):
                self._send(400, {"errorresponse": {"errortext": "malformed request"}})
                return
            params: dict[str, str] = {}
            for name, value in pairs:
                params.setdefault(name, value)  # a servlet's getParameter: the first value wins
            sim._serve_api(self, params)
        elif split.path.startswith(ADMIN_PREFIX + "/") and sim.admin:
            status, answer = sim._serve_admin(method, split.path[len(ADMIN_PREFIX) :], split.query, body)
            self._send(status, answer)
        else:
            self._send(404, {"error": f"nothing at {split.path}"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        if self.wants_xml:
            data, content_type = xml_body(body).encode("utf-8"), XML_CONTENT_TYPE
        else:
            data, content_type = json.dumps(body).encode("utf-8"), JSON_CONTENT_TYPE
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class CloudStackSimulator:
    """A CloudStack management server for tests and the lab. ``start()`` serves in a thread; ``stop()`` ends it.

    At start-up the cloud holds one zone, a custom-size and a fixed-size disk offering, one service offering,
    one template and the hub VM (Running). Volumes attached to the running hub appear as
    ``<state_dir>/dev/disk/by-id/virtio-<serial>`` symlinks to their sparse files.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        secret_key: str | None = None,
        job_delay: float = 0.1,
        max_data_disks: int = KVM_MAX_DATA_VOLUMES,
        hub_vm_id: str | None = None,
        admin: bool = True,
        default_page_size: int = 500,
        hub_disk_bus: str = "virtio-blk",
        boot_vms: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.secret_key = secret_key or secrets.token_urlsafe(32)
        self.user_api_key = secrets.token_urlsafe(24)
        self.user_secret_key = secrets.token_urlsafe(32)
        self.default_page_size = default_page_size  # default.page.size (also the largest page allowed)
        self.job_delay = job_delay
        self.admin = admin
        self.cloud = Cloud(
            self.state_dir, max_data_disks=max_data_disks, hub_vm_id=hub_vm_id, hub_disk_bus=hub_disk_bus
        )
        if boot_vms:
            from infra.lab.cloudstack.hypervisor import QemuHypervisor

            self.cloud.hypervisor = QemuHypervisor(self.state_dir / "vms")
        self.calls: Counter[str] = Counter()  # verified API calls per command, e.g. to count a client's retries
        self._lock = threading.RLock()
        self._jobs_changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._faults: list[Fault] = []
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._query_job = Command("queryAsyncJobResult", (Param("jobid", "uuid", True, "job"),), self._query_job_result)

    # ---- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> CloudStackSimulator:
        httpd = _Server((self.host, self.port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._run_jobs, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("CloudStack simulator at %s (state in %s)", self.url, self.state_dir)
        return self

    def stop(self) -> None:
        self._stopping.set()  # also releases requests hanging for a timeout fault
        with self._jobs_changed:
            self._jobs_changed.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self.cloud.hypervisor is not None:
            self.cloud.hypervisor.stop_all()

    def __enter__(self) -> CloudStackSimulator:
        return self.start() if self._httpd is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what tests use --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PATH}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.port}{ADMIN_PREFIX}"

    @property
    def hub_vm_id(self) -> str:
        return self.cloud.seed.hub_vm_id

    @property
    def dev_root(self) -> Path:
        return self.cloud.dev_root

    def info(self) -> SimulatorInfo:
        seed = self.cloud.seed
        return SimulatorInfo(
            url=self.url,
            admin_url=self.admin_url,
            api_key=self.api_key,
            secret_key=self.secret_key,
            zone_id=seed.zone_id,
            custom_disk_offering_id=seed.custom_disk_offering_id,
            fixed_disk_offering_id=seed.fixed_disk_offering_id,
            service_offering_id=seed.service_offering_id,
            custom_service_offering_id=seed.custom_service_offering_id,
            template_id=seed.template_id,
            hub_vm_id=seed.hub_vm_id,
            state_dir=str(self.state_dir),
            dev_root=str(self.cloud.dev_root),
            max_data_disks=self.cloud.max_data_disks,
            user_api_key=self.user_api_key,
            user_secret_key=self.user_secret_key,
            isolated_network_id=seed.isolated_network_id,
            shared_network_id=seed.shared_network_id,
            cluster_id=seed.cluster_id,
            primary_pool_id=seed.primary_pool_id,
        )

    def volume_file(self, volume_id: str) -> Path:
        """The sparse file behind a volume (it exists once the volume is Ready)."""
        return self.cloud.volumes_dir / f"{volume_id}.img"

    def add_hub(self, name: str) -> str:
        """Another running hub VM (a hub pool); its attached volumes show under the same dev root."""
        with self._lock:
            return self.cloud.add_hub_vm(name).id

    def volume_tags(self, volume_id: str) -> dict[str, str]:
        with self._lock:
            return {t.key: t.value for t in self.cloud.tags_of("Volume", volume_id)}

    def inject_fault(
        self,
        command: str,
        nth: int = 1,
        kind: str = "error",
        errortext: str | None = None,
        *,
        errorcode: int = 530,
        cserrorcode: int = 4250,
        hang_seconds: float = 60.0,
        execute: bool = False,
    ) -> Fault:
        """Make the ``nth`` next call of ``command`` fail.

        ``error``: answered with CloudStack's error shape and HTTP status ``errorcode``, nothing done.
        ``timeout``: the answer hangs ``hang_seconds`` (or until stop), then the connection closes unanswered;
        with ``execute=True`` the command is carried out first and only its answer is lost.
        ``job-failure`` (async commands): accepted, and its job ends jobstatus 2 with ``errorcode``/``errortext``
        while the work is not done.
        """
        known = self._query_job if command == self._query_job.name else COMMANDS.get(command)
        if known is None:
            raise ValueError(f"the simulator does not implement {command}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        if kind == "job-failure" and not known.is_async:
            raise ValueError(f"{command} is synchronous: it has no job to fail")
        if nth < 1:
            raise ValueError("nth counts from 1")
        fault = Fault(command, kind, nth, errortext, errorcode, cserrorcode, hang_seconds, execute)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    # ---- the API ---------------------------------------------------------------------------------------------

    def _serve_api(self, handler: _Handler, raw: dict[str, str]) -> None:
        params = unpack_names(raw)
        handler.wants_xml = (params.get("response") or "").lower() != "json"
        name = params.get("command")
        command = self._query_job if name == self._query_job.name else COMMANDS.get(name or "")
        if name is not None and command is None:
            # verifyRequest looks the command up before anything else
            handler._send(UNSUPPORTED_ACTION, error_body("errorresponse", UNSUPPORTED_ACTION, UNSUPPORTED, 9999))
            return
        keys = {self.api_key: self.secret_key, self.user_api_key: self.user_secret_key}
        admin_only = command is not None and command.admin_only
        verdict = verify_request(  # the signature covers the names as sent
            raw, keys, available=lambda key: key == self.api_key or not admin_only
        )
        if verdict.unavailable:
            # checkCommandAvailable for a known key, before the signature is compared; userId is null here
            text = f"The given command:{name} does not exist or it is not available for user with id:null"
            handler._send(UNSUPPORTED_ACTION, error_body("errorresponse", UNSUPPORTED_ACTION, text, 9999))
            return
        if not verdict.ok or command is None:
            log.info("refused %s: %s", name, verdict.reason)
            response_name = command.response_name if command is not None else "errorresponse"
            handler._send(401, error_body(response_name, 401, UNVERIFIED))
            return
        admin = params.get("apikey") == self.api_key
        fault = self._take_fault(command.name)
        if fault is not None and fault.kind == "error":
            body = error_body(command.response_name, fault.errorcode, fault.text, fault.cserrorcode)
            handler._send(fault.errorcode, body)
            return
        if fault is not None and fault.kind == "timeout":
            if fault.execute:
                self._execute(command, params, None, admin)
            self._stopping.wait(fault.hang_seconds)
            handler.close_connection = True
            return
        status, body = self._execute(command, params, fault, admin)
        handler._send(status, body)

    def _take_fault(self, command: str) -> Fault | None:
        with self._lock:
            self.calls[command] += 1
            fired = None
            for fault in list(self._faults):
                if fault.command != command:
                    continue
                fault.seen += 1
                if fault.seen == fault.nth and fired is None:
                    fired = fault
                    self._faults.remove(fault)
            return fired

    def _resolve(self, kind: str, entity_id: str) -> Any | None:
        if kind == "job":
            return self._jobs.get(entity_id)
        return self.cloud.resolve(kind, entity_id)

    def _execute(
        self, command: Command, raw: dict[str, str], fault: Fault | None, admin: bool = True
    ) -> tuple[int, dict[str, Any]]:
        name = command.response_name
        try:
            with self._lock:
                values = process_parameters(command, raw, self._resolve, admin=admin)
                values["_page_size"] = self.default_page_size
                outcome = command.handler(self.cloud, values)
                if isinstance(outcome, AsyncWork):
                    job = Job(str(uuid.uuid4()), command, outcome, time.monotonic() + self.job_delay, fault)
                    self._jobs[job.id] = job
                    self._pending.append(job)
                    self._pending.sort(key=lambda j: j.due)
                    self._jobs_changed.notify_all()
                    answer = {"id": outcome.created_id, "jobid": job.id} if outcome.created_id else {"jobid": job.id}
                    return 200, {name: answer}
                return 200, {name: outcome}
        except ApiError as exc:
            return exc.errorcode, error_body(name, exc.errorcode, exc.errortext, exc.cserrorcode)
        except Exception as exc:
            log.error("simulator bug in %s: %s", command.name, traceback.format_exc())
            return 530, error_body(name, 530, f"simulator error: {exc}", 9999)

    def _query_job_result(self, cloud: Cloud, values: dict[str, Any]) -> dict[str, Any]:
        job: Job = values["jobid"]
        return job.response()

    # ---- async jobs ------------------------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        with self._jobs_changed:
            while not self._stopping.is_set():
                if not self._pending:
                    self._jobs_changed.wait(0.5)
                    continue
                wait = self._pending[0].due - time.monotonic()
                if wait > 0:
                    self._jobs_changed.wait(wait)
                    continue
                self._finish(self._pending.pop(0))

    def _finish(self, job: Job) -> None:
        try:
            if job.fault is not None:
                raise ApiError(job.fault.text, errorcode=job.fault.errorcode)
            result = job.work.run()
        except ApiError as exc:
            # ApiAsyncJobDispatcher: InvalidParameterValueException -> 431, anything else -> 530
            job.status, job.result_code = 2, exc.errorcode
            job.result = {"errorcode": exc.errorcode, "errortext": exc.errortext}
            self._compensate(job)
        except Exception as exc:
            log.error("simulator bug in job %s: %s", job.command.name, traceback.format_exc())
            job.status, job.result_code = 2, 530
            job.result = {"errorcode": 530, "errortext": f"simulator error: {exc}"}
            self._compensate(job)
        else:
            job.status, job.result_code, job.result = 1, 0, result
        job.completed = now()

    @staticmethod
    def _compensate(job: Job) -> None:
        if job.work.on_failure is not None:
            job.work.on_failure()

    # ---- admin API (not CloudStack's) ------------------------------------------------------------------------

    def vm_console(self, vm_id: str) -> str:
        """The serial console of a VM the lab hypervisor ran ("" without the boot_vms option)."""
        hypervisor = self.cloud.hypervisor
        return hypervisor.console(vm_id) if hypervisor is not None else ""

    def _vm_console(self, vm_id: str) -> tuple[int, dict[str, Any]]:
        hypervisor = self.cloud.hypervisor
        if hypervisor is None:
            return 404, {"error": "this simulator does not run VMs: start it with --boot-vms"}
        running = hypervisor.vm(vm_id)
        return 200, {"console": hypervisor.console(vm_id), "running": bool(running and running.running())}

    def _serve_admin(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            if path == "/info" and method == "GET":
                return 200, self.info().to_dict()
            if path == "/faults":
                if method == "GET":
                    return 200, {"faults": [f.to_dict() for f in self.faults()]}
                if method == "DELETE":
                    self.clear_faults()
                    return 200, {"faults": []}
                if method == "POST":
                    spec = json.loads(body or b"{}")
                    settable = set(Fault.__dataclass_fields__) - {"seen"}
                    unknown = set(spec) - settable
                    if unknown:
                        return 400, {"error": f"unknown fault fields: {sorted(unknown)}"}
                    return 200, self.inject_fault(**spec).to_dict()
            if path == "/config" and method == "POST":
                spec = json.loads(body or b"{}")
                if "job_delay" in spec:
                    self.job_delay = float(spec["job_delay"])
                return 200, {"job_delay": self.job_delay}
            if path.startswith("/vms/") and path.endswith("/console") and method == "GET":
                return self._vm_console(path[len("/vms/") : -len("/console")])
            if path.startswith("/volumes/") and method == "GET":
                file = self.volume_file(path[len("/volumes/") :])
                return 200, {"file": str(file), "exists": file.exists()}
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": f"no admin endpoint {method} {path}"}
