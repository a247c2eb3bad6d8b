"""Errors of the local Kafka broker. Every message says what to do next."""

from __future__ import annotations


class LocalBrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped."""


class MissingToolError(LocalBrokerError):
    """java or mvn is not installed (or too old); the message says what to install."""


class PortInUseError(LocalBrokerError):
    """A port the broker must listen on is held by another process."""


class BrokerStartError(LocalBrokerError):
    """The broker process exited or did not become ready; the message points at its log."""
