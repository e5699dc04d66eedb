"""The host side of a fleet, tested against real devices: a real broker per test (fixtures in tests/broker_fixtures.py)."""

import pytest

pytest.importorskip("paho.mqtt", reason="the fleet tests need paho-mqtt: pip install -e '.[fleet,dev]'")

from broker_fixtures import broker, info, keys, make_link, secure_broker, subscribe  # noqa: E402, F401
