"""Keys, signatures, broker URLs and command parsing: the parts of the fleet that need no broker."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from support import IMAGENET_MODEL

from edge_app.link.messages import leading_id, parse_command
from edge_app.runtime.broker import check_device_id, parse_broker_url, topic
from edge_app.runtime.errors import FleetError, SignatureError
from edge_app.runtime.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_model,
    verify_model,
)

pytest.importorskip("cryptography")


def test_keygen_cli_writes_a_private_key_only_the_owner_reads(cli, tmp_path):
    out = tmp_path / "keys" / "fleet.key"
    done = cli("fleet", "keygen", out)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in out.read_bytes() and b"PUBLIC KEY" in (tmp_path / "keys" / "fleet.key.pub").read_bytes()
    assert key_id(load_private_key(out)) == key_id(load_public_key(f"{out}.pub")) in done.stdout
    before = out.read_bytes()
    again = cli("fleet", "keygen", out)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and out.read_bytes() == before
    forced = cli("fleet", "keygen", out, "--force")
    assert forced.returncode == 0 and out.read_bytes() != before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_signature_verifies_only_with_its_key_and_its_bytes(tmp_path):
    private, public = generate_keypair(tmp_path / "a.key")
    _, other_public = generate_keypair(tmp_path / "b.key")
    data = IMAGENET_MODEL.read_bytes()
    signed = sign_model(load_private_key(private), data)
    trust = load_public_key(public)
    verify_model(trust, data, signed["sha256"], signed["signature"])  # no exception: good
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model(load_public_key(other_public), data, signed["sha256"], signed["signature"])
    tampered = bytearray(data)
    tampered[1000] ^= 1
    with pytest.raises(SignatureError, match="corrupted or tampered"):
        verify_model(trust, bytes(tampered), signed["sha256"], signed["signature"])
    # Bytes and sha256 changed together (a different model), the signature left as it was.
    from edge_app.runtime.signing import sha256_hex

    with pytest.raises(SignatureError, match="does not verify"):
        verify_model(trust, bytes(tampered), sha256_hex(bytes(tampered)), signed["signature"])
    with pytest.raises(SignatureError, match="64 lowercase hex"):
        verify_model(trust, data, "not-a-sha", signed["signature"])
    with pytest.raises(SignatureError, match="64 bytes of base64"):
        verify_model(trust, data, signed["sha256"], "!!!")
    flipped = bytearray(base64.b64decode(signed["signature"]))
    flipped[0] ^= 1
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model(trust, data, signed["sha256"], base64.b64encode(flipped).decode())


def test_key_files_mixed_up_or_missing_say_so(tmp_path):
    private, public = generate_keypair(tmp_path / "fleet.key")
    with pytest.raises(FleetError, match="copy KEY.pub to the device, never KEY"):
        load_public_key(private)
    with pytest.raises(FleetError, match="that is the public key"):
        load_private_key(public, "--key")
    with pytest.raises(FleetError, match="--trust .*no such public key file"):
        load_public_key(tmp_path / "missing.pub")
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(FleetError, match="not an unencrypted ed25519 private key"):
        load_private_key(tmp_path / "junk")


def test_broker_urls_parse_or_fail_in_one_line_without_the_password():
    url = parse_broker_url("mqtts://kiosk:s%40cret@broker.lan")
    assert (url.host, url.port, url.tls, url.username, url.password) == ("broker.lan", 8883, True, "kiosk", "s@cret")
    assert "cret" not in str(url) and "cret" not in repr(url)
    assert parse_broker_url("mqtt://10.0.0.2").port == 1883
    assert parse_broker_url("mqtt://[::1]:1884").port == 1884
    for bad, says in [("http://broker", "mqtt:// or mqtts://"), ("broker.lan", "scheme"),
                      ("mqtt://", "no host"), ("mqtt://host:99999", "not a broker URL"),
                      ("mqtt://host/topic", "no path"), ("mqtt://u:hunter2@host:x", "not a broker URL")]:
        with pytest.raises(FleetError, match=says) as error:
            parse_broker_url(bad, "--mqtt")
        assert str(error.value).startswith("--mqtt") and "hunter2" not in str(error.value)
        assert "\n" not in str(error.value)


def test_device_ids_are_single_topic_levels():
    assert check_device_id("kiosk-03") == "kiosk-03"
    assert topic("kiosk-03", "cmd/model") == "edgecls/kiosk-03/cmd/model"
    for bad in ["", "a/b", "kiosk+", "#", "-x", "x" * 65]:
        with pytest.raises(FleetError, match="--device-id"):
            check_device_id(bad)


def _message(**fields) -> bytes:
    body = {"id": "r1", "sha256": "ab" * 32, "signature": "c2ln", "model": "AAAA", **fields}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize("payload, says", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (_message(id=None), "needs an 'id'"),
    (_message(id="a b"), "needs an 'id'"),
    (_message(signature=None), "no 'signature'"),
    (_message(sha256=5), "no 'sha256'"),
    (_message(model=None), "exactly one of 'model'"),
    (_message(url="https://x/m.tflite"), "exactly one of 'model'"),
    (_message(model=None, url="file:///etc/shadow"), "http:// or https://"),
    (_message(model=12), "base64 string"),
])
def test_bad_commands_are_refused_with_a_reason(payload, says):
    with pytest.raises(FleetError, match=says):
        parse_command("model", payload, 10_000)


def test_bench_commands_cap_runs_and_threads_and_sizes_are_capped():
    assert parse_command("bench", _message(runs=5, threads=[1, 1, 2]), 10_000).threads == (1, 2)
    with pytest.raises(FleetError, match="'runs'"):
        parse_command("bench", _message(runs=10_000), 10_000)
    with pytest.raises(FleetError, match="'threads'"):
        parse_command("bench", _message(threads=["1; rm -rf /"]), 10_000)
    with pytest.raises(FleetError, match="over this device's cap"):
        parse_command("model", _message(model="A" * 2000), 1000)
    assert leading_id(_message(model="A" * 2000)) == "r1" and leading_id(b"garbage") is None
    # A name from the message never becomes a path: anything odd is replaced.
    assert parse_command("model", _message(name="../../etc/x.tflite"), 10_000).name == "model.tflite"
