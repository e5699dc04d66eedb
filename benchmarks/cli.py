"""``edgecls bench``: latency, memory, size, accuracy and pipeline FPS of models on this machine."""

from __future__ import annotations

import argparse

from edge_app.runtime.flags import add_normalization

EPILOG = """examples:
  edgecls bench ../shared/models/mobilenet_v2_1.0_224_quant.tflite --threads 1,2
  edgecls bench runs/potato/model_int8.tflite runs/potato/model_fp32.tflite --data val/ --md bench.md --plot bench.png
  edgecls bench runs/potato --runs 500 --json bench.json --compare bench_main.json --max-slowdown 10
  edgecls bench model.tflite --pipeline clip.mp4 --pipeline-frames 300   # the live loop vs bare invoke
  nice -n 10 edgecls bench model.tflite --duration 10                     # time-boxed, polite on a shared box

Each model and thread count is measured in a fresh process (peak RSS is that model's own). Latency is
set_tensor + invoke after --warmup untimed invokes; the first invoke is reported on its own (first_ms).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("models", nargs="+", metavar="MODEL", help=".tflite file or run directory (its best model)")
    parser.add_argument("--threads", default=None,
                        help="interpreter thread counts, comma-separated, e.g. 1,2,4 (default: cores, at most 4)")
    how_long = parser.add_mutually_exclusive_group()
    how_long.add_argument("--runs", type=int, default=100, help="timed invokes per model and thread count")
    how_long.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                          help="time each model for this long instead of a fixed --runs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed invokes before timing")
    parser.add_argument("--device", default="cpu", help="cpu, edgetpu, edgetpu:usb, edgetpu:pci:0")
    parser.add_argument("--data", metavar="DIR", help="folder of class folders (named like the labels): top-1/top-5")
    parser.add_argument("--max-per-class", type=int, default=None, metavar="N",
                        help="at most N images per class folder for --data")
    parser.add_argument("--labels", metavar="FILE", help="label file (default: embedded, or labels.txt beside it)")
    add_normalization(parser)
    parser.add_argument("--pipeline", metavar="SOURCE",
                        help="video file, camera index or URL: time the real 'edgecls run' loop on it")
    parser.add_argument("--pipeline-frames", type=int, default=200, metavar="N", help="frames to time with --pipeline")
    parser.add_argument("--json", metavar="FILE", help="write the full report (with raw samples) as JSON")
    parser.add_argument("--md", metavar="FILE", help="write a Markdown table for a README")
    parser.add_argument("--csv", metavar="FILE", help="write one CSV row per model and thread count")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="latency-vs-accuracy scatter and latency histograms (needs matplotlib)")
    parser.add_argument("--compare", metavar="OLD.json", help="an earlier --json report: print now/then ratios")
    parser.add_argument("--max-slowdown", type=float, default=None, metavar="PCT",
                        help="with --compare: exit 1 when a model's p50 grew by more than PCT percent (for CI)")


def main(args: argparse.Namespace) -> int:
    from benchmarks.bench import run
    from benchmarks.config import BenchConfig

    config = BenchConfig(
        models=tuple(args.models), threads=args.threads, runs=args.runs, warmup=args.warmup,
        duration=args.duration, device=args.device, data=args.data, labels=args.labels, mean=args.mean,
        std=args.std, max_per_class=args.max_per_class, pipeline=args.pipeline,
        pipeline_frames=args.pipeline_frames, json=args.json, md=args.md, csv=args.csv, plot=args.plot,
        compare=args.compare, max_slowdown=args.max_slowdown,
    )
    run(config)
    return 0
