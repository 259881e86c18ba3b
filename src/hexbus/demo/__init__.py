"""The sample service behind ``hexbus demo``: a small user/item service, built the hexagonal way.

Why it lives in the package: it is the executable documentation of the library — events,
ports, adapters, use cases that receive the ``EventBus`` by injection, handlers, and a
container that wires it all — and ``hexbus check`` / ``hexbus publish`` reuse its events.
"""
