"""Signed models: the host signs a model with an ed25519 key, the device verifies it against ``--trust KEY.pub``.

What is signed is the model's sha256, domain-separated (``edgecls-model-v1:<sha256 hex>``), so a
signature made for a model can never be passed off as a signature over anything else. The private
key stays on the host (``edgecls fleet keygen``); only the public key is copied to devices.

A request that carries no model (``fleet pull``) is signed over its own fields instead: ``edgecls-<kind>-v1:``
and canonical JSON that names the device and the time (:func:`sign_request`, :func:`verify_request`).

``cryptography`` is imported inside the functions: ``edgecls run`` without ``--trust`` never needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from pathlib import Path

from edge_app.runtime.errors import FleetError, SignatureError
from edge_app.runtime.files import atomic_path, write_bytes

SIGNED_PREFIX = b"edgecls-model-v1:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A signed request (``fleet pull``) is refused when its time is further than this from the device's clock.
REQUEST_MAX_AGE_S = 600.0
_REQUEST_KIND = re.compile(r"[a-z]{1,20}")


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise FleetError("signed models need the 'cryptography' package: pip install 'edgecls[fleet]'") from e
    return serialization, ed25519, InvalidSignature


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of ``data`` (what status, acks and signatures name a model by)."""
    return hashlib.sha256(data).hexdigest()


def generate_keypair(out: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """Write a new ed25519 private key to ``out`` (PEM PKCS#8, mode 0600) and its public key to ``out.pub``.

    Both files are written atomically. An existing key is never replaced without ``force``: a lost
    private key means re-trusting every device.

    Example:
        >>> generate_keypair(Path("~/.config/edgecls/fleet.key").expanduser())
        (PosixPath('.../fleet.key'), PosixPath('.../fleet.key.pub'))
    """
    serialization, ed25519, _ = _crypto()
    out = Path(out).expanduser()
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if path.is_dir():
            raise FleetError(f"{path} is a folder; give a file name for the key, e.g. {path / 'fleet.key'}")
        if path.exists() and not force:
            raise FleetError(f"{path} already exists; refusing to replace a key (devices trust it). "
                             "Choose another name, or pass --force to replace it")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(out) as tmp:
        # 0600 before a single byte lands: the key is never readable by others, not even for a moment.
        os.chmod(tmp, 0o600)
        with open(tmp, "wb") as f:
            f.write(private_pem)
            f.flush()
            os.fsync(f.fileno())
    write_bytes(pub, public_pem)
    return out, pub


def _read_key_file(path: str | os.PathLike, what: str, flag: str) -> bytes:
    path = Path(path).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise FleetError(f"{flag} {path}: no such {what} file; make a key pair with: edgecls fleet keygen KEY") from e
    except OSError as e:
        raise FleetError(f"{flag} {path}: cannot read the {what} ({e.strerror})") from e


def load_private_key(path: str | os.PathLike, flag: str = "--key"):
    """The ed25519 private key in ``path`` (PEM PKCS#8 as ``keygen`` writes, or an unencrypted OpenSSH key).

    Example:
        >>> key = load_private_key("fleet.key")
    """
    return _load_key(path, flag, private=True)


def load_public_key(path: str | os.PathLike, flag: str = "--trust"):
    """The ed25519 public key in ``path`` (PEM as ``keygen`` writes ``KEY.pub``, or an ``ssh-ed25519`` line).

    Example:
        >>> trust = load_public_key("fleet.key.pub")
    """
    return _load_key(path, flag, private=False)


def _load_key(path: str | os.PathLike, flag: str, private: bool):
    """One half of a key pair, PEM or OpenSSH; an error names the file, what it holds instead, and the fix."""
    serialization, ed25519, _ = _crypto()
    data = _read_key_file(path, "private key" if private else "public key", flag)
    try:
        if private:
            ssh = data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY")
            key = (serialization.load_ssh_private_key if ssh else serialization.load_pem_private_key)(data, password=None)
        else:
            ssh = data.lstrip().startswith(b"ssh-ed25519")
            key = serialization.load_ssh_public_key(data.strip()) if ssh else serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error) as e:
        if private:
            other_half = b"PUBLIC KEY" in data[:100] or str(path).endswith(".pub")
            hint = " (that is the public key: pass the file without .pub)" if other_half else ""
            raise FleetError(f"{flag} {path} is not an unencrypted ed25519 private key{hint}; "
                             "make one with: edgecls fleet keygen KEY") from e
        hint = " (that looks like a private key: copy KEY.pub to the device, never KEY)" if b"PRIVATE" in data[:100] else ""
        raise FleetError(f"{flag} {path} is not an ed25519 public key{hint}; "
                         "the host makes one with: edgecls fleet keygen KEY (then copy KEY.pub)") from e
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise FleetError(f"{flag} {path} is a {type(key).__name__}, not an ed25519 {'key' if private else 'public key'}"
                         + ("; make one with: edgecls fleet keygen KEY" if private else ""))
    return key


def key_id(key) -> str:
    """A short fingerprint of a key pair (16 hex digits of the public key's sha256), the same for both halves.

    Devices report it in their status, so the host can tell which devices trust its key.
    """
    serialization, ed25519, _ = _crypto()
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_model(key, data: bytes) -> dict:
    """``{"sha256": hex, "signature": base64}`` for the model bytes ``data``, signed with the private ``key``.

    Example:
        >>> sign_model(load_private_key("fleet.key"), Path("model_int8.tflite").read_bytes())
        {'sha256': '9f2c...', 'signature': 'u0Lk...=='}
    """
    return sign_sha256(key, sha256_hex(data))


