"""One measurement in a fresh process: ``python -m benchmarks.worker < job.json`` prints one JSON object.

A fresh process per model keeps each model's peak resident memory its own: an earlier model's
arena, the previous thread pool or decoded images never count against the next. The job comes on
stdin; the answer is the only thing on stdout (``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": MESSAGE, "exit_code": N}``); logs and progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys

log = logging.getLogger("edgecls")


def run_job(job: dict) -> dict:
    """Run one job in this process: ``kind`` is ``model`` (latency, memory, accuracy) or ``pipeline``.

    Example:
        >>> run_job({"kind": "model", "model": "m.tflite", "threads": 2, "runs": 50, "warmup": 5})["fps"]
    """
    from benchmarks.latency import measure_latency

    kind = job.get("kind", "model")
    common = {"device": job.get("device", "cpu"), "labels": job.get("labels"),
              "mean": job.get("mean"), "std": job.get("std")}
    if kind == "model":
        row, clf = measure_latency(job["model"], job["threads"], job.get("runs", 100), job.get("warmup", 10),
                                   job.get("duration"), **common)
        if job.get("data"):
            from benchmarks.accuracy import evaluate
            from benchmarks.config import BenchError

            try:
                row["accuracy"] = evaluate(clf, job["data"], job.get("max_per_class"), job.get("progress", True))
            except BenchError as e:
                if not job.get("accuracy_optional"):
                    raise
                # Several models with different label sets: one that fits no folder still gets its latency.
                log.warning("no accuracy for %s: %s", job["model"], e)
                row["accuracy_error"] = str(e)
        return row
    if kind == "pipeline":
        from benchmarks.pipeline import measure_pipeline

        return measure_pipeline(job["model"], job["source"], job["threads"], job.get("max_frames", 200),
                                invoke_fps=job.get("invoke_fps"), **common)
    raise ValueError(f"unknown job kind {kind!r}")


def main() -> int:
    from edge_app.runtime.errors import EdgeclsError

    # Keep stdout for the answer alone: whatever the runtime or the app prints goes to stderr.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        job = json.loads(sys.stdin.read())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().handlers[:] = [handler]
        level = job.get("log_level", logging.INFO)
        log.setLevel(level)
        reply = {"ok": True, "result": run_job(job)}
    except EdgeclsError as e:
        reply = {"ok": False, "error": str(e), "exit_code": e.exit_code}
    except KeyboardInterrupt:
        reply = {"ok": False, "error": "interrupted", "exit_code": 130}
    answer.write(json.dumps(reply) + "\n")
    answer.flush()
    return 0 if reply["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
