"""How every sendguard Kafka client connects: one set of flags, two client dialects.

The worker runs three kinds of clients (Faust/aiokafka for the stateful agent,
confluent-kafka for the edge stage and the directory reader, the admin client for
the internal topic) and `produce`/`tail` run confluent-kafka. All of them get their
address and security settings from one `KafkaConnection`, so a deployment with
SASL or TLS configures it once. Faust is imported only in `faust_credentials`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Broker address and security settings shared by every client."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security protocol {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs a SASL username and password")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def confluent(self) -> dict[str, Any]:
        """librdkafka settings (bootstrap and security) for any confluent-kafka client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
        }
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism or "PLAIN"
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.uses_ssl:
            for key, value in (
                ("ssl.ca.location", self.ssl_cafile),
                ("ssl.certificate.location", self.ssl_certfile),
                ("ssl.key.location", self.ssl_keyfile),
            ):
                if value:
                    conf[key] = value
        return conf

    def faust_credentials(self) -> Any:
        """The Faust `broker_credentials` for these settings (None for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = None
        if self.uses_ssl:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism or "PLAIN",
                ssl_context=context,
            )
        return faust.SSLCredentials(context)


def connection_options(function: F) -> F:
    """Add --bootstrap and the security flags (all with SENDGUARD_* env fallbacks)."""
    options = [
        click.option(
            "--bootstrap",
            envvar="SENDGUARD_BOOTSTRAP",
            show_envvar=True,
            default=DEFAULT_BOOTSTRAP,
            show_default=True,
            help="Kafka bootstrap servers (host:port[,host:port]).",
        ),
        click.option(
            "--security-protocol",
            envvar="SENDGUARD_SECURITY_PROTOCOL",
            show_envvar=True,
            type=click.Choice(SECURITY_PROTOCOLS, case_sensitive=False),
            default="PLAINTEXT",
            show_default=True,
        ),
        click.option(
            "--sasl-mechanism",
            envvar="SENDGUARD_SASL_MECHANISM",
            show_envvar=True,
            type=click.Choice(SASL_MECHANISMS, case_sensitive=False),
            default="PLAIN",
            show_default=True,
        ),
        click.option("--sasl-username", envvar="SENDGUARD_SASL_USERNAME", show_envvar=True),
        click.option(
            "--sasl-password",
            envvar="SENDGUARD_SASL_PASSWORD",
            show_envvar=True,
            help="Prefer the environment variable: flags show up in `ps`.",
        ),
        click.option("--ssl-cafile", envvar="SENDGUARD_SSL_CAFILE", show_envvar=True),
        click.option("--ssl-certfile", envvar="SENDGUARD_SSL_CERTFILE", show_envvar=True),
        click.option("--ssl-keyfile", envvar="SENDGUARD_SSL_KEYFILE", show_envvar=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def connection_from_options(options: dict[str, Any]) -> KafkaConnection:
    """Pop the `connection_options` values out of a command's kwargs."""
    try:
        return KafkaConnection(
            bootstrap=options.pop("bootstrap"),
            security_protocol=options.pop("security_protocol").upper(),
            sasl_mechanism=options.pop("sasl_mechanism").upper(),
            sasl_username=options.pop("sasl_username"),
            sasl_password=options.pop("sasl_password"),
            ssl_cafile=options.pop("ssl_cafile"),
            ssl_certfile=options.pop("ssl_certfile"),
            ssl_keyfile=options.pop("ssl_keyfile"),
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--security-protocol") from None


def topic_prefix_option(function: F) -> F:
    """--topic-prefix: prepended to every external topic name (tests, shared clusters)."""
    return click.option(
        "--topic-prefix",
        envvar="SENDGUARD_TOPIC_PREFIX",
        show_envvar=True,
        default="",
        show_default=True,
        help="Prefix of every sendguard topic name (e.g. 'staging.').",
    )(function)


def schema_registry_option(function: F) -> F:
    return click.option(
        "--schema-registry",
        # One name for the setting everywhere: the codec reads the same variable.
        envvar="SENDGUARD_SCHEMA_REGISTRY_URL",
        show_envvar=True,
        help="Schema registry URL: Confluent framing instead of Avro single-object encoding.",
    )(function)
