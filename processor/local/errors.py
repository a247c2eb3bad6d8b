"""Errors of the local Kafka broker and the local mail services. Every message says what
to do next or carries the log that does."""

from __future__ import annotations


class LocalBrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped."""


class MissingToolError(LocalBrokerError):
    """java or mvn is not installed (or too old); the message says what to install."""


class PortInUseError(LocalBrokerError):
    """A port the broker must listen on is held by another process."""


class BrokerStartError(LocalBrokerError):
    """The broker process exited or did not become ready; the message points at its log."""


class ServiceStartError(RuntimeError):
    """A local service of the mail loop (rspamd, Postfix, `sendguard ingest` or
    `gateway`) exited or did not become ready in time; the message carries the tail of
    its log."""
