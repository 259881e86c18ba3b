"""Benchmark code: the broker baselines (raw aio-pika / aiokafka doing the same work).

Why a package of its own and not inside the adapters: an adapter package is only a
transport; the raw-client baselines and the measuring loops are no part of it. Each
module imports its broker client, so ``hexbus.cli`` loads them lazily (``importlib``),
and a core install can still run ``hexbus bench --adapter memory``.
"""
