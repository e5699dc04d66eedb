"""The Coral Edge TPU step: compile the int8 model with ``edgetpu_compiler`` when it is installed.

The compiler needs a full-integer model with static shapes (what the ``int8`` target makes)
and runs only on x86-64 Linux. Without it, the report says how to get it and where the int8
model is, and the conversion still succeeds.
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from edge_app.runtime import embed_metadata
from edge_app.runtime.files import write_bytes, write_text
from edge_app.runtime.rundir import model_file

log = logging.getLogger("edgecls")

COMPILER = "edgetpu_compiler"
INSTALL = ("on x86-64 Debian/Ubuntu: curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - ; "
           "echo 'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' | "
           "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list ; sudo apt-get update ; "
           "sudo apt-get install edgetpu-compiler (or use Coral's Colab notebook / a Docker x86-64 container)")
_ON_TPU = re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)")
_ON_CPU = re.compile(r"Number of operations that will run on CPU:\s*(\d+)")
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")


def compiler_platform_ok() -> bool:
    """``edgetpu_compiler`` is built for x86-64 Linux only."""
    return platform.system() == "Linux" and platform.machine().lower() in ("x86_64", "amd64")


def compile_model(int8_flatbuffer: bytes, int8_path: Path, metadata: dict, labels: list[str],
                  timeout_s: float = 300, members: dict[str, bytes] | None = None) -> dict:
    """Compile the bare int8 flatbuffer; write ``<stem>_edgetpu.tflite`` (with metadata, labels and archive
    ``members``: the int8 variant's reference set for ``unknown``) and its log.

    Returns the report's ``edgetpu`` entry: ``status`` is ``compiled``, ``compiler_not_found``,
    ``unsupported_platform`` or ``failed``, with ``message`` saying what to do next.

    Example:
        >>> compile_model(data, Path("run/model_int8.tflite"), metadata, labels)["ops_on_tpu"]
    """
    out = {"int8_model": str(int8_path), "compiler": COMPILER}
    manual = f"{COMPILER} -s -o {int8_path.parent} {int8_path}"
    if not compiler_platform_ok():
        return {**out, "status": "unsupported_platform",
                "message": f"{COMPILER} runs only on x86-64 Linux, this is {platform.system()} {platform.machine()}; "
                           f"copy {int8_path} to one and run: {manual}"}
    exe = shutil.which(COMPILER)
    if exe is None:
        return {**out, "status": "compiler_not_found",
                "message": f"{COMPILER} is not on PATH. Install it {INSTALL}; then run: {manual} "
                           f"(the Edge-TPU-ready int8 model is {int8_path})"}
    stem = int8_path.stem
    with tempfile.TemporaryDirectory(prefix="edgecls-edgetpu-") as tmp:
        src = Path(tmp) / f"{stem}.tflite"
        src.write_bytes(int8_flatbuffer)  # the bare flatbuffer: no appended metadata for the compiler to trip on
        try:
            proc = subprocess.run([exe, "-s", "-o", tmp, str(src)], capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {**out, "status": "failed", "message": f"{exe} did not run ({e}); try by hand: {manual}"}
        compiled, log_file = Path(tmp) / f"{stem}_edgetpu.tflite", Path(tmp) / f"{stem}_edgetpu.log"
        text = proc.stdout + "\n" + (log_file.read_text(errors="replace") if log_file.is_file() else "")
        version = next((line.strip() for line in proc.stdout.splitlines() if "Compiler version" in line), None)
        if proc.returncode != 0 or not compiled.is_file():
            reason = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
            return {**out, "status": "failed", "compiler_version": version,
                    "message": f"{COMPILER} failed on {int8_path.name}: {reason}"}
        dest = int8_path.with_name(model_file("int8", edgetpu=True))
        data = embed_metadata(compiled.read_bytes(), {**metadata, "quant": "int8", "edgetpu": True}, labels, members)
        write_bytes(dest, data)
        dest_log = dest.with_suffix(".log")
        write_text(dest_log, text.strip() + "\n")
    on_tpu, on_cpu = _ON_TPU.search(text), _ON_CPU.search(text)
    ops = {m.group(1): {"count": int(m.group(2)), "status": m.group(3)}
           for m in map(_OP_ROW.match, text.splitlines()) if m and m.group(1) not in ("OPERATOR",)}
    result = {**out, "status": "compiled", "path": str(dest), "log": str(dest_log), "size_bytes": dest.stat().st_size,
              "compiler_version": version,
              "ops_on_tpu": int(on_tpu.group(1)) if on_tpu else None,
              "ops_on_cpu": int(on_cpu.group(1)) if on_cpu else None, "ops": ops}
    if result["ops_on_cpu"]:
        unmapped = sorted(name for name, op in ops.items() if "not" in op["status"].lower())
        result["message"] = (f"{result['ops_on_cpu']} op(s) stay on the CPU ({', '.join(unmapped) or 'see the log'}): "
                             "everything after the first unmapped op runs on the CPU; see " + str(dest_log))
    else:
        result["message"] = f"all {result['ops_on_tpu']} ops map to the Edge TPU"
    return result
