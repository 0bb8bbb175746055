"""Client certificates proven above TLS: a signature over the TLS exporter secret.

A server whose QUIC engine cannot ask for a client certificate in the TLS
handshake (qh3) still authenticates clients by certificate. The client sends
its certificate chain in the hello with a signature, made with the
certificate's private key, over a fixed context string and the TLS exporter
secret (RFC 8446 section 7.5) of this very connection. The server derives the
same secret, checks the signature against the certificate's public key, then
verifies the chain with the same rules as a TLS client certificate
(:class:`~brpc._security.verify.ClientCertificateVerifier`).

The exporter secret is unique to one TLS session and known only to its two
ends, so a proof cannot be replayed on another connection or made by a
man in the middle (who would hold a different TLS session with each side), and
only the holder of the private key can make it: the same guarantees as TLS's
CertificateVerify, which signs the handshake transcript.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from .verify import CertificateRejected

__all__ = [
    "EXPORTER_LABEL",
    "EXPORTER_LENGTH",
    "ClientKeyProof",
    "proof_message",
    "verify_key_proof",
]

EXPORTER_LABEL = b"EXPORTER-brpc-client-auth"
EXPORTER_LENGTH = 32
_CONTEXT = b"brpc client certificate proof v1\x00"
#: Bounds on what a hello may carry, checked before any parsing.
_MAX_CERTIFICATES = 8
_MAX_CERTIFICATE_BYTES = 16 << 10
_MAX_PROOF_BYTES = 1024


def proof_message(exporter: bytes) -> bytes:
    """What the client signs: the context string and the connection's exporter secret."""
    return _CONTEXT + exporter


@dataclass(frozen=True)
class ClientKeyProof:
    """A client's certificate chain and private key, to prove it holds the key."""

    chain: tuple[bytes, ...]
    key: PrivateKeyTypes

    @classmethod
    def load(
        cls, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None
    ) -> ClientKeyProof:
        certificates = x509.load_pem_x509_certificates(Path(certfile).read_bytes())
        key_pem = Path(keyfile if keyfile is not None else certfile).read_bytes()
        key = serialization.load_pem_private_key(key_pem, password=None)
        chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in certificates)
        return cls(chain=chain, key=key)

    def sign(self, exporter: bytes) -> bytes:
        """The proof for a connection whose exporter secret is ``exporter``."""
        message = proof_message(exporter)
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, _pss(), hashes.SHA256())
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return key.sign(message)
        raise ValueError(f"brpc cannot sign with a {type(key).__name__} client key")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _check_signature(public_key: PublicKeyTypes, signature: bytes, message: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, message, _pss(), hashes.SHA256())
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        public_key.verify(signature, message)
    else:
        raise InvalidSignature(f"unsupported key type {type(public_key).__name__}")


def verify_key_proof(
    chain: Sequence[bytes], proof: bytes, exporter: bytes
) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    """The client certificate and intermediates of a hello whose ``proof`` signs
    ``exporter``; ``(None, [])`` when it sent no certificate.

    Raises :class:`CertificateRejected` when the certificates do not parse or
    the signature is not the certificate key's over this connection's secret.
    The chain itself is for the verifier to check.
    """
    if not chain:
        return None, []
    if (
        len(chain) > _MAX_CERTIFICATES
        or any(len(c) > _MAX_CERTIFICATE_BYTES for c in chain)
        or len(proof) > _MAX_PROOF_BYTES
    ):
        raise CertificateRejected("the client's certificate chain or proof is too large")
    try:
        certificates = [x509.load_der_x509_certificate(c) for c in chain]
    except ValueError as exc:
        raise CertificateRejected(f"the client's certificate does not parse: {exc}") from None
    leaf = certificates[0]
    try:
        _check_signature(leaf.public_key(), proof, proof_message(exporter))
    except (InvalidSignature, ValueError, TypeError):
        subject = leaf.subject.rfc4514_string()
        raise CertificateRejected(
            f"the client did not prove it holds the private key of certificate {subject!r} "
            "(the key proof does not verify for this connection)"
        ) from None
    return leaf, certificates[1:]
