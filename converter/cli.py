"""``edgecls convert``: Keras model → TFLite/LiteRT variants, each proved on held-out images."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge_app.runtime.flags import add_normalization, add_threads, add_unknown, add_unknown_calibration
from edge_app.runtime.rundir import CONVERSION_MD

log = logging.getLogger("edgecls")

EPILOG = """\
examples:
  edgecls convert runs/potato                       # fp32, fp16, dynamic and int8, checked on the test split
  edgecls convert runs/potato --quant int8 --io int8 --max-accuracy-drop 0.5
  edgecls convert runs/potato --quant int8 --edgetpu    # + edgetpu_compiler when it is installed
  edgecls convert my_model.keras --labels labels.txt --data photos/test --mean 127.5 --std 127.5
  edgecls convert runs/potato --max-latency-ms 5 --threads 2   # gate on speed too (p50 on this machine)
  edgecls convert runs/potato --quant int8 --no-repair --full-integer   # plain full-integer int8

int8 for the CPU keeps in float the ops XNNPACK cannot run in int8 (HARD_SWISH), so MobileNetV3 runs
as one partition; the Edge TPU model stays full integer. When int8 fails the accuracy check, the
layers that quantize worst are kept in float (1, 2, 4, ... up to --repair-budget) until it passes.
A variant fails the accuracy check when its drop is above --max-accuracy-drop and unlikely to be
noise (McNemar's exact test on the images float and the variant disagree on, p < 0.05).

{targets}

exit codes: 0 all checks pass, 1 a check failed (files still written, marked failed in
conversion.json/.md), 2 bad input.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from converter.targets import IO_TYPES, TARGETS, targets_help

    parser.epilog = EPILOG.format(targets=targets_help())
    parser.add_argument("model", metavar="RUN|MODEL",
                        help="a run directory from edgecls train, or a .keras/.h5 model or SavedModel directory")
    parser.add_argument("--quant", nargs="+", default=None, choices=[*TARGETS, "all"],
                        help="targets to build; unset: all (int8 alone with --edgetpu)")
    parser.add_argument("--io", default="uint8", choices=IO_TYPES,
                        help="input/output type of the int8 model")
    parser.add_argument("--out", type=str, default=None, help="output folder; unset: the run directory (or the model file's folder)")
    parser.add_argument("--labels", default=None, help="label file; unset: the run's labels.txt")
    parser.add_argument("--data", default=None,
                        help="check on this folder of class sub-folders instead of the run's test split")
    parser.add_argument("--calibration-data", default=None,
                        help="calibrate int8 on this folder of class sub-folders instead of the run's train split")
    parser.add_argument("--calibration-size", type=int, default=300, help="representative images for int8 (class-balanced)")
    add_normalization(parser)
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                        help="H W (or N) for a model that takes any input size")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="PP",
                        help="fail a variant losing more accuracy than this, in percentage points")
    parser.add_argument("--max-latency-ms", type=float, default=None, metavar="MS",
                        help="fail a variant whose p50 latency on this machine is above this")
    parser.add_argument("--full-integer", action="store_true",
                        help="keep every op of the CPU int8 model integer; by default ops XNNPACK has no int8 "
                             "kernel for (HARD_SWISH) stay float, so the graph runs as one fast partition")
    parser.add_argument("--no-repair", dest="repair", action="store_false",
                        help="when int8 fails the accuracy check, do not keep its worst layers in float")
    parser.add_argument("--repair-budget", type=int, default=16, metavar="N",
                        help="the repair keeps at most N layers in float (tries 1, 2, 4, ... N; never more than a "
                             "quarter of the model's layers)")
    parser.add_argument("--edgetpu", action="store_true", help="make the Edge TPU model (int8) and compile it if "
                        "edgetpu_compiler is on PATH (x86-64 Linux only)")
    add_threads(parser, help="interpreter threads for the latency check (default: all cores, at most 4)")
    parser.add_argument("--runs", type=int, default=50, help="timed invokes per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed invokes before timing")
    parser.add_argument("--max-eval-images", type=int, default=None, metavar="N",
                        help="check on at most N held-out images (class-stratified); unset: all")
    parser.add_argument("--seed", type=int, default=0, help="seed for picking calibration/check images")
    add_unknown(parser, "give every variant its embedding as a second output and a reference set from the train "
                        "split, so it says 'unknown' for what is none of its classes")
    add_unknown_calibration(parser)
    parser.add_argument("--field", default=None, metavar="DIR",
                        help="field photos (class folders named like the classes) to measure every variant on, "
                             "beside the lab check; unset: a run trained with --field uses its held-out field photos")
    parser.add_argument("--field-map", action="append", default=None, metavar="FOLDER=CLASS",
                        help="a --field folder whose name is not one of the classes (repeatable)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="class cards (YAML: per class and language a name, description and advice) to embed in "
                             "every variant; unset: the run's (edgecls train --classes, or DATA/classes.yaml)")
    parser.add_argument("--json", action="store_true", help="print conversion.json on stdout")


def main(args: argparse.Namespace) -> int:
    import json

    from converter.config import ConvertConfig
    from converter.convert import run
    from edge_app.runtime.errors import CheckFailed

    image_size = None
    if args.image_size is not None:
        image_size = tuple(args.image_size) * (2 if len(args.image_size) == 1 else 1)
    config = ConvertConfig(
        model=args.model, out_dir=args.out, quants=tuple(args.quant or (["int8"] if args.edgetpu else ["all"])), io=args.io, labels=args.labels,
        data=args.data, calibration_data=args.calibration_data, calibration_size=args.calibration_size,
        mean=args.mean, std=args.std, image_size=image_size, max_accuracy_drop=args.max_accuracy_drop,
        max_latency_ms=args.max_latency_ms, edgetpu=args.edgetpu, full_integer=args.full_integer,
        repair=args.repair, repair_budget=args.repair_budget, num_threads=args.num_threads, runs=args.runs,
        warmup=args.warmup, max_eval_images=args.max_eval_images, seed=args.seed, unknown=args.unknown != "off",
        unknown_accept=args.unknown_accept, unknown_check=args.unknown_check, field=args.field,
        field_map=tuple(args.field_map or ()), classes=args.classes,
    )
    report = run(config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for v in report["variants"]:
            print(f"{v['quant']:8s} {v['path']}  {v['size_bytes'] / 1e6:.2f} MB  accuracy {100 * v['accuracy']:.2f}% "
                  f"(drop {v['accuracy_drop_pp']:+.2f} pp)  agreement {100 * v['agreement']:.2f}%  "
                  f"p50 {v['latency_ms']['p50']:.2f} ms  {'pass' if v['passed'] else 'FAIL'}")
            if v.get("field"):
                f = v["field"]
                print(f"{'':8s} field: top-1 {100 * f['accuracy']:.1f}% on {f['num_images']} photos"
                      + (f", unknown {100 * f['unknown_rate']:.0f}%" if "unknown_rate" in f else ""))
        if report.get("speed", {}).get("fastest"):
            print(f"fastest on this machine: {report['speed']['fastest']}")
    if not report["passed"]:
        failed = [f"{v['quant']}: {'; '.join(v['failures'])}" for v in report["variants"] if not v["passed"]]
        if (report.get("edgetpu") or {}).get("status") == "failed":
            failed.append(f"edgetpu: {report['edgetpu']['message']}")
        out = config.out_dir or report["run_dir"] or "."
        raise CheckFailed(f"{' | '.join(failed)} (files written; see {Path(out) / CONVERSION_MD})")
    return 0
