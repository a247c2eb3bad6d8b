"""Kafka wiring: the Faust app, topics, tables, agents and the topic admin."""
