"""The hub's Prefect glue that flows and tasks share: concurrency limits, crash hooks, run identity, outcomes.

Everything of vmferry that talks to Prefect lives here, so the domain core, the catalog and the clients do not.
"""
