"""The hub's NBD TLS credentials: a directory in qemu's tls-creds-x509 layout, checked before qemu-nbd uses it.

qemu-nbd reads ``ca-cert.pem``, ``server-cert.pem`` and ``server-key.pem`` from it. With client verification
on (qemu's ``verify-peer``, its default for a server) only clients holding a certificate signed by that CA
may connect: the agent, and the hub itself, whose readiness check presents ``client-cert.pem`` /
``client-key.pem`` from the same directory.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"

_PURPOSE = {
    CA_CERT: "the CA certificate that signed server-cert.pem (and the agent's client certificate)",
    SERVER_CERT: "qemu-nbd's certificate, naming VMFERRY_NBD_BIND_ADDRESS as a subject alternative name",
    SERVER_KEY: "the private key of server-cert.pem",
    CLIENT_CERT: "the hub's own client certificate, signed by ca-cert.pem: with VMFERRY_NBD_TLS_VERIFY_CLIENT on "
    "qemu-nbd refuses the hub's readiness check without it",
    CLIENT_KEY: "the private key of client-cert.pem",
}


def check_nbd_tls_dir(directory: Path, *, bind_address: str, verify_client: bool) -> None:
    """Raise ValueError naming the missing or unsafe file and the fix; return quietly when usable."""
    where = f"VMFERRY_NBD_TLS_DIR={directory}"
    if not directory.is_dir():
        raise ValueError(f"{where} is not a directory (qemu's x509 layout: {CA_CERT}, {SERVER_CERT}, {SERVER_KEY})")
    required = [CA_CERT, SERVER_CERT, SERVER_KEY]
    if verify_client:
        required += [CLIENT_CERT, CLIENT_KEY]
    for name in required:
        if not (directory / name).is_file():
            raise ValueError(f"{where} has no {name}: put {_PURPOSE[name]} there")
    if (directory / CLIENT_CERT).exists() != (directory / CLIENT_KEY).exists():
        raise ValueError(f"{where}: {CLIENT_CERT} and {CLIENT_KEY} go together; add the missing one or remove both")
    for name in (SERVER_KEY, CLIENT_KEY):
        path = directory / name
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"{path} is a private key readable by group or others: chmod 600 it")
    _check_names(directory / SERVER_CERT, bind_address)


def _check_names(cert_path: Path, bind_address: str) -> None:
    """The agent connects to the bind address and checks that the server's certificate names it."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_path} is not a PEM certificate: {exc}") from exc
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(bind_address)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        return  # listening everywhere: the address the agent uses is not known here
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    ips = names.get_values_for_type(x509.IPAddress)
    dns = [name.lower() for name in names.get_values_for_type(x509.DNSName)]
    if (ip is not None and ip in ips) or (ip is None and bind_address.lower() in dns):
        return
    listed = ", ".join([str(a) for a in ips] + dns) or "none"
    raise ValueError(
        f"{cert_path} does not name {bind_address} (VMFERRY_NBD_BIND_ADDRESS) among its subject alternative names "
        f"({listed}): the agent connects to that address and would refuse the certificate; issue one that names it"
    )
