"""``edgecls classify MODEL IMAGE...``: one result per image, for people or (``--json``) for programs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_app.runtime import ImageClassifier, list_images
from edge_app.runtime.errors import EdgeclsError, ImageError, check_normalization, check_threads
from edge_app.runtime.flags import add_max_pixels, add_normalization, add_threads, add_unknown

log = logging.getLogger("edgecls")

EXAMPLES = """examples:
  edgecls classify mobilenet_v2_1.0_224_quant.tflite parrot.jpg
  edgecls classify runs/potato leaf1.jpg leaf2.jpg --top-k 3
  edgecls classify model_int8.tflite photos/ --json > results.jsonl
  edgecls classify model_edgetpu.tflite parrot.jpg --device edgetpu
  edgecls classify float_model.tflite cat.jpg --labels labels.txt --mean 127.5 --std 127.5
  edgecls classify model.tflite photos/ --top-k 5 --min-score 0.1      # hide unlikely classes
  edgecls classify leaves.tflite car.jpg          # "unknown": a learned or converted model knows what it was taught
  edgecls classify model.tflite dataset/ --recursive   # class folders: a sub-folder named like a class is the truth

exit codes: 0 all classified, 1 some images failed (the rest were classified), 2 bad input."""


@dataclass(frozen=True)
class ClassifyConfig:
    model: str
    images: tuple[str, ...]
    labels: str | None = None
    top_k: int = 3
    score_threshold: float = 0.0
    json: bool = False
    device: str = "cpu"
    num_threads: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    center_crop: float | None = None
    stages: bool = field(default=False)
    max_pixels: int | None = None
    recursive: bool = False
    unknown: bool = True

    def __post_init__(self):
        if not self.images:
            raise EdgeclsError("no images given; pass one or more image files or folders")
        if self.top_k < 1:
            raise EdgeclsError(f"--top-k must be 1 or more, got {self.top_k}")
        if not 0 <= self.score_threshold <= 1:
            raise EdgeclsError(f"--min-score must be between 0 and 1, got {self.score_threshold}")
        check_threads(self.num_threads)
        check_normalization(self.mean, self.std)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("model", help="a .tflite model, or a run directory holding converted models")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument("--labels", help="label file (default: labels embedded in the model, else labels.txt beside it)")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to show per image")
    parser.add_argument("--min-score", type=float, default=0.0, dest="score_threshold", metavar="P",
                        help="hide classes scoring below this probability ('run --threshold' marks frames uncertain)")
    parser.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--device", default="cpu", help="cpu, or edgetpu / edgetpu:usb:0 / edgetpu:pci:0 for a Coral")
    add_threads(parser)
    add_normalization(parser)
    add_max_pixels(parser)
    parser.add_argument("--center-crop", type=float, help="crop this central fraction (at the model's aspect) first")
    parser.add_argument("--stages", action="store_true", help="also print the mean per-stage time split on stderr")
    add_unknown(parser, "say 'unknown' for images unlike the model's reference photos (models that carry them)")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="folders: also the images in their sub-folders; a sub-folder named like one of the "
                             "model's classes is taken as the images' truth (shown, and the accuracy at the end)")


def main(args: argparse.Namespace) -> int:
    if args.threshold is not None:
        raise EdgeclsError(f"classify --threshold {args.threshold} is now --min-score {args.threshold} (hide classes "
                           "below it); --threshold belongs to 'edgecls run', where it marks frames uncertain")
    return run(ClassifyConfig(
        model=args.model, images=tuple(args.images), labels=args.labels, top_k=args.top_k,
        score_threshold=args.score_threshold, json=args.json, device=args.device, num_threads=args.num_threads,
        mean=args.mean, std=args.std,
        center_crop=args.center_crop, stages=args.stages or args.verbose > 0, max_pixels=args.max_pixels,
        recursive=args.recursive, unknown=args.unknown != "off",
    ))


def run(config: ClassifyConfig) -> int:
    """Classify every image; returns 0, or 1 when some images failed, or 2 when all did.

    With ``recursive``, an image in a folder named like one of the model's classes carries ``truth``.
    """
    classifier = ImageClassifier(config.model, config.labels, config.device, config.num_threads,
                                 config.mean, config.std, config.center_crop, unknown=config.unknown)
    if classifier.reference is None:
        log.debug("%s carries no reference set: no 'unknown' (models from edgecls learn and convert have one)",
                  classifier.path.name)
    log.debug("model %s: input %s %s, %d classes", classifier.path, classifier.input_size,
              classifier.spec.dtype.__name__, classifier.num_classes)
    paths = _expand(config.images, config.recursive)
    known = set(classifier.labels)
    failed, right, judged = 0, 0, 0
    totals = {"decode": 0.0, "preprocess": 0.0, "invoke": 0.0, "postprocess": 0.0}
    for path in paths:
        try:
            result, timings = _classify_one(classifier, path, config)
            if config.recursive and path.parent.name in known:
                result["truth"] = path.parent.name
                judged += 1
                right += bool(result["top_k"]) and result["top_k"][0]["label"] == result["truth"]
        except ImageError as e:
            failed += 1
            if config.json:
                print(json.dumps({"image": str(path), "error": str(e)}), flush=True)
            print(f"edgecls classify: error: {e}", file=sys.stderr)
            continue
        for stage, ms in timings.items():
            totals[stage] += ms
        print(json.dumps(result) if config.json else _human(result), flush=True)
    done = len(paths) - failed
    if judged:
        log.info("%d of %d images are in a folder named like a class: top-1 right on %d (%.1f%%)", judged, done,
                 right, 100 * right / judged)
    if config.stages and done:
        split = ", ".join(f"{k} {v / done:.2f} ms" for k, v in totals.items())
        log.info("mean per image over %d: %s (%s %s, %d threads)", done, split,
                 classifier.runtime.name, classifier.runtime.version, classifier.num_threads)
    if failed:
        if len(paths) > 1:
            log.warning("%d of %d images could not be classified", failed, len(paths))
        return 2 if done == 0 else 1
    return 0


def _expand(images: tuple[str, ...], recursive: bool = False) -> list[Path]:
    paths: list[Path] = []
    nested = 0
    for image in images:
        found = list_images(image, recursive)
        if Path(image).is_dir() and not found:
            below = 0 if recursive else len(list_images(image, recursive=True))
            nested += below
            log.warning("%s holds no images (jpg, png, bmp, webp, tif)%s", image,
                        f"; its sub-folders hold {below}: pass --recursive" if below else "")
        paths.extend(found)
    if not paths:
        hint = f"; their sub-folders hold {nested} images: pass --recursive (-r)" if nested else ""
        raise ImageError(f"no images found in {', '.join(images)}{hint}")
    return paths


def _classify_one(classifier: ImageClassifier, path: Path, config: ClassifyConfig) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    image = classifier.read_image(path, config.max_pixels)
    t1 = time.perf_counter()
    classifier.set_input(image)
    t2 = time.perf_counter()
    classifier.invoke()
    t3 = time.perf_counter()
    top = classifier.top(classifier.scores(), config.top_k, config.score_threshold)
    novelty = classifier.novelty()
    t4 = time.perf_counter()
    timings = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3,
               "invoke": (t3 - t2) * 1e3, "postprocess": (t4 - t3) * 1e3}
    result = {
        "image": str(path),
        "top_k": [{"index": c.index, "label": c.label, "score": round(c.score, 6)} for c in top],
        # latency_ms: what the model costs once the image is in memory (pre-process + invoke + post-process).
        "latency_ms": round((t4 - t1) * 1e3, 3),
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    if novelty is not None:
        result["novelty"] = round(novelty, 4)
        result["unknown"] = classifier.is_unknown(novelty)
    return result, timings


def _human(result: dict) -> str:
    top = ", ".join(f"{c['label']} {c['score']:.3f}" for c in result["top_k"]) or "(nothing above the threshold)"
    if result.get("unknown"):
        top = f"unknown: not something it knows (novelty {result['novelty']:.3f}); closest {top}"
    return f"{result['image']}: {top}  ({result['latency_ms']:.1f} ms)"
