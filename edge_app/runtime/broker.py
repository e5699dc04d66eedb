"""The fleet's MQTT contract, in one place for the device (``edgecls run --mqtt``) and the host (``edgecls fleet``).

The broker URL grammar, the topic names, the size caps and the one way a paho client is made (TLS,
credentials). paho-mqtt is imported inside :func:`make_client`: nothing else here needs it.

Topics, for a device ``ID``::

    edgecls/ID/status      retained JSON, refreshed every few seconds; the last will sets online: false
    edgecls/ID/result      label changes and a heartbeat (QoS 0, never queued)
    edgecls/ID/event       camera lost/reopened, model swapped/rejected, ... (QoS 1, buffered while offline)
    edgecls/ID/cmd/model   a signed deploy           edgecls/ID/cmd/bench   a signed benchmark request
    edgecls/ID/cmd/pull    a signed request for labelled field photos (``fleet pull``)
    edgecls/ID/ack         the device's answer to a command (QoS 1)
    edgecls/ID/pull        the field photos a pull asked for, then its end (QoS 1, never retained)
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge_app.runtime.errors import FleetError

ROOT = "edgecls"
KINDS = ("status", "result", "event", "ack", "cmd/model", "cmd/bench", "cmd/pull", "pull")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# A model travels base64 inside JSON (4/3 of its size): 32 MB of message is a 24 MB model, more than an edge
# classifier needs (MobileNetV2 fp32: 14 MB); a larger one goes by URL. Handling a message costs ~4x its size in
# memory (paho's buffer, the payload, the JSON string, the decoded model): 32 MB stays far inside the 500 MB
# the service unit allows.
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
# fleet pull: the largest field photo a device sends and the host takes (a kiosk's JPEGs are tens of kB).
MAX_PHOTO_BYTES = 16 * 1024 * 1024
# paho reads a whole packet into memory before it hands it over; past the cap a client keeps only this much of it.
_KEPT_OF_OVERSIZE = 4096
_OVERSIZE_READ = 64 * 1024
# EDGECLS_MQTT_PASSWORD keeps a password out of shell history and `ps` when the URL names only the user.
PASSWORD_ENV = "EDGECLS_MQTT_PASSWORD"
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed ``mqtt[s]://[user[:password]@]host[:port]``; ``str()`` never shows the password."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_broker_url(url: str, flag: str = "--mqtt") -> BrokerUrl:
    """Parse a broker URL; a bad one raises a one-line :class:`FleetError` naming ``flag`` and the form to use.

    Example:
        >>> parse_broker_url("mqtts://kiosk:secret@broker.lan")
        BrokerUrl(host='broker.lan', port=8883, tls=True, username='kiosk')
    """
    form = "use mqtt://HOST[:PORT] or mqtts://USER:PASSWORD@HOST[:PORT]"
    # The message names the URL without its password: errors end up in logs and CI output.
    shown = re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", str(url))
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError as e:
        raise FleetError(f"{flag} {shown}: not a broker URL ({e}); {form}") from e
    if parts.scheme not in DEFAULT_PORTS:
        raise FleetError(f"{flag} {shown}: the scheme must be mqtt:// or mqtts:// (TLS), "
                         f"got {parts.scheme + '://' if parts.scheme else 'none'}; {form}")
    if not parts.hostname:
        raise FleetError(f"{flag} {shown}: no host; {form}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FleetError(f"{flag} {shown}: a broker URL has no path or query; {form}")
    if port == 0:
        raise FleetError(f"{flag} {shown}: port 0 is not a port; {form}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerUrl(host=parts.hostname, port=port or DEFAULT_PORTS[parts.scheme], tls=parts.scheme == "mqtts",
                     username=username, password=password)


def shown_url(url: str) -> str:
    """``url`` fit for a message or a log: whatever stands between ``//`` and an ``@`` becomes ``***``.

    Up to the last ``@`` before a query: a password may hold an unescaped ``/`` or ``@`` that moves where a
    parser thinks the host starts, and this is only ever shown, never fetched.

    Example:
        >>> shown_url("https://ci:hunter2@files.lan/m.tflite")
        'https://***@files.lan/m.tflite'
    """
    return re.sub(r"//[^?#]*@", "//***@", url, count=1)


def check_model_url(url: object, flag: str = "'url'") -> str:
    """An http(s) URL a device may download a model from (``deploy --url``, a command's ``url``).

    One with a user name or password is refused, on the host before it is sent and on the device before
    anything is fetched: a deploy message travels through the broker to every device it names (and into
    their logs and acks), and a device sends no credentials. The model's signature is what makes a download
    safe, so a plain or signed, short-lived URL is all a device needs. Nothing said about a refused URL
    shows its credentials.

    Raises:
        FleetError: not an http(s) URL, no host, or credentials in it.

    Example:
        >>> check_model_url("https://files.lan/m.tflite")
        'https://files.lan/m.tflite'
    """
    shown = shown_url(str(url))[:100]
    if not isinstance(url, str) or not re.match(r"https?://", url):
        raise FleetError(f"{flag} must be an http:// or https:// URL, got {shown!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        # The parser's own message is left out: it may quote a password that hid the port.
        raise FleetError(f"{flag} {shown!r} is not a URL that can be fetched: its host or port cannot be "
                         "read") from None
    if "@" in parts.netloc:
        raise FleetError(f"{flag} {shown!r} carries a user name or password; devices send no credentials, and a "
                         "deploy message travels through the broker to every device it names. Serve the model "
                         "at a URL without credentials (e.g. a signed, short-lived URL): each device checks the "
                         "model's signature before installing it")
    if not parts.hostname:
        raise FleetError(f"{flag} {shown!r} has no host; use http(s)://HOST/PATH")
    return url


def check_device_id(device_id: str, flag: str = "--device-id") -> str:
    """A device id is a topic level: letters, digits, ``_ . -``, at most 64, no MQTT wildcards or slashes."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise FleetError(f"{flag} {device_id!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                         "or digit (it is an MQTT topic level: no '/', '+' or '#'), e.g. kiosk-03")
    return device_id


def topic(device_id: str, kind: str) -> str:
    """``edgecls/<device_id>/<kind>``; ``device_id`` may be ``+`` for a host subscribing to every device."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{ROOT}/{device_id}/{kind}"


def device_of(topic_name: str) -> str | None:
    """The device id in an ``edgecls/<ID>/...`` topic, else None."""
    parts = topic_name.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == ROOT else None


def require_paho():
    """The ``paho.mqtt.client`` module, version 2 or later, or a one-line error saying how to install it."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: F401  (paho 2's callback API)
    except ImportError as e:
        raise FleetError("MQTT needs paho-mqtt 2 or later: pip install 'edgecls[fleet]'") from e
    return mqtt


@functools.cache
def _capped_client(mqtt):
    """paho's ``Client`` with a cap on what one inbound message may hold in memory.

    paho buffers a whole packet before ``on_message`` (70 MB sent to a device took 451 MB), and MQTT 3.1.1
    has no way to ask the broker for less. Past ``max_inbound_bytes`` this client keeps only the packet's
    first few kB (topic and request id) and reads the rest in small pieces that it drops, so the message
    still arrives (truncated) and the device can answer it; ``client.oversize`` is then its real size.
    (The broker's own ``max_packet_size`` stops such messages earlier: see docs/fleet.md, "Mosquitto on a host".)
    It reads paho 2's ``_in_packet``: pyproject pins paho-mqtt below 3, and tests/fleet measure the cap.
    """

    class CappedClient(mqtt.Client):
        max_inbound_bytes = MAX_PAYLOAD_BYTES  # a device sets its own cap
        oversize = 0  # the real size of the message being delivered, when it was over the cap; else 0

        def _sock_recv(self, bufsize: int) -> bytes:
            packet = self._in_packet
            if not packet["have_remaining"]:
                self.oversize = 0
            elif packet["remaining_length"] > self.max_inbound_bytes + _KEPT_OF_OVERSIZE:
                self.oversize = packet["remaining_length"]
                del packet["packet"][_KEPT_OF_OVERSIZE:]
                bufsize = min(bufsize, _OVERSIZE_READ)
            return super()._sock_recv(bufsize)

    return CappedClient


def make_client(broker: BrokerUrl, client_id: str | None = None, ca_file: str | os.PathLike | None = None,
                flag: str = "--mqtt"):
    """A paho client (MQTT 3.1.1, callback API 2) with the URL's credentials and, for ``mqtts``, TLS.

    ``ca_file`` is the CA that signed the broker's certificate; without one the system's CAs are used.
    Nothing is connected yet.

    Example:
        >>> client = make_client(parse_broker_url("mqtt://localhost"), "edgecls-host")
    """
    mqtt = require_paho()
    from paho.mqtt.enums import CallbackAPIVersion

    if ca_file is not None and not Path(ca_file).is_file():
        raise FleetError(f"the CA file {ca_file} does not exist; pass the CA certificate (PEM) that signed the "
                         "broker's certificate")
    if ca_file is not None and not broker.tls:
        raise FleetError(f"a CA file was given but {flag} {broker} is plain mqtt://; use mqtts:// for TLS")
    client = _capped_client(mqtt)(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"edgecls-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv311)
    if broker.username:
        client.username_pw_set(broker.username, broker.password if broker.password is not None
                               else os.environ.get(PASSWORD_ENV))
    if broker.tls:
        try:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        except (OSError, ValueError) as e:
            raise FleetError(f"cannot set up TLS with CA file {ca_file}: {e}; pass a PEM CA certificate") from e
    return client
