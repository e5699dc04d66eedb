"""What the fleet tests share: a real MQTT broker process, a subscriber of the test's own, polling.

The broker runs on a free localhost port: mosquitto where installed, else amqtt (the dev extra);
``EDGECLS_TEST_BROKER=mosquitto|amqtt`` chooses one; ``.ci/run`` installs mosquitto and requires it
(``EDGECLS_REQUIRE_REAL``); amqtt keeps the tests running on a laptop without it.
It can be killed and restarted on the same port, for the reconnection tests. Imported as
``from broker_support import ...`` (pytest puts this folder on sys.path), never ``from conftest``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port, missing, wait_until  # noqa: F401 (the fleet tests import it from here)


def broker_kind() -> str:
    real = shutil.which("mosquitto") or os.environ.get("EDGECLS_REQUIRE_REAL")
    kind = os.environ.get("EDGECLS_TEST_BROKER") or ("mosquitto" if real else "amqtt")
    if kind not in ("mosquitto", "amqtt"):
        pytest.fail(f"EDGECLS_TEST_BROKER={kind}: use mosquitto or amqtt")
    if kind == "mosquitto" and not shutil.which("mosquitto"):
        missing("mosquitto is not installed (apt-get install mosquitto)")
    return kind


USER, PASSWORD = "edge", "s3cret pass"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: ``(ca.pem, server.pem, server.key)``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecls test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
              .public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


class Broker:
    """One broker process; ``url`` stays the same across :meth:`restart`.

    ``secure``: a TLS listener with a certificate from a throw-away CA (``self.ca``) and one user
    (``USER``/``PASSWORD``), no anonymous access: the setting the README recommends.
    Mosquitto only: ``persistent`` keeps retained messages and persistent sessions in ``folder`` across a
    :meth:`stop` (SIGTERM) and :meth:`start`; ``config`` lines are appended to its configuration (a bridge's
    ``connection`` block, queue limits).
    """

    def __init__(self, folder: Path, kind: str, secure: bool = False, *, persistent: bool = False,
                 config: tuple[str, ...] | list[str] = ()):
        if (persistent or config) and kind != "mosquitto":
            missing(f"a persistent or bridged broker needs mosquitto, not {kind} (apt-get install mosquitto)")
        self.folder, self.kind, self.port, self.secure = folder, kind, free_port(), secure
        self.proc: subprocess.Popen | None = None
        self.log = folder / f"{kind}.log"
        self.ca = None
        if secure:
            self.ca, cert, key = make_certificates(folder)
        if kind == "mosquitto":
            store = ["persistence true", f"persistence_location {folder}/"] if persistent else ["persistence false"]
            lines = [f"listener {self.port} 127.0.0.1", *store, "log_dest stderr",
                     "log_type error", "log_type warning", "log_type notice"]
            if os.geteuid() == 0:
                lines.append("user root")  # else it drops to 'mosquitto', who cannot read pytest's 0700 folders
            if secure:
                passwords = folder / "passwords"
                subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD], check=True,
                               capture_output=True)
                lines += ["allow_anonymous false", f"password_file {passwords}", f"certfile {cert}",
                          f"keyfile {key}"]
            else:
                lines.append("allow_anonymous true")
            lines += config  # after the listener: a bridge's connection block ends the file
            self.config = folder / "mosquitto.conf"
            self.config.write_text("\n".join(lines) + "\n")
            self.argv = ["mosquitto", "-c", str(self.config)]
        else:
            listener = f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
            if secure:
                from pwdlib.hashers.argon2 import Argon2Hasher

                passwords = folder / "passwords"
                passwords.write_text(f"{USER}:{Argon2Hasher().hash(PASSWORD)}\n")
                listener += f"    ssl: true\n    certfile: {cert}\n    keyfile: {key}\n"
                auth = f"  amqtt.plugins.authentication.FileAuthPlugin:\n    password_file: {passwords}\n"
            else:
                auth = "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            self.config = folder / "amqtt.yaml"
            self.config.write_text(listener + "plugins:\n" + auth)
            self.argv = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.config)]

    @property
    def url(self) -> str:
        if self.secure:
            return f"mqtts://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{self.port}"
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"the {self.kind} broker exited with {self.proc.returncode}: "
                            f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"the {self.kind} broker did not listen on port {self.port} within {timeout_s:.0f} s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()


class Subscriber:
    """A plain paho client of the test's own, collecting every JSON message on ``topics``."""

    def __init__(self, url: str, *topics: str):
        import json
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{free_port()}")
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        port = int(url.rsplit(":", 1)[1])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        if not subscribed.wait(20):
            pytest.fail(f"no SUBACK for {topics}")

    def bodies(self, suffix: str) -> list[dict]:
        with self._lock:
            return [body for topic, body, _ in self.messages if topic.endswith(suffix)]

    def wait_for(self, suffix: str, predicate=lambda body: True, timeout_s: float = 20.0) -> dict:
        return wait_until(lambda: next((b for b in self.bodies(suffix) if predicate(b)), None), timeout_s,
                          f"a message on .../{suffix}")

    def publish(self, topic: str, payload: str | bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


INFO = {"model": "/opt/edgecls/leaf.tflite", "model_sha256": "ab" * 32, "labels": ["healthy", "sick"],
        "edgecls": "test", "source": "fake", "hostname": "test-host"}
