"""``edgecls meta MODEL``: what a model carries (its edgecls metadata and class cards), and setting its class cards."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edge_app.runtime import cards
from edge_app.runtime.artifact import LABELS_NAME, ModelArtifact, embed_metadata, read_artifact, read_member
from edge_app.runtime.errors import ModelError
from edge_app.runtime.files import write_bytes
from edge_app.runtime.rundir import resolve_model

log = logging.getLogger("edgecls")

EPILOG = """\
examples:
  edgecls meta runs/potato/model_int8.tflite                    # its metadata and class cards
  edgecls meta model_int8.tflite --classes classes.yaml         # embed the cards (the file is rewritten in place)
  edgecls meta model_int8.tflite --classes classes.yaml --show  # ... and show what it carries now
  edgecls meta model_int8.tflite --json                         # labels and metadata as JSON

--classes FILE is a YAML file, per class (named exactly as the model's labels) and language a card:
  Potato___Early_blight:
    en: {name: Early blight, description: Dark rings on older leaves., advice: Remove the lowest leaves.}
    sw: {name: Baka jani la mapema}
Every class with a card needs English (en), the fallback for other languages; see docs/cards.md.
The file's cards replace the model's ({} removes them); the graph, labels and the rest of the metadata
stay as they are. The model is checked first and rewritten atomically (a temporary file beside it,
renamed over it), so a running 'edgecls run' swaps it in with its new cards.
"""

SHOWN_CHARS = 100  # a metadata value longer than this (a learned model's 'learn' record) is cut on --show


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL", help="a .tflite model (or, to show one, a run directory)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="class cards (YAML) to embed in MODEL, checked against its labels first")
    parser.add_argument("--show", action="store_true",
                        help="print the metadata and the class cards (the default without --classes)")
    parser.add_argument("--json", action="store_true", help="print the labels and metadata as one JSON object")


def main(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if args.classes is not None:
        artifact = set_cards(path, Path(args.classes))
        found = artifact.metadata.get(cards.KEY) or {}
        done = (f"{path}: class cards for {len(found)} of {len(artifact.labels or ())} classes"
                + (f" ({', '.join(cards.languages(found))}) embedded" if found else ": none, removed"))
        if not (args.show or args.json):
            print(done)
            return 0
        log.info("%s", done)
    else:
        artifact = read_artifact(resolve_model(path))
    if args.json:
        print(json.dumps(summary(artifact), indent=2, ensure_ascii=False))
    else:
        print(show(artifact))
    return 0


def set_cards(path: Path, classes: Path) -> ModelArtifact:
    """Embed the cards of the file ``classes`` in the model ``path``, replacing its own; returns it as written.

    Everything else it carries (graph, labels, metadata, reference set) stays. Nothing is written when the
    file or the model is refused.

    Raises:
        ModelError: ``path`` is not a model file, or carries no labels to check the cards against.
        CardsError: the cards file is not one, or does not fit the model's labels.

    Example:
        >>> set_cards(Path("model_int8.tflite"), Path("classes.yaml")).metadata["cards"]["Potato___healthy"]["en"]
        {'name': 'Healthy'}
    """
    if path.is_dir():
        raise ModelError(f"model {path} is a folder; give the .tflite file to rewrite (e.g. {path / 'model_int8.tflite'}),"
                         f" or embed the cards in every model of a run: edgecls convert RUN --classes FILE")
    artifact = read_artifact(path, keep_bytes=True)
    if not artifact.labels:
        raise ModelError(f"model {path} carries no labels, and class cards are named after its classes; give it "
                         "its labels first (edgecls convert and edgecls learn embed them)")
    found = cards.read_cards(classes, artifact.labels)
    metadata = {k: v for k, v in artifact.metadata.items() if k != cards.KEY}
    if found:
        metadata[cards.KEY] = found
    # embed_metadata rewrites labels.txt (edgecls's own member) from the list, and keeps any other label member.
    labels = artifact.labels if read_member(artifact.data, LABELS_NAME) is not None else None
    write_bytes(path, embed_metadata(artifact.data, metadata, labels))
    return read_artifact(path)


def summary(artifact: ModelArtifact) -> dict:
    """The JSON ``--json`` prints: the model's labels and its whole metadata (class cards included)."""
    return {"model": str(artifact.path), "size_bytes": artifact.path.stat().st_size, "edgetpu": artifact.edgetpu,
            "labels": artifact.labels, "metadata": artifact.metadata}


def show(artifact: ModelArtifact) -> str:
    """The metadata and the class cards, for people."""
    labels = artifact.labels or []
    lines = [f"{artifact.path}: {artifact.path.stat().st_size / 1e6:.2f} MB"
             + (", compiled for the Edge TPU" if artifact.edgetpu else "")
             + (f", {len(labels)} labels embedded" if labels else ", no labels embedded")]
    others = {k: v for k, v in artifact.metadata.items() if k != cards.KEY}
    if others:
        lines.append("metadata:")
        for key, value in others.items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"  {key}: {text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + '...'}")
    else:
        lines.append("metadata: none (not written by edgecls convert or learn)")
    found = artifact.metadata.get(cards.KEY)
    if not found:
        lines.append("class cards: none (set them: edgecls meta MODEL --classes FILE)")
        return "\n".join(lines)
    langs = cards.languages(found)
    lines.append(f"class cards: {len(cards.for_labels(found, labels))} of {len(labels)} classes, "
                 f"languages {', '.join(langs)}")
    for label in dict.fromkeys(labels):
        entry = found.get(label) if isinstance(found, dict) else None
        if not isinstance(entry, dict):
            continue
        lines.append(f"  {label}")
        for lang in sorted(entry):
            shown = cards.card(found, label, lang)
            if shown is None or shown["lang"] != lang:
                continue
            lines.append(f"    {lang:<6} {shown['name']}")
            lines += [f"    {'':<6} {shown['description']}"] * bool(shown["description"])
            lines += [f"    {'':<6} advice: {shown['advice']}"] * bool(shown["advice"])
    without = [label for label in dict.fromkeys(labels) if label not in found]
    if without:
        lines.append(f"  no card ({len(without)}, shown by their labels): "
                     + ", ".join(map(repr, without[:10])) + (", ..." if len(without) > 10 else ""))
    return "\n".join(lines)
