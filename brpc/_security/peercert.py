"""The peer certificate in the shape ``ssl.SSLSocket.getpeercert()`` returns.

grpclib's ``stream.peer.cert()`` reads ``transport.get_extra_info("ssl_object")``
and calls ``getpeercert()`` on it. QUIC has no ``ssl`` object, so brpc's stream
transports offer :class:`PeerCertificate` under that name: the peer's verified
certificate as the familiar dictionary (``subject``, ``issuer``,
``subjectAltName``, ``notBefore``, ``notAfter``, ``serialNumber``).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = ["PeerCertificate"]

_SSL_NAMES = {
    NameOID.COMMON_NAME: "commonName",
    NameOID.ORGANIZATION_NAME: "organizationName",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
    NameOID.COUNTRY_NAME: "countryName",
    NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
    NameOID.LOCALITY_NAME: "localityName",
    NameOID.EMAIL_ADDRESS: "emailAddress",
}
_SAN_KINDS: dict[type, str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP Address",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
}


def _name(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(
        tuple((_SSL_NAMES.get(a.oid, a.oid.dotted_string), str(a.value)) for a in rdn)
        for rdn in name.rdns
    )


class PeerCertificate:
    """Stands in for ``ssl.SSLObject`` where grpclib asks for the peer certificate."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self.certificate = certificate

    def getpeercert(self, binary_form: bool = False) -> Any:
        cert = self.certificate
        if binary_form:
            return cert.public_bytes(Encoding.DER)
        info: dict[str, Any] = {
            "subject": _name(cert.subject),
            "issuer": _name(cert.issuer),
            "version": cert.version.value + 1,
            "serialNumber": f"{cert.serial_number:X}",
            "notBefore": cert.not_valid_before_utc.strftime("%b %d %H:%M:%S %Y GMT"),
            "notAfter": cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT"),
        }
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return info
        info["subjectAltName"] = tuple(
            (_SAN_KINDS.get(type(name), type(name).__name__), str(name.value)) for name in sans
        )
        return info
