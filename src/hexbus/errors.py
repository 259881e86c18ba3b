"""``hexbus.errors``: every exception hexbus raises on purpose (defined in the domain)."""

from hexbus.domain.errors import *  # noqa: F403
from hexbus.domain.errors import __all__  # noqa: F401 - re-exported
