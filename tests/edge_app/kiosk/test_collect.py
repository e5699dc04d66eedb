"""Field collection's pause and resume: one event each way, however the writer and the loop interleave."""

from __future__ import annotations

import time

import numpy as np
from support import wait_for

from edge_app.frames.sinks.base import Result
from edge_app.frames.sources import Frame
from edge_app.kiosk.collect import CollectConfig, FrameCollector


def test_a_full_inbox_pauses_once_and_resumes_once_after_reviews(tmp_path):
    events = []
    collector = FrameCollector(CollectConfig(tmp_path, every_s=0.0, max_frames=5), model_sha256=lambda: "ab" * 32,
                               on_event=lambda name, detail, **f: events.append(name))
    collector.start({"source": "test"})
    # Noise: a slow JPEG to write, so frames queued before the pause are written after it (that resumed it).
    image = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
    try:
        for i in range(200):
            collector.update(Frame(image, "RGB", i, time.time()), Result(i, time.time(), "a", 0.2, top_k=[("a", 0.2)]))
            time.sleep(0.002)
        wait_for(lambda: collector._queue.empty(), what="the writer")
        time.sleep(0.2)
        assert collector.paused and "review or discard" in collector.paused
        assert [e for e in events if e.startswith("collection_")] == ["collection_paused"], events
        waiting = len(list((tmp_path / "inbox").glob("*.json")))
        collector.reviewed(waiting - 5)  # back to the cap: still paused (resumes at 90%)
        assert collector.paused
        collector.reviewed(1)
        assert not collector.paused
        assert [e for e in events if e.startswith("collection_")] == ["collection_paused", "collection_resumed"]
    finally:
        collector.close()
