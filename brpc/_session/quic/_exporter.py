"""The TLS 1.3 exporter (RFC 8446 section 7.5), computed from an exporter master secret.

Neither aioquic nor qh3 offers an exporter. Both run the TLS 1.3 key schedule in
Python, so each adapter captures ``exporter_master_secret`` at the moment the
handshake derives the application traffic secrets (the transcript then ends with
the server's Finished, as RFC 8446 section 7.1 requires) and this module derives
exported values from it. The result is the standard TLS-Exporter, the same on
both engines and both sides of a connection, and unique to the TLS session.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["EXPORTER_MASTER_LABEL", "tls_exporter"]

EXPORTER_MASTER_LABEL = b"exp master"

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {32: hashes.SHA256, 48: hashes.SHA384}


def _hash_for(secret: bytes) -> hashes.HashAlgorithm:
    algorithm = _HASHES.get(len(secret))
    if algorithm is None:
        raise ValueError(f"no TLS 1.3 hash has a {len(secret)}-byte output")
    return algorithm()


def _hkdf_expand_label(
    algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    full_label = b"tls13 " + label
    info = (
        length.to_bytes(2, "big")
        + len(full_label).to_bytes(1, "big")
        + full_label
        + len(context).to_bytes(1, "big")
        + context
    )
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def tls_exporter(exporter_master_secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """TLS-Exporter(label, context, length) of RFC 8446 section 7.5.

    ``exporter_master_secret`` is Derive-Secret(Master Secret, "exp master",
    ClientHello...server Finished); its length selects the hash (SHA-256 or SHA-384).
    """
    if not 0 < length <= 255 * len(exporter_master_secret):
        raise ValueError("exporter length out of range")
    if len(label) > 249:
        raise ValueError("exporter label too long")
    algorithm = _hash_for(exporter_master_secret)
    size = algorithm.digest_size
    derived = _hkdf_expand_label(
        algorithm, exporter_master_secret, label, _digest(algorithm, b""), size
    )
    return _hkdf_expand_label(algorithm, derived, b"exporter", _digest(algorithm, context), length)
