"""A throw-away self-signed certificate for ``localhost``, for tests and benchmarks of the TLS path.

Never for a deployment: a real server gets its certificate from the hospital's or vendor's CA.
Needs ``cryptography`` (the ``dev`` extra).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path


def self_signed(directory: Path) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` (P-256, valid for a day either side of now, CA flag set so
    it can also serve as its own trust anchor) into ``directory``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    c, k = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # the private key is created owner-only (0600) before a byte of it is written
    fd = os.open(k, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode under O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return str(c), str(k)
