"""A worker for the tests: serves deployments named NAME of the backup and restore flows until killed.

``python -m tests.cli.serve_deployments '{"name": ..., "backup": {...defaults}, "restore": {...defaults}}'``
"""

from __future__ import annotations

import json
import sys

from prefect import serve

from flows.backup import backup_vm
from flows.restore import restore_vm

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    name = arguments["name"]
    serve(
        backup_vm.to_deployment(name=name, parameters=arguments["backup"]),
        restore_vm.to_deployment(name=name, parameters=arguments["restore"]),
        print_starting_message=False,
    )
