"""Development certificates: a private CA plus server and client certificates.

This module owns making the certificates a developer needs to run brpc with
verification on: a self-signed CA, a server certificate whose subject
alternative names cover loopback (``localhost``, ``127.0.0.1``, ``::1``) plus any
host given, and client certificates for mutual TLS (each with its name as a
subject alternative name, see :func:`client_identity_name`). Keys are ECDSA
P-256 and private keys are written with 0600 permissions.

Run it as ``python -m brpc.certs`` (or ``scripts/gen_certs.py``); ``--help``
lists the options. These certificates are for development and tests; production
deployments should use their own PKI.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_HOSTS",
    "DevCertificates",
    "IssuedCertificate",
    "client_identity_name",
    "generate_ca",
    "issue_certificate",
    "main",
    "write_dev_certificates",
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
_DEFAULT_DAYS = 825


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, in memory."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the files :func:`write_dev_certificates` wrote or found."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "brpc development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def client_identity_name(name: str) -> x509.GeneralName:
    """The subject alternative name a client certificate for ``name`` carries.

    A DNS name when ``name`` is one (``agent-7``, ``agent-7.fleet.example``),
    otherwise the URI ``urn:brpc:client:<name>``. brpc identifies clients by
    their SANs, so every client certificate needs one.
    """
    if _DNS_NAME.fullmatch(name):
        return x509.DNSName(name)
    return x509.UniformResourceIdentifier(f"urn:brpc:client:{quote(name, safe='')}")


def _validity(days: int, not_before: datetime.datetime | None) -> tuple[datetime.datetime, ...]:
    start = not_before or (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    return start, start + datetime.timedelta(days=days)


def generate_ca(
    common_name: str = "brpc development CA",
    *,
    days: int = _DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
) -> IssuedCertificate:
    """Make a self-signed CA certificate that can sign server and client certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    return IssuedCertificate(cert, key)


def issue_certificate(
    ca: IssuedCertificate,
    common_name: str,
    *,
    hosts: Iterable[str] = (),
    names: Iterable[x509.GeneralName] = (),
    server: bool = True,
    client: bool = False,
    days: int = _DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
) -> IssuedCertificate:
    """Issue a leaf certificate signed by ``ca``.

    ``hosts`` become subject alternative names (IP addresses or DNS names), as
    do ``names`` (any general names, for example from :func:`client_identity_name`).
    ``server`` and ``client`` choose the extended key usages (serverAuth,
    clientAuth); a certificate may carry both.
    """
    if not (server or client):
        raise ValueError("a certificate needs at least one of server=True or client=True")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    sans = [_general_name(h) for h in dict.fromkeys(hosts)] + list(names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_pair(directory: Path, stem: str, issued: IssuedCertificate) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write_private(key_path, issued.private_key_pem())
    cert_path.write_bytes(issued.certificate_pem())
    return cert_path, key_path


def _load_ca(directory: Path) -> IssuedCertificate:
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'} is not an ECDSA key made by brpc.certs")
    return IssuedCertificate(cert, key)


def write_dev_certificates(
    directory: str | os.PathLike[str] = "certs",
    *,
    hosts: Sequence[str] = (),
    client_names: Sequence[str] = ("client",),
    force: bool = False,
    days: int = _DEFAULT_DAYS,
) -> DevCertificates:
    """Write a CA, a server certificate and client certificates into ``directory``.

    Files: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` (SANs
    :data:`DEFAULT_HOSTS` plus ``hosts``) and ``<name>.pem``/``<name>.key`` for each
    client name (the first one is also reported as ``client_cert``). Existing
    files are kept unless ``force`` is true, so the call is cheap to repeat.
    """
    if not client_names:
        raise ValueError("at least one client name is needed")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stems = ["ca", "server", *client_names]
    complete = all((out / f"{s}.pem").exists() and (out / f"{s}.key").exists() for s in stems)
    if force or not complete:
        if force or not ((out / "ca.pem").exists() and (out / "ca.key").exists()):
            _write_pair(out, "ca", generate_ca(days=days))
        ca = _load_ca(out)
        server = issue_certificate(ca, "brpc server", hosts=[*DEFAULT_HOSTS, *hosts], days=days)
        _write_pair(out, "server", server)
        for name in client_names:
            client = issue_certificate(
                ca, name, names=[client_identity_name(name)], server=False, client=True, days=days
            )
            _write_pair(out, name, client)
    first = client_names[0]
    return DevCertificates(
        directory=out,
        ca=out / "ca.pem",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        client_cert=out / f"{first}.pem",
        client_key=out / f"{first}.key",
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m brpc.certs") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Make a development CA, a server certificate (SANs localhost, 127.0.0.1, ::1 and "
            "any --host) and client certificates for mutual TLS. Private keys are written "
            "with 0600 permissions."
        ),
    )
    parser.add_argument("--out", default="certs", help="output directory (default: certs)")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="extra subject alternative name for the server certificate (repeatable)",
    )
    parser.add_argument(
        "--client-name",
        action="append",
        default=[],
        metavar="NAME",
        help="common name of a client certificate to make (repeatable; default: client)",
    )
    parser.add_argument("--days", type=int, default=_DEFAULT_DAYS, help="validity in days")
    parser.add_argument(
        "--force", action="store_true", help="replace existing files, including the CA"
    )
    args = parser.parse_args(argv)
    made = write_dev_certificates(
        args.out,
        hosts=args.host,
        client_names=args.client_name or ["client"],
        force=args.force,
        days=args.days,
    )
    print(f"certificates in {made.directory}/: CA {made.ca.name}, server {made.server_cert.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
