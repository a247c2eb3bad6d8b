"""Operator tools that talk to Kafka: `sendguard produce` and `sendguard tail`."""
