"""What every test area shares: where the real models and photos are, and a CLI runner.

Imported as ``from support import ...`` (tests/ is on sys.path through its conftest); a module of
its own, because several conftest.py files in tests/ would make ``from conftest import`` ambiguous.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
IMAGES = SHARED / "images"
IMAGENET_MODEL = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
BIRD_MODEL = MODELS / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
EDGETPU_MODEL = MODELS / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"
POTATO = SHARED / "datasets" / "plantvillage-potato"


def run_cli(*args: str | os.PathLike, module: str = "edgecls", env: dict | None = None,
            timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` in a subprocess, as a user would, and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO, input=input)


def can_unshare() -> bool:
    """Whether this process may make a private mount namespace (root with unshare(1)): read-only and tiny disks."""
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def run_cli_read_only(folder: str | os.PathLike, *args: str | os.PathLike,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m edgecls ARGS`` with ``folder`` mounted read-only (a private mount namespace; root only)."""
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "edgecls",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
