"""What a device does with a command from the broker (read as :mod:`edge_app.link.messages`): fetch and verify the
model, install it, run a benchmark, hand a pull on; answer each with an ack.

Every problem becomes a :class:`FleetError` whose message is the ``reason`` of a rejected ack; nothing here raises
anything else on bad input.
These run on the MQTT link's worker threads, never on paho's network thread.
"""

from __future__ import annotations

import base64
import binascii
import collections
import http.client
import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge_app.link.messages import Command, leading_id, parse_command
from edge_app.runtime.artifact import is_tflite
from edge_app.runtime.errors import FleetError
from edge_app.runtime.signing import check_sha256, verify_signature

log = logging.getLogger("edgecls")

# installer(data, origin) -> (accepted, reason, sha256): writes, validates and swaps in the model, or rolls back.
Installer = Callable[[bytes, str], tuple[bool, str, str]]
READ_TIMEOUT_S = 15.0  # one socket read; the whole download has its own deadline
CHUNK_BYTES = 256 * 1024


def _http_only_opener() -> urllib.request.OpenerDirector:
    """urllib without file://, ftp:// or data://: a URL in a message must never read this device's own files."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def download(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """The body at an http(s) ``url``: at most ``max_bytes``, all of it within ``timeout_s`` (not per read, so a
    server trickling a byte a second cannot hold a deploy worker for ever). Raises :class:`FleetError`."""
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    try:
        with _http_only_opener().open(url, timeout=min(timeout_s, READ_TIMEOUT_S)) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FleetError(f"{url} is {int(length) / 1e6:.1f} MB, over the cap of {max_bytes / 1e6:.0f} MB")
            while chunk := response.read(min(CHUNK_BYTES, max_bytes + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise FleetError(f"{url} is over the cap of {max_bytes / 1e6:.0f} MB")
                if time.monotonic() > deadline:
                    raise FleetError(f"downloading {url} took longer than {timeout_s:.0f} s ({size / 1e6:.1f} MB "
                                     "so far); serve it from a faster or nearer server")
    except FleetError:
        raise
    except urllib.error.HTTPError as e:
        raise FleetError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        raise FleetError(f"downloading {url} failed: {getattr(e, 'reason', None) or e}") from None
    return b"".join(chunks)


def fetch_model(command: Command, trust, max_bytes: int, timeout_s: float,
                kept: Callable[[], bytes | None] | None = None) -> bytes:
    """The command's model bytes, checked: signed by ``trust`` (checked first), with the signed sha256, a TFLite model.

    The signature covers the claimed sha256, so it is verified before anything the message names is
    touched: an unsigned or wrongly signed message makes the device request no URL, decode nothing and
    hash nothing. A rollback (``previous``) takes the bytes ``kept()`` returns: the model this device's last
    accepted install replaced, installed only when they have the signed sha256.

    Raises:
        FleetError: no trusted key on this device, undecodable or oversize bytes, a failed download, or
            (as :class:`~edge_app.runtime.errors.SignatureError`) a sha256 or signature that does not match.
    """
    if trust is None:
        raise FleetError("remote deploys are refused: this device runs without --trust KEY.pub")
    verify_signature(trust, command.sha256, command.signature)
    if command.previous:
        data = _kept_model(kept, command.sha256)
    elif command.model_b64 is not None:
        if len(command.model_b64) > (max_bytes * 4) // 3 + 4:
            raise FleetError(f"the model is over this device's cap of {max_bytes / 1e6:.0f} MB")
        try:
            data = base64.b64decode(command.model_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise FleetError(f"'model' is not valid base64 ({e})") from None
    else:
        data = download(command.url, max_bytes, timeout_s)
    check_sha256(data, command.sha256)
    # Checked after the signature: a signed file that is not a model is still not installed.
    if not is_tflite(data):
        raise FleetError("the signed file is not a TFLite model (no 'TFL3' identifier)")
    return data


def _kept_model(kept: Callable[[], bytes | None] | None, sha256: str) -> bytes:
    """The kept previous model, when it is the one whose (verified) sha256 the rollback names."""
    from edge_app.runtime.errors import EdgeclsError
    from edge_app.runtime.signing import sha256_hex

    try:
        data = kept() if kept is not None else None
    except EdgeclsError as e:
        raise FleetError(f"cannot roll back: {e}") from None
    if data is None:
        raise FleetError("cannot roll back: this device keeps no previous model (it keeps the one its last accepted "
                         "deploy replaced); deploy that model's file instead")
    if sha256_hex(data) != sha256:
        raise FleetError(f"cannot roll back to {sha256[:12]}: the model this device kept is {sha256_hex(data)[:12]} "
                         "(it was swapped again since); deploy that model's file instead")
    return data


class BenchRunner:
    """Runs ``python -m benchmarks`` on a model in a fresh process, one at a time; :meth:`kill` stops it."""

    def __init__(self, timeout_s: float = 900.0):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._killed = False

    def run(self, data: bytes, command: Command) -> dict:
        """The ``edgecls bench --json`` report for the model bytes ``data``; raises :class:`FleetError` on failure."""
        with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as folder:
            model = Path(folder) / command.name
            model.write_bytes(data)
            report = Path(folder) / "bench.json"
            argv = [sys.executable, "-m", "benchmarks", str(model), "--runs", str(command.runs),
                    "--warmup", str(min(10, command.runs)), "--json", str(report), "-q"]
            if command.threads:
                argv += ["--threads", ",".join(map(str, command.threads))]
            log.info("mqtt bench %s: %s, %d runs", command.id, command.name, command.runs)
            self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                _, stderr = self._proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate()
                raise FleetError(f"the benchmark ran past {self.timeout_s:.0f} s and was stopped; ask for fewer runs") \
                    from None
            finally:
                code, self._proc = self._proc.returncode, None
            if self._killed:
                raise FleetError("the benchmark was stopped: the device is shutting down")
            if code != 0 or not report.is_file():
                last = (stderr or "").strip().splitlines()[-1:] or [f"exit code {code}"]
                raise FleetError(f"the benchmark failed: {last[0][:300]}")
            return json.loads(report.read_text(encoding="utf-8"))

    def kill(self) -> None:
        self._killed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


class CommandDesk:
    """Takes commands from paho's thread and carries them out on worker threads, answering each with an ack.

    Deploys run one after another on one worker (two may wait; more are refused as busy); a benchmark
    runs on a thread of its own, one at a time, so a long benchmark never holds up a deploy. A request
    id seen before (QoS 1 may deliver twice) gets its earlier ack again and is never carried out twice.

    Acks: ``{"id", "cmd": "model"|"bench", "accepted", "reason", "sha256", "device_id", "t"}``; a benchmark
    first acks ``state: "running"``, then ``state: "done"`` with ``result`` (the ``edgecls bench --json`` report).
    """

    def __init__(self, device_id: str, send_ack: Callable[[dict], None], trust, installer: Installer | None,
                 max_payload_bytes: int, download_timeout_s: float = 60.0, bench_timeout_s: float = 900.0,
                 kept_model: Callable[[], bytes | None] | None = None, pull=None):
        self.device_id, self.send_ack = device_id, send_ack
        self.pull = pull  # a link.pull.FieldPull: answers 'cmd/pull' (fleet pull), on a thread of its own
        self.trust, self.installer = trust, installer
        self.kept_model = kept_model  # the model the last install replaced, for a signed rollback
        self.max_payload_bytes, self.download_timeout_s = max_payload_bytes, download_timeout_s
        self._deploys: queue.Queue[Command | None] = queue.Queue(maxsize=2)
        self._answered: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._bench = BenchRunner(bench_timeout_s)
        self._bench_thread: threading.Thread | None = None
        self._bench_id: str | None = None
        self._worker = threading.Thread(target=self._deploy_loop, name="mqtt-deploys", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._worker.start()

    def close(self) -> None:
        self._closed = True
        self._bench.kill()
        if self.pull is not None:
            self.pull.close()
        try:
            self._deploys.put_nowait(None)
        except queue.Full:
            pass
        if self._worker.is_alive():
            self._worker.join(timeout=2)

    def submit(self, cmd: str, payload: bytes, size: int = 0) -> None:
        """Take a command (called on paho's network thread: never waits, never raises).

        A deploy is parsed here, before it is queued: JSON and a few fields, no base64, no hash, no
        download, so a malformed message is answered at once and never takes a waiting deploy's place.
        ``size``: the message's real size when the client kept only its first kB (over the cap).
        """
        try:
            size = max(size, len(payload))
            if size > self.max_payload_bytes:
                raise FleetError(f"the message is {size / 1e6:.1f} MB, over this device's cap of "
                                 f"{self.max_payload_bytes / 1e6:.0f} MB; send a URL instead of the model bytes")
            if cmd == "bench":
                if self._bench_thread is not None and self._bench_thread.is_alive():
                    if leading_id(payload) == self._bench_id:
                        return  # QoS 1 delivered the running request again: its answer is coming
                    raise FleetError("busy: a benchmark is running; one at a time")
                self._bench_id = leading_id(payload)
                self._bench_thread = threading.Thread(target=self._guarded, args=("bench", payload),
                                                      name="mqtt-bench", daemon=True)
                self._bench_thread.start()
            elif cmd == "model":
                command = self._parse("model", payload)
                if command is not None:
                    self._deploys.put_nowait(command)
            elif cmd == "pull" and self.pull is not None:
                self.pull.submit(payload, self._ack)
            else:
                raise FleetError(f"unknown command {cmd!r}; this device takes 'model', 'bench' and 'pull'")
        except queue.Full:
            self._ack(leading_id(payload), cmd, False, "busy: two deploys are already waiting; try again")
        except FleetError as e:
            self._ack(leading_id(payload), cmd, False, str(e))

    def _ack(self, request: str | None, cmd: str, accepted: bool, reason: str, remember: bool = False,
             **fields) -> None:
        ack = {"id": request, "cmd": cmd, "accepted": accepted, "reason": reason, **fields,
               "device_id": self.device_id, "t": round(time.time(), 3)}
        if remember and request:
            with self._lock:
                self._answered[request] = ack
                while len(self._answered) > 64:
                    self._answered.popitem(last=False)
        (log.info if accepted else log.warning)("mqtt %s %s: %s%s", cmd, request, "accepted" if accepted else
                                                "rejected", f" ({reason})" if reason else "")
        try:
            self.send_ack(ack)
        except Exception as e:  # the broker went away: the device's log still says what happened
            log.warning("mqtt %s %s: the ack could not be sent: %s", cmd, request, e)

    def _guarded(self, cmd: str, payload: bytes | Command) -> None:
        request = payload.id if isinstance(payload, Command) else leading_id(payload)
        try:
            (self._run_bench if cmd == "bench" else self._deploy)(payload)
        except Exception as e:  # a worker must outlive any one command, and the host still gets an answer
            log.warning("mqtt %s failed: %s", cmd, e)
            self._ack(request, cmd, False, f"the device failed: {type(e).__name__}: {e}"[:500])

    def _parse(self, cmd: str, payload: bytes) -> Command | None:
        """The command, or None once it is answered (rejected, or a repeat of a request already answered)."""
        try:
            command = parse_command(cmd, payload, self.max_payload_bytes)
        except FleetError as e:
            self._ack(leading_id(payload), cmd, False, str(e))
            return None
        with self._lock:
            earlier = self._answered.get(command.id)
        if earlier is not None:
            self.send_ack(earlier)
            return None
        return command

    def _deploy_loop(self) -> None:
        while (command := self._deploys.get()) is not None and not self._closed:
            self._guarded("model", command)

    def _deploy(self, command: Command) -> None:
        with self._lock:
            earlier = self._answered.get(command.id)
        if earlier is not None:  # a repeat that was queued while its first delivery was being installed
            self.send_ack(earlier)
            return
        try:
            data = fetch_model(command, self.trust, self.max_payload_bytes, self.download_timeout_s,
                               kept=self.kept_model)
            if self.installer is None:
                raise FleetError("this device cannot install models (no installer)")
        except FleetError as e:
            self._ack(command.id, "model", False, str(e), remember=True, sha256=command.sha256)
            return
        try:
            accepted, reason, sha256 = self.installer(data, command.origin)
        except Exception as e:  # the installer rolls back; whatever it raised is the reason
            accepted, reason, sha256 = False, f"installing failed: {e}", command.sha256
        self._ack(command.id, "model", bool(accepted), str(reason), remember=True, sha256=sha256)

    def _run_bench(self, payload: bytes) -> None:
        command = self._parse("bench", payload)
        if command is None:
            return
        try:
            data = fetch_model(command, self.trust, self.max_payload_bytes, self.download_timeout_s)
            self._ack(command.id, "bench", True, "running", state="running", sha256=command.sha256)
            report = self._bench.run(data, command)
        except FleetError as e:
            self._ack(command.id, "bench", False, str(e), remember=True, state="done", sha256=command.sha256)
            return
        report.setdefault("device", {})["device_id"] = self.device_id
        for row in report.get("results", []):
            # Not the temporary path it ran from on the device.
            row["model"], row["name"] = command.name, Path(command.name).stem
        self._ack(command.id, "bench", True, "", remember=True, state="done", sha256=command.sha256, result=report)
