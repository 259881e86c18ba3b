"""``python -m hexbus.cli``: the ``hexbus`` command from a source tree, without installing
the console script (what the benchmarks and CI run from a checkout)."""

from hexbus.cli import main

main()
