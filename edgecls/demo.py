"""``edgecls demo``: the whole flow on bundled data, offline. (Interim: classifies the shared photos.)"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_app.errors import EdgeclsError

SHARED = Path(os.environ.get("EDGECLS_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "examples:\n  edgecls demo\n  make demo"
    parser.add_argument("--quick", action="store_true", help="small settings, for tests")


def main(args: argparse.Namespace) -> int:
    from edge_app.classify import ClassifyConfig, run

    model = SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    if not model.is_file():
        raise EdgeclsError(f"demo model {model} not found; set EDGECLS_SHARED to the folder holding models/ and images/")
    images = tuple(str(p) for p in sorted((SHARED / "images").iterdir()))
    return run(ClassifyConfig(model=str(model), images=images, top_k=3, stages=True))
