"""``ConvertConfig``: every setting of one conversion, validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.targets import IO_TYPES, TARGETS
from edge_app.runtime.errors import ConfigError, check_normalization, check_threads
from edge_app.runtime.novelty import DEFAULT_ACCEPT, check_accept


@dataclass(frozen=True)
class ConvertConfig:
    """How to convert one model and how to prove each variant.

    Attributes:
        model: a run directory (``model.keras`` + ``config.json``), or a Keras model file
            (``.keras``/``.h5``) or SavedModel directory made elsewhere.
        out_dir: where ``model_<quant>.tflite`` and the reports go; default: the run directory,
            or the model file's folder.
        quants: the targets to build, in order (``("all",)`` is expanded to every target).
        io: input/output type of the int8 model: ``uint8`` (one file for CPU and Edge TPU),
            ``int8``, or ``float32`` (integer inside, float at the edges; not for the Edge TPU).
        labels: label file; default the run's ``labels.txt``.
        data: folder of class sub-folders to check on instead of the run's test split.
        calibration_data: folder of class sub-folders for calibration instead of the run's training split.
        calibration_size: representative images for int8 (class-balanced).
        mean, std: input normalization of a model from elsewhere (pixels become ``(x - mean) / std``).
        image_size: ``(height, width)`` for a model whose input size is not fixed.
        max_accuracy_drop: percentage points a variant may lose against the float model.
        max_latency_ms: p50 latency a variant may take on this machine; ``None`` = no limit.
        edgetpu: also make the Edge TPU model (int8, static shapes) and compile it if possible.
        full_integer: keep every op of the CPU's int8 model integer, even ops XNNPACK cannot run in int8
            (by default those stay float, so the graph is one delegate partition; the Edge TPU model
            is always full integer).
        repair: when int8 fails the accuracy check, keep its worst-quantized layers in float until it passes.
        repair_budget: at most this many layers kept in float by the repair.
        num_threads: interpreter threads for the latency check; ``None`` = the runtime's default.
        runs, warmup: timed and untimed invokes of the latency check.
        max_eval_images: check on at most this many held-out images (class-stratified); ``None`` = all.
        seed: picks calibration and evaluation samples reproducibly.
        unknown: give every variant the embedding output and a reference set for ``unknown``.
        unknown_accept: the share of the val split's photos the ``unknown`` threshold accepts.
        unknown_check: photos of none of the classes, to report how many each variant calls ``unknown``.
        field: field photos (class folders, matched by name or ``field_map``) every variant is measured on, beside
            the lab check; unset, a run trained with ``--field`` is measured on its held-out field photos.
        classes: a class cards file (:mod:`edge_app.runtime.cards`) to embed in every variant instead of the run's
            cards (``config.json``, from ``edgecls train``).

    Example:
        >>> config = ConvertConfig.int8("runs/potato", max_accuracy_drop=0.5)
        >>> report = run(config)
    """

    model: Path
    out_dir: Path | None = None
    quants: tuple[str, ...] = ("all",)
    io: str = "uint8"
    labels: Path | None = None
    data: Path | None = None
    calibration_data: Path | None = None
    calibration_size: int = 300
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: tuple[int, int] | None = None
    max_accuracy_drop: float = 1.0
    max_latency_ms: float | None = None
    edgetpu: bool = False
    full_integer: bool = False
    repair: bool = True
    repair_budget: int = 16
    num_threads: int | None = None
    runs: int = 50
    warmup: int = 5
    max_eval_images: int | None = None
    seed: int = 0
    unknown: bool = True
    unknown_accept: float = DEFAULT_ACCEPT
    unknown_check: Path | None = None
    field: Path | None = None
    field_map: tuple[str, ...] = ()
    classes: Path | None = None

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)  # frozen: normalize types once, here
        set_("model", Path(self.model))
        for name in ("out_dir", "labels", "data", "calibration_data", "unknown_check", "field", "classes"):
            if getattr(self, name) is not None:
                set_(name, Path(getattr(self, name)))
        quants = (self.quants,) if isinstance(self.quants, str) else tuple(self.quants)
        if "all" in quants:
            quants = tuple(TARGETS)
        unknown = [q for q in quants if q not in TARGETS]
        if unknown or not quants:
            raise ConfigError(f"unknown --quant {', '.join(unknown) or '(none)'}; choose from "
                              f"{', '.join(TARGETS)} or all")
        if self.edgetpu and "int8" not in quants:
            quants = (*quants, "int8")  # the Edge TPU model is compiled from the int8 one
        set_("quants", tuple(dict.fromkeys(quants)))
        if self.io not in IO_TYPES:
            raise ConfigError(f"unknown --io {self.io!r}; choose {', '.join(IO_TYPES)}")
        if self.edgetpu and self.io == "float32":
            raise ConfigError("--edgetpu needs integer input and output: use --io uint8 (default) or --io int8")
        if self.calibration_size < 0:
            raise ConfigError(f"--calibration-size must be 0 or more, got {self.calibration_size}")
        check_normalization(self.mean, self.std, ConfigError)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in ((value,) if isinstance(value, (int, float)) else value))
                if len(value) not in (1, 3):
                    raise ConfigError(f"--{name} takes 1 or 3 values, got {len(value)}")
                set_(name, value)
        if self.image_size is not None:
            size = tuple(int(v) for v in self.image_size)
            if len(size) != 2 or min(size) < 8:
                raise ConfigError(f"--image-size must be H W (or N) of at least 8, got {self.image_size}")
            set_("image_size", size)
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"--max-accuracy-drop must be 0 or more percentage points, got {self.max_accuracy_drop}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConfigError(f"--max-latency-ms must be positive, got {self.max_latency_ms}")
        if self.repair_budget < 1:
            raise ConfigError(f"--repair-budget must be 1 or more layers, got {self.repair_budget}; "
                              "turn the repair off with --no-repair")
        check_accept(self.unknown_accept, ConfigError)
        if self.unknown_check is not None and not self.unknown_check.is_dir():
            raise ConfigError(f"--unknown-check {self.unknown_check} is not a folder; give a folder of photos of "
                              "things that are none of the classes")
        if self.field is not None and not self.field.is_dir():
            raise ConfigError(f"--field {self.field} is not a folder; give a folder of class sub-folders of field "
                              "photos (FIELD/<class>/*.jpg)")
        check_threads(self.num_threads, error=ConfigError)
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"--runs must be 1 or more and --warmup 0 or more, got {self.runs}, {self.warmup}")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ConfigError(f"--max-eval-images must be 1 or more, got {self.max_eval_images}")

    # Named recipes, as MediaPipe's QuantizationConfig.for_int8(...).
    @classmethod
    def int8(cls, model, io: str = "uint8", **kwargs) -> ConvertConfig:
        """Full-integer int8 (per-channel weights) with ``io`` input/output: the edge default."""
        return cls(model=model, quants=("int8",), io=io, **kwargs)

    @classmethod
    def fp16(cls, model, **kwargs) -> ConvertConfig:
        """Float16 weights: half the size, float accuracy, float32 kernels on CPU."""
        return cls(model=model, quants=("fp16",), **kwargs)

    @classmethod
    def dynamic(cls, model, **kwargs) -> ConvertConfig:
        """Dynamic-range: int8 weights, float activations; no calibration data needed."""
        return cls(model=model, quants=("dynamic",), **kwargs)

    @classmethod
    def edgetpu_ready(cls, model, **kwargs) -> ConvertConfig:
        """The int8 model compiled for the Coral Edge TPU (when ``edgetpu_compiler`` is installed)."""
        return cls(model=model, quants=("int8",), edgetpu=True, **kwargs)

    @classmethod
    def every_target(cls, model, **kwargs) -> ConvertConfig:
        """fp32, fp16, dynamic and int8, side by side in one report."""
        return cls(model=model, quants=tuple(TARGETS), **kwargs)

