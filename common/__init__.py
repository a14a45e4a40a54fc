"""What the agent and the hub share, and nothing of either: the agent's HTTP contract, the NBD client, per-block
target digests, the vSphere client and what it reports, and the error base.

Both installs ship it (`pip install ".[agent]"` and the hub's); `lint-imports` keeps it free of the agent, the hub,
Prefect and SQLAlchemy.
"""
