"""A hardware-free device for the fleet tests: a real MqttLink fed with made-up results, in its own process.

Run as ``python tests/edge_app/link/device.py CONFIG.json``; prints ``started`` once the link is up, classifies
"frames" at about 50 per second, writes what an installer receives to ``installed/``, and on SIGTERM
closes the link as ``edgecls run`` does. The tests kill it with SIGKILL to see the last will.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from pathlib import Path

from edge_app.frames.sinks.base import Result
from edge_app.link.mqtt import MqttLink
from edge_app.runtime.broker import MAX_PAYLOAD_BYTES


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    installed = Path(config["folder"]) / "installed"
    installed.mkdir(parents=True, exist_ok=True)

    def installer(data: bytes, origin: str) -> tuple[bool, str, str]:
        sha = hashlib.sha256(data).hexdigest()
        (installed / f"{sha}.tflite").write_bytes(data)
        return True, f"installed from {origin}", sha

    link = MqttLink(config["url"], config["device_id"], trust=config.get("trust"), installer=installer,
                    status_every_s=config.get("status_every_s", 0.5),
                    max_payload_bytes=config.get("max_payload_bytes", MAX_PAYLOAD_BYTES),
                    field_folder=config.get("field_folder"))
    for name in ("chunk_bytes", "settle_s"):  # fleet pull's: small parts, photos just copied in sent at once
        if f"pull_{name}" in config:
            setattr(link.field_pull, name, config[f"pull_{name}"])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    link.start({"model": "tests/leaf.tflite", "model_sha256": "ab" * 32, "labels": ["healthy", "sick"],
                "edgecls": "test", "source": "fake", "hostname": config.get("hostname", "test-host")})
    print("started", flush=True)
    frame = 0
    try:
        while not stopping:
            frame += 1
            label = "healthy" if (frame // 100) % 2 == 0 else "sick"
            link.update(None, Result(frame=frame, t=time.time(), label=label, score=0.9, fps=50.0,
                                     top_k=[(label, 0.9)]))
            time.sleep(0.02)
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
