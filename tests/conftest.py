"""Fixtures every test area shares; the constants and ``run_cli`` live in support.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import MODELS, SHARED, run_cli


@pytest.fixture(scope="session")
def shared() -> Path:
    if not MODELS.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read real models and photos from ../shared "
                    "(or set EDGECLS_SHARED)")
    return SHARED


@pytest.fixture
def cli():
    return run_cli
