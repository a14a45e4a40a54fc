"""The hub's client of the agent's HTTP API (docs/agent-contract.md). Knows nothing of Prefect.

Only idempotent calls are retried: job creation is idempotent on job_id, reads and cancels are safe. This client
is the one layer that retries them (REMOTE_ATTEMPTS in all): its errors say so, and tasks do not retry again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from clients.tls import shared_ssl_context
from common.contract import API_PREFIX, JobRequest, JobStatus
from vmferry.errors import REMOTE_ATTEMPTS, VmferryError


class AgentError(VmferryError):
    """The agent refused a request or could not be reached; the message says which and why."""


class AgentUnreachable(AgentError):
    """No answer from the agent (connection refused, reset or timed out)."""


class AgentJobFailed(AgentError):
    def __init__(self, status: JobStatus) -> None:
        failed = [f"disk {d.device_key}: {d.error}" for d in status.disks if d.error]
        detail = "; ".join(failed) or status.error or status.state
        super().__init__(f"agent job {status.job_id} for VM {status.vm} ended {status.state}: {detail}")
        self.status = status


class AgentClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        attempts: int = REMOTE_ATTEMPTS,
        verify: bool | str = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.attempts = attempts
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
            verify=shared_ssl_context(verify),
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                last = exc
                time.sleep(min(0.5 * attempt, 2.0))
                continue
            if response.status_code >= 500 and attempt < self.attempts:
                time.sleep(min(0.5 * attempt, 2.0))
                continue
            return response
        unreachable = AgentUnreachable(f"agent at {self.base_url} did not answer {method} {path}: {last}")
        unreachable.client_attempts = self.attempts
        raise unreachable from last

    @staticmethod
    def _raise_for(response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if response.status_code == 401:
            refused = AgentError(f"agent refused the token while trying to {what} (401): check the Agent block")
            refused.retryable = False
            raise refused
        error = AgentError(f"agent refused to {what} ({response.status_code}): {detail}")
        if response.status_code >= 500:
            error.client_attempts = REMOTE_ATTEMPTS  # _call already retried it
        elif response.status_code not in (408, 409, 429):
            error.retryable = False  # the agent refused the request itself (422: a bad mapping, 404: no such job)
        raise error

    def submit(self, request: JobRequest) -> JobStatus:
        response = self._call("POST", "/jobs", json=request.model_dump(mode="json"))
        self._raise_for(response, f"start job {request.job_id} for VM {request.vm}")
        return JobStatus.model_validate(response.json())

    def status(self, job_id: str, *, wait: float = 0.0) -> JobStatus:
        """The job's status; with `wait`, the agent answers when the job finishes or after `wait` seconds."""
        params = {"wait": f"{wait:g}"} if wait > 0 else None
        response = self._call("GET", f"/jobs/{job_id}", params=params)
        self._raise_for(response, f"read job {job_id}")
        return JobStatus.model_validate(response.json())

    def cancel(self, job_id: str) -> JobStatus:
        response = self._call("DELETE", f"/jobs/{job_id}")
        self._raise_for(response, f"cancel job {job_id}")
        return JobStatus.model_validate(response.json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float,
        poll_interval: float = 0.5,
        long_poll: float = 1.0,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Follow a job until it finishes; raises AgentJobFailed unless it succeeded.

        Each status request waits up to `long_poll` seconds on the agent, which answers the moment the job
        finishes (no fixed poll interval to lose at the end); progress is shown after every answer. An agent
        that answers at once although its job is still running and no disk of it finished since its last answer
        does not know long polls: it is polled every `poll_interval` seconds instead. (An agent that knows them
        also answers early when a disk finishes, so the hub can start on that disk's target.)
        """
        deadline = time.monotonic() + timeout
        disks_done = 0
        while True:
            asked = time.monotonic()
            # A long poll stays well inside one request's timeout, or a slow answer would look like a dead agent.
            wait = max(0.0, min(long_poll, self.timeout / 2, deadline - asked))
            status = self.status(job_id, wait=wait)
            if on_progress is not None:
                on_progress(status)
            if status.finished:
                if status.state != "succeeded":
                    raise AgentJobFailed(status)
                return status
            now = time.monotonic()
            if now > deadline:
                raise AgentError(f"agent job {job_id} did not finish within {timeout:.0f} s (still {status.state})")
            finished_disks = sum(disk.state == "done" for disk in status.disks)
            if now - asked < wait / 2 and finished_disks == disks_done:
                time.sleep(poll_interval)
            disks_done = finished_disks
