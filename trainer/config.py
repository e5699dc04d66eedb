"""``TrainConfig``: every setting of one training run, validated before anything heavy starts."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from edge_app.runtime import cards
from edge_app.runtime.errors import TrainError
from edge_app.runtime.files import check_writable
from edge_app.runtime.rundir import check_replaceable

log = logging.getLogger("edgecls")

WEIGHT_SUFFIXES = (".h5", ".keras", ".tflite")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Build it, then call :func:`trainer.train.run`.

    ``image_size=None`` takes the backbone's default (224, or 64 for ``simple_cnn``).
    ``fine_tune_at=None`` takes the backbone's default first fine-tuned layer; give a layer
    name or an index into the backbone's layers. ``weights`` is ``"imagenet"`` (Keras downloads),
    ``"imagenet-tflite"`` (``mobilenet_v2`` only: ported from the ImageNet MobileNetV2 that ships with
    edgecls, offline), ``"none"`` or a path to a ``.h5`` / ``.keras`` file or a TFLite MobileNetV2 1.0
    classifier; ``None`` means ``"imagenet"`` (``"none"`` for ``simple_cnn``, which has no published weights).

    Example:
        >>> from trainer.train import run
        >>> run(TrainConfig("plants/", "runs/potato", backbone="mobilenet_v2", epochs=5))
    """

    data_dir: Path
    out: Path
    backbone: str = "mobilenet_v3_small"
    weights: str | None = None
    image_size: int | None = None
    alpha: float = 1.0
    epochs: int = 10
    fine_tune_epochs: int = 10
    fine_tune_at: str | None = None
    batch_size: int = 32
    learning_rate: float | None = None
    fine_tune_learning_rate: float = 1e-5
    seed: int = 42
    augment: bool = True
    class_weights: str = "auto"
    val_split: float = 0.15
    test_split: float = 0.15
    val_from: str = "train"
    patience: int = 5
    feature_cache: str = "auto"
    dropout: float = 0.2
    gradcam_images: int = 6
    overwrite: bool = False
    field: Path | None = None
    field_map: tuple[str, ...] = ()
    field_weight: float = 0.3
    #: The class cards file (:mod:`edge_app.runtime.cards`); ``None`` takes ``DATA/classes.yaml`` when there is one.
    classes: Path | None = None

    def __post_init__(self):
        from trainer.backbones import get_backbone
        from trainer.tflite_weights import ALPHA, BACKBONE, SHIPPED, is_tflite

        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        object.__setattr__(self, "out", Path(self.out).expanduser().resolve())
        spec = get_backbone(self.backbone)
        if self.weights is None:
            # The baseline CNN has no published weights, so its default is from scratch.
            object.__setattr__(self, "weights", "none" if spec.name == "simple_cnn" else "imagenet")
        if spec.name == "simple_cnn" and self.weights != "none":
            raise TrainError(
                f"--backbone simple_cnn has no pretrained weights ({self.weights!r}); use --weights none"
            )
        if self.weights not in ("imagenet", "none", SHIPPED):
            path = Path(self.weights).expanduser()
            if path.suffix.lower() not in WEIGHT_SUFFIXES:
                raise TrainError(
                    f"--weights {self.weights!r}: expected 'imagenet', '{SHIPPED}', 'none' or a "
                    ".h5/.keras/.tflite file"
                )
            if not path.is_file():
                raise TrainError(
                    f"--weights {path}: no such file; give an existing .h5/.keras/.tflite file, "
                    f"or --weights imagenet / {SHIPPED} / none"
                )
            object.__setattr__(self, "weights", str(path.resolve()))
        if is_tflite(self.weights) and (spec.name != BACKBONE or self.alpha != ALPHA):
            fixes = [f"add --backbone {BACKBONE}"] * (spec.name != BACKBONE) + [f"leave --alpha at {ALPHA}"] * (
                self.alpha != ALPHA)
            raise TrainError(
                f"--weights {self.weights} holds a MobileNetV2 1.0, not --backbone {spec.name} --alpha "
                f"{self.alpha}; {' and '.join(fixes)}"
            )
        if self.image_size is None:
            object.__setattr__(self, "image_size", spec.default_size)
        spec.check_size(int(self.image_size), self.weights)
        spec.check_alpha(float(self.alpha), self.weights)
        for name, low in (
            ("epochs", 0),
            ("fine_tune_epochs", 0),
            ("batch_size", 1),
            ("patience", 1),
            ("gradcam_images", 0),
        ):
            if int(getattr(self, name)) < low:
                raise TrainError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.epochs + self.fine_tune_epochs == 0:
            raise TrainError("--epochs and --fine-tune-epochs are both 0: nothing to train; give --epochs N")
        if self.weights == "none" and self.epochs == 0:
            raise TrainError(
                "--weights none trains in one stage of --epochs (no fine-tuning stage); give --epochs N"
            )
        if self.val_from not in ("train", "test"):
            raise TrainError(f"--val-from must be train or test, got {self.val_from!r}")
        for name in ("val_split", "test_split"):
            value = getattr(self, name)
            if not 0 < value < 0.5 and not (name == "val_split" and self.val_from == "test" and 0 < value < 0.9):
                raise TrainError(f"--{name.replace('_', '-')} must be between 0 and 0.5, got {value}")
        if self.val_from == "train" and self.val_split + self.test_split >= 0.8:
            raise TrainError(
                "--val-split plus --test-split leave too little to train on; keep their sum under 0.8"
            )
        if self.class_weights not in ("auto", "none"):
            raise TrainError(f"--class-weights must be auto or none, got {self.class_weights!r}")
        if self.feature_cache not in ("auto", "on", "off"):
            raise TrainError(f"--feature-cache must be auto, on or off, got {self.feature_cache!r}")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TrainError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0 < self.field_weight < 1:
            raise TrainError(f"--field-weight must be between 0 and 1 (the share of each epoch from field photos), "
                             f"got {self.field_weight}")
        if self.field is not None:
            object.__setattr__(self, "field", Path(self.field).expanduser().resolve())
            if not self.field.is_dir():
                raise TrainError(f"--field {self.field}: no such folder; give a folder of class sub-folders of "
                                 "field photos (FIELD/<class>/*.jpg)")
        elif self.field_map:
            raise TrainError("--field-map needs --field FIELD")
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", 1e-3)
        if not self.data_dir.is_dir():
            raise TrainError(f"{self.data_dir}: no such dataset folder; give a folder of class sub-folders")
        if self.classes is not None:
            object.__setattr__(self, "classes", Path(self.classes).expanduser().resolve())
        elif cards.default_file(self.data_dir) is not None:
            object.__setattr__(self, "classes", cards.default_file(self.data_dir))
            log.info("class cards: %s (found in DATA; --classes FILE gives another)", self.classes)
        if self.out.exists() and not self.overwrite:
            raise TrainError(f"{self.out} already exists; choose another --out or add --overwrite")
        # --overwrite replaces only a run directory edgecls wrote, never the data or the user's files.
        check_replaceable(self.out, protect=(self.data_dir,))
        check_writable(self.out, "--out")

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from trained weights (two-stage transfer learning)."""
        return self.weights != "none"

    def to_dict(self) -> dict:
        """Every field as JSON-ready values."""
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}
