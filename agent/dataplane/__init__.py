"""The agent's data path: source readers and the disk copy engine (the NBD client is ``common.nbd``).

Plain Python (no Prefect, no third-party dependency except httpx for the HTTP reader) so that it can run
inside the agent service, a CLI, or a test without an orchestrator.
"""

from agent.dataplane.copy import (
    CopyCancelled,
    CopyError,
    CopyJob,
    CopyResult,
    DiskCopyError,
    copy_disk,
    copy_disks,
)
from agent.dataplane.sources import (
    ConcatSource,
    Extent,
    FileSource,
    HTTPRangeSource,
    NBDSource,
    Source,
    SourceError,
    VmdkDescriptorError,
    open_source,
    parse_vmdk_descriptor,
)

__all__ = [
    "ConcatSource",
    "CopyCancelled",
    "CopyError",
    "CopyJob",
    "CopyResult",
    "DiskCopyError",
    "Extent",
    "FileSource",
    "HTTPRangeSource",
    "NBDSource",
    "Source",
    "SourceError",
    "VmdkDescriptorError",
    "copy_disk",
    "copy_disks",
    "open_source",
    "parse_vmdk_descriptor",
]
