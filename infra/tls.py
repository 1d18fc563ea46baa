"""The MQTT broker's certificate authority and certificates: kits verify the broker with `ca.crt`.

    python infra/tls.py DIR [--host NAME ...] [--owner UID]   CA and server certificate (idempotent)
    python infra/tls.py DIR --client NAME            a client certificate signed by the CA

DIR gets ca.crt/ca.key (the CA; keep ca.key off the broker in production), server.crt/server.key
(for Mosquitto; its names are the --host values, default localhost and 127.0.0.1) and, with
--client, NAME.crt/NAME.key for brokers that ask for client certificates. Keys are EC P-256,
written 0600. Run by `infra/stack up` for the local broker and by the production compose file's
`mosquitto-init` service. An existing CA is kept; the server certificate is made again when its
names change or it has less than 30 days left. --owner gives DIR's files to the broker's uid.
With VAKTROM_CHECK_ONLY=1 (the image check, runtime/stage.py) it checks the names and writes nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["client_certificate", "ensure_server_certificates"]

CA_DAYS, LEAF_DAYS, RENEW_DAYS = 3650, 825, 30
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def check_only() -> bool:
    """As runtime.stage.check_only: this script and kafka_init.py import nothing of the project."""
    return os.environ.get("VAKTROM_CHECK_ONLY", "").strip().lower() in {"1", "true", "yes", "on"}


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vaktrom"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = folder / "ca.crt", folder / "ca.key"
    if crt.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(crt.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Vaktrom MQTT CA"))
        .issuer_name(_name("Vaktrom MQTT CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def ensure_server_certificates(folder: Path, hosts: list[str], *, name: str = "server") -> bool:
    """The CA and a server certificate for `hosts` in `folder` (`name`.crt and `name`.key: one CA
    signs the MQTT broker's and Kafka's); True when something was (re)made."""
    folder.mkdir(parents=True, exist_ok=True)
    made = not (folder / "ca.crt").exists()
    ca = _ca(folder)
    crt = folder / f"{name}.crt"
    wanted = set(_sans(hosts))
    if crt.exists() and (folder / f"{name}.key").exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        fresh = cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=RENEW_DAYS)
        if names == wanted and fresh and cert.issuer == ca[0].subject:
            return made
    cert, key = _leaf(ca, hosts[0], _sans(hosts), ExtendedKeyUsageOID.SERVER_AUTH)
    _write_key(folder / f"{name}.key", key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def client_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A client certificate for `name` (a kit or a service) signed by the CA in `folder`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"client name {name!r} must be a plain name (it becomes a file name)")
    if not (folder / "ca.crt").exists():
        raise FileNotFoundError(f"no CA in {folder}; run `python infra/tls.py {folder}` first")
    cert, key = _leaf(_ca(folder), name, [], ExtendedKeyUsageOID.CLIENT_AUTH)
    crt_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    _write_key(key_path, key)
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/tls.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--host", action="append", help="a name the broker is reached by (repeat)")
    parser.add_argument("--client", help="make a client certificate with this common name")
    parser.add_argument("--owner", type=int, default=None, help="uid (and gid) to give DIR's files to")
    args = parser.parse_args(argv)
    if check_only():
        hosts = args.host or list(DEFAULT_HOSTS)
        if not all(hosts):
            print("infra/tls.py: an empty --host (MQTT_TLS_HOSTS in .env lists the names)", file=sys.stderr)
            return 2
        _sans(hosts)
        print(f"infra/tls.py: check only: would make {args.folder} for {', '.join(hosts)}", file=sys.stderr)
        return 0
    try:
        if args.client:
            crt, key = client_certificate(args.folder, args.client)
            print(f"client certificate {crt} (key {key})")
            return 0
        hosts = args.host or list(DEFAULT_HOSTS)
        made = ensure_server_certificates(args.folder, hosts)
        if args.owner is not None:
            for path in (args.folder, *args.folder.iterdir()):
                os.chown(path, args.owner, args.owner)
        state = "made" if made else "kept (still valid, same names)"
        print(f"MQTT TLS in {args.folder}: CA and server certificate for {', '.join(hosts)} {state}")
        return 0
    except (OSError, ValueError) as exc:
        print(f"infra/tls.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
