"""The agent's HTTP API (docs/agent-contract.md) on FastAPI."""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.config import AgentConfig
from agent.jobs import JobManager, JobNotFound, JobRejected
from common.contract import API_PREFIX, JobRequest, JobStatus

_bearer = HTTPBearer(auto_error=False)
# A long poll holds one of the server's worker threads; half a minute keeps it well inside client timeouts.
MAX_STATUS_WAIT = 30.0


def create_app(config: AgentConfig, manager: JobManager | None = None) -> FastAPI:
    jobs = manager or JobManager(config)
    expected = config.token.get_secret_value().encode()
    app = FastAPI(title="vmferry agent", version="1")
    app.state.jobs = jobs

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        presented = credentials.credentials.encode() if credentials else b""
        if not credentials or not hmac.compare_digest(presented, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.post(f"{API_PREFIX}/jobs", status_code=202, dependencies=[Depends(authorised)])
    def create_job(request: JobRequest) -> JobStatus:
        try:
            return jobs.submit(request)
        except JobRejected as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", dependencies=[Depends(authorised)])
    def job_status(job_id: str, wait: float = Query(0.0, ge=0.0, le=MAX_STATUS_WAIT)) -> JobStatus:
        try:
            return jobs.status(job_id, wait=wait)
        except JobNotFound as exc:
            raise HTTPException(404, f"no job {job_id}") from exc

    @app.delete(f"{API_PREFIX}/jobs/{{job_id}}", status_code=202, dependencies=[Depends(authorised)])
    def cancel_job(job_id: str) -> JobStatus:
        try:
            return jobs.cancel(job_id)
        except JobNotFound as exc:
            raise HTTPException(404, f"no job {job_id}") from exc

    @app.get(f"{API_PREFIX}/health", dependencies=[Depends(authorised)])
    def health() -> dict[str, object]:
        return {"ok": True, "running_jobs": sorted(jobs.active_job_ids())}

    return app
