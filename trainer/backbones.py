"""The table of backbones, and the one function that builds a classifier on any of them.

Every model edgecls builds takes float32 RGB pixels 0–255 of shape ``(None, H, W, 3)``: the
backbone's own preprocessing is the first layer of the graph, so the converter, the benchmarks and
the device feed raw pixels and nobody re-types a normalization. Augmentation is never in the graph
(it runs in the tf.data pipeline), so the saved model converts to TFLite as it is.

Graph: ``pixels → preprocess → backbone → pool → dropout → predictions`` (``simple_cnn``:
``… → backbone → flatten → dense → dropout → predictions``). The layer names are the contract that
:mod:`trainer.train` (feature cache, fine-tuning) and :mod:`trainer.gradcam` rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_app.runtime.errors import TrainError, first_line
from trainer.tflite_weights import keras_cache_dir

# From-scratch batch-norm momentum: Keras's pretrained MobileNets use 0.999, whose moving statistics
# need thousands of steps to settle; on a few thousand images the validation pass would then run on
# nearly-initial statistics and sit at chance while training accuracy climbs.
SCRATCH_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the table: how to build a backbone and what it accepts.

    Attributes:
        name: the ``--backbone`` value.
        constructor: the ``keras.applications`` function name (``None`` for ``simple_cnn``).
        kwargs: extra constructor arguments (``minimalistic=True``).
        preprocessing: what the in-graph preprocessing does to 0–255 pixels, as recorded in config.json.
        scale, offset: the ``Rescaling`` added in front when the application has none built in.
        default_size: ``--image-size`` when none is given.
        min_size: the smallest input the architecture takes.
        fine_tune_at: the first backbone layer fine-tuning unfreezes by default.
        imagenet_alphas: the widths with published ImageNet weights (``()``: ``--alpha`` not supported).
        imagenet_sizes: input sizes the published weights require (``()``: any size).
    """

    name: str
    constructor: str | None
    preprocessing: str
    default_size: int = 224
    min_size: int = 32
    fine_tune_at: str | None = None
    scale: float | None = None
    offset: float = 0.0
    imagenet_alphas: tuple[float, ...] = ()
    imagenet_sizes: tuple[int, ...] = ()
    kwargs: dict = field(default_factory=dict)

    def check_size(self, size: int, weights: str = "none") -> None:
        """Raise :class:`TrainError` when the architecture (or its ImageNet weights) cannot take ``size`` px."""
        if size < self.min_size:
            raise TrainError(
                f"--image-size {size} is too small for {self.name}: it takes at least "
                f"{self.min_size} px; use --image-size {max(self.min_size, 96)} or more"
            )
        if weights == "imagenet" and self.imagenet_sizes and size not in self.imagenet_sizes:
            raise TrainError(
                f"{self.name}'s ImageNet weights need --image-size in {list(self.imagenet_sizes)}, "
                f"got {size}; pick one of those or train with --weights none"
            )

    def check_alpha(self, alpha: float, weights: str) -> None:
        """Raise :class:`TrainError` for a width the backbone or its weights do not have."""
        if not alpha > 0:
            raise TrainError(f"--alpha must be > 0, got {alpha}")
        if not self.imagenet_alphas and alpha != 1.0:
            raise TrainError(f"{self.name} has no width multiplier (--alpha {alpha}); leave --alpha at 1.0")
        if weights == "imagenet" and self.imagenet_alphas and alpha not in self.imagenet_alphas:
            raise TrainError(
                f"{self.name} has ImageNet weights only for --alpha in {list(self.imagenet_alphas)}, "
                f"got {alpha}; pick one of those or train with --weights none"
            )


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="expanded_conv_6_expand",
            imagenet_alphas=(0.75, 1.0),
        ),
        BackboneSpec(
            "mobilenet_v3_small_minimalistic",
            "MobileNetV3Small",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="expanded_conv_6_expand",
            imagenet_alphas=(1.0,),
            kwargs={"minimalistic": True},
        ),
        BackboneSpec(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="expanded_conv_10_expand",
            imagenet_alphas=(0.75, 1.0),
        ),
        BackboneSpec(
            "mobilenet_v3_large_minimalistic",
            "MobileNetV3Large",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="expanded_conv_10_expand",
            imagenet_alphas=(1.0,),
            kwargs={"minimalistic": True},
        ),
        BackboneSpec(
            "mobilenet_v2",
            "MobileNetV2",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="block_11_expand",
            scale=1 / 127.5,
            offset=-1.0,
            imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        BackboneSpec(
            "mobilenet",
            "MobileNet",
            "x / 127.5 - 1 (in the graph)",
            fine_tune_at="conv_dw_11",
            scale=1 / 127.5,
            offset=-1.0,
            imagenet_alphas=(0.25, 0.5, 0.75, 1.0),
            imagenet_sizes=(128, 160, 192, 224),
        ),
        BackboneSpec(
            "efficientnet_b0",
            "EfficientNetB0",
            "ImageNet mean/std normalization (in the graph)",
            fine_tune_at="block6a_expand_conv",
        ),
        BackboneSpec(
            "simple_cnn", None, "x / 255 (in the graph)", default_size=64, min_size=8, scale=1 / 255
        ),
    ]
}


