"""Test helpers for hexbus users and adapter authors."""
