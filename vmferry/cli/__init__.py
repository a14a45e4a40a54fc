"""The ``vmferry`` command: discover, back up, restore, replicate, fail over and clean up VMs from a shell.

Every command runs its flow in this process (the flow run still shows in the Prefect UI of the configured
PREFECT_API_URL), or with ``--submit DEPLOYMENT`` hands it to a worker. Blocks are saved Prefect blocks named
with ``--vcenter/--agent/--repository/--cloudstack``, or the running lab's with ``--lab``; never the lab
unasked (vmferry/cli/selection.py).

The package: ``app`` (the typer app, global options, errors and exit codes), ``selection`` (blocks, VMs,
points), ``runner`` (in-process or ``--submit``, then text or ``--json``), ``progress`` (bars fed by the flow's
own follower of the agent job), ``output`` (tables), and one module per command group. Flows are imported
inside the commands that run them: Prefect takes seconds to load, and ``--help`` or a usage error should not.
"""

import os

# Commands run their flow in this process; without PREFECT_API_URL Prefect starts an ephemeral server whose
# first start on a new machine (a new database, every migration) outlasts Prefect's default 20 s wait.
# Set before anything imports Prefect, which reads its settings once.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from vmferry.cli import backups, inventory, lab, reconcile, replication  # noqa: F401 - they register their commands
from vmferry.cli.app import app

__all__ = ["app"]
