"""TLS settings of brpc's QUIC connections and the words for their failures.

Builds the engine's QUIC configuration for each side (ALPN, certificates,
verification, timeouts, datagram size) and turns a failed handshake into a
sentence that says what went wrong and for which host name.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any

from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from ..._wire.control import ALPN
from ..base import SessionClosed
from .engine import Engine

__all__ = [
    "client_configuration",
    "describe_handshake_failure",
    "is_tls_failure",
    "private_key_bytes",
    "server_configuration",
]

_CRYPTO_ERROR = int(QuicErrorCode.CRYPTO_ERROR)
PathLike = str | os.PathLike[str]


def _check_file(path: PathLike, what: str) -> str:
    text = os.fspath(path)
    if not os.path.isfile(text):
        raise FileNotFoundError(
            f"{what} {text!r} does not exist (make development ones with 'python -m brpc.certs')"
        )
    return text


def client_configuration(
    *,
    engine: Engine,
    server_name: str,
    ca: PathLike | None,
    certfile: PathLike | None,
    keyfile: PathLike | None,
    idle_timeout: float,
    max_datagram_size: int,
    insecure: bool = False,
    session_ticket: Any = None,
) -> Any:
    """The client's configuration; it verifies the server unless ``insecure``."""
    configuration = engine.configuration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        verify_mode=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED,
        session_ticket=session_ticket,
    )
    if ca is not None:
        configuration.load_verify_locations(cafile=_check_file(ca, "CA file"))
    if certfile is not None:
        _check_file(certfile, "certificate file")
        if keyfile is not None:
            _check_file(keyfile, "key file")
        _check_key_pair(certfile, keyfile)
        configuration.load_cert_chain(
            _check_file(certfile, "certificate file"),
            _check_file(keyfile, "key file") if keyfile is not None else None,
        )
    elif keyfile is not None:
        raise ValueError("keyfile was given without certfile")
    return configuration


def server_configuration(
    *,
    engine: Engine,
    certfile: PathLike,
    keyfile: PathLike | None,
    idle_timeout: float,
    max_datagram_size: int,
) -> Any:
    configuration = engine.configuration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
    )
    _check_file(certfile, "certificate file")
    if keyfile is not None:
        _check_file(keyfile, "key file")
    _check_key_pair(certfile, keyfile)
    configuration.load_cert_chain(os.fspath(certfile), os.fspath(keyfile) if keyfile else None)
    return configuration


def _check_key_pair(certfile: PathLike, keyfile: PathLike | None) -> None:
    """Refuse a certificate without its private key, or with a key that is not its own."""
    cert_pem = Path(certfile).read_bytes()
    key_pem = Path(keyfile).read_bytes() if keyfile is not None else cert_pem
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValueError(f"no PEM certificate in {os.fspath(certfile)!r}: {exc}") from exc
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"no private key for the certificate in {os.fspath(certfile)!r}: pass keyfile=... "
            "(the PEM file of the certificate's private key)"
        ) from None
    mine = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    theirs = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mine != theirs:
        raise ValueError(
            f"the private key does not belong to the certificate in {os.fspath(certfile)!r}: "
            "pass the keyfile made together with that certificate"
        )


def private_key_bytes(certfile: PathLike, keyfile: PathLike | None) -> bytes:
    """The DER (PKCS#8) bytes of the private key in ``keyfile`` (or ``certfile``)."""
    key = load_pem_private_key(Path(keyfile or certfile).read_bytes(), password=None)
    return key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


def _alert_name(error_code: int) -> str | None:
    if _CRYPTO_ERROR <= error_code < _CRYPTO_ERROR + 0x100:
        try:
            return AlertDescription(error_code - _CRYPTO_ERROR).name
        except ValueError:
            return f"alert {error_code - _CRYPTO_ERROR}"
    return None


_PATTERN = re.compile(
    r"(?:DNS|IPAddress|URI|SRV)Pattern\(pattern=(?:b?'([^']*)'|IPv[46]Address\('([^']*)'\))\)"
)


def _readable(reason: str) -> str:
    """aioquic names certificate patterns by their repr; show just the names."""
    return _PATTERN.sub(lambda m: repr(m.group(1) or m.group(2)), reason)


def is_tls_failure(closed: SessionClosed) -> bool:
    """Whether a session ended because of a TLS alert (either side's)."""
    return closed.transport_error and _alert_name(closed.error_code) is not None


def describe_handshake_failure(closed: SessionClosed, *, target: str, server_name: str) -> str:
    """Explain why the handshake with ``target`` failed, from the client's side."""
    alert = _alert_name(closed.error_code) if closed.transport_error else None
    reason = _readable(closed.reason or "no reason given")
    if alert is not None and closed.local:
        if alert in ("bad_certificate", "certificate_expired", "unknown_ca"):
            return (
                f"TLS handshake with {target} failed: the server's certificate did not "
                f"verify for server name {server_name!r}: {reason} (TLS alert {alert}); "
                "if a private CA signed it, pass that CA's PEM file as ca=... (without ca= "
                "the system trust store is used), and check that the certificate names "
                f"{server_name!r} (server_name=... when dialing an address)"
            )
        return f"TLS handshake with {target} failed: {reason} (TLS alert {alert})"
    if alert is not None:
        hint = ""
        if alert == "no_application_protocol":
            hint = f"; the server does not speak {ALPN}"
        return f"server {target} refused the TLS handshake: {reason} (TLS alert {alert}){hint}"
    if closed.local and closed.transport_error:
        return f"could not connect to {target}: {reason}"
    return f"could not connect to {target}: {closed.describe()}"
