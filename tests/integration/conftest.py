"""Integration tests need real brokers; the fixtures live in hexbus.testing.brokers."""

