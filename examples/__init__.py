"""Runnable examples of services built on hexbus (``uvicorn examples.fastapi_service.app:app``)."""
