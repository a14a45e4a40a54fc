"""TLS contexts for the hub's HTTPS clients, built once per process and shared.

httpx builds a new context for every client, loading the whole CA bundle each time (40-50 ms); a replication
sync creates a dozen clients (CloudStack calls, the agent), and a profile of a sync with nothing to copy found
half a second of its run there. An ``SSLContext`` is safe to share between clients and threads once built.
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx


def shared_ssl_context(verify: bool | str) -> ssl.SSLContext:
    """What ``httpx.Client(verify=verify)`` would build: the default CA bundle (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` honoured, as httpx does), no verification, or the CA file or directory given. A CA file
    that changes is read again."""
    if verify is False:
        return _built(False, None, None, None)
    if verify is True:
        return _built(True, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"), None)
    try:
        changed = os.stat(verify).st_mtime_ns
    except OSError:
        changed = None  # let the build fail with the ssl module's own message
    return _built(verify, None, None, changed)


@functools.lru_cache(maxsize=32)
def _built(verify: bool | str, cert_file: str | None, cert_dir: str | None, changed: int | None) -> ssl.SSLContext:
    # cert_file, cert_dir and changed only key the cache: httpx reads the variables itself, the file is re-read.
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)
