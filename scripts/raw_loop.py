"""A bare LiteRT loop, to prove ``edgecls bench`` adds no overhead of its own.

Plain ``ai_edge_litert`` and numpy: ``raw_p50`` is the whole bare loop. Two ways to compare:

- ``--vs-bench``: alternate fresh-process rounds of this loop and of the real ``edgecls bench``
  command (same model, threads, runs, warm-up); prints the best and median p50 of each and the
  median of the per-round ratios. Covers the whole tool: interpreter creation, worker, loop.
- ``--interleaved``: one process, one plain interpreter, the bare loop and edgecls's
  ``time_invokes`` in alternating blocks, so a neighbour's load hits both alike: the fairest
  A/B of the timing loop itself on a busy machine.

Within 5% means the tool adds nothing.

    nice -n 10 .venv/bin/python scripts/raw_loop.py ../shared/models/mobilenet_v2_1.0_224_quant.tflite \\
        --threads 1,2 --runs 200 --warmup 20 --rounds 9 --vs-bench
    nice -n 10 .venv/bin/python scripts/raw_loop.py MODEL --threads 1,2 --runs 1000 --interleaved
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def raw_p50(model: str, threads: int, runs: int, warmup: int) -> float:
    """p50 in ms of ``set_tensor`` + ``invoke`` with nothing but ai_edge_litert and numpy."""
    import time

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = np.random.default_rng(0).integers(0, 255, size=detail["shape"]).astype(detail["dtype"])
    for _ in range(1 + warmup):
        interpreter.set_tensor(detail["index"], data)
        interpreter.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.set_tensor(detail["index"], data)
        interpreter.invoke()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(samples, 50))


def interleaved(model: str, threads: int, blocks: int = 200, block_runs: int = 5, warmup: int = 20) -> tuple[float, float]:
    """p50 of the bare loop and of edgecls's ``time_invokes`` on one plain interpreter, in alternating blocks.

    One interpreter (one thread pool) serves both, so only the loop code differs and a neighbour's
    load hits both alike: the fairest A/B of the timing loop on a busy machine (``--vs-bench``
    covers the rest of the tool). Returns ``(raw_p50_ms, edgecls_p50_ms)``.
    """
    import time
    from types import SimpleNamespace

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edge_app.runtime.timing import time_invokes

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = np.random.default_rng(0).integers(0, 255, size=detail["shape"]).astype(detail["dtype"])
    # time_invokes takes a classifier; this one is the plain interpreter behind the same two calls.
    plain = SimpleNamespace(set_tensor=lambda tensor: interpreter.set_tensor(detail["index"], tensor),
                            invoke=interpreter.invoke)
    for _ in range(warmup):
        interpreter.set_tensor(detail["index"], data)
        interpreter.invoke()
    raw, ours = [], []
    for i in range(blocks):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            if which == 0:
                for _ in range(block_runs):
                    start = time.perf_counter_ns()
                    interpreter.set_tensor(detail["index"], data)
                    interpreter.invoke()
                    raw.append((time.perf_counter_ns() - start) / 1e6)
            else:
                ours += time_invokes(plain, runs=block_runs, warmup=0, tensor=data)[1]
    return float(np.percentile(raw, 50)), float(np.percentile(ours, 50))


def _fresh(args: list[str]) -> str:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True).stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--vs-bench", action="store_true", help="alternate with 'edgecls bench' and print the ratio")
    parser.add_argument("--interleaved", action="store_true",
                        help="one process, one interpreter: alternate blocks of the bare loop and edgecls's timing loop")
    parser.add_argument("--once", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.once:
        print(raw_p50(args.model, args.once, args.runs, args.warmup))
        return 0
    threads = [int(t) for t in args.threads.split(",")]
    if args.interleaved:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        for t in threads:
            raw_ms, ours_ms = interleaved(args.model, t, blocks=max(2, args.runs // 5), warmup=args.warmup)
            print(f"threads {t} (interleaved, one process): raw loop p50 {raw_ms:.3f} ms, "
                  f"edgecls loop p50 {ours_ms:.3f} ms, edgecls/raw {ours_ms / raw_ms:.3f}")
        return 0
    raw = {t: [] for t in threads}
    bench = {t: [] for t in threads}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        for i in range(args.rounds):
            for t in threads:
                def run_raw(t=t):
                    raw[t].append(float(_fresh([__file__, args.model, "--once", str(t), "--runs", str(args.runs),
                                                "--warmup", str(args.warmup)])))

                def run_bench(t=t):
                    _fresh(["-m", "edgecls", "bench", args.model, "--threads", str(t), "--runs", str(args.runs),
                            "--warmup", str(args.warmup), "--json", str(out), "-q"])
                    bench[t].append(json.loads(out.read_text())["results"][0]["latency_ms"]["p50"])

                # Alternate who goes first, so a neighbour's load does not always land on the same one.
                order = [run_raw, run_bench] if args.vs_bench else [run_raw]
                for step in order if i % 2 == 0 else order[::-1]:
                    step()
    for t in threads:
        line = f"threads {t}: raw loop p50 best {min(raw[t]):.3f} / median {statistics.median(raw[t]):.3f} ms"
        if args.vs_bench:
            line += (f"; edgecls bench p50 best {min(bench[t]):.3f} / median {statistics.median(bench[t]):.3f} ms"
                     f"; bench/raw best {min(bench[t]) / min(raw[t]):.3f}, "
                     f"median {statistics.median(bench[t]) / statistics.median(raw[t]):.3f}, "
                     f"median of paired rounds {statistics.median(b / r for b, r in zip(bench[t], raw[t], strict=True)):.3f}")
        print(line)
        print(f"  rounds raw {[round(v, 3) for v in raw[t]]}" +
              (f", bench {[round(v, 3) for v in bench[t]]}" if args.vs_bench else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
