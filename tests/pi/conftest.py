"""The arm64 device suite's own tests: they run only on arm64 (``make test-pi``, or a real board), else skip."""

from __future__ import annotations

import platform

import pytest


def pytest_collection_modifyitems(config, items):
    if platform.machine() in ("aarch64", "arm64"):
        return
    skip = pytest.mark.skip(reason=f"arm64 only, this is {platform.machine()}: run make test-pi (docs/arm64.md)")
    for item in items:
        if item.get_closest_marker("arm64"):
            item.add_marker(skip)
