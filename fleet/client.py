"""The host's connection to a fleet's broker: collect device statuses, send signed commands, wait for acks.

Topic names, the URL grammar and the way a paho client is made come from :mod:`edge_app.runtime.broker`,
the one home of the contract the devices speak.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from edge_app.runtime.broker import BrokerUrl, device_of, make_client, topic
from edge_app.runtime.errors import FleetError

log = logging.getLogger("edgecls")


@dataclass(frozen=True)
class Message:
    """One message from the broker: its device, topic kind (``status``, ``ack``, ...), JSON body, arrival time."""

    device_id: str
    kind: str
    body: dict
    retained: bool
    received: float


class FleetClient:
    """A connected paho client whose messages land in a queue, for the ``edgecls fleet`` commands.

    Example:
        >>> with FleetClient(parse_broker_url("mqtt://broker.lan", "--broker")) as fleet:
        ...     statuses = fleet.statuses(wait_s=2)
    """

    def __init__(self, broker: BrokerUrl, ca_file: str | None = None, timeout_s: float = 10.0):
        self.broker, self.timeout_s = broker, timeout_s
        self._client = make_client(broker, f"edgecls-host-{uuid.uuid4().hex[:8]}", ca_file, flag="--broker")
        self._client.on_connect, self._client.on_message = self._on_connect, self._on_message
        self._connack = threading.Event()
        self._refused: str | None = None
        self.messages: queue.Queue[Message] = queue.Queue()

    def __enter__(self) -> FleetClient:
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=30)
        except ssl.SSLError as e:
            raise FleetError(f"TLS with the broker {self.broker} failed ({e.reason or e}); check --ca (the CA that "
                             "signed the broker's certificate) and that the host name matches it") from None
        except (OSError, ValueError) as e:
            raise FleetError(f"cannot reach the broker {self.broker} ({getattr(e, 'strerror', None) or e}); is it "
                             "running and listening there? check --broker") from None
        self._client.loop_start()
        if not self._connack.wait(self.timeout_s):
            self.close()
            raise FleetError(f"the broker {self.broker} did not answer within {self.timeout_s:.0f} s; check --broker")
        if self._refused:
            self.close()
            raise FleetError(f"the broker {self.broker} refused the connection ({self._refused}); check the user "
                             "name and password in --broker (or EDGECLS_MQTT_PASSWORD)")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connack.set()

    def _on_message(self, client, userdata, message) -> None:
        device, kind = device_of(message.topic), message.topic.split("/", 2)[-1]
        try:
            body = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):
            log.debug("ignoring a message on %s that is not JSON", message.topic)
            return
        if device is None or not isinstance(body, dict):
            return
        self.messages.put(Message(device, kind, body, bool(message.retain), time.time()))

    def subscribe(self, *topics: str) -> None:
        """Subscribe (QoS 1) and wait until the broker confirmed, so no answer sent after this is missed."""
        done = threading.Event()
        self._client.on_subscribe = lambda *args: done.set()
        result, _ = self._client.subscribe([(t, 1) for t in topics])
        if result != 0 or not done.wait(self.timeout_s):
            raise FleetError(f"the broker {self.broker} did not confirm the subscription to {', '.join(topics)}")

    def publish(self, topic_name: str, payload: str, qos: int = 1) -> None:
        info = self._client.publish(topic_name, payload, qos=qos)
        try:
            info.wait_for_publish(timeout=max(self.timeout_s, 60))
        except (RuntimeError, ValueError) as e:
            raise FleetError(f"could not publish to {topic_name} on {self.broker}: {e}") from None
        if not info.is_published():
            raise FleetError(f"the broker {self.broker} did not take the message for {topic_name} in time")

    def next_message(self, timeout_s: float) -> Message | None:
        try:
            return self.messages.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None

    def statuses(self, wait_s: float = 2.0) -> dict[str, dict]:
        """Every device's status the broker holds (retained) or that arrives within ``wait_s``, by device id."""
        self.subscribe(topic("+", "status"))
        seen: dict[str, dict] = {}
        end = time.monotonic() + wait_s
        while (message := self.next_message(end - time.monotonic())) is not None:
            if message.kind == "status":
                seen[message.device_id] = message.body
        return seen

    def round_trip(self, cmd: str, targets: list[str], payload: Callable[[str], dict], timeout_s: float,
                   on_progress: Callable[[str, dict], None] | None = None) -> dict[str, dict | None]:
        """Send ``cmd`` (``model`` or ``bench``) to each target and wait for each final ack, up to ``timeout_s``.

        ``payload(device_id)`` makes the message (without ``id``: one is added, first, so even a device
        that cannot parse the message can name it in its ack). A device that has not answered is ``None``.
        An ack with ``state: running`` is progress, passed to ``on_progress``, not the answer.
        """
        if not targets:
            return {}
        self.subscribe(*(topic(t, "ack") for t in targets))
        pending: dict[str, str] = {}
        for device in targets:
            request = uuid.uuid4().hex[:16]
            pending[request] = device
            body = json.dumps({"id": request, **payload(device)})
            log.info("sending %s to %s (%.1f MB)", cmd, device, len(body) / 1e6)
            self.publish(topic(device, f"cmd/{cmd}"), body)
        answers: dict[str, dict | None] = dict.fromkeys(targets)
        end = time.monotonic() + timeout_s
        while pending and (message := self.next_message(end - time.monotonic())) is not None:
            request = message.body.get("id")
            if message.kind != "ack" or pending.get(request) != message.device_id:
                continue
            if message.body.get("state") == "running":
                if on_progress:
                    on_progress(message.device_id, message.body)
                continue
            answers[pending.pop(request)] = message.body
        return answers


def parse_targets(to: str) -> list[str]:
    """``--to``'s device ids and globs (comma-separated), checked before anything is sent.

    Example:
        >>> parse_targets("kiosk-*, pi5")
        ['kiosk-*', 'pi5']
    """
    patterns = [p.strip() for p in to.split(",") if p.strip()]
    if not patterns:
        raise FleetError("--to needs device ids or globs, e.g. --to kiosk-03 or --to 'kiosk-*,lab-pi5'")
    for pattern in patterns:
        if any(c in pattern for c in "/#+"):
            raise FleetError(f"--to {pattern!r}: a device id has no '/', '#' or '+'; use shell-style globs "
                             "(* ? [..]), e.g. --to 'kiosk-*'")
    return patterns


def match_targets(to: str, statuses: dict[str, dict], broker: BrokerUrl) -> list[str]:
    """The device ids that ``--to`` names among the devices seen.

    Every pattern must match at least one device: a typo must not quietly deploy to fewer boards.

    Example:
        >>> match_targets("kiosk-*,pi5", {"kiosk-1": {}, "kiosk-2": {}, "pi5": {}}, broker)
        ['kiosk-1', 'kiosk-2', 'pi5']
    """
    patterns = parse_targets(to)
    seen = sorted(statuses)
    for pattern in patterns:
        if not fnmatch.filter(seen, pattern):
            known = ", ".join(seen[:10]) + (", ..." if len(seen) > 10 else "") if seen else "none"
            raise FleetError(f"--to {pattern!r} matches no device seen on {broker} (devices: {known}); "
                             f"see: edgecls fleet status --broker {broker}")
    return [d for d in seen if any(fnmatch.fnmatchcase(d, p) for p in patterns)]
