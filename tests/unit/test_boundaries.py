"""Architecture rules that import-linter cannot see, checked on the source.

- ``hexbus.cli`` and ``hexbus.testing`` use public names and the capability ports only:
  no ``obj._private`` (other than on ``self`` / ``cls``) and no ``getattr`` /
  ``hasattr`` probing of a bus. Before ADR 0003 the CLI reached adapters through
  ``_connection``, ``_topics._admin``, ``_settle_topology`` and ~30 ``getattr`` calls.
- No adapter calls its broker client's private API (``consumer._client...``): those
  names change between client releases without notice.
- Each broker package has the same files, and no ``bus.py`` grows past ~300 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hexbus

PACKAGE = Path(hexbus.__file__).parent
PUBLIC_ONLY = ("cli", "testing")
BROKER_PACKAGES = ("rabbitmq", "kafka")
ADAPTER_FILES = {
    "__init__.py",
    "bus.py",
    "config.py",
    "consumer.py",
    "dead_letters.py",
    "marshal.py",
    "publisher.py",
    "topology.py",
}
_OWN = {"self", "cls"}
#: namedtuple's public API is spelled with a leading underscore.
_NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
#: Variable names that hold a bus or a part of one in cli/ and testing/.
_ADAPTER_OBJECTS = ("bus", "group", "consumer", "admin")


def _sources(*parts: str) -> Iterator[tuple[Path, ast.Module]]:
    for part in parts:
        for path in sorted((PACKAGE / part).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _private_accesses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if name in _NAMEDTUPLE_API:
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in _OWN:
            continue
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id in {
            "super",
            "type",
        }:
            continue
        yield node.lineno, ast.unparse(node)


@pytest.mark.parametrize("part", PUBLIC_ONLY)
def test_no_private_attribute_access(part: str) -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text}"
        for path, tree in _sources(part)
        for line, text in _private_accesses(tree)
    ]
    assert found == [], "private attributes used outside their owner:\n" + "\n".join(found)


@pytest.mark.parametrize("part", PUBLIC_ONLY)
def test_no_getattr_probing_of_a_bus(part: str) -> None:
    found: list[str] = []
    for path, tree in _sources(part):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "hasattr"}
                and node.args
            ):
                names = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)}
                if any(word in name for name in names for word in _ADAPTER_OBJECTS):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "use the capability ports (hexbus.domain.ports) instead:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize("adapter", BROKER_PACKAGES)
def test_adapters_use_no_private_client_api(adapter: str) -> None:
    """``x._client`` / ``x._wait_on_metadata`` style chains on a client object."""
    found = []
    for path, tree in _sources(f"infrastructure/{adapter}"):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute)
                and node.value.attr.startswith("_")
                and not (isinstance(node.value.value, ast.Name) and node.value.value.id in _OWN)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "\n".join(found)


def test_broker_packages_share_one_file_layout() -> None:
    layouts = {
        adapter: {p.name for p in (PACKAGE / "infrastructure" / adapter).glob("*.py")}
        for adapter in BROKER_PACKAGES
    }
    for adapter, files in layouts.items():
        assert files == ADAPTER_FILES, f"{adapter}: {sorted(files ^ ADAPTER_FILES)}"


@pytest.mark.parametrize("adapter", ("memory", *BROKER_PACKAGES))
def test_bus_modules_stay_small(adapter: str) -> None:
    lines = (PACKAGE / "infrastructure" / adapter / "bus.py").read_text().count("\n")
    assert lines <= 330, f"{adapter}/bus.py has {lines} lines; move transport work out"


def test_no_benchmark_code_in_adapter_packages() -> None:
    stray = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.glob("infrastructure/*/bench*.py"))
    assert stray == []
