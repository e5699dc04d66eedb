"""The kiosk server under a flood of half-open connections: threads, peak memory, and whether the page answers.

Starts the real ``edgecls run MODEL --source IMAGES --loop --web 127.0.0.1:PORT`` from a checkout (this
one, or ``--repo`` another: ``mkdir /tmp/old && git archive HEAD | tar -x -C /tmp/old`` gives the version
before a change), opens ``--connections`` sockets that send nothing or half a request header, and reads
the server's ``/proc/PID/status`` (Threads, VmRSS, VmHWM) before, during and after the keep-alive.

    python scripts/web_limits.py                          # this checkout, 1000 connections
    python scripts/web_limits.py --repo /tmp/old          # the same flood against another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
HALF_HEADER = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc"


def proc_status(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"threads": int(fields["Threads"]), "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def status_answer(port: int, timeout: float = 10.0) -> dict:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=timeout) as response:
            code = response.status
    except OSError as e:
        code = getattr(e, "code", str(e))
    return {"code": code, "seconds": round(time.monotonic() - started, 3)}


def closed_count(sockets: list[socket.socket]) -> int:
    """Sockets the server has closed (readable: EOF, or a refusal then EOF)."""
    closed = 0
    for start in range(0, len(sockets), 500):  # select() takes at most FD_SETSIZE descriptors at once
        readable, _, _ = select.select(sockets[start:start + 500], [], [], 0)
        closed += len(readable)
    return closed


def wait_for_label(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"edgecls run ended early (exit {proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                if json.loads(response.read()).get("label") is not None:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no label on :{port} within {timeout:g} s")


def measure(repo: Path, connections: int, hold_s: float) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "edgecls", "run", str(SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"),
               "--source", str(SHARED / "images"), "--loop", "--threads", "1", "--web", f"127.0.0.1:{port}", "-q"]
    proc = subprocess.Popen(command, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood: list[socket.socket] = []
    try:
        wait_for_label(port, proc)
        out = {"repo": str(repo), "connections": connections, "before": proc_status(proc.pid)}
        started, failed = time.monotonic(), 0
        for i in range(connections):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                failed += 1
                continue
            if i % 2:
                s.sendall(HALF_HEADER)
            s.setblocking(False)
            flood.append(s)
        out["connect_s"] = round(time.monotonic() - started, 2)
        out["connect_failed"] = failed
        time.sleep(2)
        out["during"] = {**proc_status(proc.pid), "closed_by_server": closed_count(flood),
                         "status": status_answer(port)}
        time.sleep(hold_s)
        out["after_hold"] = {"hold_s": hold_s, **proc_status(proc.pid), "closed_by_server": closed_count(flood),
                             "status": status_answer(port)}
        return out
    finally:
        for s in flood:
            s.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose edgecls runs (default: this one)")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=20.0, metavar="SECONDS",
                        help="then wait this long (past the keep-alive) and measure again")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 256)), hard))
    print(json.dumps(measure(args.repo.resolve(), args.connections, args.hold), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
