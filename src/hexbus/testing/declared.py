"""What the contract suite and the fault suite share: declared capabilities.

Why a base: both suites assert exactly what an adapter *declares* (a frozen
capabilities dataclass on the test class) and skip, with the capability named, only
where nothing is left to assert; the declaration plumbing is written once here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, NoReturn, TypeVar, cast

import pytest

__all__ = ["DeclaredSuite"]

C = TypeVar("C")


class DeclaredSuite(Generic[C]):
    """A suite whose subclasses set ``capabilities`` (an instance of ``capabilities_type``)."""

    #: The dataclass a subclass's ``capabilities`` must be an instance of.
    capabilities_type: ClassVar[type[Any]]
    adapter_name: ClassVar[str | None] = None

    @property
    def caps(self) -> C:
        kind = type(self).capabilities_type
        caps = getattr(type(self), "capabilities", None)
        if not isinstance(caps, kind):
            pytest.fail(
                f"{type(self).__qualname__}.capabilities must be a hexbus.testing."
                f"{kind.__name__}(...) declaring what the adapter promises",
                pytrace=False,
            )
        return cast(C, caps)

    @property
    def adapter(self) -> str:
        return self.adapter_name or type(self).__name__

    def unsupported(self, capability: str) -> NoReturn:
        """Skip a scenario that has nothing to assert without ``capability``."""
        pytest.skip(f"{self.adapter} declares no {capability}")
