"""Two contracts measured end to end on a converted run (issue 11's closing figures).

1. One latency timer: ``edgecls convert``'s p50 and ``edgecls bench``'s p50 for the same int8 file,
   threads and runs, alternating so a neighbour's load hits both alike.
2. One top-k: ``edgecls classify``'s top-1 against ``numpy.argmax`` of the raw interpreter output
   on every test image of the run.

    python scripts/contracts_check.py runs/demo --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _edgecls(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecls", *args], capture_output=True, text=True, check=True)


def latency(run: Path, threads: int, runs: int, rounds: int) -> list[tuple[float, float]]:
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            out = Path(tmp) / "convert"
            _edgecls("convert", str(run), "--quant", "int8", "--threads", str(threads), "--runs", str(runs),
                     "--warmup", "10", "--out", str(out), "-q")
            convert_p50 = json.loads((out / "conversion.json").read_text())["variants"][0]["latency_ms"]["p50"]
            _edgecls("bench", str(out / "model_int8.tflite"), "--threads", str(threads), "--runs", str(runs),
                     "--warmup", "10", "--json", str(Path(tmp) / "b.json"), "-q")
            bench_p50 = json.loads((Path(tmp) / "b.json").read_text())["results"][0]["latency_ms"]["p50"]
            pairs.append((convert_p50, bench_p50))
    return pairs


def top1(run: Path) -> tuple[int, int, int]:
    from edge_app.runtime import ImageClassifier
    from edge_app.runtime.rundir import load_split, model_file

    model = run / model_file("int8")
    items = load_split(run, "test")
    done = _edgecls("classify", str(model), *[str(p) for p, _ in items], "--json", "--top-k", "1")
    ours = [json.loads(line)["top_k"][0]["index"] for line in done.stdout.splitlines()]
    clf = ImageClassifier(model, num_threads=1)
    raw, before = [], []
    for path, _ in items:
        clf.set_input(clf.read_image(path))
        clf.invoke()
        raw.append(int(np.argmax(clf.interpreter.get_tensor(clf.output_detail["index"]))))
        # The top-k of edgecls 0.1.0 (argpartition, then a sort): ties went either way.
        scores = clf.scores()
        best = np.argpartition(-scores, min(4, scores.size - 1))[:5]
        before.append(int(best[np.argsort(-scores[best], kind="stable")][0]))
    same_before = sum(a == b for a, b in zip(before, raw, strict=True))
    return sum(a == b for a, b in zip(ours, raw, strict=True)), same_before, len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pairs = latency(args.run, args.threads, args.runs, args.rounds)
    for convert_p50, bench_p50 in pairs:
        print(f"p50 convert {convert_p50:.3f} ms, bench {bench_p50:.3f} ms, ratio {bench_p50 / convert_p50:.3f}")
    agree, agreed_before, total = top1(args.run)
    print(f"classify top-1 == argmax of the raw output on {agree} of {total} test images "
          f"(the 0.1.0 top-k with k=5: {agreed_before} of {total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
