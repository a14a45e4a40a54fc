"""Alerts: Prefect automations that notify through the operator's notification block when a vmferry run
fails, crashes or is late (scheduled, and no worker started it).

``deploy.py --alerts-block SLUG/NAME`` creates them (again: updated in place), e.g. ``slack-webhook/ops`` or
``custom-webhook/ops``, any saved block with Prefect's notify capability. They match flow runs tagged
``vmferry``, which every deployment of prefect.yaml carries (deploy.py adds the tag), so runs of other
projects on the same server stay quiet. The server's triggers and actions services send them (on by default;
a server started with them off sends nothing).
"""

from __future__ import annotations

from uuid import UUID

DEPLOYMENT_TAG = "vmferry"
# state name of the run -> what the operator reads
ALERTS = {
    "Failed": "failed",
    "Crashed": "crashed (its process died or was killed)",
    "Late": "is late: scheduled, but no worker has started it (is a worker running on its pool?)",
}
BODY = """vmferry {{ flow.name }}{% if deployment %}/{{ deployment.name }}{% endif %}: run {{ flow_run.name }} {what}
{%- if flow_run.state.message %}
{{ flow_run.state.message }}{% endif %}
parameters: {{ flow_run.parameters }}
tags: {{ flow_run.tags | join(", ") }}
{{ flow_run | ui_url }}"""


def automation_name(state: str) -> str:
    return f"vmferry: run {state.lower()}"


def notification_block_id(reference: str) -> UUID:
    """The id of the saved notification block ``SLUG/NAME`` (``custom-webhook/ops``); refused unless it notifies."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, name = reference.partition("/")
    if not slug or not name:
        raise SystemExit(
            f"--alerts-block {reference!r}: name a saved block as BLOCK-TYPE-SLUG/NAME, e.g. slack-webhook/ops"
        )
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name=name, block_type_slug=slug)
        except ObjectNotFound:
            raise SystemExit(
                f"--alerts-block {reference!r}: no saved {slug} block named {name!r} on this Prefect server; "
                "save one first (UI: Blocks, or e.g. prefect.blocks.notifications.SlackWebhook(url=...).save(...))"
            ) from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise SystemExit(f"--alerts-block {reference!r}: a {slug} block cannot send notifications")
    assert document.id is not None
    return document.id


def ensure_alerts(reference: str) -> list[str]:
    """Create or update the three automations, notifying through block ``reference``; returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    block_id = notification_block_id(reference)
    names = []
    with get_client(sync_client=True) as client:
        for state, what in ALERTS.items():
            name = automation_name(state)
            automation = AutomationCore(
                name=name,
                description=f"Notify through {reference} when a run of a vmferry deployment {what.split(':')[0]}.",
                trigger=EventTrigger(
                    expect={f"prefect.flow-run.{state}"},
                    match={"prefect.resource.id": "prefect.flow-run.*"},
                    match_related={
                        "prefect.resource.role": "tag",
                        "prefect.resource.id": f"prefect.tag.{DEPLOYMENT_TAG}",
                    },
                    posture=Posture.Reactive,
                    threshold=1,
                    within=0,
                ),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject=f"vmferry: {{{{ flow_run.name }}}} {state.lower()}",
                        body=BODY.replace("{what}", what),
                    )
                ],
            )
            existing = client.read_automations_by_name(name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for duplicate in existing[1:]:
                    client.delete_automation(duplicate.id)
            else:
                client.create_automation(automation)
            names.append(name)
    return names
