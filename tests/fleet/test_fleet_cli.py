"""``edgecls fleet``'s command line without a broker: help, usage errors, unreachable brokers."""

from __future__ import annotations

import pytest
from broker_support import free_port


@pytest.mark.parametrize("action", ["status", "watch", "keygen", "deploy", "bench"])
def test_every_action_has_help_with_examples(cli, action):
    done = cli("fleet", action, "--help")
    assert done.returncode == 0 and "examples:" in done.stdout and f"edgecls fleet {action}" in done.stdout


def test_usage_errors_are_one_line_and_exit_2(cli, monkeypatch):
    monkeypatch.delenv("EDGECLS_BROKER", raising=False)
    for args, says in [(("fleet",), "ACTION"), (("fleet", "deploy", "m.tflite"), "--to"),
                       (("fleet", "status"), "--broker is missing"),
                       (("fleet", "status", "--broker", "tcp://x"), "mqtt:// or mqtts://"),
                       (("fleet", "status", "-v", "--broker", f"mqtt://user:hunter2@127.0.0.1:{free_port()}"),
                        "cannot reach the broker mqtt://user@127.0.0.1")]:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_without_the_fleet_extra_the_error_says_what_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['paho'] = sys.modules['paho.mqtt'] = sys.modules['cryptography'] = None\n"
            "from edge_app.link.mqtt import MqttLink\n"
            "from edge_app.runtime.errors import FleetError\n"
            "for make in (lambda: MqttLink('mqtt://localhost', 'kiosk-1'),\n"
            "             lambda: __import__('edge_app.runtime.signing', fromlist=['x']).load_public_key('k.pub')):\n"
            "    try:\n        make()\n    except FleetError as e:\n        print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("pip install 'edgecls[fleet]'") == 2, done.stdout
