"""Fixtures of the tests that need a broker (tests/fleet, tests/edge_app/link): a broker per test, subscribers,
in-process device links, key pairs. Their conftest.py files import them by name."""

from __future__ import annotations

import pytest
from broker_support import INFO, Broker, Subscriber, broker_kind


@pytest.fixture
def broker(tmp_path_factory):
    """A fresh broker for one test (retained messages from other tests never leak in)."""
    b = Broker(tmp_path_factory.mktemp("broker"), broker_kind())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def secure_broker(tmp_path_factory):
    """A broker with TLS (``.ca``) and a password (``USER``/``PASSWORD``, in ``.url``)."""
    b = Broker(tmp_path_factory.mktemp("broker"), broker_kind(), secure=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def subscribe(broker):
    """``subscribe(*topics)`` → a :class:`Subscriber` on the test's broker, closed at the end."""
    made = []

    def make(*topics: str, url: str | None = None) -> Subscriber:
        made.append(Subscriber(url or broker.url, *topics))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def make_link():
    """``make_link(url, device_id, **kwargs)`` → an MqttLink in this process, closed at the end of the test."""
    from edge_app.link.mqtt import MqttLink

    made = []

    def make(*args, **kwargs) -> MqttLink:
        made.append(MqttLink(*args, **kwargs))
        return made[-1]

    yield make
    for link in made:
        link.close()


@pytest.fixture
def info() -> dict:
    """What ``edgecls run`` hands its sinks at start (the facts a status needs)."""
    return dict(INFO)


@pytest.fixture
def keys(tmp_path):
    """Two ed25519 key pairs: ``keys["good"]`` and ``keys["other"]``, each ``(private, public)`` paths."""
    from edge_app.runtime.signing import generate_keypair

    return {name: generate_keypair(tmp_path / f"{name}.key") for name in ("good", "other")}