def sign_sha256(key, sha256: str) -> dict:
    """``{"sha256", "signature"}`` for a model known by its sha256 alone, signed as :func:`sign_model` signs its bytes.

    A staged rollout's rollback signs the model a device ran before (its sha256 from the device's status), which
    the device kept: the device installs it only when the kept bytes have that sha256.

    Example:
        >>> sign_sha256(load_private_key("fleet.key"), status["model_sha256"])
    """
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise FleetError(f"a model's sha256 is 64 lowercase hex digits, got {str(sha256)[:80]!r}")
    signature = key.sign(SIGNED_PREFIX + sha256.encode("ascii"))
    return {"sha256": sha256, "signature": base64.b64encode(signature).decode("ascii")}


def verify_signature(public_key, sha256: str, signature: str) -> None:
    """Check that ``signature`` over the claimed ``sha256`` verifies with ``public_key``, before any byte is touched.

    A deploy names its model by sha256 and signs that: the claim is checked first, so an unsigned message
    makes the device fetch, decode or hash nothing (no request to a URL it names, no hash in an answer).

    Raises:
        SignatureError: a malformed sha256 or signature, or one that does not verify.

    Example:
        >>> verify_signature(load_public_key("fleet.key.pub"), msg["sha256"], msg["signature"])
    """
    _, _, InvalidSignature = _crypto()
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise SignatureError(f"sha256 must be 64 lowercase hex digits, got {str(sha256)[:80]!r}")
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise SignatureError("the signature is not 64 bytes of base64; sign with: edgecls fleet deploy --key KEY")
    try:
        public_key.verify(raw, SIGNED_PREFIX + sha256.encode("ascii"))
    except InvalidSignature:
        raise SignatureError(f"the signature over model {sha256[:12]}… does not verify with the trusted key "
                             f"{key_id(public_key)}: signed with another key, or tampered") from None


def check_sha256(data: bytes, sha256: str) -> None:
    """Check that ``data`` is the model whose (already verified) ``sha256`` was signed."""
    if sha256_hex(data) != sha256:
        raise SignatureError(f"the model bytes are not the signed model {sha256[:12]}…: corrupted or tampered in "
                             "transit, or the URL serves another file")


def verify_model(public_key, data: bytes, sha256: str, signature: str) -> None:
    """Check ``signature`` over ``sha256`` (:func:`verify_signature`), then that ``data`` has that sha256.

    Raises:
        SignatureError: naming what did not match; the caller must not install ``data``.

    Example:
        >>> verify_model(load_public_key("fleet.key.pub"), data, msg["sha256"], msg["signature"])
    """
    verify_signature(public_key, sha256, signature)
    check_sha256(data, sha256)


def request_bytes(kind: str, fields: dict) -> bytes:
    """What a signed request's signature covers: ``edgecls-<kind>-v1:`` + its fields (all but ``signature``) as
    canonical JSON (sorted keys, no spaces, ASCII escapes), so the host and every device sign and check the same bytes.

    ``kind`` names the domain (``pull``): a signature made for one kind of request, or for a model
    (``edgecls-model-v1:``), can never pass for another.

    Example:
        >>> request_bytes("pull", {"id": "a1", "t": 1700000000})
        b'edgecls-pull-v1:{"id":"a1","t":1700000000}'
    """
    if not isinstance(kind, str) or not _REQUEST_KIND.fullmatch(kind) or kind == "model":
        raise ValueError(f"a request kind is 1-20 lowercase letters and not 'model', got {kind!r}")
    body = {k: v for k, v in fields.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return f"edgecls-{kind}-v1:".encode("ascii") + text.encode("ascii")


def sign_request(key, kind: str, fields: dict) -> dict:
    """``fields`` with ``signature`` (base64 ed25519 over :func:`request_bytes`) added; put ``t`` (whole seconds)
    and the target's ``device_id`` in ``fields`` so the request cannot be replayed later or to another device.

    Example:
        >>> sign_request(load_private_key("fleet.key"), "pull", {"id": "a1", "device_id": "kiosk-1", "t": 1700000000})
        {'id': 'a1', 'device_id': 'kiosk-1', 't': 1700000000, 'signature': 'Vf1q...=='}
    """
    return {**fields, "signature": base64.b64encode(key.sign(request_bytes(kind, fields))).decode("ascii")}


def verify_request(public_key, kind: str, fields: dict, max_age_s: float = REQUEST_MAX_AGE_S,
                   now: float | None = None) -> None:
    """Check a signed request: its signature first (nothing else about it is trusted before), then its time.

    Raises:
        SignatureError: no signature, a malformed one, one that does not verify with ``public_key``, or a
            request whose ``t`` is more than ``max_age_s`` from this clock (stale, or replayed).

    Example:
        >>> verify_request(load_public_key("fleet.key.pub"), "pull", message)
    """
    _, _, InvalidSignature = _crypto()
    signature = fields.get("signature")
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise SignatureError(f"the request is not signed (no 64-byte base64 'signature'); send it with: "
                             f"edgecls fleet {kind} --key KEY")
    try:
        public_key.verify(raw, request_bytes(kind, fields))
    except (InvalidSignature, TypeError, ValueError):
        raise SignatureError(f"the {kind} request's signature does not verify with the trusted key "
                             f"{key_id(public_key)}: signed with another key, or tampered") from None
    t = fields.get("t")
    if not isinstance(t, int) or isinstance(t, bool):
        raise SignatureError(f"the {kind} request has no 't' (whole seconds since 1970)")
    age = (time.time() if now is None else now) - t
    if abs(age) > max_age_s:
        raise SignatureError(f"the {kind} request is {'stale' if age > 0 else 'from the future'}: its time is "
                             f"{abs(age):.0f} s {'old' if age > 0 else 'ahead'}, more than {max_age_s:.0f} s from this "
                             "device's clock (a replay, or a clock that is off: check NTP on both)")
