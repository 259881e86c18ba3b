"""Adapters, codec, settings and the composition root."""
