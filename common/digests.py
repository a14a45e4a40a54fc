"""Per-block digests of a target, so that a compare needs no read of the target over the agent-hub link.

The hub hashes its own target where it lies (locally: ``clients.qemu.scan_image``) and sends one sha256 per
block; the agent hashes the source's blocks as it reads them and writes only the blocks whose digest differs.
The wire form (``encode``/``decode``) is the concatenated 32-byte digests, zlib-compressed (a disk's many zero
blocks share one digest) and base64-encoded, block 0 first; the last block may be short (the target's end).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass

__all__ = [
    "ALGORITHM",
    "DIGEST_SIZE",
    "MAX_BLOCKS",
    "MIN_BLOCK_SIZE",
    "DigestError",
    "TargetDigests",
    "block_count",
    "decode",
    "digest_block_size",
    "encode",
    "zero_digest",
]

ALGORITHM = "sha256"
DIGEST_SIZE = 32
# The copy engine's zero granularity and qcow2's cluster size: a differing block rewrites one cluster.
MIN_BLOCK_SIZE = 64 * 1024
# Beyond 2**18 blocks (16 GiB of disk at 64 KiB) blocks grow instead, so a request carries at most 8 MiB of
# digests per disk whatever its size.
MAX_BLOCKS = 1 << 18


class DigestError(ValueError):
    """Digests that do not fit the target they claim to describe."""


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def digest_block_size(size: int) -> int:
    block = MIN_BLOCK_SIZE
    while block_count(size, block) > MAX_BLOCKS:
        block *= 2
    return block


_ZERO_DIGESTS: dict[int, bytes] = {}


def zero_digest(length: int) -> bytes:
    digest = _ZERO_DIGESTS.get(length)
    if digest is None:
        digest = _ZERO_DIGESTS[length] = hashlib.sha256(bytes(length)).digest()
    return digest


def encode(digests: bytes) -> str:
    return base64.b64encode(zlib.compress(digests, 6)).decode("ascii")


def decode(text: str, size: int, block_size: int) -> TargetDigests:
    """The digests of a target of `size` bytes; refuses any other count (and inflates no more than that)."""
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise DigestError(f"digest block size {block_size} must be a power of two >= {MIN_BLOCK_SIZE}")
    expected = block_count(size, block_size) * DIGEST_SIZE
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(text, validate=True), expected + 1)
    except (binascii.Error, zlib.error) as exc:
        raise DigestError(f"digests are not base64 of zlib data: {exc}") from exc
    if len(raw) != expected or not inflater.eof:
        shown = f"{len(raw)}" if len(raw) <= expected else f"more than {expected}"
        raise DigestError(
            f"digests cover {shown} bytes of digests, but a target of {size} bytes in {block_size}-byte blocks "
            f"needs {expected}"
        )
    return TargetDigests(block_size, raw)


@dataclass(frozen=True)
class TargetDigests:
    block_size: int
    digests: bytes

    def covers(self, size: int) -> bool:
        return len(self.digests) == block_count(size, self.block_size) * DIGEST_SIZE

    def of_block(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
