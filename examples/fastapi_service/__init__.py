"""A small accounts service on FastAPI and hexbus: ``POST /users`` publishes
``UserRegistered``; a handler sends the welcome mail; every event lands in the audit log.

Run it from the repository root: ``uvicorn examples.fastapi_service.app:app``
(see README.md here). Which transport carries the events is ``HEXBUS_ADAPTER``'s choice.
"""
