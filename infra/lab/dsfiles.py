"""Datastore files over vCenter's HTTP file API (/folder/<path>?dcPath=<dc>&dsName=<ds>).

vcsim answers /folder without authentication, but a real vCenter needs the session cookie, so every request
here sends it: code written against the lab then works against vCenter too. TLS is pinned to the lab's
thumbprint like the SOAP connection.
"""

from __future__ import annotations

import hashlib
import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from pyVmomi import vim

from infra.lab.vcenter import LabVCenter, pinned_ssl_context

CHUNK = 1024 * 1024
_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


class DatastoreFileError(RuntimeError):
    """An HTTP file API request failed."""


@dataclass(frozen=True)
class DatastorePath:
    datastore: str
    path: str

    @classmethod
    def parse(cls, text: str) -> DatastorePath:
        match = _DS_PATH.match(text.strip())
        if not match:
            raise ValueError(f"not a datastore path: {text!r}")
        return cls(match["ds"], match["path"])

    def __str__(self) -> str:
        return f"[{self.datastore}] {self.path}"


def flat_path(descriptor: str) -> str:
    """The -flat extent of a monolithic flat disk, from its descriptor's datastore path."""
    if not descriptor.endswith(".vmdk"):
        raise ValueError(f"not a .vmdk path: {descriptor}")
    return descriptor[: -len(".vmdk")] + "-flat.vmdk"


def session_cookie(si: vim.ServiceInstance) -> str:
    """The `vmware_soap_session=...` pair of a pyvmomi session, suitable for a Cookie header."""
    raw: str = si._stub.cookie or ""
    return raw.split(";", 1)[0].strip()


def _request_target(lab: LabVCenter, ds_path: str) -> str:
    parsed = DatastorePath.parse(ds_path)
    query = urlencode({"dcPath": lab.datacenter, "dsName": parsed.datastore})
    return f"/folder/{quote(parsed.path)}?{query}"


@contextmanager
def _connection(lab: LabVCenter) -> Iterator[http.client.HTTPSConnection]:
    conn = http.client.HTTPSConnection(
        lab.host, lab.port, context=pinned_ssl_context(lab.host, lab.port, lab.thumbprint), timeout=60
    )
    try:
        yield conn
    finally:
        conn.close()


def _headers(cookie: str | None) -> dict[str, str]:
    return {"Cookie": cookie} if cookie else {}


def upload(lab: LabVCenter, ds_path: str, source: Path | bytes, *, cookie: str | None) -> None:
    """PUT a whole file; the server's file is replaced. Checks the stored size afterwards."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    headers = {**_headers(cookie), "Content-Length": str(size), "Content-Type": "application/octet-stream"}
    with _connection(lab) as conn:
        if isinstance(source, bytes):
            conn.request("PUT", _request_target(lab, ds_path), body=source, headers=headers)
        else:
            with source.open("rb") as body:
                conn.request("PUT", _request_target(lab, ds_path), body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 201, 204):
            raise DatastoreFileError(f"PUT {ds_path}: HTTP {response.status} {response.reason}")
    # vcsim answers 200 even if copying the body failed half way, so check what landed.
    stored = stat_size(lab, ds_path, cookie=cookie)
    if stored != size:
        raise DatastoreFileError(f"PUT {ds_path}: stored {stored} bytes, sent {size}")


def stat_size(lab: LabVCenter, ds_path: str, *, cookie: str | None) -> int | None:
    """Size of a datastore file, or None if it does not exist."""
    with _connection(lab) as conn:
        conn.request("HEAD", _request_target(lab, ds_path), headers=_headers(cookie))
        response = conn.getresponse()
        response.read()
        if response.status == 404:
            return None
        if response.status != 200:
            raise DatastoreFileError(f"HEAD {ds_path}: HTTP {response.status} {response.reason}")
        return int(response.getheader("Content-Length", "0"))


def download(
    lab: LabVCenter,
    ds_path: str,
    dest: Path | None,
    *,
    cookie: str | None,
    byte_range: tuple[int, int] | None = None,
) -> str:
    """GET a file (or the inclusive byte range start..end) into dest, or only hash it when dest is None.

    Returns the sha256 of the bytes received.
    """
    headers = _headers(cookie)
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    digest = hashlib.sha256()
    with _connection(lab) as conn:
        conn.request("GET", _request_target(lab, ds_path), headers=headers)
        response = conn.getresponse()
        expected = 206 if byte_range is not None else 200
        if response.status != expected:
            response.read()
            raise DatastoreFileError(f"GET {ds_path}: HTTP {response.status} {response.reason}")
        if dest is None:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
            return digest.hexdigest()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


def remote_sha256(lab: LabVCenter, ds_path: str, *, cookie: str | None) -> str:
    return download(lab, ds_path, None, cookie=cookie)
