"""The sample service behind ``hexbus demo``: a small user/item service, built the hexagonal way.

Why it lives in the package: it is the executable documentation of the library — events,
ports, adapters, use cases that receive the ``EventBus`` by injection, handlers, and a
container that wires it all. The CLI reaches it like any service: ``--app
hexbus.demo:DemoContainer``.
"""

from __future__ import annotations

from hexbus.demo.container import DemoContainer

__all__ = ["DemoContainer"]
