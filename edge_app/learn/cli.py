"""``edgecls learn``: fit a new head on any TFLite classifier's embedding, on the device, and write a standalone model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge_app.runtime.flags import add_normalization, add_threads, add_unknown_calibration

log = logging.getLogger("edgecls")

EPILOG = """\
examples:
  edgecls learn leaves/ --out leaves.tflite                  # the shipped ImageNet MobileNetV2 as the base
  edgecls learn leaves/ --out leaves.tflite --head imprint   # from 1-5 photos per class
  edgecls learn more/ --base leaves.tflite --out leaves2.tflite     # add classes and examples, no old photos
  edgecls learn mold/ --base model_int8.tflite --keep-classes --out potato+mold.tflite
  edgecls learn leaves/ --base extractor_edgetpu.tflite --device edgetpu --out leaves_edgetpu.tflite
  edgecls classify leaves.tflite leaf.jpg                    # the output is an ordinary classifier
  edgecls learn lab/ --base runs/potato/model_int8.tflite --field field/ --out kiosk.tflite
                                                             # field photos weighted in, 'unknown' set on them too

DATA is a folder of class sub-folders (DATA/<class>/*.jpg), or train/ (+ val/, test/) folders as
edgecls train takes. Per class, 20% of the photos (classes with 5 or more) are held out to check the
head and stop its fitting; test/ is checked too when given. The report goes beside the model
(NAME.learn.json, NAME.learn.md). Needs no TensorFlow: numpy and a TFLite runtime are enough.

unknown: the model also says "unknown" for what is none of its classes: it carries up to 64
photos' embeddings per class and a threshold that accepts --unknown-accept of the held-out photos.

class cards: DATA/classes.yaml (or --classes FILE) gives classes a display name, description and
advice per language (see docs/cards.md); a --base's cards stay with the classes it keeps.

heads: imprint = normalised class means (good from 1-5 photos per class); softmax = logistic
regression fitted in numpy (better from ~10 per class); auto = softmax when every class has 5 or more.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge_app.learn.heads import HEADS

    parser.epilog = EPILOG
    parser.add_argument("data", metavar="DATA", help="folder of class sub-folders (or train/, val/, test/)")
    parser.add_argument("--out", required=True, metavar="MODEL.tflite", help="the learned model to write")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="a .tflite classifier, embedding model or learned model; unset: the shipped ImageNet "
                             "MobileNetV2 (Coral, Apache-2.0)")
    parser.add_argument("--head", default="auto", choices=HEADS, help="how the new layer is fitted")
    parser.add_argument("--val-split", type=float, default=0.2, metavar="F",
                        help="share of each class's photos held out to check and stop on")
    parser.add_argument("--keep-classes", action="store_true",
                        help="keep a plain classifier's own classes (its final layer) and add DATA's")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="the base's labels, for --keep-classes when it carries none")
    parser.add_argument("--embedding", default=None, metavar="TENSOR",
                        help="the embedding tensor's name or index, when it is not the input of the final layer")
    parser.add_argument("--device", default="cpu", help="cpu, or edgetpu for an Edge TPU embedding extractor")
    add_threads(parser)
    add_normalization(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split and the fit")
    parser.add_argument("--compare", default=None, metavar="MODEL",
                        help="also check MODEL (e.g. the one the new model replaces) on the same validation photos")
    add_unknown_calibration(parser)
    parser.add_argument("--field", default=None, metavar="FIELD",
                        help="field photos (what the kiosk sees), class folders named like DATA's: weighted in, kept "
                             "in the reference set, and their held-out part sets the 'unknown' threshold too")
    parser.add_argument("--field-map", action="append", default=None, metavar="FOLDER=CLASS",
                        help="a field folder whose name is not one of the classes (repeatable)")
    parser.add_argument("--field-weight", type=float, default=0.5, metavar="W",
                        help="share of each class's weight in the fit carried by its field photos")
    parser.add_argument("--as-field", action="store_true",
                        help="DATA itself holds field photos (the kiosk's labelled frames): weighed as field photos "
                             "against what a learned --base remembers of its lab photos")
    parser.add_argument("--input-size", type=int, default=None, metavar="N",
                        help="run the base at N×N pixels (default: its own size); 320 keeps a field photo's lesions: "
                             "+5 points on field leaves for 2× the compute a frame (docs/field.md)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="class cards (YAML: per class and language a name, description and advice); the base's "
                             "cards are kept for its classes, the file's win; unset: DATA/classes.yaml when there is one")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists (even the --base itself)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def main(args: argparse.Namespace) -> int:
    import json

    from edge_app.learn.learn import LearnConfig, learn

    report = learn(LearnConfig(
        data=Path(args.data), out=Path(args.out), base=Path(args.base) if args.base else None, head=args.head,
        val_split=args.val_split, seed=args.seed, num_threads=args.num_threads, device=args.device,
        embedding=args.embedding, keep_classes=args.keep_classes, labels=args.labels, mean=args.mean, std=args.std,
        compare=Path(args.compare) if args.compare else None, overwrite=args.overwrite,
        unknown_accept=args.unknown_accept, unknown_check=Path(args.unknown_check) if args.unknown_check else None,
        field=Path(args.field) if args.field else None, field_map=tuple(args.field_map or ()), field_weight=args.field_weight,
        as_field=args.as_field, input_size=args.input_size, classes=Path(args.classes) if args.classes else None))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    checked = [f"{part} accuracy {100 * report[part]['accuracy']:.1f}% (balanced "
               f"{100 * report[part]['balanced_accuracy']:.1f}%) on {report[part]['num_images']} images"
               for part in ("val", "field_val", "test") if report.get(part)]
    unknown = report.get("unknown") or {}
    if unknown.get("enabled"):
        checked.append(f"'unknown' above novelty {unknown['threshold']:.3f} ({unknown['references']} reference photos"
                       + (f"; --unknown-check: {100 * unknown['check']['knn']['unknown_rejected']:.0f}% called "
                          f"unknown, max softmax would {100 * unknown['check']['max_softmax']['unknown_rejected']:.0f}%"
                          if unknown.get("check") else "") + ")")
    if report.get("val_before"):
        checked.append(f"{Path(args.compare).name} on the same: {100 * report['val_before']['accuracy']:.1f}%")
    print(f"{report['model']}: {len(report['labels'])} classes, head {report['head']}; "
          + ("; ".join(checked) or "no held-out photos to check on")
          + f"; {report['size_bytes'] / 1e6:.2f} MB; report {Path(report['model']).with_suffix('.learn.md')}")
    return 0
