"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest

import hexbus.application.dispatch as dispatch


@pytest.fixture(params=["compiled", "python"])
def dispatcher_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with the compiled eager start and once with the Python one.

    The Python dispatcher is the specification of the compiled one
    (``hexbus.application._eager``): both must pass every dispatch test. Where the
    extension is not built, the compiled run skips, except in CI, where it fails:
    ``make test`` builds it.
    """
    if request.param == "python":
        monkeypatch.setattr(dispatch, "_Engine", None)
    elif dispatch._Engine is None:
        reason = (
            "hexbus.application._eager is not built (hatch_build.py compiles it on install; "
            "reinstall with a C compiler and the Python headers)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(request.param)
