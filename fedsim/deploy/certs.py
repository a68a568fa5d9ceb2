"""Certificates and keys for Flower's Deployment Engine.

* :func:`make_certs` — a CA and a SuperLink certificate whose SANs name the SuperLink's
  hosts (``fedsim deploy certs``);
* :func:`make_node_keys` — an EC P-384 key pair (OpenSSH format) for SuperNode
  authentication (``fedsim deploy keys``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certs(out_dir: Path, hosts: Sequence[str] = (), days: int = 365) -> dict[str, Path]:
    """A CA and a SuperLink certificate signed by it (PEM files in ``out_dir``).

    The certificate's subject alternative names are ``localhost``, ``127.0.0.1``,
    ``::1`` and every entry of ``hosts`` (IP addresses or DNS names): a SuperNode checks
    that the address it dials is one of them.  Returns the paths by role: ``ca``
    (give it to every SuperNode and to ``flwr``), ``ca_key`` (keep it private),
    ``cert`` and ``key`` (the SuperLink's).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim CA"))
        .issuer_name(_name("fedsim CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {
        "ca": out_dir / "ca.crt",
        "ca_key": out_dir / "ca.key",
        "cert": out_dir / "server.pem",
        "key": out_dir / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    for role, k in (("ca_key", ca_key), ("key", key)):
        paths[role].write_bytes(
            k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        paths[role].chmod(0o600)
    return paths


def make_node_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: ``<name>`` (private) and ``<name>.pub``.

    The public key is what ``flwr supernode register`` uploads to the SuperLink; the
    private key is the SuperNode's ``--auth-supernode-private-key``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out_dir / name, out_dir / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public
