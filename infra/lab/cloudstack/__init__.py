"""A CloudStack API simulator for tests and the lab: signed requests, async jobs, volume/VM rules, sparse files.

In-process::

    with CloudStackSimulator(state_dir) as sim:
        client = CloudStackClient(sim.url, sim.api_key, sim.secret_key)

As a process: ``python -m infra.lab.cloudstack --state-dir D --port P`` (see ``start_simulator_process``).

Fidelity. Checked against apache/cloudstack's source: request verification (ApiServer.verifyRequest), the 401
text and error shape (ApiServlet, ApiServer.getSerializedApiError, ExceptionResponse), list/async/create answer
shapes (ApiResponseSerializer, ResponseObjectTypeAdapter, AsyncJobResponse), job failure codes
(ApiAsyncJobDispatcher), parameter errors (ParamProcessWorker), and the volume rules and their texts
(VolumeApiServiceImpl allocVolume / attachVolumeToVM / detachVolumeFromVM / retrieveAndValidateVolume /
getDeviceId, VolumeDaoImpl). Texts marked ``[U]`` in the code (VM start/stop/destroy refusals, template filter)
are stand-ins. Not simulated: XML responses, snapshots, networks, projects, sessions, more than one zone.
"""

from infra.lab.cloudstack.process import SimulatorProcess, start_simulator_process
from infra.lab.cloudstack.server import CloudStackSimulator, Fault, SimulatorInfo

__all__ = ["CloudStackSimulator", "Fault", "SimulatorInfo", "SimulatorProcess", "start_simulator_process"]
