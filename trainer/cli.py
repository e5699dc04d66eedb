"""``edgecls train DATA --out RUN``: the command-line face of :func:`trainer.train.run`."""

from __future__ import annotations

import argparse
import json
import logging
import os

from edge_app.runtime.errors import CheckFailed
from edge_app.runtime.rundir import METRICS

log = logging.getLogger("edgecls")

EPILOG = """\
examples:
  # transfer learning from ImageNet (two stages: frozen head on cached features, then fine-tuning)
  edgecls train data/potato --out runs/potato --backbone mobilenet_v2 --epochs 5 --fine-tune-epochs 5

  # offline transfer learning: ImageNet weights ported from the MobileNetV2 .tflite edgecls ships
  # (plantvillage-potato: 99.1% test accuracy, about 5 minutes on 2 cores)
  edgecls train data/potato --out runs/potato --backbone mobilenet_v2 --weights imagenet-tflite \\
      --epochs 30 --fine-tune-epochs 8 --fine-tune-learning-rate 3e-5

  # from scratch: MobileNetV3Small (minimalistic runs fast as int8 on CPU)
  edgecls train data/potato --out runs/scratch --backbone mobilenet_v3_small_minimalistic \\
      --weights none --image-size 96 --epochs 30

  # the classic small CNN baseline, 64 px
  edgecls train data/potato --out runs/cnn --backbone simple_cnn --epochs 20

  # then: edgecls convert runs/potato

DATA is a folder of class sub-folders (DATA/<class>/*.jpg), or holds train/ (and optionally
val/, test/) folders of class sub-folders. Missing splits are carved out per class with --seed
and recorded in RUN/config.json. DATA/classes.yaml (or --classes FILE), when there is one, gives
each class a card per language (name, description, advice), see docs/cards.md. RUN gets model.keras, labels.txt, config.json, metrics.json,
history.csv, curves.png, confusion.png, misclassified.png and gradcam/.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``edgecls train``'s arguments to ``parser``."""
    from trainer.backbones import BACKBONES

    parser.epilog = EPILOG
    parser.add_argument(
        "data", metavar="DATA", help="dataset folder (class sub-folders, or train/ val/ test/)"
    )
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory to write (must not exist)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace RUN if it exists (only once the new run is done)"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone",
        default="mobilenet_v3_small",
        choices=list(BACKBONES),
        metavar="NAME",
        help="one of: " + ", ".join(BACKBONES) + ". For int8 on CPU prefer mobilenet_v2 or a "
        "*_minimalistic V3 (XNNPACK has no int8 hard-swish)",
    )
    model.add_argument(
        "--weights",
        default=None,
        metavar="imagenet|imagenet-tflite|none|PATH",
        help="starting weights: imagenet (Keras downloads and caches them), imagenet-tflite (offline, "
        "--backbone mobilenet_v2: ported from the ImageNet MobileNetV2 .tflite that ships with edgecls), "
        "none (from scratch), or a local .h5/.keras file or TFLite MobileNetV2 1.0 classifier; "
        "default imagenet (none for simple_cnn)",
    )
    model.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="square input size in pixels (default 224; 64 for simple_cnn)",
    )
    model.add_argument("--alpha", type=float, default=1.0, metavar="A", help="MobileNet width multiplier")
    model.add_argument(
        "--dropout", type=float, default=0.2, metavar="P", help="dropout before the classifier layer"
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=int,
        default=10,
        metavar="N",
        help="epochs with the backbone frozen (from scratch: all epochs)",
    )
    train.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=10,
        metavar="N",
        help="epochs fine-tuning the top of the backbone (pretrained weights only)",
    )
    train.add_argument(
        "--fine-tune-at",
        default=None,
        metavar="LAYER",
        help="first backbone layer to fine-tune: a name or an index (default: the backbone's "
        "last third, e.g. block_11_expand for mobilenet_v2)",
    )
    train.add_argument("--batch-size", type=int, default=32, metavar="N")
    train.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help="Adam learning rate for the head / from-scratch training (default 1e-3)",
    )
    train.add_argument("--fine-tune-learning-rate", type=float, default=1e-5, metavar="LR")
    train.add_argument(
        "--patience",
        type=int,
        default=5,
        metavar="N",
        help="early-stopping patience in epochs; the learning rate is cut after half of it",
    )
    train.add_argument(
        "--class-weights",
        choices=("auto", "none"),
        default="auto",
        help="auto: weigh classes inversely to their counts",
    )
    train.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random flip/rotation/zoom/translation/contrast",
    )
    train.add_argument(
        "--feature-cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="train the frozen-stage head on backbone features computed once; auto: on unless "
        "augmentation would otherwise never apply (no fine-tuning)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--val-split",
        type=float,
        default=0.15,
        metavar="F",
        help="fraction per class carved out for val/ if absent",
    )
    data.add_argument(
        "--test-split",
        type=float,
        default=0.15,
        metavar="F",
        help="fraction per class carved out for test/ if absent",
    )
    data.add_argument(
        "--val-from",
        choices=("train", "test"),
        default="train",
        help="without val/: carve it from train/ (default) or from test/; test when train/'s photos are "
        "near-copies of each other (crops of one photo, frames of one video), which make a val carved from "
        "them look more familiar than new photos: the epoch is chosen and 'unknown' calibrated on it",
    )
    data.add_argument(
        "--seed", type=int, default=42, metavar="N", help="seed for the split, initialization and shuffling"
    )
    data.add_argument("--gradcam-images", type=int, default=6, metavar="N", help="Grad-CAM overlays to write")
    data.add_argument("--classes", default=None, metavar="FILE",
                      help="class cards (YAML: per class and language a name, description and advice), checked "
                           "against the classes before training, kept in RUN/config.json and embedded in every "
                           "converted model; unset: DATA/classes.yaml when there is one")
    field = parser.add_argument_group("field photos (what a kiosk sees: leaves on the plant, not on a plain table)")
    field.add_argument("--field", default=None, metavar="FIELD",
                       help="folder of class folders of field photos, named like DATA's classes (case, '_' and "
                            "spaces ignored); 20%% of each class held out for choosing the best epoch, 20%% for a "
                            "field test figure of its own")
    field.add_argument("--field-map", action="append", default=None, metavar="FOLDER=CLASS",
                       help="a field folder whose name is not one of DATA's classes (repeatable), e.g. "
                            "tomato_late_blight=Potato___Late_blight")
    field.add_argument("--field-weight", type=float, default=0.3, metavar="W",
                       help="share of every epoch made of field photos (they repeat to reach it), with field-style "
                            "augmentation (crops, light, colour, blur)")


