"""Facts about the machine we run on, so figures from different boards compare honestly."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00 \n")
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def board_model() -> str | None:
    """``Raspberry Pi 4 Model B Rev 1.4`` on a Pi (device tree), else None."""
    return _read("/proc/device-tree/model")


def cpu_temperature_c() -> float | None:
    raw = _read("/sys/class/thermal/thermal_zone0/temp")
    try:
        return round(int(raw) / 1000, 1) if raw else None
    except ValueError:
        return None


def cpu_governor() -> str | None:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def throttled() -> str | None:
    """``vcgencmd get_throttled`` on a Pi: ``0x0`` means never throttled or under-volted."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().partition("=")[2] or None


def device_facts() -> dict:
    """Everything above in one dict (values that this machine cannot tell are ``None``)."""
    return {
        "hostname": platform.node(),
        "platform": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_governor": cpu_governor(),
        "board": board_model(),
        "cpu_temperature_c": cpu_temperature_c(),
        "throttled": throttled(),
    }
