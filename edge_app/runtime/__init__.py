"""The runtime layer: numpy and a lazily imported LiteRT, nothing else.

Everything that runs a model, on the device or on the host, goes through here.
"""

from edge_app.runtime.artifact import ModelArtifact, embed_metadata, read_artifact
from edge_app.runtime.classifier import ImageClassifier
from edge_app.runtime.images import list_images, read_image
from edge_app.runtime.interpreter import EDGETPU_LIBS, default_num_threads, load_runtime, make_interpreter
from edge_app.runtime.labels import match_labels, parse_labels, read_labels
from edge_app.runtime.postprocess import Classification, output_scores, softmax, top_k
from edge_app.runtime.preprocess import InputSpec, preprocess
from edge_app.runtime.quant import dequantize, quantize
from edge_app.runtime.rundir import resolve_model

__all__ = [
    "EDGETPU_LIBS", "Classification", "ImageClassifier", "InputSpec", "ModelArtifact", "default_num_threads",
    "dequantize", "embed_metadata", "list_images", "load_runtime", "make_interpreter", "match_labels",
    "output_scores", "parse_labels", "preprocess", "quantize", "read_artifact", "read_image", "read_labels",
    "resolve_model", "softmax", "top_k",
]
