"""Kafka's configuration and TLS files, for the local stack and for compose's `kafka-init` service.

    python infra/kafka_init.py --ca-dir /mosquitto/tls --tls-dir /etc/kafka/vaktrom \\
        --config-dir /mnt/shared/config --host kafka                                   # compose

A node of a three-broker cluster adds `--node-id N --replication 3 --voters
1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093` and `--cert-host kafka-1 --cert-host kafka-2
--cert-host kafka-3`, so that every node's run keeps one certificate valid for each of them.

Reads KAFKA_BROKER_PASSWORD (the broker's own PLAIN password: controller and inter-broker). Writes
the broker's key and certificate (signed by the stack's CA in --ca-dir, the MQTT broker's) as one
PEM file with the CA beside it, a client configuration for the health check, and server.properties
from infra/kafka/server.properties: SASL_SSL on both listeners, the StandardAuthorizer, and super
users the broker and the admin only (docs/kafka-security.md). `infra/stack` uses the same functions.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import uuid
from pathlib import Path

from tls import check_only, ensure_server_certificates

__all__ = ["node_ports", "quorum_voters", "render_server_properties", "write_private", "write_tls"]

TEMPLATE = Path(__file__).resolve().parent / "kafka" / "server.properties"
BROKER = "vaktrom-broker"  # contracts.kafka_acl.BROKER (this script runs without the project)
ADMIN = "vaktrom-admin"
MIN_PASSWORD = 16  # the broker's is a super user's; as kafka_acl.MIN_PASSWORD


def write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by its owner only (keys, passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_tls(ca_dir: Path, tls_dir: Path, hosts: list[str]) -> None:
    """kafka.pem (key, then certificate: Kafka's PEM keystore) and ca.crt in `tls_dir`."""
    ensure_server_certificates(ca_dir, hosts, name="kafka")
    write_private(
        tls_dir / "kafka.pem", (ca_dir / "kafka.key").read_bytes() + (ca_dir / "kafka.crt").read_bytes()
    )
    (tls_dir / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())


def node_ports(port: int, controller_port: int, nodes: int) -> list[tuple[int, int]]:
    """(client port, controller port) of each node of a local cluster: node 1 on the given ports,
    each next node two above the one before (19092/19093, 19094/19095, 19096/19097)."""
    if nodes not in (1, 3):
        raise ValueError(f"a Kafka cluster here has 1 or 3 nodes, not {nodes}")
    return [(port + 2 * i, controller_port + 2 * i) for i in range(nodes)]


def quorum_voters(controllers: list[tuple[str, int]]) -> str:
    """controller.quorum.voters for nodes 1..N at (host, controller port): `1@host:port,2@...`."""
    return ",".join(f"{node}@{host}:{port}" for node, (host, port) in enumerate(controllers, start=1))


def render_server_properties(
    *,
    host: str,
    port: int,
    controller_port: int,
    data: str,
    partitions: int,
    tls_dir: Path,
    broker_password: str,
    node_id: int = 1,
    voters: str | None = None,
    replication: int | None = None,
) -> str:
    """One node's server.properties. Alone by default; in a cluster, `voters` lists every node's
    controller (quorum_voters) and `replication` is the copies each topic keeps (two must hold a
    write with acks=all once there are three): by default one per voter, so a cluster rendered
    without it never keeps a single copy."""
    if replication is None:
        replication = len((voters or "x").split(","))
    if not broker_password or '"' in broker_password or "\\" in broker_password:
        raise ValueError(
            "the broker's password must be set and hold no quote or backslash (it goes into JAAS)"
        )
    if not 1 <= replication <= len((voters or "x").split(",")):
        raise ValueError(f"replication factor {replication} needs as many nodes, the quorum has fewer")
    clustered = len((voters or "x").split(",")) > 1
    return (
        TEMPLATE.read_text()
        .replace("@NODE_ID@", str(node_id))
        .replace("@VOTERS@", voters or f"{node_id}@{host}:{controller_port}")
        .replace("@REPLICATION@", str(replication))
        .replace("@MIN_ISR@", str(min(2, replication)))
        .replace("@HOST@", host)
        .replace("@PORT@", str(port))
        .replace("@CONTROLLER_PORT@", str(controller_port))
        .replace("@DATA@", data)
        .replace("@PARTITIONS@", str(partitions))
        .replace("@TLS_DIR@", str(tls_dir))
        .replace("@BROKER_USER@", BROKER)
        .replace("@BROKER_PASSWORD@", broker_password)
        .replace("@ADMIN_USER@", ADMIN)
        .replace("@HEARTBEAT_MS@", "1000" if clustered else "2000")
        .replace("@SESSION_MS@", "5000" if clustered else "9000")
    )


def kafka_cluster_id() -> str:
    """A Kafka Uuid: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    `Uuid.randomUuid`, never one that starts with "-", which the storage tool would read as an option
    (one fresh stack in 64 failed to format before this)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _client_config(tls_dir: Path, broker_password: str) -> str:
    """Signs Kafka's own command-line tools in as the broker (the container's health check)."""
    return (
        "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{BROKER}" password="{broker_password}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={tls_dir / 'ca.crt'}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ca-dir", type=Path, required=True, help="the stack's CA (infra/tls.py)")
    parser.add_argument("--tls-dir", type=Path, required=True, help="where the broker reads its TLS files")
    parser.add_argument("--config-dir", type=Path, required=True, help="where server.properties goes")
    parser.add_argument("--host", default="kafka", help="the name clients and the broker reach it by")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    parser.add_argument("--data", default="/var/lib/kafka/data")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--node-id", type=int, default=1, help="this broker's node.id in a cluster")
    parser.add_argument(
        "--voters",
        default=None,
        help="controller.quorum.voters of a cluster: 1@kafka-1:9093,2@kafka-2:9093,...",
    )
    parser.add_argument(
        "--cert-host",
        action="append",
        default=[],
        help="another name the certificate is valid for (each node's)",
    )
    parser.add_argument(
        "--replication", type=int, default=None, help="copies per topic (default: one per voter)"
    )
    parser.add_argument("--owner", type=int, default=None, help="uid that runs the broker (files are 0600)")
    args = parser.parse_args(argv)
    password = os.environ.get("KAFKA_BROKER_PASSWORD", "")
    if len(password) < MIN_PASSWORD:
        print(f"kafka_init: set KAFKA_BROKER_PASSWORD in .env ({MIN_PASSWORD}+ characters)", file=sys.stderr)
        return 1
    if check_only():  # the image check: the template renders, the CA mosquitto-init made is there
        missing = [str(args.ca_dir / n) for n in ("ca.crt", "ca.key") if not (args.ca_dir / n).is_file()]
        if missing or not TEMPLATE.is_file():
            print(f"kafka_init: missing {', '.join(missing or [str(TEMPLATE)])}", file=sys.stderr)
            return 2
        try:
            render_server_properties(
                host=args.host, port=args.port, controller_port=args.controller_port, data=args.data,
                partitions=args.partitions, tls_dir=args.tls_dir, broker_password=password,
                node_id=args.node_id, voters=args.voters, replication=args.replication,
            )  # fmt: skip
        except ValueError as exc:
            print(f"kafka_init: {exc}", file=sys.stderr)
            return 2
        print(f"kafka_init: check only: would write {args.tls_dir} and {args.config_dir}", file=sys.stderr)
        return 0
    try:
        write_tls(args.ca_dir, args.tls_dir, sorted({args.host, *args.cert_host}))
        properties = render_server_properties(
            host=args.host, port=args.port, controller_port=args.controller_port, data=args.data,
            partitions=args.partitions, tls_dir=args.tls_dir, broker_password=password,
            node_id=args.node_id, voters=args.voters, replication=args.replication,
        )  # fmt: skip
        write_private(args.config_dir / "server.properties", properties.encode())
        write_private(args.tls_dir / "client.properties", _client_config(args.tls_dir, password).encode())
        if args.owner is not None:
            for path in (args.config_dir / "server.properties", *args.tls_dir.iterdir()):
                os.chown(path, args.owner, args.owner)
    except (OSError, ValueError) as exc:
        print(f"kafka_init: {exc} (KAFKA_BROKER_PASSWORD comes from .env)", file=sys.stderr)
        return 1
    print(f"kafka_init: TLS files in {args.tls_dir}, server.properties in {args.config_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
