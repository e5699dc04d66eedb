"""Fixtures every test area shares; the constants and ``run_cli`` live in support.py."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from support import MODELS, SHARED, run_cli

# tests/pi is the arm64 device suite: `make test-pi` runs it in the emulated root (and its parity test on the
# host, by path); elsewhere `make test` leaves it out rather than listing a skip per test.
collect_ignore = [] if platform.machine() in ("aarch64", "arm64") else ["pi"]


@pytest.fixture(scope="session")
def shared() -> Path:
    if not MODELS.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read real models and photos from ../shared "
                    "(or set EDGECLS_SHARED)")
    return SHARED


@pytest.fixture
def cli():
    return run_cli