def main(args: argparse.Namespace) -> int:
    """Build a :class:`TrainConfig` from ``args``, train, print a summary; 1 if the model did not learn."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer.config import TrainConfig
    from trainer.train import run

    config = TrainConfig(
        data_dir=args.data,
        out=args.out,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        alpha=args.alpha,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_at=args.fine_tune_at,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        seed=args.seed,
        augment=args.augment,
        class_weights=args.class_weights,
        val_split=args.val_split,
        test_split=args.test_split,
        val_from=args.val_from,
        patience=args.patience,
        feature_cache=args.feature_cache,
        dropout=args.dropout,
        gradcam_images=args.gradcam_images,
        overwrite=args.overwrite,
        field=args.field,
        field_map=tuple(args.field_map or ()),
        field_weight=args.field_weight,
        classes=args.classes,
    )
    run_dir = run(config)
    metrics = json.loads((run_dir / METRICS).read_text())
    validation = metrics["validation"]
    print(
        f"test accuracy {metrics['test_accuracy']:.1%} (balanced {metrics['balanced_accuracy']:.1%}, "
        f"{metrics['num_test']} images); validation {validation['accuracy']:.1%}"
    )
    if metrics.get("field"):
        field = metrics["field"]
        print(f"field test accuracy {field['accuracy']:.1%} (balanced {field['balanced_accuracy']:.1%}, "
              f"{field['num_images']} field photos held out)")
    print(f"run directory: {run_dir}")
    if not validation["learned"]:
        raise CheckFailed(
            f"the model did not learn: validation accuracy {validation['accuracy']:.1%} is no better than always "
            f"answering {validation['majority_label']!r} ({validation['chance_accuracy']:.1%}, p={validation['p_value']:.2f}); "
            f"train longer (--epochs), check the labels, or start from --weights imagenet. {run_dir} was written"
        )
    print(f"next: edgecls convert {run_dir}")
    return 0
