"""Verification of client certificates for mutual TLS, without I/O.

aioquic's server asks for a client certificate only through a private switch
and never verifies the chain it gets. :class:`ClientCertificateVerifier`
does: issuer chain to the configured client CA, validity dates, the clientAuth
extended key usage and a subject alternative name (brpc identifies clients by
SAN). It turns a verified certificate into an :class:`Identity`, and a bad one
into :class:`CertificateRejected` with a reason a human can act on.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ..auth import Identity
from ..errors import BrpcError

__all__ = ["CertificateRejected", "ClientCertificateVerifier", "identity_of"]


class CertificateRejected(BrpcError):
    """A client certificate failed verification; the message says why."""


def _san_values(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    values: list[str] = []
    for name in extension.value:
        values.append(str(name.value))
    return tuple(values)


def identity_of(certificate: x509.Certificate) -> Identity:
    """The identity a verified client certificate stands for."""
    sans = _san_values(certificate)
    common_names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    fallback = str(common_names[0].value) if common_names else certificate.subject.rfc4514_string()
    return Identity(
        name=sans[0] if sans else fallback,
        source="certificate",
        subject=certificate.subject.rfc4514_string(),
        sans=sans,
        certificate=certificate,
    )


class ClientCertificateVerifier:
    """Verifies client certificates against the CAs in a PEM file."""

    def __init__(self, ca_file: str | os.PathLike[str]) -> None:
        path = os.fspath(ca_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"client CA file {path!r} does not exist")
        with open(path, "rb") as f:
            self._roots = x509.load_pem_x509_certificates(f.read())
        if not self._roots:
            raise ValueError(f"client CA file {path!r} holds no certificate")
        self._store = Store(self._roots)

    def verify(
        self,
        certificate: x509.Certificate | None,
        chain: Sequence[x509.Certificate] = (),
        *,
        now: datetime.datetime | None = None,
    ) -> Identity:
        if certificate is None:
            raise CertificateRejected(
                "the client presented no certificate (mutual TLS is required)"
            )
        subject = certificate.subject.rfc4514_string()
        now = now or datetime.datetime.now(datetime.UTC)
        if now < certificate.not_valid_before_utc:
            raise CertificateRejected(
                f"client certificate {subject!r} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        if now > certificate.not_valid_after_utc:
            raise CertificateRejected(
                f"client certificate {subject!r} expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if not _san_values(certificate):
            raise CertificateRejected(
                f"client certificate {subject!r} has no subject alternative name; brpc "
                "identifies clients by SAN (python -m brpc.certs makes client certificates "
                "with one)"
            )
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(certificate, list(chain))
        except VerificationError as exc:
            raise CertificateRejected(_explain(subject, str(exc))) from exc
        return identity_of(certificate)


def _explain(subject: str, detail: str) -> str:
    if "EKU" in detail:
        return (
            f"client certificate {subject!r} is not for client authentication "
            "(its extended key usage lacks clientAuth)"
        )
    if "candidates exhausted" in detail or "issuer" in detail:
        return f"client certificate {subject!r} was not issued by a CA in client_ca"
    return f"client certificate {subject!r} did not verify: {detail}"
