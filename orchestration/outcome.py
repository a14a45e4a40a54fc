"""A flow run's outcome, readable by whoever started it: the result (JSON) or the error in words and its exit code.

``vmferry ... --submit --wait`` runs the flow on a worker, maybe on another machine: Prefect's own result
persistence would need shared result storage configured on both sides. Instead every flow publishes its
outcome through the Prefect API as a markdown artifact (key ``run-outcome``, shown in the UI as well) from
its completion and failure hooks, and the command reads it back for the run it submitted.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from pydantic import BaseModel, TypeAdapter

from vmferry.errors import EXIT_FAILED, VmferryError, describe, exit_code_of, label_of

log = logging.getLogger(__name__)

OUTCOME_KEY = "run-outcome"
_FENCE = re.compile(r"```json\n(.*)\n```", re.DOTALL)
# Prefect's failed-state message: "Flow run encountered an exception: <ClassName>: <message>"
_PREFECT_MESSAGE = re.compile(r"^(?:.*? encountered an exception: )?([A-Za-z_][A-Za-z0-9_]*): (.*)$", re.DOTALL)


class Outcome(BaseModel):
    ok: bool
    result: Any = None
    error: str | None = None
    label: str | None = None  # "failed", "not found", "refused"
    exit_code: int = 0


def _publish(flow_run: Any, outcome: Outcome) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    text = "```json\n" + outcome.model_dump_json(indent=2) + "\n```"
    artifact = ArtifactCreate(
        key=OUTCOME_KEY,
        type="markdown",
        data=text,
        description="What this run returned, or why it failed (read by `vmferry ... --submit --wait`)",
        flow_run_id=flow_run.id,
    )
    with get_client(sync_client=True) as client:
        client.create_artifact(artifact)


def publish_result(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion: the flow's return value, as JSON."""
    try:
        value = state.result(raise_on_failure=False)
        result = TypeAdapter(Any).dump_python(value, mode="json", fallback=str)
        _publish(flow_run, Outcome(ok=True, result=result))
    except Exception:
        log.warning("could not publish the outcome of flow run %s", flow_run.id, exc_info=True)


def publish_error(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure: the error in words and the exit code it maps to."""
    try:
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, BaseException):
            outcome = Outcome(ok=False, error=describe(exc), label=label_of(exc), exit_code=exit_code_of(exc))
        else:
            outcome = Outcome(ok=False, error=state.message or state.name, label="failed", exit_code=EXIT_FAILED)
        _publish(flow_run, outcome)
    except Exception:
        log.warning("could not publish the outcome of flow run %s", flow_run.id, exc_info=True)


# What a flow passes to @flow (``@flow(name=..., **PUBLISH_OUTCOME)``).
PUBLISH_OUTCOME: dict[str, Any] = {"on_completion": [publish_result], "on_failure": [publish_error]}


def read_outcome(flow_run_id: Any) -> Outcome | None:
    """The outcome a flow run published, None when it published none (it crashed, or predates this)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    wanted = ArtifactFilter(
        key=ArtifactFilterKey(any_=[OUTCOME_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
    )
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=wanted)
    for artifact in artifacts:
        match = _FENCE.search(str(artifact.data or ""))
        if match:
            return Outcome.model_validate(json.loads(match.group(1)))
    return None


def _known_errors(base: type[BaseException] = VmferryError) -> dict[str, type[BaseException]]:
    found = {base.__name__: base}
    for sub in base.__subclasses__():
        found |= _known_errors(sub)
    return found


def outcome_from_message(message: str) -> Outcome:
    """For a run that published nothing: Prefect's state message, without the class name it starts with."""
    match = _PREFECT_MESSAGE.match(message.strip())
    if not match:
        return Outcome(ok=False, error=message, label="failed", exit_code=EXIT_FAILED)
    name, text = match.groups()
    known = _known_errors().get(name)
    code = getattr(known, "exit_code", EXIT_FAILED)
    label = getattr(known, "label", "failed")
    return Outcome(ok=False, error=text or message, label=label, exit_code=code)
