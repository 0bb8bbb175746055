"""Development certificates: contents, permissions, idempotence, CLI."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from brpc.certs import write_dev_certificates


def test_files_permissions_and_names(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, hosts=["agents.example.com", "10.0.0.7"])
    for key in (made.ca_key, made.server_key, made.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "agents.example.com"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
    }
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificate(made.client_cert.read_bytes())
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    assert server.issuer == ca.subject == client.issuer


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    first = write_dev_certificates(tmp_path)
    before = first.ca.read_bytes()
    write_dev_certificates(tmp_path)
    assert first.ca.read_bytes() == before
    write_dev_certificates(tmp_path, force=True)
    assert first.ca.read_bytes() != before


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "c"
    subprocess.run(
        [sys.executable, "-m", "brpc.certs", "--out", str(out), "--client-name", "agent-1"],
        check=True,
        capture_output=True,
    )
    assert {p.name for p in out.iterdir()} == {
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "agent-1.pem",
        "agent-1.key",
    }
    assert (
        "--host"
        in subprocess.run(
            [sys.executable, "scripts/gen_certs.py", "--help"],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
    )
