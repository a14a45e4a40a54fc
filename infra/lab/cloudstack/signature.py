"""Request verification exactly as CloudStack's ApiServer.verifyRequest does it (apache/cloudstack, server module).

Written separately from the client's signing on purpose: a test that signs with the client and verifies here
checks two implementations against each other, not one against itself.

CloudStack's steps: sort the raw parameter names with Java's case-sensitive String order; skip ``signature``;
join ``name=URLEncoder.encode(value, UTF-8)`` with ``+`` turned into ``%20``; lower-case the whole string;
HMAC-SHA1 with the secret key; Base64; compare in constant time. With ``signatureVersion=3`` an ``expires``
parameter is required and a past one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

_JAVA_URL_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")


def java_url_encode(value: str) -> str:
    """java.net.URLEncoder.encode(value, "UTF-8"): keeps letters, digits and ``.-*_``, space is ``+``."""
    out: list[str] = []
    for byte in value.encode("utf-8", errors="surrogatepass"):
        if byte in _JAVA_URL_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _java_string_order(name: str) -> bytes:
    # String.compareTo compares UTF-16 code units; big-endian UTF-16 bytes sort the same way.
    return name.encode("utf-16-be", errors="surrogatepass")


def unsigned_request(params: Mapping[str, str]) -> str:
    """The string CloudStack signs, before lower-casing."""
    parts = []
    for name in sorted(params, key=_java_string_order):
        if name.lower() == "signature":
            continue
        parts.append(name + "=" + java_url_encode(params[name]).replace("+", "%20"))
    return "&".join(parts)


def compute_signature(params: Mapping[str, str], secret_key: str) -> str:
    digest = hmac.new(secret_key.encode("utf-8"), unsigned_request(params).lower().encode("utf-8"), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode("ascii")


def parse_expires(value: str) -> datetime | None:
    """DateUtil.parseTZDateString: ``yyyy-MM-dd'T'HH:mm:ssZ`` (e.g. 2011-10-10T12:00:00+0530)."""
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # for the simulator's log only: CloudStack tells the caller nothing more than 401
    unavailable: bool = False  # the key's user may not use the command: 432, not 401


def verify_request(
    params: Mapping[str, str],
    keys: Mapping[str, str],
    *,
    clock: datetime | None = None,
    available: Callable[[str], bool] | None = None,
) -> Verdict:
    """``keys`` maps API keys to secret keys; ``available(api_key)`` says whether that key's user may use the
    command (checkCommandAvailable). Mirrors the order of ApiServer.verifyRequest's checks."""
    api_key = signature = signature_version = expires = None
    for name in sorted(params, key=_java_string_order):
        lowered = name.lower()
        if lowered == "signature":
            signature = params[name]
        elif lowered == "apikey":
            api_key = params[name]
        elif lowered == "signatureversion":
            signature_version = params[name]
        elif lowered == "expires":
            expires = params[name]
    if signature is None or api_key is None:
        return Verdict(False, "missing signature or apiKey")
    if signature_version == "3":
        if expires is None:
            return Verdict(False, "signatureVersion=3 without expires")
        expires_at = parse_expires(expires)
        if expires_at is None:
            return Verdict(False, f"unparsable expires {expires!r}")
        if expires_at < (clock or datetime.now(UTC)):
            return Verdict(False, "request expired")
    secret = keys.get(api_key)
    if secret is None:
        return Verdict(False, "apiKey does not map to a user")
    if available is not None and not available(api_key):
        return Verdict(False, "command not available to this user", unavailable=True)
    if not hmac.compare_digest(signature.encode("utf-8"), compute_signature(params, secret).encode("ascii")):
        return Verdict(False, "signature mismatch")
    return Verdict(True, "ok")
