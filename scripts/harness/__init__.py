"""The native broker harness behind scripts/brokers.py (stdlib only: runs before any venv).

Modules, from the bottom up:

* ``processes`` -- pids, signals, locks, port probes (nothing broker-specific);
* ``state``     -- a state directory: its files, lock and machine-unique identity;
* ``nodes``     -- the nodes of a layout (1 or 3 per broker) and their recorded ports;
* ``install``   -- getting RabbitMQ and PostgreSQL (apt), Java and Kafka's jars (Maven) onto
  the machine;
* ``rabbitmq``, ``kafka``, ``postgres`` -- configuring, starting, awaiting and stopping one node;
* ``cluster``   -- orchestration over layouts (up, down, restart, env lines);
* ``cli``       -- the command line.
"""
