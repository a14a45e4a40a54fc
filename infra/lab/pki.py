"""Lab PKI for NBD over TLS: a CA, a qemu-nbd server certificate, client certificates, and an unrelated CA.

For the tests and the copy benchmark (bench.copy --tls), never for real credentials: the keys are not
protected by a passphrase and the certificates expire after 30 days. The hub directory follows qemu's
tls-creds-x509 layout (ca-cert.pem, server-cert.pem, server-key.pem, plus client-cert.pem / client-key.pem
for the hub's own readiness check). EC P-256 keys: generating RSA keys would cost a noticeable part of the
test's time.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class NbdPKI:
    hub_dir: Path  # qemu's layout, for VMFERRY_NBD_TLS_DIR / start_qemu_nbd(tls_creds_dir=...)
    ca_file: Path  # the CA that signed the server and client certificates
    client_cert: Path
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing the hub uses
    other_client_cert: Path  # signed by the other CA
    other_client_key: Path
    unlisted_client_cert: Path  # signed by the hub's CA, but for a name no allow-list names
    unlisted_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private_format, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server: bool,
    hosts: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # qemu's sanity check wants both bits on a leaf whose key usage is critical, whatever the key type.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading zero byte keeps it positive
    return b"\x02" + _der_length(len(body)) + body


def ffdhe2048_pem() -> bytes:
    """RFC 7919's ffdhe2048 group as PKCS#3 "DH PARAMETERS", computed from the RFC's definition.

    qemu-nbd generates DH parameters at every start when the credentials directory has no dh-params.pem
    (about 1.5 s here, per export); a fixed, well-known group costs nothing. cryptography cannot write PKCS#3
    for a group without its q, so the two integers are DER-encoded here.
    """
    # p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, g = 2 (RFC 7919, appendix A.1), with
    # e = sum of 1/k! for k < 400: the terms left out add less than 2^-2000, far below what the floor sees.
    last = math.factorial(399)
    floor_e = sum(2**1918 * (last // math.factorial(k)) for k in range(400)) // last
    prime = 2**2048 - 2**1984 + (floor_e + 560316) * 2**64 - 1
    body = _der_integer(prime) + _der_integer(2)
    der = b"\x30" + _der_length(len(body)) + body
    lines = textwrap.wrap(base64.b64encode(der).decode(), 64)
    return ("-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n").encode()


def make_test_pki(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> NbdPKI:
    """Write a hub directory (qemu layout) and agent-side files under `directory`; private keys are 0600."""
    hub = directory / "hub"
    agent = directory / "agent"
    hub.mkdir(parents=True, exist_ok=True)
    agent.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca("vmferry test NBD CA")
    server_key, server_cert = _make_leaf(ca_key, ca_cert, "vmferry-hub", server=True, hosts=hosts)
    hub_client_key, hub_client_cert = _make_leaf(ca_key, ca_cert, "vmferry-hub-readiness", server=False)
    agent_key, agent_cert = _make_leaf(ca_key, ca_cert, "vmferry-agent", server=False)
    unlisted_key, unlisted_cert = _make_leaf(ca_key, ca_cert, "vmferry-unlisted", server=False)
    other_key, other_cert = _make_ca("unrelated test CA")
    stranger_key, stranger_cert = _make_leaf(other_key, other_cert, "vmferry-agent", server=False)

    _write(hub / "ca-cert.pem", _cert_pem(ca_cert))
    _write(hub / "server-cert.pem", _cert_pem(server_cert))
    _write(hub / "server-key.pem", _key_pem(server_key), 0o600)
    _write(hub / "client-cert.pem", _cert_pem(hub_client_cert))
    _write(hub / "client-key.pem", _key_pem(hub_client_key), 0o600)
    _write(hub / "dh-params.pem", ffdhe2048_pem())
    return NbdPKI(
        hub_dir=hub,
        ca_file=_write(agent / "ca.pem", _cert_pem(ca_cert)),
        client_cert=_write(agent / "client-cert.pem", _cert_pem(agent_cert)),
        client_key=_write(agent / "client-key.pem", _key_pem(agent_key), 0o600),
        other_ca_file=_write(agent / "other-ca.pem", _cert_pem(other_cert)),
        other_client_cert=_write(agent / "other-client-cert.pem", _cert_pem(stranger_cert)),
        other_client_key=_write(agent / "other-client-key.pem", _key_pem(stranger_key), 0o600),
        unlisted_client_cert=_write(agent / "unlisted-client-cert.pem", _cert_pem(unlisted_cert)),
        unlisted_client_key=_write(agent / "unlisted-client-key.pem", _key_pem(unlisted_key), 0o600),
    )