def get_backbone(name: str) -> BackboneSpec:
    """The spec for ``--backbone name``, or a :class:`TrainError` listing the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise TrainError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def weights_source(weights: str) -> dict:
    """Where a run's starting weights came from (config.json ``weights_source``, the report, the demo)."""
    from trainer import tflite_weights

    if tflite_weights.is_tflite(weights):
        return tflite_weights.describe(weights)
    if weights == "imagenet":
        return {"kind": "imagenet", "name": "imagenet",
                "origin": f"ImageNet weights downloaded by Keras (keras.applications), cached in {keras_cache_dir()}"}
    if weights == "none":
        return {"kind": "none", "name": "none", "origin": "random initialization (trained from scratch)"}
    return {"kind": "file", "name": Path(weights).name, "file": weights, "origin": "a local weights file"}


def build_classifier(config, num_classes: int):
    """Build the full classifier for ``config`` (a :class:`~trainer.config.TrainConfig`).

    Returns:
        ``(model, backbone)``: the Keras functional model (pixels → probabilities) and its backbone
        sub-model, whose ``trainable`` flags :mod:`trainer.train` sets per stage.

    Example:
        >>> model, backbone = build_classifier(TrainConfig("data", "run", weights="none"), 3)
    """
    import keras

    spec = get_backbone(config.backbone)
    size = int(config.image_size)
    spec.check_size(size, config.weights)
    inputs = keras.Input((size, size, 3), name="pixels", dtype="float32")
    x = inputs
    if spec.scale is not None:
        x = keras.layers.Rescaling(spec.scale, spec.offset, name="preprocess")(x)
    backbone = _make_backbone(spec, config, size)
    pretrained = config.weights != "none"
    if not pretrained:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    # A pretrained backbone always runs in inference mode: its batch-norm statistics stay the
    # ImageNet ones while the head is trained and while the top blocks are fine-tuned.
    x = backbone(x, training=False) if pretrained else backbone(x)
    if spec.name == "simple_cnn":
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"edgecls_{spec.name}")
    return model, backbone


def _make_backbone(spec: BackboneSpec, config, size: int):
    import keras

    if spec.constructor is None:
        return keras.Sequential(
            [
                keras.Input((size, size, 3)),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
                keras.layers.MaxPooling2D(name="pool1"),
                keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
                keras.layers.MaxPooling2D(name="pool2"),
            ],
            name="backbone",
        )
    from trainer import tflite_weights

    ported = tflite_weights.is_tflite(config.weights)
    weights_path = None if config.weights in ("imagenet", "none") or ported else Path(config.weights)
    kwargs = dict(spec.kwargs)
    if spec.constructor.startswith("MobileNet"):
        kwargs["alpha"] = config.alpha
    if spec.constructor.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True
    weights = {"imagenet": "imagenet", "none": None}.get(config.weights)
    if weights_path is not None and weights_path.suffix.lower() == ".h5":
        weights = str(weights_path)
    constructor = getattr(keras.applications, spec.constructor)
    try:
        model = constructor(input_shape=(size, size, 3), include_top=False, weights=weights, **kwargs)
    except Exception as e:
        if "URL fetch failure" in str(e) or "HTTP Error" in str(e):
            raise TrainError(
                f"could not download the ImageNet weights for {spec.name} (offline?); Keras caches "
                f"them in {keras_cache_dir()}: copy the file there, or pass a local file with "
                "--weights PATH (.h5/.keras), or start offline from the ImageNet MobileNetV2 that ships "
                f"with edgecls: --backbone mobilenet_v2 --weights {tflite_weights.SHIPPED}, or train from "
                "scratch with --weights none"
            ) from e
        if weights_path is not None:
            raise TrainError(
                f"--weights {weights_path} does not fit {spec.name} (alpha {config.alpha}, "
                f"{size} px, no top): {first_line(e)[:300]}"
            ) from e
        raise TrainError(
            f"cannot build {spec.name} at --image-size {size} --alpha {config.alpha}: {first_line(e)[:300]}"
        ) from e
    if weights_path is not None and weights_path.suffix.lower() == ".keras":
        _load_keras_weights(model, weights_path, spec)
    if ported:
        tflite_weights.load_into(model, config.weights)
    # One name for every backbone, so fine-tuning and Grad-CAM find it after a reload.
    model.name = "backbone"
    return model


def _load_keras_weights(backbone, path: Path, spec: BackboneSpec) -> None:
    """Copy weights from a saved ``.keras`` model: a bare backbone, or an edgecls ``model.keras``."""
    import keras

    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise TrainError(
            f"--weights {path}: not a readable Keras model ({first_line(e)[:300]}); "
            "give a .keras file saved by Keras 3 or a .h5 weights file"
        ) from e
    candidates = [layer for layer in source.layers if layer.name == "backbone"] or [source]
    try:
        backbone.set_weights(candidates[0].get_weights())
    except ValueError as e:
        raise TrainError(
            f"--weights {path} does not fit {spec.name} at this --alpha/--image-size "
            f"({first_line(e)[:300]}); use weights saved from the same backbone"
        ) from e

