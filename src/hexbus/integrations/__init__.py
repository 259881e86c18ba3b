"""Optional glue between hexbus and web frameworks.

Why a package of its own, importing nothing here: each module needs its framework
(``hexbus.integrations.fastapi`` needs the ``fastapi`` extra), and ``import hexbus`` must
keep working on the core install. Import the module you use; without its extra it raises
``hexbus.ConfigurationError`` naming what to install.
"""

__all__: list[str] = []
