"""Serves ``stuck-job`` as a deployment, so a test can cancel a run the way Prefect cancels in production:
the runner stops the flow's process and runs the flow's on_cancellation hooks itself."""

from __future__ import annotations

from tests.reconcile.hook_flows import stuck_job

if __name__ == "__main__":
    stuck_job.serve(name="stuck", print_starting_message=False, limit=1)
