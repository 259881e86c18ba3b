#!/usr/bin/env python3
"""Start real RabbitMQ, Apache Kafka and PostgreSQL natively (no Docker) for hexbus tests.

Stdlib only; runs with any Python >= 3.11 (no venv needed).

    python3 scripts/brokers.py up [--nodes 1|3] [--only rabbitmq|kafka|postgres] [--secure]
    python3 scripts/brokers.py down
    python3 scripts/brokers.py restart NAME      # rabbitmq, kafka, kafka-2, postgres, ...
    python3 scripts/brokers.py stop NAME | start NAME
    python3 scripts/brokers.py pause NAME | resume NAME   # SIGSTOP / SIGCONT: a stalled broker
    python3 scripts/brokers.py status | env
    python3 scripts/brokers.py run [--nodes N] [--only X] [--secure] -- CMD ARGS...

Every command also takes ``--state-dir DIR`` (default ``$HEXBUS_BROKERS_STATE_DIR``, else
``<repo>/.cache/brokers``) and ``--name NAME`` (the RabbitMQ node name; default
``hexbus-<hash of the state dir>``, recorded on first use).

`up` and `env` print ``HEXBUS_RABBITMQ_URL=...``,
``HEXBUS_KAFKA_BOOTSTRAP_SERVERS=...`` and ``HEXBUS_TEST_POSTGRES_URL=...`` as their last
stdout lines, so
``export $(python3 scripts/brokers.py env)`` works; `up` precedes them with a
``# ...`` timing line (use ``set -a; eval "$(... up)"; set +a``).
Progress goes to stderr.

PostgreSQL (the outbox's database, Debian's ``postgresql`` package; ``harness/postgres.py``)
runs in single-node sets only, not in ``--secure`` ones: a cluster of its own made with
initdb in the state dir, a database and role ``hexbus`` with a generated password. Its
variable is not the outbox's ``HEXBUS_OUTBOX_URL``: that would move every test to the outbox.

The brokers share the machine: a default port (5672, 9092, 5432, ...) someone else holds is
replaced by a free one, recorded in ``<state>/c1/ports.json`` and kept by every later
restart; node names, epmd, Erlang cookie and Kafka cluster id belong to the state dir, so
several checkouts (or state dirs) run their brokers side by side.

State (pid files, data, logs) lives in the state dir: ``c1/`` holds the single-node
brokers, ``c3/`` the 3-node clusters; the Kafka jars fetched with Maven
(``scripts/kafka/pom.xml``) are in ``<repo>/.cache/brokers/kafka/libs``. Only processes
recorded in our pid files are ever stopped. The code is the ``scripts/harness`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.cli import main  # the package next to this file

if __name__ == "__main__":
    sys.exit(main())
