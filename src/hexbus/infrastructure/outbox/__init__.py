"""The transactional outbox, its relay and the idempotent inbox (SQLAlchemy async).

Requires the ``[outbox]`` extra (``[postgres]`` for PostgreSQL)."""
