"""Build hook: compile ``hexbus.application._eager``, the dispatcher's eager start in C.

Optional by design: hexbus is correct without it (``hexbus.application.dispatch`` is
the specification and the fallback), so a machine without a C compiler or Python
headers still installs hexbus, with a warning. ``HEXBUS_PURE_PYTHON=1`` skips the build.
The extension is compiled in place (``src/hexbus/application``), which is where an
editable install imports it from, and added to a regular wheel as an artifact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext

EXTENSION = "hexbus.application._eager"
SOURCE = "src/hexbus/application/_eager.c"


def compile_in_place(root: str) -> Path:
    """Compile the extension next to its source with setuptools; return its path."""
    here = os.getcwd()
    os.chdir(root)
    try:
        dist = Distribution(
            {
                "name": "hexbus",
                "package_dir": {"": "src"},
                "ext_modules": [Extension(EXTENSION, [SOURCE])],
            }
        )
        command = build_ext(dist)
        command.inplace = True
        with tempfile.TemporaryDirectory() as temp:
            command.build_temp = temp
            command.ensure_finalized()
            command.run()
        return Path(root) / command.get_ext_fullpath(EXTENSION)
    finally:
        os.chdir(here)


class EagerExtensionHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("HEXBUS_PURE_PYTHON"):
            return
        try:
            built = compile_in_place(self.root)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the pure-Python path
            self.app.display_warning(
                f"hexbus: the compiled dispatcher ({EXTENSION}) was not built: "
                f"{str(exc).rstrip('.')}. "
                "hexbus works without it, slower on the in-memory hot path; install a C "
                "compiler and the Python headers, then reinstall, to get it."
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["artifacts"].append(str(built.relative_to(self.root)))
