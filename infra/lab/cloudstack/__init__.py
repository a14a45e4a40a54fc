"""A CloudStack API simulator for tests and the lab: signed requests, async jobs, volume/VM rules, sparse files.

In-process::

    with CloudStackSimulator(state_dir) as sim:
        client = CloudStackClient(sim.url, sim.api_key, sim.secret_key)

As a process: ``python -m infra.lab.cloudstack --state-dir D --port P`` (see ``start_simulator_process``).
"""

from infra.lab.cloudstack.process import SimulatorProcess, start_simulator_process
from infra.lab.cloudstack.server import CloudStackSimulator, Fault, SimulatorInfo

__all__ = ["CloudStackSimulator", "Fault", "SimulatorInfo", "SimulatorProcess", "start_simulator_process"]
