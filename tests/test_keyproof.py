"""Client certificates proven above TLS: the proof binds the key to one connection."""

from __future__ import annotations

import os
from typing import Any

import pytest

from brpc._security.keyproof import ClientKeyProof, verify_key_proof
from brpc._security.verify import CertificateRejected


def test_a_proof_verifies_for_its_connection_only(certs: Any) -> None:
    proof = ClientKeyProof.load(certs.client_cert, certs.client_key)
    exporter = os.urandom(32)
    signature = proof.sign(exporter)
    leaf, chain = verify_key_proof(proof.chain, signature, exporter)
    assert leaf is not None and leaf.subject.rfc4514_string().startswith("CN=client,")
    assert chain == []
    with pytest.raises(CertificateRejected, match="did not prove it holds the private key"):
        verify_key_proof(proof.chain, signature, os.urandom(32))  # replayed elsewhere


def test_a_certificate_without_its_key_does_not_verify(certs: Any) -> None:
    mine = ClientKeyProof.load(certs.client_cert, certs.client_key)
    other = ClientKeyProof.load(
        certs.directory / "other-client.pem", certs.directory / "other-client.key"
    )
    exporter = os.urandom(32)
    with pytest.raises(CertificateRejected, match="CN=other-client,"):
        verify_key_proof(other.chain, mine.sign(exporter), exporter)


def test_no_certificate_and_garbage(certs: Any) -> None:
    assert verify_key_proof([], b"", os.urandom(32)) == (None, [])
    with pytest.raises(CertificateRejected, match="does not parse"):
        verify_key_proof([b"not a certificate"], b"x", os.urandom(32))
    with pytest.raises(CertificateRejected, match="too large"):
        verify_key_proof([b"x"] * 9, b"x", os.urandom(32))
