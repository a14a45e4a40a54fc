"""The CloudStack API simulator: CloudStack's wire format at ``/client/api``, signed requests, async jobs, and
a small admin API at ``/_sim/`` for tests (fault injection, ids, volume files).

Wire format as apache/cloudstack's ApiServlet / ApiServer / ApiResponseSerializer / ApiAsyncJobDispatcher:
- every answer is ``{"<command lower-case>response": {...}}``; errors carry ``uuidList, errorcode, cserrorcode,
  errortext`` and the HTTP status is the errorcode (401 bad signature, 431 parameter error, 530 internal error);
- a request that fails verification, or names a command that does not exist, gets 401 and
  "unable to verify user credentials and/or request signature" (for an unknown command the response name is
  ``errorresponse``, as getSerializedApiError falls back to it);
- async commands answer ``{"jobid"}`` (create-style commands ``{"id", "jobid"}``); queryAsyncJobResult gives
  jobstatus 0/1/2, jobresultcode, jobresulttype "object" and jobresult ``{"volume": {...}}`` or, on failure,
  ``{"errorcode", "errortext"}`` with jobresultcode 431 for invalid-parameter errors, else 530.
Only ``response=json`` is answered; CloudStack's XML default is not implemented.
"""

from __future__ import annotations

import json
import logging
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

from infra.lab.cloudstack.api import COMMANDS, AsyncWork, Command, Param, process_parameters
from infra.lab.cloudstack.cloud import ApiError, Cloud, cs_time, now
from infra.lab.cloudstack.signature import verify_request

log = logging.getLogger("vmferry.cloudstack_simulator")

API_PATH = "/client/api"
ADMIN_PREFIX = "/_sim"
UNVERIFIED = "unable to verify user credentials and/or request signature"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
FAULT_KINDS = ("error", "timeout", "job-failure")
ACCOUNT_ID = "8a1c0c5e-0e5f-11ef-9b1d-0242ac110002"
USER_ID = "8a1c1d2a-0e5f-11ef-9b1d-0242ac110002"


def error_body(response_name: str, errorcode: int, errortext: str, cserrorcode: int | None = None) -> dict[str, Any]:
    """ExceptionResponse as ApiResponseSerializer writes it (cserrorcode only when the exception had one)."""
    inner: dict[str, Any] = {"uuidList": [], "errorcode": errorcode}
    if cserrorcode is not None:
        inner["cserrorcode"] = cserrorcode
    inner["errortext"] = errortext
    return {response_name: inner}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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

    def _dispatch(self, method: str) -> None:
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
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
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
        max_data_disks: int = 6,
        hub_vm_id: str | None = None,
        admin: bool = True,
        boot_vms: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.secret_key = secret_key or secrets.token_urlsafe(32)
        self.job_delay = job_delay
        self.admin = admin
        self.cloud = Cloud(self.state_dir, max_data_disks=max_data_disks, hub_vm_id=hub_vm_id)
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
        )

    def volume_file(self, volume_id: str) -> Path:
        """The sparse file behind a volume (it exists once the volume is Ready)."""
        return self.cloud.volumes_dir / f"{volume_id}.img"

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

    def _serve_api(self, handler: _Handler, params: dict[str, str]) -> None:
        if (params.get("response") or "").lower() != "json":
            handler._send(400, {"errorresponse": {"errortext": "this simulator answers response=json only"}})
            return
        name = params.get("command")
        command = self._query_job if name == self._query_job.name else COMMANDS.get(name or "")
        if command is None:
            # verifyRequest refuses a command it does not know before it looks at the signature
            handler._send(401, error_body("errorresponse", 401, UNVERIFIED))
            return
        verdict = verify_request(params, {self.api_key: self.secret_key})
        if not verdict.ok:
            log.info("refused %s: %s", command.name, verdict.reason)
            handler._send(401, error_body(command.response_name, 401, UNVERIFIED))
            return
        fault = self._take_fault(command.name)
        if fault is not None and fault.kind == "error":
            body = error_body(command.response_name, fault.errorcode, fault.text, fault.cserrorcode)
            handler._send(fault.errorcode, body)
            return
        if fault is not None and fault.kind == "timeout":
            if fault.execute:
                self._execute(command, params, None)
            self._stopping.wait(fault.hang_seconds)
            handler.close_connection = True
            return
        status, body = self._execute(command, params, fault)
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

    def _execute(self, command: Command, raw: dict[str, str], fault: Fault | None) -> tuple[int, dict[str, Any]]:
        name = command.response_name
        try:
            with self._lock:
                values = process_parameters(command, raw, self._resolve)
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
