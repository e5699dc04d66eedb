"""Seconds per epoch: frozen backbone with the feature cache, without it, and fine-tuning.

Runs the real trainer (``trainer.train.run``) twice on one dataset and reads the epoch times it
records in ``history.csv`` (wall time per epoch, validation and checkpoint included). The first
epoch of a stage also decodes and caches the images and traces the graph, so it is reported apart;
the per-epoch figure is the median of the later epochs. Weights do not change speed, so the backbone starts from a randomly
initialized ``.keras`` file: the two-stage path runs offline exactly as it does with ImageNet.

Usage (slow; run in the background with nice on a shared machine)::

    nice -n 10 .venv/bin/python scripts/train_speed.py ../shared/datasets/plantvillage-potato \\
        --backbone mobilenet_v3_small --image-size 224 --json /tmp/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path


def _random_backbone(backbone: str, size: int, alpha: float, path: Path) -> Path:
    import keras

    from trainer.backbones import get_backbone

    spec = get_backbone(backbone)
    kwargs = dict(spec.kwargs)
    if spec.constructor.startswith("MobileNet"):
        kwargs["alpha"] = alpha
    model = getattr(keras.applications, spec.constructor)(
        input_shape=(size, size, 3), include_top=False, weights=None, **kwargs
    )
    model.save(path)
    return path


def measure(data: Path, backbone: str, size: int, epochs: int, batch_size: int, alpha: float = 1.0) -> dict:
    """Train with the feature cache, without it (augmented, and plain); return the per-stage epoch times."""
    from trainer.config import TrainConfig
    from trainer.train import run

    with tempfile.TemporaryDirectory(prefix="edgecls-speed-") as tmp:
        tmp = Path(tmp)
        weights = _random_backbone(backbone, size, alpha, tmp / "backbone.keras")
        common = dict(
            data_dir=data,
            backbone=backbone,
            weights=str(weights),
            image_size=size,
            alpha=alpha,
            batch_size=batch_size,
            patience=100,
            gradcam_images=0,
        )
        results = {}
        for name, extra in (
            ("cached", dict(feature_cache="on", epochs=epochs, fine_tune_epochs=epochs)),
            ("uncached", dict(feature_cache="off", epochs=epochs, fine_tune_epochs=0)),
            (
                "uncached_no_augment",
                dict(feature_cache="off", augment=False, epochs=epochs, fine_tune_epochs=0),
            ),
        ):
            start = time.perf_counter()
            out = run(TrainConfig(out=tmp / name, **common, **extra))
            metrics = json.loads((out / "metrics.json").read_text())
            history = (out / "history.csv").read_text().splitlines()
            results[name] = {
                "timing": metrics["timing"],
                "wall_s": round(time.perf_counter() - start, 1),
                "history": history,
            }
    cached = _epoch_times(results["cached"]["history"])
    uncached = _epoch_times(results["uncached"]["history"])
    plain = _epoch_times(results["uncached_no_augment"]["history"])
    frozen_cached, frozen_uncached = cached["frozen"]["steady_s"], uncached["frozen"]["steady_s"]
    return {
        "data": str(data),
        "backbone": backbone,
        "image_size": size,
        "batch_size": batch_size,
        "epochs": epochs,
        "feature_extraction_s": results["cached"]["timing"]["feature_extraction_s"],
        "frozen_cached_epoch_s": frozen_cached,
        "frozen_uncached_epoch_s": frozen_uncached,
        "frozen_uncached_no_augment_epoch_s": plain["frozen"]["steady_s"],
        "fine_tune_epoch_s": cached["fine_tune"]["steady_s"],
        "first_epoch_s": {
            "frozen_cached": cached["frozen"]["first_s"],
            "frozen_uncached": uncached["frozen"]["first_s"],
            "fine_tune": cached["fine_tune"]["first_s"],
        },
        "speedup_per_frozen_epoch": round(frozen_uncached / max(frozen_cached, 1e-6), 1),
        "speedup_per_frozen_epoch_no_augment": round(
            plain["frozen"]["steady_s"] / max(frozen_cached, 1e-6), 1
        ),
        "runs": results,
    }


def _epoch_times(history_lines: list[str]) -> dict:
    """Per stage: the first epoch (decode, cache fill, tracing) and the median of the later ones."""
    import csv
    import statistics

    rows = list(csv.DictReader(history_lines))
    out = {}
    for stage in dict.fromkeys(row["stage"] for row in rows):
        times = [float(row["epoch_s"]) for row in rows if row["stage"] == stage]
        out[stage] = {"first_s": times[0], "steady_s": round(statistics.median(times[1:] or times), 3)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measured stage (median taken)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("edgecls").setLevel(logging.INFO)
    result = measure(args.data, args.backbone, args.image_size, args.epochs, args.batch_size, args.alpha)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.backbone} {args.image_size}px, batch {args.batch_size}: feature pass {result['feature_extraction_s']} s "
        f"once; frozen epoch {result['frozen_cached_epoch_s']} s cached vs {result['frozen_uncached_epoch_s']} s "
        f"uncached (x{result['speedup_per_frozen_epoch']}), {result['frozen_uncached_no_augment_epoch_s']} s uncached "
        f"without augmentation (x{result['speedup_per_frozen_epoch_no_augment']}); fine-tune epoch {result['fine_tune_epoch_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
