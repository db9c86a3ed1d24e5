"""Shared test helpers: privilege checks that CI turns into failures."""

from __future__ import annotations

import os

import pytest


def require_root() -> None:
    """Skip the calling test when not root; fail instead under .ci/run, which runs as root."""
    if os.geteuid() == 0:
        return
    message = "needs root for kernel event sources, namespaces or other users"
    if os.environ.get("STORM_EXPORTER_FORBID_PRIVILEGE_SKIPS"):
        pytest.fail(f"{message}, and privilege skips are forbidden here")
    pytest.skip(message)


@pytest.fixture
def root() -> None:
    require_root()
