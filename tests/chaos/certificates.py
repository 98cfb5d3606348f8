"""Throw-away certificates for the TLS scenarios, made with the openssl command line."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # an unrelated CA: trusting it must not be enough
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> Certificates:
    """Two CAs and a server certificate for 127.0.0.1 signed by the first (openssl CLI,
    P-256 keys, valid for a day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *ec, "-days", "1", "-subj", f"/CN=usage-ingest test {name}",
            "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem"),
        )  # fmt: skip
    _openssl(
        "req", *ec, "-subj", "/CN=127.0.0.1",
        "-keyout", str(directory / "server.key"), "-out", str(directory / "server.csr"),
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(directory / "server.csr"), "-days", "1",
        "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
        "-CAcreateserial", "-extfile", str(directory / "san.cnf"),
        "-out", str(directory / "server.pem"),
    )  # fmt: skip
    return Certificates(
        directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem",
        directory / "server.key",
    )  # fmt: skip
