"""The domain layer: events, the ``EventBus`` port, errors. Only pydantic and stdlib."""
