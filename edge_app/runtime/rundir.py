"""The run directory contract: its file names, the quant names, and reading it back without TensorFlow.

``edgecls train`` writes a run directory, ``edgecls convert`` adds ``model_<quant>.tflite`` and
its reports, ``bench``/``demo``/``report`` add theirs. Every module reads and writes those names
through here, so the contract has one home.

Example:
    >>> model_file("int8")
    'model_int8.tflite'
    >>> best_model("runs/potato")                 # the model a device should run
    PosixPath('runs/potato/model_int8.tflite')
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from edge_app.runtime.errors import ModelError, OutputError

CONFIG = "config.json"
METRICS = "metrics.json"
LABELS = "labels.txt"
KERAS_MODEL = "model.keras"
HISTORY = "history.csv"
CONVERSION = "conversion.json"
CONVERSION_MD = "conversion.md"
REPORT = "report.html"
LEARNED = "learned.tflite"  # the demo's edgecls-learn model, beside the trained ones
SPLITS = ("train", "val", "test")
# config.json lists every photo of the splits: ~100 bytes each, so a million photos fit; more is not ours.
MAX_CONFIG_BYTES = 128_000_000

# Every quantization target, in the converter's order. ``converter/targets.py`` has one row per name.
QUANTS = ("fp32", "fp16", "dynamic", "int8")
# Which model a run directory means on a CPU, best first (int8 is smallest and, with XNNPACK, fastest).
CPU_PREFERENCE = ("int8", "fp16", "fp32", "dynamic")

# What edgecls writes into a run directory. A folder holding anything else is not ours to replace.
OWN_NAMES = (CONFIG, METRICS, LABELS, KERAS_MODEL, HISTORY, CONVERSION, CONVERSION_MD, REPORT, "*.png", "gradcam",
             "model_*.tflite", "model_*.json", "model_*.log", "bench.*", "demo.json", "live.json", "live.jsonl",
             "held_out.avi", ".edgecls-*", "learned.*", "other_photos")


def model_file(quant: str, edgetpu: bool = False, full_integer: bool = False) -> str:
    """The file name of a converted model: ``model_int8.tflite``, ``model_int8_edgetpu.tflite``, and
    ``model_int8_full.tflite`` (every op integer: the Edge TPU compiler's input, when the CPU's int8
    model keeps some ops in float)."""
    if quant not in QUANTS:
        raise ModelError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    return f"model_{quant}{'_full' if full_integer else ''}{'_edgetpu' if edgetpu else ''}.tflite"


def best_model(run_dir: str | os.PathLike, device: str = "cpu") -> Path:
    """The ``.tflite`` file a run directory means on ``device``: the Edge TPU model first on a TPU."""
    path = Path(run_dir)
    names = [model_file(q) for q in CPU_PREFERENCE]
    if device.startswith("edgetpu"):
        names.insert(0, model_file("int8", edgetpu=True))
    for name in names:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.tflite"))
    if found:
        return found[0]
    raise ModelError(f"{path} holds no .tflite model; convert the run first: edgecls convert {path}")


def resolve_model(model: str | os.PathLike, device: str = "cpu") -> Path:
    """The ``.tflite`` file that ``model`` names: the file itself, or the best one in a run directory."""
    path = Path(model)
    if path.is_dir():
        return best_model(path, device)
    if not path.exists():
        raise ModelError(f"model {path} does not exist; pass a .tflite file or a run directory")
    return path


def read_config(run_dir: str | os.PathLike) -> dict:
    """``RUN/config.json`` as a dict; missing or broken is a :class:`ModelError` saying what to do."""
    from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

    path = Path(run_dir) / CONFIG
    try:
        config = json.loads(read_bounded(path, MAX_CONFIG_BYTES))
    except FileNotFoundError as e:
        raise ModelError(f"{path}: no such file; is {run_dir} a run directory from 'edgecls train'? "
                         "Or pass the model file with --labels and --data") from e
    except (OSError, ValueError, NotRegularFile, FileTooLarge) as e:
        raise ModelError(f"cannot read {path} ({e}); train the run again, or pass the model file with "
                         "--labels and --data") from e
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object; train the run again")
    return config


def split_items(run_dir: str | os.PathLike, run_config: dict, split: str) -> list[tuple[Path, int]]:
    """One split of an already-read ``config.json`` as ``(absolute path, class index)`` pairs; ``[]`` if absent.

    The one reader of the ``splits`` format: ``[relative_path, class_index]`` under ``data_dir``.
    """
    if split not in SPLITS:
        raise ModelError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data_dir = Path(run_config.get("data_dir", run_dir))
    return [(data_dir / rel, int(index)) for rel, index in run_config.get("splits", {}).get(split, [])]


def load_split(run_dir: str | os.PathLike, split: str) -> list[tuple[Path, int]]:
    """The images of one split of a trained run, as ``(absolute path, class index)`` pairs.

    Example:
        >>> test = load_split("runs/potato", "test")
        >>> test[0]
        (PosixPath('/data/potato/Potato___healthy/x.jpg'), 2)
    """
    return split_items(run_dir, read_config(run_dir), split)


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a folder that ``edgecls train`` wrote (its ``config.json`` records the splits)."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "splits" in config and "labels" in config


def check_replaceable(out: str | os.PathLike, protect: tuple[str | os.PathLike, ...] = (), flag: str = "--out") -> None:
    """Refuse to replace ``out`` unless it is new, empty, or a run directory holding only what edgecls writes.

    ``protect`` names folders (the dataset) that must neither contain ``out`` nor lie inside it.

    Raises:
        OutputError: saying why ``out`` is not ours to replace and what to do instead.
    """
    out = Path(out).expanduser().resolve()
    for kept in protect:
        kept = Path(kept).expanduser().resolve()
        if out == kept or kept in out.parents:
            raise OutputError(f"{flag} {out} is inside the dataset {kept}; write the run elsewhere")
        if out in kept.parents:
            raise OutputError(f"{flag} {out} holds the dataset {kept}; replacing it would delete the data. "
                              "Choose an --out beside the data, not above it")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a run directory; choose another {flag}")
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    if not is_run_dir(out):
        raise OutputError(f"{flag} {out} is not an edgecls run directory (no config.json from 'edgecls train'), "
                          f"so it is not replaced; choose a new or empty folder for {flag}")
    foreign = [name for name in entries if not any(fnmatch.fnmatch(name, pattern) for pattern in OWN_NAMES)]
    if foreign:
        raise OutputError(f"{flag} {out} holds files edgecls did not write ({', '.join(sorted(foreign)[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}), so it is not replaced; move them out, "
                          f"or choose a new folder for {flag}")
