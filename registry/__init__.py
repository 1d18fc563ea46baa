"""The registry: patients (pseudonyms, identities sealed at rest), teams, kits with their broker
identities, and versioned care plans published to the compacted care-plan topic.

It is a library with a command line (`python -m registry`), not a running stage: the response
centre's service mounts the same operations in its HTTP API and console. The registry alone writes
its tables; the bridge reads the kit tables through `registry.read`, the registry's read API, and
the monitor reads the care-plan topic.
"""

from datetime import timedelta
from functools import partial

from registry.broker import BrokerAdmin, BrokerAdminError
from registry.careplans import PlanChange, PlanError, Proposal, parse_threshold
from registry.identity import Identity, IdentityError, Sealer
from registry.kits import expire_codes_made_by
from registry.publish import KafkaPlanPublisher
from registry.settings import RegistrySettings
from registry.store import Actor, Credentials, KitDevice, Registry, RegistryError
from runtime.settings import KafkaSettings, MqttSettings

__all__ = [
    "Actor",
    "BrokerAdminError",
    "Credentials",
    "Identity",
    "IdentityError",
    "KitDevice",
    "PlanChange",
    "PlanError",
    "Proposal",
    "Registry",
    "RegistryError",
    "RegistrySettings",
    "Sealer",
    "create",
    "expire_codes_made_by",
    "parse_threshold",
]


def create(kafka: KafkaSettings, mqtt: MqttSettings, settings: RegistrySettings) -> Registry:
    """The registry as the settings describe it (broker operations only with the admin account)."""
    admin = settings.broker_admin()
    broker = None
    if admin is not None:
        broker = partial(
            BrokerAdmin, host=mqtt.host, port=mqtt.port, username=admin[0], password=admin[1],
            root=settings.topic_root, tls=mqtt.tls_files(),
        )  # fmt: skip
    return Registry(
        sealer=settings.sealer(),
        broker=broker,
        publisher=KafkaPlanPublisher(settings.publishing_as(kafka)),
        broker_address=(settings.mqtt_public_host or mqtt.host, mqtt.port),
        topic_root=settings.topic_root,
        pairing_ttl=timedelta(hours=settings.pairing_hours),
    )
