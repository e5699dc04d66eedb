"""``BenchConfig``: everything one ``edgecls bench`` run measures, validated before anything runs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from edge_app.runtime.errors import BenchError, check_normalization, check_threads
from edge_app.runtime.files import check_writable


def parse_threads(text: str | int | tuple | list | None) -> tuple[int, ...] | None:
    """``"1,2,4"`` → ``(1, 2, 4)``; ``None`` → ``None`` (the runtime's default thread count).

    Example:
        >>> parse_threads("1, 2")
        (1, 2)
    """
    if text is None:
        return None
    items = [text] if isinstance(text, int) else text.split(",") if isinstance(text, str) else list(text)
    threads = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError as e:
            raise BenchError(f"--threads takes whole numbers separated by commas, like 1,2,4; got {text!r}") from e
        check_threads(value, error=BenchError)
        threads.append(value)
    if not threads:
        raise BenchError(f"--threads got no values ({text!r}); e.g. --threads 1,2")
    return tuple(dict.fromkeys(threads))


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: which models, how many threads, what to measure and where to write it.

    Args:
        models: ``.tflite`` files or run directories (a run directory means its best model).
        threads: interpreter thread counts to measure each model at; ``None`` = the runtime default.
        runs: timed invokes per model and thread count (ignored when ``duration`` is set).
        warmup: untimed invokes first (the very first one is reported on its own as ``first_invoke_ms``).
        duration: time each model for this many seconds instead of a fixed ``runs``.
        device: ``cpu`` or ``edgetpu[:usb|:pci][:N]``.
        data: a folder of class folders; top-1/top-5 accuracy through the same runtime.
        labels: a label file overriding the model's own labels.
        mean, std: input normalization for float models that carry none.
        max_per_class: at most this many images per class for accuracy (``None`` = all).
        pipeline: a video file, camera index or URL: time the real ``edgecls run`` loop on it.
        pipeline_frames: frames to time in pipeline mode.
        json, md, csv, plot: report files to write (atomically).
        compare: an earlier ``--json`` report; prints new/old latency ratios per model.
        max_slowdown: with ``compare``: fail (exit 1, reports still written) when a model's p50 grew
            by more than this many percent.
        isolate: measure each model in a fresh subprocess (per-model peak RSS); only tests turn it off.

    Example:
        >>> config = BenchConfig(models=("model.tflite",), threads=(1, 2), runs=200, json="bench.json")
        >>> run(config)
    """

    models: tuple[str, ...]
    threads: tuple[int, ...] | None = None
    runs: int = 100
    warmup: int = 10
    duration: float | None = None
    device: str = "cpu"
    data: str | None = None
    labels: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    max_per_class: int | None = None
    pipeline: str | None = None
    pipeline_frames: int = 200
    json: str | None = None
    md: str | None = None
    csv: str | None = None
    plot: str | None = None
    compare: str | None = None
    max_slowdown: float | None = None
    isolate: bool = True

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        object.__setattr__(self, "threads", parse_threads(self.threads))
        if not self.models:
            raise BenchError("give at least one MODEL (.tflite file or run directory)")
        if self.runs < 1:
            raise BenchError(f"--runs must be 1 or more, got {self.runs}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.duration is not None and self.duration <= 0:
            raise BenchError(f"--duration must be more than 0 seconds, got {self.duration}")
        check_normalization(self.mean, self.std, BenchError)
        if self.max_per_class is not None and self.max_per_class < 1:
            raise BenchError(f"--max-per-class must be 1 or more, got {self.max_per_class}")
        if self.pipeline_frames < 1:
            raise BenchError(f"--pipeline-frames must be 1 or more, got {self.pipeline_frames}")
        if self.data is not None and not Path(self.data).is_dir():
            raise BenchError(f"--data {self.data} is not a folder; pass a folder holding one sub-folder of "
                             "images per class (folder names = label names)")
        if self.compare is not None and not Path(self.compare).is_file():
            raise BenchError(f"--compare {self.compare} does not exist; pass a report written earlier with --json")
        if self.max_slowdown is not None and (self.compare is None or self.max_slowdown < 0):
            raise BenchError(f"--max-slowdown {self.max_slowdown} needs --compare OLD.json and a percentage >= 0, "
                             "e.g. --compare main.json --max-slowdown 10")
        if self.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise BenchError("--plot needs matplotlib, which this install lacks: pip install matplotlib "
                             "(or pip install 'edgecls[train]'); or drop --plot and use --json/--csv")
        for name in ("json", "md", "csv", "plot"):
            value = getattr(self, name)
            if value is not None and Path(value).is_dir():
                raise BenchError(f"--{name} {value} is a folder; give a file name, e.g. --{name} bench.{name}")
            if value is not None:
                check_writable(value, f"--{name}")  # before the benchmark, not after it
