"""Avro for sendguard: schemas, wire formats, and records <-> policy types."""
